"""quickstart: the README's main job (the whole workflow on generated sample data)."""
from absl import flags

from frcnn_tf.cli import run_main
from frcnn_tf.errors import FrcnnError
from frcnn_tf.spec.validate import IMPLEMENTED_ARCHS

flags.DEFINE_string("workdir", "workdir", "Where data, specs, models and reports go.")
flags.DEFINE_string("data_dir", None, "A KITTI folder (images/, labels/) to use instead of generated data.")
flags.DEFINE_string("class_map", "", "With --data_dir: fold the labels' classes, comma-separated fnmatch\n"
                    "patterns, first match wins: 'red*=red,green*=green,yellow*=yellow'.")
flags.DEFINE_integer("num_images", 300, "Generated sample images.")
flags.DEFINE_enum("arch", "resnet:10", IMPLEMENTED_ARCHS, "Backbone (the spec's model_config.arch).")
flags.DEFINE_integer("epochs", 12, "Training epochs.")
flags.DEFINE_integer("qat_epochs", 1, "QAT retraining epochs.")
flags.DEFINE_integer("max_steps_per_epoch", None, "Cap on steps per epoch (smoke runs).")
flags.DEFINE_integer("image_height", 192, "Network input height (px).")
flags.DEFINE_integer("image_width", 320, "Network input width (px).")
flags.DEFINE_integer("batch_size", 1, "Training batch size.")
flags.DEFINE_bool("use_amp", None, "bfloat16 compute for the float training (TLT's --use_amp); default: where\n"
                  "the CPU has native bfloat16 (AVX512_BF16 or AMX-BF16), else float32.")
flags.DEFINE_integer("seed", 0, "Seed of the sample data and the training.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from frcnn_tf.quickstart import QuickstartOptions, format_summary, parse_class_map, run_quickstart

    try:
        class_map = parse_class_map(FLAGS.class_map)
    except ValueError as err:
        raise FrcnnError(f"--class_map: {err}") from None
    options = QuickstartOptions(num_images=FLAGS.num_images, arch=FLAGS.arch, image_height=FLAGS.image_height,
                                image_width=FLAGS.image_width, epochs=FLAGS.epochs, qat_epochs=FLAGS.qat_epochs,
                                batch_size=FLAGS.batch_size, max_steps_per_epoch=FLAGS.max_steps_per_epoch,
                                use_amp=FLAGS.use_amp, class_map=class_map, seed=FLAGS.seed)
    for line in format_summary(*run_quickstart(FLAGS.workdir, FLAGS.data_dir, options)):
        print(line)
    return 0


def run():
    run_main(main)
