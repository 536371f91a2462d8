"""import_weights: ImageNet ResNet weights (torchvision/timm .pth/.safetensors, Keras applications .h5) as
a Keras HDF5 file by TLT layer names, for training_config.pretrained_weights."""
from absl import flags

from frcnn_tf.cli import run_main

flags.DEFINE_string("input_file", None, "Source weights: a torchvision/timm ResNet state dict (.pth, .safetensors) "
                    "or Keras applications' ResNet weights (.h5).", short_name="i")
flags.DEFINE_string("output_file", None, "Keras HDF5 weight file to write (.hdf5/.h5).", short_name="o")
flags.DEFINE_string("experiment_spec", None, "Experiment spec the weights are for (arch, use_pooling, "
                    "all_projections, input normalisation).", short_name="e")
flags.DEFINE_bool("allow_stride_mismatch", False, "Import torchvision/timm ResNet50/101 (v1.5: stride in the 3x3 "
                  "conv) into TLT's v1 topology (stride in the first 1x1 conv) anyway.")
flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")
flags.mark_flags_as_required(["input_file", "output_file", "experiment_spec"])
FLAGS = flags.FLAGS


def summary_lines(result, output_file):
    identity = f", {len(result.identity)} set to an identity shortcut ({', '.join(result.identity)})" \
        if result.identity else ""
    dropped = f"; not imported: {', '.join(result.dropped)}" if result.dropped else ""
    return [f"wrote {output_file}: {result.source}, {len(result.mapped)} layers mapped{identity}{dropped}",
            f"freshly initialised: {', '.join(result.fresh)}",
            f"train from it with training_config {{ pretrained_weights: \"{output_file}\" }}"]


def main(argv):
    del argv
    from frcnn_tf.model.imported_weights import import_weights  # TensorFlow loads after flag parsing

    result = import_weights(FLAGS.input_file, FLAGS.output_file, FLAGS.experiment_spec, FLAGS.overwrite,
                            FLAGS.allow_stride_mismatch)
    for line in summary_lines(result, FLAGS.output_file):
        print(line)
    return 0


def run():
    run_main(main)
