"""prune: structured magnitude pruning of a trained model (TLT's flags)."""
from absl import flags

from frcnn_tf.cli import run_main

flags.DEFINE_string("model", None, "Model to prune (.hdf5).", short_name="m")
flags.DEFINE_string("output_file", None, "Pruned model to write (.hdf5).", short_name="o")
flags.DEFINE_string("experiment_spec", None, "Spec (accepted for TLT compatibility; not needed).", short_name="e")
flags.DEFINE_float("pruning_threshold", 0.1, "Normalised filter-norm threshold.", short_name="pth")
flags.DEFINE_enum("equalization_criterion", "union", ["union", "intersection", "arithmetic_mean", "geometric_mean"],
                  "How layers joined by Add merge their scores.", short_name="eq")
flags.DEFINE_integer("pruning_granularity", 8, "Filters are kept in multiples of this.", short_name="pg")
flags.DEFINE_integer("min_num_filters", 16, "Minimum filters kept per layer.", short_name="nf")
flags.DEFINE_enum("normalizer", "max", ["max", "L2", "off"], "Per-layer score normalisation.", short_name="n")
flags.DEFINE_enum("score", "bn_folded", ["bn_folded", "kernel"],
                  "Filter score: kernel norm with the next BatchNorm folded in, or the kernel norm alone (TLT).")
flags.DEFINE_list("excluded_layers", [], "Layers that keep all their filters.", short_name="el")
flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")
flags.mark_flags_as_required(["model", "output_file"])
flags.DEFINE_string("key", None, "Key of .tlt model files (default: the spec's enc_key).", short_name="k")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from frcnn_tf.prune import PruneOptions, format_table, run_prune  # TensorFlow loads after flag parsing

    options = PruneOptions(FLAGS.pruning_threshold, FLAGS.equalization_criterion, FLAGS.pruning_granularity,
                           FLAGS.min_num_filters, FLAGS.normalizer, tuple(FLAGS.excluded_layers), FLAGS.score)
    result = run_prune(FLAGS.model, FLAGS.output_file, options, FLAGS.overwrite, FLAGS.key)
    for line in format_table(result["table"], result["params_before"], result["params_after"]):
        print(line)
    return 0


def run():
    run_main(main)
