"""The detection graph's TensorRT-shaped parts, each against the TensorFlow op it replaces, in Keras and
in the exported ONNX (onnxruntime): RoI crop, top-k in rounds of <= 3840, combined NMS lowering."""
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
import tf2onnx

from frcnn_tf.export import tensorrt_rules
from frcnn_tf.export.tf2onnx_handlers import HANDLERS
from frcnn_tf.model.layers import crop_rois, top_k_in_rounds


def _to_onnx(function, *specs):
    proto, _ = tf2onnx.convert.from_function(tf.function(function), input_signature=specs, opset=17,
                                             custom_op_handlers=dict(HANDLERS))
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return proto, lambda *arrays: session.run(None, {i.name: a for i, a in zip(session.get_inputs(), arrays)})


def test_crop_rois_by_hand():
    # One 3x3 map with values 10*y + x. A box whose sample points sit at feature (0.5, 0.5) and
    # (1.5, 1.5) (pool 2) gives the bilinear means of the 2x2 corners; a sample outside the map is 0.
    features = tf.constant((10.0 * np.arange(3)[:, None] + np.arange(3)[None])[None, :, :, None], tf.float32)
    # pixel = 16 * (feature + 0.5): feature 0.5 -> pixel 16, feature 1.5 -> pixel 32
    rois = tf.constant([[[16.0, 16.0, 32.0, 32.0], [-32.0, 16.0, -32.0, 16.0]]])
    crops = crop_rois(features, rois, 16, 2).numpy()[..., 0]
    np.testing.assert_allclose(crops[0], [[5.5, 6.5], [15.5, 16.5]], atol=1e-6)
    np.testing.assert_array_equal(crops[1], np.zeros((2, 2)))  # y = -2.5 cells: crop_and_resize's zero


@pytest.mark.parametrize("pool_size", [1, 7])
def test_crop_rois_equals_crop_and_resize(pool_size):
    rng = np.random.default_rng(pool_size)
    batch, height, width, rois_per_image = 3, 6, 10, 5
    features = rng.normal(size=(batch, height, width, 4)).astype(np.float32)
    starts = rng.uniform(-40, 16 * width, size=(batch, rois_per_image, 2))
    rois = np.concatenate([starts, starts + rng.uniform(-8, 120, size=starts.shape)], -1)[..., [0, 1, 2, 3]]
    rois = rois.astype(np.float32)
    ours = crop_rois(tf.constant(features), tf.constant(rois), 16, pool_size).numpy()
    extent = np.array([height - 1, width - 1] * 2, np.float32)
    normalised = (rois / 16 - 0.5) / extent
    reference = tf.image.crop_and_resize(features, normalised.reshape(-1, 4), np.repeat(np.arange(batch),
                                         rois_per_image), [pool_size, pool_size]).numpy()
    np.testing.assert_allclose(ours, reference, atol=2e-6)
    _, run = _to_onnx(lambda f, r: crop_rois(f, r, 16, pool_size), tf.TensorSpec([None, height, width, 4]),
                      tf.TensorSpec([None, rois_per_image, 4]))
    np.testing.assert_allclose(run(features, rois)[0], reference, atol=1e-5)


@pytest.mark.parametrize("k,max_k", [(9, 4), (12, 4), (3, 4), (50, 7)])
def test_top_k_in_rounds_equals_one_top_k_with_ties(k, max_k):
    values = np.random.default_rng(k).integers(0, 6, size=(3, 50)).astype(np.float32)  # many ties
    expected = tf.math.top_k(values, k)
    found = top_k_in_rounds(tf.constant(values), k, max_k)
    np.testing.assert_array_equal(found[0], expected.values)
    np.testing.assert_array_equal(found[1], expected.indices)
    proto, run = _to_onnx(lambda v: top_k_in_rounds(v, k, max_k), tf.TensorSpec([None, 50]))
    onnx_values, onnx_indices = run(values)
    np.testing.assert_array_equal(onnx_values, expected.values)
    np.testing.assert_array_equal(onnx_indices, expected.indices)


def test_top_k_above_tensorrts_limit_exports_in_rounds():
    values = np.round(np.random.default_rng(0).uniform(size=(2, 16848)), 3).astype(np.float32)  # KITTI anchors
    expected = tf.math.top_k(values, 6000)
    proto, run = _to_onnx(lambda v: top_k_in_rounds(v, 6000), tf.TensorSpec([None, 16848]))
    onnx_values, onnx_indices = run(values)
    np.testing.assert_array_equal(onnx_indices, expected.indices)
    np.testing.assert_array_equal(onnx_values, expected.values)
    assert sorted(int(tensorrt_rules.GraphView(proto).constant(n.input[1])[0]) for n in proto.graph.node
                  if n.op_type == "TopK") == [2160, 3840]
    assert tensorrt_rules.check(proto) == []


def _nms(boxes, scores, max_total):
    return tf.image.combined_non_max_suppression(boxes, scores, max_output_size_per_class=max_total,
                                                 max_total_size=max_total, iou_threshold=0.5, score_threshold=0.05,
                                                 pad_per_class=False, clip_boxes=False)


@pytest.mark.parametrize("batch,max_total", [(1, 20), (3, 20), (3, 80)])
def test_combined_nms_lowering_equals_tensorflow(batch, max_total):
    rng = np.random.default_rng(batch * max_total)
    num_boxes = 60
    corners = rng.uniform(0, 80, size=(batch, num_boxes, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(4, 30, size=corners.shape)], -1).astype(np.float32)
    scores = rng.uniform(size=(batch, num_boxes)).astype(np.float32)
    scores[0, :10] = 0.01  # under the score threshold
    expected = [t.numpy() for t in _nms(boxes[:, :, None], scores[..., None], max_total)]
    proto, run = _to_onnx(lambda b, s: _nms(b[:, :, None], s[..., None], max_total),
                          tf.TensorSpec([None, num_boxes, 4]), tf.TensorSpec([None, num_boxes]))
    found = run(boxes, scores)
    assert {n.op_type for n in proto.graph.node}.isdisjoint({"EyeLike", "CumSum", "Loop"})
    assert tensorrt_rules.check(proto) == []
    np.testing.assert_array_equal(found[3], expected[3])  # valid counts
    assert expected[3].max() < max_total or max_total == 20
    for got, want in zip(found[:3], expected[:3]):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_detections_on_the_image_edge_keep_their_class_in_onnx():
    """Per-class NMS shifts boxes by class * (max(H, W) + 1); a box at y1 = 0 of class c sits exactly on
    c * offset, where onnxruntime's x * (1 / offset) fell one class short before the +0.5 guard."""
    from frcnn_tf.model.layers import detect

    rois = np.array([[[0.0, 10.0, 50.0, 60.0], [0.0, 100.0, 40.0, 180.0], [20.0, 0.0, 90.0, 70.0]]], np.float32)
    probabilities = np.array([[[0.1, 0.8, 0.05, 0.05], [0.05, 0.1, 0.8, 0.05], [0.7, 0.1, 0.1, 0.1]]], np.float32)
    deltas = np.zeros([1, 3, 12], np.float32)

    def run(r, p, d):
        return detect(r, p, d, 192, 320, (10.0, 10.0, 5.0, 5.0), 0.5, 0.3, 4)

    expected = [t.numpy() for t in run(rois, probabilities, deltas)]
    np.testing.assert_array_equal(expected[2][0, :3], [1, 2, 0])
    np.testing.assert_allclose(expected[0][0, :3], rois[0, [0, 1, 2]], atol=1e-4)
    _, onnx_run = _to_onnx(run, tf.TensorSpec([None, 3, 4]), tf.TensorSpec([None, 3, 4]),
                           tf.TensorSpec([None, 3, 12]))
    found = onnx_run(rois, probabilities, deltas)
    np.testing.assert_array_equal(found[2], expected[2])
    np.testing.assert_allclose(found[0], expected[0], atol=1e-4)
