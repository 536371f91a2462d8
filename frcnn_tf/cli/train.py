"""train: Faster R-CNN training from an experiment spec (TLT's flags); TF_CONFIG makes it one worker of a
multi-worker run (README, Training on several GPUs or machines)."""
from absl import flags

from frcnn_tf.cli import run_main

flags.DEFINE_string("experiment_spec", None, "Experiment spec file.", short_name="e")
flags.DEFINE_string("results_dir", None, "Where checkpoints go when the spec has no output_model.", short_name="r")
flags.DEFINE_integer("gpus", 1, "GPUs to train on (MirroredStrategy when > 1); with TF_CONFIG set, GPUs of each "
                     "worker of a multi-worker run (MultiWorkerMirroredStrategy).")
flags.DEFINE_bool("use_amp", False, "Mixed precision: bfloat16 compute on CPU, float16 on GPU.")
flags.DEFINE_integer("max_steps_per_epoch", None, "Cap on steps per epoch (smoke tests).")
flags.DEFINE_bool("overwrite", False, "Replace the checkpoints of an earlier run with the same output_model.")
flags.mark_flag_as_required("experiment_spec")
flags.DEFINE_string("key", None, "Key of .tlt model files (default: the spec's enc_key).", short_name="k")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from frcnn_tf.train.trainer import run_train

    result = run_train(FLAGS.experiment_spec, FLAGS.results_dir, FLAGS.gpus, FLAGS.max_steps_per_epoch,
                       FLAGS.use_amp, FLAGS.key, FLAGS.overwrite)
    for path in result["checkpoints"]:
        print(f"checkpoint: {path}")
    return 0


def run():
    run_main(main)
