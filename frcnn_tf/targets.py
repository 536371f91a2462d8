"""Training targets, pure TensorFlow ops for a padded batch (no Keras state).

Ground truth comes padded: boxes [B, M, 4] and classes [B, M] with -1 for padding.
Random choices use stateless ops seeded by `seed` ([2] int), so a step is reproducible.
`rows` (first, total) says that the B images are rows first .. first + B - 1 of a global batch of
`total` images (data-parallel replicas each hold a slice); the random numbers are drawn for the
global batch and each image takes its row, so an image's sample does not depend on how the global
batch is split across replicas. Default: (0, B), the whole batch.
"""
import tensorflow as tf

from frcnn_tf import boxes as box_ops


def random_subset(candidates, counts, seed, rows=None):
    """bool [B, N]: `counts[b]` of the True entries of `candidates[b]`, chosen uniformly without replacement."""
    shape = tf.shape(candidates)
    first, total = rows if rows is not None else (0, shape[0])
    noise = tf.random.stateless_uniform(tf.stack([total, shape[1]]), seed=seed)[first:first + shape[0]]
    scores = tf.where(candidates, noise, -1.0)
    rank = tf.argsort(tf.argsort(scores, axis=-1, direction="DESCENDING"), axis=-1)
    return candidates & (rank < tf.cast(counts, tf.int32)[:, tf.newaxis])


def match(anchors_or_rois, gt_boxes, gt_valid, eligible):
    """IoU bookkeeping: returns (max IoU [B, N], matched gt index [B, N], IoU [B, N, M]).

    Padded gt columns and non-eligible rows get IoU -1 / 0 so they never match.
    """
    overlaps = box_ops.iou(anchors_or_rois, gt_boxes)
    overlaps = tf.where(gt_valid[:, tf.newaxis, :] & eligible[..., tf.newaxis], overlaps, -1.0)
    return tf.reduce_max(overlaps, axis=-1), tf.argmax(overlaps, axis=-1, output_type=tf.int32), overlaps


def gt_recall(candidates, candidate_valid, gt_boxes, gt_valid, threshold=0.5):
    """(covered, total) float32 scalars: the valid ground-truth boxes whose best IoU with a valid
    candidate box is >= threshold, and all valid ground-truth boxes of the batch.

    candidates [B, N, 4] with candidate_valid [B, N]; gt_boxes [B, M, 4] with gt_valid [B, M].
    """
    _, _, overlaps = match(candidates, gt_boxes, gt_valid, candidate_valid)
    covered = gt_valid & (tf.reduce_max(overlaps, axis=1) >= threshold)
    return tf.reduce_sum(tf.cast(covered, tf.float32)), tf.reduce_sum(tf.cast(gt_valid, tf.float32))


def rpn_targets(anchors, gt_boxes, gt_classes, image_height, image_width, sampling, seed, rows=None):
    """Anchor labels and regression targets for the RPN (sampling: settings.RpnSampling).

    anchors [N, 4]. Returns labels int32 [B, N] (1 object, 0 background, -1 ignored; at
    most mini_batch labelled per image, at most half of them positive) and deltas [B, N, 4].
    Rules (TLT/Faster R-CNN): anchors crossing the image border are ignored; IoU >=
    max_overlap is positive, IoU < min_overlap negative; every ground-truth box also makes
    its best anchors (ties included, IoU > 0) positive.
    """
    min_overlap, max_overlap, mini_batch = sampling.min_overlap, sampling.max_overlap, sampling.mini_batch
    batch = tf.shape(gt_boxes)[0]
    anchors = tf.broadcast_to(anchors[tf.newaxis], [batch, tf.shape(anchors)[0], 4])
    gt_valid = gt_classes >= 0
    valid = box_ops.inside(anchors, image_height, image_width)
    best, matched, overlaps = match(anchors, gt_boxes, gt_valid, valid)
    # Forced positives: the anchors with each gt box's highest IoU.
    gt_best = tf.reduce_max(overlaps, axis=1, keepdims=True)  # [B, 1, M]
    forcing = (overlaps >= gt_best) & (gt_best > 0.0)
    forced = tf.reduce_any(forcing, axis=-1)
    forced_match = tf.argmax(tf.where(forcing, overlaps, -1.0), axis=-1, output_type=tf.int32)
    matched = tf.where(forced & (best < max_overlap), forced_match, matched)

    positive = valid & ((best >= max_overlap) | forced)
    negative = valid & ~positive & (best < min_overlap)
    num_pos = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), mini_batch // 2)
    positive = random_subset(positive, num_pos, seed, rows)
    num_neg = mini_batch - num_pos
    negative = random_subset(negative, num_neg, seed + [0, 1], rows)
    labels = tf.where(positive, 1, tf.where(negative, 0, -1))
    deltas = box_ops.encode(tf.gather(gt_boxes, matched, batch_dims=1), anchors, sampling.box_weights)
    deltas = tf.where(positive[..., tf.newaxis], deltas, 0.0)
    return labels, deltas


def proposal_targets(proposals, proposal_valid, gt_boxes, gt_classes, num_classes, sampling, seed, rows=None):
    """Samples RoIs for the second stage and their targets (sampling: settings.RoiSampling).

    proposals [B, P, 4] with proposal_valid [B, P]. num_classes counts background,
    which is the last id. A RoI is foreground if IoU >= max_overlap and background
    if min_overlap <= IoU < max_overlap; up to positive_fraction of mini_batch are
    foreground, background fills the rest, without replacement (fewer RoIs when
    there are not enough candidates; the rest are padding).
    Returns rois [B, R, 4], labels int32 [B, R] (class id, background = num_classes - 1,
    -1 padding) and deltas [B, R, 4] (weighted by box_weights, zero unless foreground).
    """
    min_overlap, max_overlap, mini_batch = sampling.min_overlap, sampling.max_overlap, sampling.mini_batch
    gt_valid = gt_classes >= 0
    if sampling.gt_as_roi:
        proposals = tf.concat([proposals, gt_boxes], axis=1)
        proposal_valid = tf.concat([proposal_valid, gt_valid], axis=1)
    best, matched, _ = match(proposals, gt_boxes, gt_valid, proposal_valid)
    foreground = proposal_valid & (best >= max_overlap)
    background = proposal_valid & (best < max_overlap) & (best >= min_overlap)
    max_fg = int(mini_batch * sampling.positive_fraction)
    num_fg = tf.minimum(tf.reduce_sum(tf.cast(foreground, tf.int32), axis=1), max_fg)
    foreground = random_subset(foreground, num_fg, seed, rows)
    num_bg = tf.minimum(tf.reduce_sum(tf.cast(background, tf.int32), axis=1), mini_batch - num_fg)
    background = random_subset(background, num_bg, seed + [0, 1], rows)
    # Gather the chosen rows first (foreground first), padding to mini_batch.
    chosen = foreground | background
    order = tf.argsort(tf.cast(foreground, tf.int32) * 2 + tf.cast(chosen, tf.int32), axis=1,
                       direction="DESCENDING", stable=True)[:, :mini_batch]
    pad = mini_batch - tf.shape(order)[1]
    order = tf.pad(order, [[0, 0], [0, pad]])
    taken = tf.gather(chosen, order, batch_dims=1) & (tf.range(mini_batch) < tf.shape(order)[1] - pad)[tf.newaxis]
    rois = tf.where(taken[..., tf.newaxis], tf.gather(proposals, order, batch_dims=1), 0.0)
    is_fg = tf.gather(foreground, order, batch_dims=1) & taken
    gt_index = tf.gather(matched, order, batch_dims=1)
    classes = tf.gather(gt_classes, gt_index, batch_dims=1)
    labels = tf.where(is_fg, classes, tf.where(taken, num_classes - 1, -1))
    deltas = box_ops.encode(tf.gather(gt_boxes, gt_index, batch_dims=1), rois + tf.where(
        taken[..., tf.newaxis], 0.0, tf.constant([0.0, 0.0, 1.0, 1.0])), sampling.box_weights)
    deltas = tf.where(is_fg[..., tf.newaxis], deltas, 0.0)
    return rois, labels, deltas
