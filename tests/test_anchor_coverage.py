"""Anchor fit of ground-truth boxes, by hand on a 32 x 32 input (stride 16: a 2 x 2 anchor grid)."""
import numpy as np
import pytest

from frcnn_tf import anchor_coverage


def test_best_anchor_iou_by_hand():
    # Scale 16, ratio 1: anchors [0,0,16,16], [0,16,16,32], [16,0,32,16], [16,16,32,32].
    # Scale 32 anchors are centred at 8 or 24 and cross the border: ignored, as the RPN ignores them.
    boxes = np.array([[0, 0, 16, 16],  # an anchor exactly: 1
                      [4, 4, 20, 20],  # 12 x 12 overlap with [0,0,16,16]: 144 / (256 + 256 - 144)
                      [0, 0, 32, 32]],  # 256 / 1024 with any scale-16 anchor; the scale-32 anchors do not count
                     np.float32)
    best = anchor_coverage.best_anchor_iou(boxes, 32, 32, [16.0, 32.0], [1.0], stride=16)
    np.testing.assert_allclose(best, [1.0, 144 / 368, 0.25], rtol=1e-6)
    assert anchor_coverage.shares(best) == {0.5: pytest.approx(1 / 3), 0.7: pytest.approx(1 / 3)}


def test_fit_groups_boxes_by_input_size_and_best_scales_prefers_the_fitting_set():
    # In a 64 x 64 input the scale-32 anchor centred at (24, 24) lies inside: [8,8,40,40] fits exactly.
    boxes = np.array([[8, 8, 40, 40], [8, 8, 40, 40]], np.float32)
    sizes = np.array([[32, 32], [64, 64]])
    fit = anchor_coverage.fit(boxes, sizes, [32.0], [1.0])
    assert fit.shares == {0.5: 0.5, 0.7: 0.5}  # only the 64 x 64 input has the anchor inside
    best = anchor_coverage.best_scales(boxes[1:], sizes[1:], [1.0], count=1)
    assert best.scales == (32.0,) and best.shares[0.7] == 1.0
