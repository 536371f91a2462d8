"""dataset_convert: KITTI images + labels -> sharded TFRecords (TLT's flags)."""
from absl import flags, logging

from frcnn_tf.cli import run_main

flags.DEFINE_string("dataset_export_spec", None, "Conversion spec (kitti_config).", short_name="d")
flags.DEFINE_string("output_filename", None, "Output path prefix; fold/shard suffixes are appended.",
                    short_name="o")
# absl owns -v (verbosity level): TLT users write --verbose or -v 1.
flags.DEFINE_bool("verbose", False, "Debug logging.")
flags.DEFINE_integer("workers", None, "Worker processes (default: all CPU cores).")
flags.DEFINE_bool("embed_images", False, "Also store the encoded image bytes in each record (frame/encoded).")
flags.DEFINE_bool("clip_boxes", True, "Clip boxes reaching outside the image (else drop those objects).")
flags.DEFINE_bool("strict", False, "Abort before writing anything if the input has any problem.")
flags.DEFINE_bool("overwrite", False, "Replace existing shards with the same prefix.")
flags.DEFINE_integer("seed", 42, "Seed of the random partition.")
flags.mark_flags_as_required(["dataset_export_spec", "output_filename"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from frcnn_tf.data.convert import format_summary, run_dataset_convert  # TensorFlow loads after flag parsing

    if FLAGS.verbose:
        logging.set_verbosity(logging.DEBUG)
    summary = run_dataset_convert(FLAGS.dataset_export_spec, FLAGS.output_filename, workers=FLAGS.workers,
                                  embed_images=FLAGS.embed_images, clip_boxes=FLAGS.clip_boxes, strict=FLAGS.strict,
                                  overwrite=FLAGS.overwrite, seed=FLAGS.seed)
    for line in format_summary(summary):
        print(line)
    return 0


def run():
    run_main(main)
