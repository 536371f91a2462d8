"""How well a spec's anchors fit its training boxes, and the anchor scales that fit them best.

A ground-truth box is learnable by the RPN when an anchor lying inside the network input (the RPN
ignores the others) overlaps it well: IoU >= rpn_max_overlap (0.7) makes a positive by itself, and
below 0.5 the box only gets its forced best anchor. The report gives, for the spec's anchors and
for the best-fitting scales, the share of boxes whose best anchor reaches IoU 0.5 and 0.7.
"""
import dataclasses
import math

import numpy as np
import tensorflow as tf

from frcnn_tf import boxes as box_ops
from frcnn_tf.data.pipeline import InputPipeline
from frcnn_tf.errors import FrcnnError
from frcnn_tf.model.frcnn import RPN_STRIDE
from frcnn_tf.spec import parse_experiment_spec
from frcnn_tf.spec.validate import require_section

THRESHOLDS = (0.5, 0.7)
# Candidate smallest scales: quarter octaves from 8 px; TLT's anchor sets are 3 scales an octave apart.
SCALE_STEPS = tuple(8.0 * 2 ** (k / 4) for k in range(25))
_CHUNK = 2048  # boxes per IoU matrix


def best_anchor_iou(gt_boxes, input_height, input_width, scales, ratios, stride=RPN_STRIDE):
    """float32 [N]: each box's IoU with its best anchor that lies inside the input.

    gt_boxes [N, 4] in input pixels (y1, x1, y2, x2); anchors as the RPN builds them on the
    ceil(H / stride) x ceil(W / stride) feature grid.
    """
    anchors = box_ops.anchor_boxes(math.ceil(input_height / stride), math.ceil(input_width / stride), stride,
                                   scales, ratios)
    anchors = tf.boolean_mask(anchors, box_ops.inside(anchors, input_height, input_width))
    if anchors.shape[0] == 0 or len(gt_boxes) == 0:
        return np.zeros(len(gt_boxes), np.float32)
    best = [tf.reduce_max(box_ops.iou(tf.constant(gt_boxes[i:i + _CHUNK], tf.float32), anchors), axis=1)
            for i in range(0, len(gt_boxes), _CHUNK)]
    return tf.concat(best, axis=0).numpy()


def shares(best_ious, thresholds=THRESHOLDS):
    """{threshold: share of boxes whose best anchor IoU >= threshold} (0.0 without boxes)."""
    count = max(len(best_ious), 1)
    return {t: float(np.sum(best_ious >= t)) / count for t in thresholds}


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnchorFit:
    """Anchor scales (pixels) and ratios, the share of boxes their best anchor reaches per IoU threshold,
    and the boxes' mean best-anchor IoU."""

    scales: tuple
    ratios: tuple
    shares: dict
    mean_iou: float


def fit(gt_boxes, sizes, scales, ratios):
    """AnchorFit of boxes [N, 4] in inputs of sizes [N, 2] (height, width) for these anchors."""
    best = np.zeros(len(gt_boxes), np.float32)
    for size in {tuple(int(v) for v in s) for s in sizes}:
        rows = np.all(sizes == size, axis=1)
        best[rows] = best_anchor_iou(gt_boxes[rows], size[0], size[1], scales, ratios)
    return AnchorFit(scales=tuple(float(s) for s in scales), ratios=tuple(float(r) for r in ratios),
                     shares=shares(best), mean_iou=float(np.mean(best)) if len(best) else 0.0)


def best(fits):
    """The AnchorFit whose shares summed over THRESHOLDS are the highest (on a tie, the higher mean IoU)."""
    return max(fits, key=lambda f: (sum(f.shares.values()), f.mean_iou))


def best_scales(gt_boxes, sizes, ratios, count, spacing=2.0):
    """The best AnchorFit of `count` scales `spacing` apart, the smallest from SCALE_STEPS."""
    return best(fit(gt_boxes, sizes, [smallest * spacing ** i for i in range(count)], ratios)
                for smallest in SCALE_STEPS)


def anchor_report(spec):
    """The training split's box count and AnchorFits: "spec" (the spec's anchors), "best" (as many
    scales as the spec, an octave apart: TLT's layout) and "dense" (twice as many minus one, half an
    octave apart: more anchors per cell, closer fits), each with the spec's ratios."""
    anchors = spec.model_config.anchor_box_config
    gt_boxes, sizes = InputPipeline(spec).split_boxes(training=True)
    if len(gt_boxes) == 0:
        raise FrcnnError("the training split has no ground-truth box of a mapped class; check "
                         "dataset_config target_class_mapping and the tfrecords_path")
    return {"boxes": len(gt_boxes), "spec": fit(gt_boxes, sizes, anchors.scale, anchors.ratio),
            "best": best_scales(gt_boxes, sizes, anchors.ratio, len(anchors.scale)),
            "dense": best_scales(gt_boxes, sizes, anchors.ratio, 2 * len(anchors.scale) - 1, math.sqrt(2.0))}


def run_anchor_report(spec_path):
    """anchor_report of an experiment spec file (needs its dataset_config and converted TFRecords)."""
    spec, source = parse_experiment_spec(spec_path)
    require_section(spec, source, "dataset_config")
    return anchor_report(spec)
