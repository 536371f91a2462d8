"""Pure box math on tensors (no Keras state). Boxes are (y1, x1, y2, x2) in pixels.

Coordinates are continuous: a box covers [y1, y2) x [x1, x2), its height is
y2 - y1 (TLT adds 1, a pixel-index convention that does not suit float boxes).
Deltas are (dy, dx, dh, dw): centre offsets in box units and log size ratios,
multiplied by per-coordinate `weights` (TLT's classifier_regr_std / std_scaling).
"""
import math

import numpy as np
import tensorflow as tf

BBOX_XFORM_CLIP = math.log(1000.0 / 16)  # caps exp() in decode, as torchvision


def coordinates(boxes, what="boxes"):
    """The four [...] tensors of boxes or deltas [..., 4]; ValueError for another last dimension."""
    boxes = tf.convert_to_tensor(boxes)
    if boxes.shape.rank == 0 or boxes.shape[-1] not in (None, 4):
        raise ValueError(f"{what} need 4 numbers in the last dimension, got shape {boxes.shape}")
    return tf.unstack(boxes, num=4, axis=-1)


def area(boxes):
    """[..., 4] -> [...]: box areas (0 for empty boxes)."""
    y1, x1, y2, x2 = coordinates(boxes)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def iou(boxes_a, boxes_b):
    """[..., N, 4] x [..., M, 4] -> [..., N, M] intersection over union (0 where both are empty)."""
    coordinates(boxes_a), coordinates(boxes_b)  # shape guards
    a = boxes_a[..., :, tf.newaxis, :]
    b = boxes_b[..., tf.newaxis, :, :]
    top_left = tf.maximum(a[..., :2], b[..., :2])
    bottom_right = tf.minimum(a[..., 2:], b[..., 2:])
    size = tf.maximum(bottom_right - top_left, 0.0)
    inter = size[..., 0] * size[..., 1]
    union = area(a) + area(b) - inter
    return tf.math.divide_no_nan(inter, union)


def _centre_size(boxes):
    y1, x1, y2, x2 = coordinates(boxes)
    return (y1 + y2) / 2.0, (x1 + x2) / 2.0, y2 - y1, x2 - x1


def encode(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Deltas [..., 4] that take `anchors` to `boxes` (both [..., 4], non-empty anchors)."""
    cy, cx, h, w = _centre_size(boxes)
    acy, acx, ah, aw = _centre_size(anchors)
    wy, wx, wh, ww = weights
    h, w = tf.maximum(h, 1e-6), tf.maximum(w, 1e-6)
    return tf.stack([wy * (cy - acy) / ah, wx * (cx - acx) / aw, wh * tf.math.log(h / ah),
                     ww * tf.math.log(w / aw)], axis=-1)


def decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Inverse of `encode`: boxes [..., 4] from deltas and anchors."""
    acy, acx, ah, aw = _centre_size(anchors)
    wy, wx, wh, ww = weights
    dy, dx, dh, dw = coordinates(deltas, "deltas")
    cy, cx = dy / wy * ah + acy, dx / wx * aw + acx
    h = tf.exp(tf.minimum(dh / wh, BBOX_XFORM_CLIP)) * ah
    w = tf.exp(tf.minimum(dw / ww, BBOX_XFORM_CLIP)) * aw
    return tf.stack([cy - h / 2.0, cx - w / 2.0, cy + h / 2.0, cx + w / 2.0], axis=-1)


def clip(boxes, height, width):
    """Clips boxes to the image [0, height] x [0, width]."""
    limits = tf.cast(tf.stack([height, width, height, width]), boxes.dtype)
    return tf.clip_by_value(boxes, 0.0, limits)


def anchor_shapes(scales, ratios):
    """[A, 2] anchor (height, width): scale-major, ratio-minor; w = s*sqrt(r), h = s/sqrt(r) (TLT)."""
    return np.array([[s / math.sqrt(r), s * math.sqrt(r)] for s in scales for r in ratios], np.float32)


def anchor_boxes(feature_height, feature_width, stride, scales, ratios):
    """[H*W*A, 4] anchors centred at stride*(i+0.5); order: row, column, anchor (NHWC reshape order)."""
    shapes = tf.constant(anchor_shapes(scales, ratios))
    ys = (tf.range(feature_height, dtype=tf.float32) + 0.5) * stride
    xs = (tf.range(feature_width, dtype=tf.float32) + 0.5) * stride
    cy, cx = tf.meshgrid(ys, xs, indexing="ij")
    centres = tf.stack([cy, cx], axis=-1)[:, :, tf.newaxis, :]  # [H, W, 1, 2]
    half = shapes[tf.newaxis, tf.newaxis] / 2.0  # [1, 1, A, 2]
    boxes = tf.concat([centres - half, centres + half], axis=-1)  # [H, W, A, 4]
    return tf.reshape(boxes, [-1, 4])


def inside(boxes, height, width):
    """[..., 4] -> bool [...]: boxes entirely within the image."""
    y1, x1, y2, x2 = coordinates(boxes)
    return (y1 >= 0) & (x1 >= 0) & (y2 <= tf.cast(height, boxes.dtype)) & (x2 <= tf.cast(width, boxes.dtype))
