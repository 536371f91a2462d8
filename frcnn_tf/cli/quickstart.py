"""quickstart: the README's main job."""
from absl import flags

from frcnn_tf.cli import run_main
from frcnn_tf.quickstart import SPECS_DIR, run_quickstart

flags.DEFINE_string("specs_dir", str(SPECS_DIR), "Folder with the default spec files.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    for line in run_quickstart(FLAGS.specs_dir):
        print(line)
    return 0


def run():
    run_main(main)
