"""export: a trained model to ONNX for TensorRT / onnxruntime (TLT's flags)."""
from absl import flags

from frcnn_tf.cli import run_main

flags.DEFINE_string("model", None, "Trained model (.hdf5).", short_name="m")
flags.DEFINE_string("output_file", None, "ONNX file to write.", short_name="o")
flags.DEFINE_string("experiment_spec", None, "Spec (inference_config sets proposals and NMS).", short_name="e")
flags.DEFINE_enum("data_type", "fp32", ["fp32", "fp16", "int8"], "Precision of the exported graph.")
flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")
flags.mark_flags_as_required(["model", "output_file", "experiment_spec"])
flags.DEFINE_string("key", None, "Key of .tlt model files (default: the spec's enc_key).", short_name="k")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from frcnn_tf.export.onnx_export import run_export

    run_export(FLAGS.experiment_spec, FLAGS.model, FLAGS.output_file, FLAGS.data_type, FLAGS.overwrite, FLAGS.key)
    return 0


def run():
    run_main(main)
