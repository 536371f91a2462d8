"""Faster R-CNN losses (TLT's definitions), pure functions of targets and predictions.

Each loss is summed over the sampled anchors/RoIs of an image, divided by the
mini-batch size from the spec, weighted by its lambda and averaged over images.
"""
import tensorflow as tf


def smooth_l1(diff, sigma):
    """0.5 * (sigma * x)^2 if |x| < 1 / sigma^2, else |x| - 0.5 / sigma^2 (elementwise)."""
    sigma2 = sigma * sigma
    absolute = tf.abs(diff)
    return tf.where(absolute < 1.0 / sigma2, 0.5 * sigma2 * diff * diff, absolute - 0.5 / sigma2)


def rpn_class_loss(labels, logits, mini_batch):
    """labels int [B, N] (1/0, -1 ignored), logits [B, N] -> scalar binary cross-entropy."""
    mask = tf.cast(labels >= 0, tf.float32)
    loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels > 0, tf.float32), logits=logits)
    return tf.reduce_mean(tf.reduce_sum(loss * mask, axis=1)) / mini_batch


def rpn_regression_loss(labels, target_deltas, deltas, mini_batch):
    """Smooth-L1 (sigma 3) over positive anchors; deltas [B, N, 4]."""
    mask = tf.cast(labels > 0, tf.float32)[..., tf.newaxis]
    loss = smooth_l1(deltas - target_deltas, 3.0) * mask
    return tf.reduce_mean(tf.reduce_sum(loss, axis=[1, 2])) / mini_batch


def rcnn_class_loss(labels, logits, mini_batch):
    """labels int [B, R] (class id, -1 padding), logits [B, R, C] -> scalar cross-entropy."""
    mask = tf.cast(labels >= 0, tf.float32)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(labels, 0), logits=logits)
    return tf.reduce_mean(tf.reduce_sum(loss * mask, axis=1)) / mini_batch


def rcnn_regression_loss(labels, target_deltas, deltas, num_classes, mini_batch):
    """Smooth-L1 (sigma 1) of the true class's 4 deltas for foreground RoIs.

    deltas [B, R, 4 * (num_classes - 1)] (no background slot); target_deltas [B, R, 4].
    """
    foreground = (labels >= 0) & (labels < num_classes - 1)
    per_class = tf.reshape(deltas, tf.concat([tf.shape(deltas)[:2], [num_classes - 1, 4]], axis=0))
    chosen = tf.gather(per_class, tf.clip_by_value(labels, 0, num_classes - 2), batch_dims=2)
    loss = smooth_l1(chosen - target_deltas, 1.0) * tf.cast(foreground, tf.float32)[..., tf.newaxis]
    return tf.reduce_mean(tf.reduce_sum(loss, axis=[1, 2])) / mini_batch
