"""anchor_coverage: how well the spec's anchors fit the training boxes, and the scales that fit best."""
from absl import flags

from frcnn_tf.cli import run_main

flags.DEFINE_string("experiment_spec", None, "Experiment spec file (its training split is read).", short_name="e")
flags.mark_flag_as_required("experiment_spec")
FLAGS = flags.FLAGS


def format_report(report):
    """Lines of a table: anchors, scales, ratios, share of boxes at each IoU threshold."""
    from frcnn_tf.anchor_coverage import THRESHOLDS

    lines = [f"{report['boxes']} training boxes; share whose best anchor inside the input reaches IoU:",
             f"{'anchors':<10}{'scales':<32}{'ratios':<14}" + "".join(f"{f'>= {t}':>9}" for t in THRESHOLDS)
             + f"{'mean IoU':>10}"]
    for name in ("spec", "best", "dense"):
        fit = report[name]
        lines.append(f"{name:<10}{' '.join(f'{s:.4g}' for s in fit.scales):<32}"
                     f"{' '.join(f'{r:g}' for r in fit.ratios):<14}"
                     + "".join(f"{100 * fit.shares[t]:>8.1f}%" for t in THRESHOLDS) + f"{fit.mean_iou:>10.3f}")
    return lines


def main(argv):
    del argv
    from frcnn_tf.anchor_coverage import run_anchor_report  # TensorFlow loads after flag parsing (fast --help)

    for line in format_report(run_anchor_report(FLAGS.experiment_spec)):
        print(line)
    return 0


def run():
    run_main(main)
