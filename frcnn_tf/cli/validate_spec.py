"""validate_spec: check an experiment or conversion spec and print a summary."""
from absl import flags

from frcnn_tf.cli import run_main
from frcnn_tf.spec.summary import validate_spec_file

flags.DEFINE_string("experiment_spec", None, "Spec file to validate.", short_name="e")
flags.DEFINE_enum("kind", "auto", ["auto", "experiment", "conversion"],
                  "Spec kind; 'auto' detects it from the top-level fields.")
flags.mark_flag_as_required("experiment_spec")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    for line in validate_spec_file(FLAGS.experiment_spec, FLAGS.kind):
        print(line)
    return 0


def run():
    run_main(main)
