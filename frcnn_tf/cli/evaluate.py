"""evaluate: mAP per class on the validation split (TLT's flags)."""
from absl import flags

from frcnn_tf.cli import run_main

flags.DEFINE_string("experiment_spec", None, "Experiment spec file.", short_name="e")
flags.DEFINE_string("model", None, "Model file (default: evaluation_config.model).", short_name="m")
flags.DEFINE_string("results_dir", None, "Where the report and PR plot go (default: beside the model).",
                    short_name="r")
flags.mark_flag_as_required("experiment_spec")
flags.DEFINE_string("key", None, "Key of .tlt model files (default: the spec's enc_key).", short_name="k")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from frcnn_tf.evaluate import run_evaluate  # TensorFlow loads after flag parsing (fast --help)
    from frcnn_tf.evaluation import format_table

    for line in format_table(run_evaluate(FLAGS.experiment_spec, FLAGS.model, FLAGS.results_dir, FLAGS.key)):
        print(line)
    return 0


def run():
    run_main(main)
