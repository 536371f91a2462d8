"""quickstart: the README's main job (the whole workflow on generated sample data)."""
from absl import flags

from frcnn_tf.cli import run_main

flags.DEFINE_string("workdir", "workdir", "Where data, specs, models and reports go.")
flags.DEFINE_string("data_dir", None, "A KITTI folder (images/, labels/) to use instead of generated data.")
flags.DEFINE_integer("num_images", 300, "Generated sample images.")
flags.DEFINE_integer("epochs", 6, "Training epochs.")
flags.DEFINE_integer("qat_epochs", 2, "QAT retraining epochs.")
flags.DEFINE_integer("max_steps_per_epoch", None, "Cap on steps per epoch (smoke runs).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from frcnn_tf.quickstart import QuickstartOptions, format_summary, run_quickstart

    options = QuickstartOptions(num_images=FLAGS.num_images, epochs=FLAGS.epochs, qat_epochs=FLAGS.qat_epochs,
                                max_steps_per_epoch=FLAGS.max_steps_per_epoch)
    for line in format_summary(*run_quickstart(FLAGS.workdir, FLAGS.data_dir, options)):
        print(line)
    return 0


def run():
    run_main(main)
