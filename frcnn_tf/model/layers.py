"""Thin Keras layers around the pure box math: proposals and RoI crops."""
import tensorflow as tf

from frcnn_tf import boxes as box_ops
from frcnn_tf.tensorrt_limits import MAX_TOP_K


def propose(rpn_logits, rpn_deltas, anchors, image_height, image_width, pre_nms_top_n, post_nms_top_n,
            nms_iou, std_scaling=1.0, min_size=1.0):
    """RPN outputs -> proposals [B, post_nms_top_n, 4] (zero rows pad).

    rpn_logits [B, h, w, A], rpn_deltas [B, h, w, 4A], anchors [h*w*A, 4].
    Decode, clip to the image, drop boxes under min_size px, keep the top
    pre_nms_top_n by score, NMS at nms_iou, keep post_nms_top_n.
    """
    batch = tf.shape(rpn_logits)[0]
    scores = tf.sigmoid(tf.reshape(rpn_logits, [batch, -1]))
    deltas = tf.reshape(rpn_deltas, [batch, -1, 4]) / std_scaling
    proposals = box_ops.clip(box_ops.decode(deltas, anchors[tf.newaxis]), image_height, image_width)
    heights = proposals[..., 2] - proposals[..., 0]
    widths = proposals[..., 3] - proposals[..., 1]
    scores = tf.where((heights >= min_size) & (widths >= min_size), scores, -1.0)
    num_anchors = scores.shape[1]
    if num_anchors is None:  # input size unknown until run time (size_min specs; not exportable)
        scores, order = tf.math.top_k(scores, k=tf.minimum(pre_nms_top_n, tf.shape(scores)[1]))
    else:
        scores, order = top_k_in_rounds(scores, min(pre_nms_top_n, num_anchors))
    proposals = tf.gather(proposals, order, batch_dims=1)
    kept, _, _, _ = tf.image.combined_non_max_suppression(
        proposals[:, :, tf.newaxis, :], scores[..., tf.newaxis], max_output_size_per_class=post_nms_top_n,
        max_total_size=post_nms_top_n, iou_threshold=nms_iou, score_threshold=0.0, pad_per_class=False,
        clip_boxes=False)
    return kept


def top_k_in_rounds(values, k, max_k=MAX_TOP_K):
    """tf.math.top_k(values [B, N], k) (sorted; ties to the lower index) with no TopK over max_k.

    TensorRT's TopK takes K <= 3840 (NvInfer.h ITopKLayer::setK). Each round takes the next
    at most max_k elements: an element was taken by an earlier round exactly when it precedes
    or is the last taken element (v, i) in top_k's own order (value descending, index
    ascending), so masking those to -inf and taking the top of the rest continues the same
    sequence. Equal to one top_k for values above -inf. Returns (values [B, k], indices [B, k]).
    """
    if k <= max_k:
        return tf.math.top_k(values, k=k, sorted=True)
    positions = tf.range(tf.shape(values)[-1])[tf.newaxis]
    remaining, taken_values, taken_indices = values, [], []
    for start in range(0, k, max_k):
        top_values, top_indices = tf.math.top_k(remaining, k=min(max_k, k - start), sorted=True)
        taken_values.append(top_values)
        taken_indices.append(top_indices)
        last_value, last_index = top_values[:, -1:], top_indices[:, -1:]
        taken = (values > last_value) | ((values == last_value) & (positions <= last_index))
        remaining = tf.where(taken, tf.constant(-float("inf"), values.dtype), values)
    return tf.concat(taken_values, axis=-1), tf.concat(taken_indices, axis=-1)


def _interpolation_weights(starts, ends, size, pool_size):
    """Bilinear sampling weights [B, R, pool_size, size] along one axis of a feature map.

    starts, ends [B, R]: the first and last sample positions in feature cells divided by
    (size - 1) (crop_and_resize's normalised box coordinates). Sample i sits at
    p = starts * (size - 1) + i * (ends - starts) * (size - 1) / (pool_size - 1) (the middle
    for pool_size 1), as in TensorFlow's CropAndResize kernel; its weights are
    max(0, 1 - |j - p|) over cells j, all 0 where p lies outside [0, size - 1]
    (crop_and_resize's extrapolation value 0).
    """
    last = tf.cast(size - 1, starts.dtype)
    if pool_size > 1:
        steps = tf.range(pool_size, dtype=starts.dtype) * ((ends - starts) * last / (pool_size - 1))[..., tf.newaxis]
        positions = (starts * last)[..., tf.newaxis] + steps
    else:
        positions = (0.5 * (starts + ends) * last)[..., tf.newaxis]
    inside = tf.cast((positions >= 0.0) & (positions <= last), starts.dtype)
    cells = tf.range(size, dtype=starts.dtype)
    weights = tf.maximum(1.0 - tf.abs(cells - positions[..., tf.newaxis]), 0.0)
    return weights * inside[..., tf.newaxis]


def crop_rois(features, rois, stride, pool_size):
    """Bilinear crops [B*R, pool_size, pool_size, C] of features [B, h, w, C] at rois [B, R, 4] (pixels).

    Feature cell i is centred at input pixel stride*(i + 0.5), so pixel y sits at
    feature coordinate y/stride - 0.5 (aligned, like RoIAlign with aligned=True).
    Equal to tf.image.crop_and_resize (bilinear, extrapolation 0) with one image per row
    of rois, computed as two batched matrix products with the separable sampling weights
    (width first): crop[r] = Wy[r] @ F[b(r)] @ Wx[r]^T per channel. Matrix products
    export to ONNX MatMul, which every TensorRT version builds, where crop_and_resize
    becomes a Loop around a Resize mode TensorRT's parser rejects.
    """
    features = tf.cast(features, tf.float32)  # crop_and_resize's output type, whatever the policy
    shape = tf.shape(features)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    num_rois = tf.shape(rois)[1]
    extent = tf.cast(tf.maximum(tf.stack([height, width, height, width]) - 1, 1), tf.float32)
    y1, x1, y2, x2 = tf.unstack((tf.cast(tf.stop_gradient(rois), tf.float32) / stride - 0.5) / extent, axis=-1)
    across = tf.reshape(_interpolation_weights(x1, x2, width, pool_size), [batch, num_rois * pool_size, width])
    down = tf.reshape(_interpolation_weights(y1, y2, height, pool_size), [batch * num_rois, pool_size, height])
    columns = tf.reshape(tf.transpose(features, [0, 2, 1, 3]), [batch, width, height * channels])
    sampled = tf.reshape(tf.matmul(across, columns), [batch * num_rois, pool_size, height, channels])
    sampled = tf.reshape(tf.transpose(sampled, [0, 2, 1, 3]), [batch * num_rois, height, pool_size * channels])
    crops = tf.reshape(tf.matmul(down, sampled), [batch * num_rois, pool_size, pool_size, channels])
    return tf.ensure_shape(crops, [None, pool_size, pool_size, features.shape[-1]])


@tf.keras.utils.register_keras_serializable(package="frcnn_tf")
class Proposal(tf.keras.layers.Layer):
    """[rpn_logits, rpn_deltas, image] -> proposals [B, post_nms_top_n, 4] (see `propose`)."""

    def __init__(self, anchor_scales, anchor_ratios, stride, pre_nms_top_n, post_nms_top_n, nms_iou,
                 std_scaling=1.0, **kwargs):
        super().__init__(**kwargs)
        self.anchor_scales = [float(s) for s in anchor_scales]
        self.anchor_ratios = [float(r) for r in anchor_ratios]  # raw spec ratios (TLT stores sqrt; see P1)
        self.stride = int(stride)
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.post_nms_top_n = int(post_nms_top_n)
        self.nms_iou = float(nms_iou)
        self.std_scaling = float(std_scaling)

    def anchors(self, rpn_logits):
        """Anchors [h*w*A, 4] (pixels) of an RPN output [B, h, w, A]: the one anchor layout of the model."""
        shape = tf.shape(rpn_logits)
        return box_ops.anchor_boxes(shape[1], shape[2], self.stride, self.anchor_scales, self.anchor_ratios)

    def propose(self, rpn_logits, rpn_deltas, anchors, image_height, image_width, settings=None):
        """`propose` with `settings` (a ProposalSettings; default this layer's): proposals [B, post_nms_top_n, 4]."""
        pre_nms_top_n, post_nms_top_n, nms_iou = ((settings.pre_nms_top_n, settings.post_nms_top_n, settings.nms_iou)
                                                  if settings else (self.pre_nms_top_n, self.post_nms_top_n,
                                                                    self.nms_iou))
        return propose(rpn_logits, rpn_deltas, anchors, image_height, image_width, pre_nms_top_n, post_nms_top_n,
                       nms_iou, self.std_scaling)

    def call(self, inputs):
        rpn_logits, rpn_deltas, image = inputs
        image_shape = tf.shape(image)
        return self.propose(rpn_logits, rpn_deltas, self.anchors(rpn_logits), image_shape[1], image_shape[2])

    def get_config(self):
        return {**super().get_config(), "anchor_scales": self.anchor_scales, "anchor_ratios": self.anchor_ratios,
                "stride": self.stride, "pre_nms_top_n": self.pre_nms_top_n, "post_nms_top_n": self.post_nms_top_n,
                "nms_iou": self.nms_iou, "std_scaling": self.std_scaling}


@tf.keras.utils.register_keras_serializable(package="frcnn_tf")
class RoiCrop(tf.keras.layers.Layer):
    """[features, rois] -> crops [B*R, pool, pool, C] (see `crop_rois`)."""

    def __init__(self, stride, pool_size, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)
        self.pool_size = int(pool_size)

    def call(self, inputs):
        features, rois = inputs
        return crop_rois(features, rois, self.stride, self.pool_size)

    def get_config(self):
        return {**super().get_config(), "stride": self.stride, "pool_size": self.pool_size}


@tf.keras.utils.register_keras_serializable(package="frcnn_tf")
class PerRoi(tf.keras.layers.Layer):
    """[values [B*R, ...], rois [B, R, 4]] -> values [B, R, ...]."""

    def call(self, inputs):
        values, rois = inputs
        shape = tf.shape(rois)
        return tf.reshape(values, tf.concat([shape[:2], tf.shape(values)[1:]], axis=0))


def detect(rois, probabilities, deltas, image_height, image_width, weights, score_threshold, nms_iou, max_boxes):
    """Second-stage outputs -> final detections (per-class decode, clip, per-class NMS).

    rois [B, R, 4]; probabilities [B, R, C] with background last; deltas [B, R, 4 * (C - 1)].
    Returns boxes [B, K, 4] (pixels, y1 x1 y2 x2), scores [B, K], classes int32 [B, K],
    valid int32 [B] (the first valid[b] rows of image b are detections), K = max_boxes.
    Per-class NMS runs as one NMS over boxes shifted by class * (image size + 1), so
    boxes of different classes never overlap (exportable to ONNX NonMaxSuppression).
    """
    shape = tf.shape(probabilities)
    num_classes = shape[2] - 1
    per_class = tf.reshape(deltas, tf.concat([shape[:2], [num_classes, 4]], axis=0))
    boxes = box_ops.clip(box_ops.decode(per_class, rois[:, :, tf.newaxis, :], weights), image_height, image_width)
    scores = probabilities[..., :-1] * tf.cast(box_ops.area(rois) > 0, probabilities.dtype)[..., tf.newaxis]
    offset = tf.cast(tf.maximum(image_height, image_width) + 1, boxes.dtype)
    class_ids = tf.cast(tf.range(num_classes), boxes.dtype)[tf.newaxis, tf.newaxis, :, tf.newaxis]
    candidates = -1  # R * (C - 1), static where the shapes are (export needs it)
    if rois.shape[1] is not None and probabilities.shape[-1] is not None:
        candidates = rois.shape[1] * (probabilities.shape[-1] - 1)
    shifted = tf.reshape(boxes + class_ids * offset, [shape[0], candidates, 1, 4])
    kept, scores, _, valid = tf.image.combined_non_max_suppression(
        shifted, tf.reshape(scores, [shape[0], candidates, 1]), max_output_size_per_class=max_boxes,
        max_total_size=max_boxes, iou_threshold=nms_iou, score_threshold=score_threshold, pad_per_class=False,
        clip_boxes=False)
    # y1 + 0.5 lies in [0.5, H + 0.5], inside (0, offset): the class survives rounding in the division
    # (onnxruntime multiplies by 1 / offset, which put boxes at y1 = 0 one class down)
    classes = tf.floor((kept[..., 0] + 0.5) / offset)
    boxes = kept - classes[..., tf.newaxis] * offset
    valid_rows = tf.range(max_boxes)[tf.newaxis] < valid[:, tf.newaxis]
    boxes = tf.where(valid_rows[..., tf.newaxis], boxes, 0.0)
    return boxes, scores, tf.where(valid_rows, tf.cast(classes, tf.int32), 0), valid


@tf.keras.utils.register_keras_serializable(package="frcnn_tf")
class DetectionOutput(tf.keras.layers.Layer):
    """[rois, probabilities, deltas, image] -> [boxes, scores, classes, valid] (see `detect`)."""

    def __init__(self, regression_weights, score_threshold, nms_iou, max_boxes, **kwargs):
        super().__init__(**kwargs)
        self.regression_weights = [float(w) for w in regression_weights]
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_boxes = int(max_boxes)

    def call(self, inputs):
        rois, probabilities, deltas, image = inputs
        image_shape = tf.shape(image)
        return detect(rois, probabilities, deltas, image_shape[1], image_shape[2], self.regression_weights,
                      self.score_threshold, self.nms_iou, self.max_boxes)

    def get_config(self):
        return {**super().get_config(), "regression_weights": self.regression_weights,
                "score_threshold": self.score_threshold, "nms_iou": self.nms_iou, "max_boxes": self.max_boxes}
