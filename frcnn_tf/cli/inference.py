"""inference: annotated images and KITTI labels for a folder (TLT's flags)."""
from absl import flags

from frcnn_tf.cli import run_main

flags.DEFINE_string("experiment_spec", None, "Experiment spec file.", short_name="e")
flags.DEFINE_string("model", None, "Model file (default: inference_config.model).", short_name="m")
flags.DEFINE_string("images_dir", None, "Input images (default: inference_config.images_dir).", short_name="i")
flags.DEFINE_string("output_dir", None, "Annotated images (default: detection_image_output_dir).", short_name="o")
flags.DEFINE_string("labels_dir", None, "KITTI label dumps (default: labels_dump_dir).", short_name="l")
flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
flags.mark_flag_as_required("experiment_spec")
flags.DEFINE_string("key", None, "Key of .tlt model files (default: the spec's enc_key).", short_name="k")
FLAGS = flags.FLAGS


def summary_line(result):
    """One line for run_inference's result: images done, unreadable ones skipped, output folders."""
    skipped = result["skipped"]
    unreadable = f" ({len(skipped)} unreadable images skipped, listed above)" if skipped else ""
    return (f"{len(result['detections'])} images{unreadable}; annotated images: {result['image_out'] or '-'}; "
            f"labels: {result['labels_out'] or '-'}")


def main(argv):
    del argv
    from frcnn_tf.inference import run_inference  # TensorFlow loads after flag parsing (fast --help)

    print(summary_line(run_inference(FLAGS.experiment_spec, FLAGS.model, FLAGS.images_dir, FLAGS.output_dir,
                                     FLAGS.labels_dir, FLAGS.overwrite, FLAGS.key)))
    return 0


def run():
    run_main(main)
