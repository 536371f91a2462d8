"""Box math with hand-computed numbers."""
import math

import numpy as np
import pytest
import tensorflow as tf

from frcnn_tf import boxes


def test_iou_by_hand():
    a = tf.constant([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    b = tf.constant([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    expected = [[1 / 7, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    np.testing.assert_allclose(boxes.iou(a, b).numpy(), expected, rtol=1e-6)
    # (0,0,10,20) vs (0,0,10,10): intersection 100, union 200.
    assert boxes.iou(tf.constant([[0.0, 0, 10, 20]]), tf.constant([[0.0, 0, 10, 10]])).numpy()[0, 0] == 0.5


def test_encode_decode_by_hand_and_round_trip():
    anchor = tf.constant([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    box = tf.constant([[2.0, 4.0, 12.0, 44.0]])  # centre (7, 24), size 10 x 40
    np.testing.assert_allclose(boxes.encode(box, anchor).numpy(), [[0.2, 0.7, 0.0, math.log(2)]], rtol=1e-6)
    weighted = boxes.encode(box, anchor, (10.0, 10.0, 5.0, 5.0))
    np.testing.assert_allclose(weighted.numpy(), [[2.0, 7.0, 0.0, 5 * math.log(2)]], rtol=1e-6)
    np.testing.assert_allclose(boxes.decode(weighted, anchor, (10.0, 10.0, 5.0, 5.0)).numpy(), box.numpy(),
                               atol=1e-5)
    rng = np.random.default_rng(0)
    anchors = np.concatenate([rng.uniform(0, 50, (100, 2)), rng.uniform(60, 120, (100, 2))], 1).astype(np.float32)
    targets = np.concatenate([rng.uniform(0, 50, (100, 2)), rng.uniform(55, 130, (100, 2))], 1).astype(np.float32)
    deltas = boxes.encode(tf.constant(targets), tf.constant(anchors), (10.0, 10.0, 5.0, 5.0))
    np.testing.assert_allclose(boxes.decode(deltas, tf.constant(anchors), (10.0, 10.0, 5.0, 5.0)).numpy(), targets,
                               atol=1e-3)


def test_anchor_shapes_match_tlt():
    shapes = boxes.anchor_shapes([64, 128, 256], [1.0, 0.5, 2.0])
    # (h, w) for TLT's (w, h) list: (64,64), (45.25,90.51), (90.51,45.25), (128,128), ...
    np.testing.assert_allclose(shapes[:4], [[64, 64], [90.51, 45.25], [45.25, 90.51], [128, 128]], atol=0.01)
    assert shapes.shape == (9, 2)


def test_anchor_grid_for_a_2x3_feature_map():
    anchors = boxes.anchor_boxes(2, 3, 16, [32.0], [1.0, 4.0]).numpy()
    assert anchors.shape == (12, 4)
    np.testing.assert_allclose(anchors[0], [-8, -8, 24, 24])  # row 0, col 0, ratio 1: centre (8, 8), 32 x 32
    np.testing.assert_allclose(anchors[1], [0, -24, 16, 40])  # ratio 4: h = 16, w = 64
    np.testing.assert_allclose(anchors[2], [-8, 8, 24, 40])  # row 0, col 1: centre (8, 24)
    np.testing.assert_allclose(anchors[6], [8, -8, 40, 24])  # row 1, col 0: centre (24, 8)
    np.testing.assert_allclose(anchors[11], [16, 8, 32, 72])  # row 1, col 2, ratio 4: centre (24, 40)


def test_clip_and_inside():
    box = tf.constant([[-5.0, 3.0, 50.0, 120.0]])
    np.testing.assert_allclose(boxes.clip(box, 40, 100).numpy(), [[0, 3, 40, 100]])
    assert boxes.inside(tf.constant([[0.0, 0, 40, 100], [0.0, 0, 40.5, 10]]), 40, 100).numpy().tolist() == [True,
                                                                                                          False]


@pytest.mark.parametrize("value", [1e6, 50.0])
def test_decode_caps_huge_sizes(value):
    out = boxes.decode(tf.constant([[0.0, 0.0, value, value]]), tf.constant([[0.0, 0.0, 16.0, 16.0]]))
    assert np.isfinite(out.numpy()).all() and (out.numpy()[0, 2] - out.numpy()[0, 0]) <= 1000.0 + 1e-3


def test_box_ops_refuse_a_last_dimension_other_than_four():
    with pytest.raises(ValueError, match=r"boxes need 4 numbers in the last dimension, got shape \(2, 3\)"):
        boxes.area(tf.zeros([2, 3]))
    with pytest.raises(ValueError, match="deltas need 4 numbers"):
        boxes.decode(tf.zeros([2, 5]), tf.zeros([2, 4]))
    with pytest.raises(ValueError, match="boxes need 4 numbers"):
        boxes.iou(tf.zeros([2, 4]), tf.zeros([3, 2]))
