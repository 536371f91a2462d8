"""Faster R-CNN assembly: one flat Keras graph, and the model's forward in training and inference.

The saved model maps a preprocessed image [B, H, W, C] to
  rois [B, R, 4] (pixels, y1 x1 y2 x2), class probabilities [B, R, C]
  (background last) and per-class deltas [B, R, 4 * (C - 1)] (dy dx dh dw,
  scaled by classifier_regr_std). Layer names follow TLT; pruning, QAT, weight
  loading and export find layers by these names. Its Proposal layer holds the
  training proposal settings; `FasterRCNN.detection_model` builds the deployable
  graph of an evaluation/inference section with its own layers (the trained model
  is never changed), and `FasterRCNN.train_outputs` is the training forward.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from frcnn_tf import boxes as box_ops
from frcnn_tf import quantize, schedules, targets
from frcnn_tf.errors import FrcnnError
from frcnn_tf.model import conv_gradients, layers, resnet
from frcnn_tf.proto import regularizer_config_pb2
from frcnn_tf.settings import ProposalSettings
from frcnn_tf.spec.derived import class_names, input_shape

RPN_STRIDE = 16


def _resnet_depth(arch):
    family, _, depth = arch.partition(":")
    if family != "resnet" or not depth.isdigit() or int(depth) not in resnet.REPEATS:
        raise FrcnnError(f"model_config.arch '{arch}' is a TLT backbone frcnn_tf does not build yet; "
                         f"use resnet:10, resnet:18, resnet:34, resnet:50 or resnet:101")
    return int(depth)


def kernel_regularizer(config):
    """The spec's conv/dense kernel regulariser (RegularizerConfig type/weight), or None."""
    kinds = regularizer_config_pb2.RegularizerConfig
    if config.type == kinds.L1:
        return tf.keras.regularizers.L1(config.weight)
    if config.type == kinds.L2:
        return tf.keras.regularizers.L2(config.weight)
    return None


class GammaPolarization(tf.keras.regularizers.Regularizer):
    """weight * (sum |g| - polarization * sum | |g| - mean |g| |) over one BN layer's gamma g [C]."""

    def __init__(self, weight, polarization=0.0):
        self.weight, self.polarization = float(weight), float(polarization)

    def __call__(self, gamma):
        magnitude = tf.abs(gamma)
        spread = tf.reduce_sum(tf.abs(magnitude - tf.reduce_mean(magnitude)))
        return self.weight * (tf.reduce_sum(magnitude) - self.polarization * spread)

    def get_config(self):
        return {"weight": self.weight, "polarization": self.polarization}


def gamma_regularizer(config):
    """The BN gamma sparsity penalty of a RegularizerConfig (bn_gamma_*), or None."""
    if not config.bn_gamma_l1_weight:
        return None
    return GammaPolarization(config.bn_gamma_l1_weight, config.bn_gamma_polarization)


# Registered classes load by their package name; HDF5 optimizer configs name schedules bare.
CUSTOM_OBJECTS = {cls.__name__: cls for cls in (layers.Proposal, layers.RoiCrop, layers.PerRoi, layers.DetectionOutput,
                                                schedules.SoftStartAnnealing, schedules.ContinuousStep,
                                                GammaPolarization)}


def rebuilt(model, edit_layer=None):
    """A new model (new layers) from `model`'s config, each layer entry first passed to `edit_layer`, with
    `model`'s weights. Works for float and QAT models."""
    config = model.get_config()
    for layer in config["layers"]:
        if edit_layer:
            edit_layer(layer)
    with quantize.quantize_scope(CUSTOM_OBJECTS):
        fresh = tf.keras.Model.from_config(config, custom_objects=CUSTOM_OBJECTS)
    for layer in fresh.layers:
        layer.set_weights(model.get_layer(layer.name).get_weights())
    return fresh


def with_proposals(model, proposals):
    """A copy of the Keras model (its current weights) whose Proposal layer uses `proposals`
    (settings.ProposalSettings; a saved model proposes with the training settings)."""
    def use_proposals(layer):
        if layer["name"] == "proposal":
            layer["config"].update(pre_nms_top_n=proposals.pre_nms_top_n,
                                   post_nms_top_n=proposals.post_nms_top_n, nms_iou=proposals.nms_iou)
    return rebuilt(model, use_proposals)


def override_regularizers(model, regularizer):
    """`model` rebuilt with the spec's regularisers, for retraining a pruned model.

    As TLT: an L1/L2 `type` replaces the kernel regulariser of every conv/dense
    layer, NO_REG keeps the saved ones. The BN gamma sparsity term is always the
    spec's (weight 0 removes it), so a model pruned after sparsity training retrains
    without it.
    """
    kernel, gamma = kernel_regularizer(regularizer), gamma_regularizer(regularizer)

    def use_spec_regularizers(layer):
        layer_config = layer["config"]
        if kernel is not None and "kernel_regularizer" in layer_config:
            layer_config["kernel_regularizer"] = tf.keras.regularizers.serialize(kernel)
        if layer["class_name"] == "BatchNormalization":
            layer_config["gamma_regularizer"] = tf.keras.regularizers.serialize(gamma) if gamma else None
    return rebuilt(model, use_spec_regularizers)


def build_model(spec):
    """A new Faster R-CNN Keras model for a validated experiment spec (proposals: training settings)."""
    model_config, training = spec.model_config, spec.training_config
    depth = _resnet_depth(model_config.arch)
    factory = resnet.LayerFactory(model_config.use_bias, kernel_regularizer(training.regularizer),
                                  model_config.freeze_bn, [int(b) for b in model_config.freeze_blocks],
                                  gamma_regularizer(training.regularizer))
    num_classes = len(class_names(spec.dataset_config))
    anchors = model_config.anchor_box_config
    num_anchors = len(anchors.scale) * len(anchors.ratio)
    regularizer = factory.regularizer

    image = tf.keras.Input(input_shape(model_config.input_image_config), name="input_image")
    features = resnet.backbone(image, factory, depth, model_config.use_pooling, model_config.all_projections)
    rpn = tf.keras.layers.Conv2D(512, 3, padding="same", activation="relu", kernel_regularizer=regularizer,
                                 name="rpn_conv1")(features)
    rpn_logits = tf.keras.layers.Conv2D(num_anchors, 1, kernel_regularizer=regularizer, name="rpn_out_class")(rpn)
    rpn_deltas = tf.keras.layers.Conv2D(4 * num_anchors, 1, kernel_regularizer=regularizer,
                                        name="rpn_out_regress")(rpn)
    settings = ProposalSettings.from_section(training)
    rois = layers.Proposal(anchors.scale, anchors.ratio, RPN_STRIDE, settings.pre_nms_top_n,
                           settings.post_nms_top_n, settings.nms_iou, training.std_scaling or 1.0,
                           name="proposal", dtype="float32")([rpn_logits, rpn_deltas, image])
    pooling = model_config.roi_pooling_config
    crop = pooling.pool_size * (2 if pooling.pool_size_2x else 1)
    pooled = layers.RoiCrop(RPN_STRIDE, crop, name="roi_pooling", dtype="float32")([features, rois])
    x = resnet.block(pooled, factory, depth, 4, 2 if pooling.pool_size_2x else 1, model_config.all_projections)
    x = tf.keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    class_logits = tf.keras.layers.Dense(num_classes, kernel_regularizer=regularizer, name="dense_class_td")(x)
    deltas = tf.keras.layers.Dense(4 * (num_classes - 1), kernel_regularizer=regularizer,
                                   name="dense_regress_td")(x)
    # Box math, crops and outputs stay float32 under a mixed-precision policy.
    probabilities = tf.keras.layers.Softmax(name="class_probabilities", dtype="float32")(class_logits)
    outputs = [rois, layers.PerRoi(name="rcnn_class", dtype="float32")([probabilities, rois]),
               layers.PerRoi(name="rcnn_regress", dtype="float32")([deltas, rois])]
    return tf.keras.Model(image, outputs, name=f"frcnn_{model_config.arch.replace(':', '_')}")


def find_layer(model, name):
    """The layer called `name`, or the QAT wrapper `quant_<name>` around it."""
    names = {layer.name for layer in model.layers}
    return model.get_layer(name if name in names else f"quant_{name}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainOutputs:
    """The training forward's predictions and targets for one batch of B images.

    rpn_logits [B, N] and rpn_deltas [B, N, 4] per anchor, rpn_labels int32 [B, N] (1, 0, -1
    ignored) and rpn_targets [B, N, 4]; class_logits [B, R, C], deltas [B, R, 4 * (C - 1)] per
    sampled RoI, roi_labels int32 [B, R] (class id, background C - 1, -1 padding) and
    roi_targets [B, R, 4]. All predictions float32.
    Training statistics (float32 scalars, no gradient): proposal_recall, the share of the batch's
    ground-truth boxes that a proposal overlaps with IoU >= 0.5 (GT boxes added as RoIs not
    counted), and foreground_rois, the foreground RoIs sampled per image.
    """

    rpn_logits: tf.Tensor
    rpn_deltas: tf.Tensor
    rpn_labels: tf.Tensor
    rpn_targets: tf.Tensor
    class_logits: tf.Tensor
    deltas: tf.Tensor
    roi_labels: tf.Tensor
    roi_targets: tf.Tensor
    proposal_recall: tf.Tensor
    foreground_rois: tf.Tensor


class FasterRCNN:
    """A Faster R-CNN Keras model, its training forward and its deployable graph.

    backbone_rpn: image -> (features, rpn logits [B, h, w, A], rpn deltas [B, h, w, 4A])
    head: RoI crops [N, P, P, C] -> (class logits [N, classes], deltas [N, 4 * (classes - 1)])
    Training settings (settings.ProposalSettings, RpnSampling, RoiSampling; the spec's, given by
    the trainer): train_proposals (default: the saved Proposal layer's), rpn_sampling, roi_sampling.
    """

    def __init__(self, model, *, train_proposals=None, rpn_sampling=None, roi_sampling=None):
        self.model = model
        conv_gradients.use_forward_input_gradients(model)  # the same gradients, faster on CPU
        self.train_proposals, self.rpn_sampling, self.roi_sampling = train_proposals, rpn_sampling, roi_sampling
        crop = model.get_layer("roi_pooling")
        features, crop_output = crop.input[0], crop.output
        self.backbone_rpn = tf.keras.Model(model.input, [features, find_layer(model, "rpn_out_class").output,
                                                         find_layer(model, "rpn_out_regress").output])
        classifier = find_layer(model, "dense_class_td")
        self.head = tf.keras.Model(crop_output, [classifier.output, find_layer(model, "dense_regress_td").output])
        self.proposal = model.get_layer("proposal")
        self.crop = crop
        self.num_classes = getattr(classifier, "layer", classifier).units

    def multiply_accumulates(self, rois):
        """Multiply-accumulates of one image's forward: {'backbone_rpn', 'head_per_roi', 'total'}.

        Conv2D and Dense layers only (output elements x kernel area x input channels, or input x
        output features); the head runs once per RoI, rois of them (an int).
        """
        def count(model):
            total = 0
            for layer in model.layers:
                inner = getattr(layer, "layer", layer)
                if isinstance(inner, tf.keras.layers.Conv2D):
                    _, height, width, out = layer.output.shape
                    total += height * width * out * int(np.prod(inner.kernel_size)) * layer.input.shape[-1]
                elif isinstance(inner, tf.keras.layers.Dense):
                    total += layer.input.shape[-1] * inner.units
            return int(total)
        backbone_rpn, head_per_roi = count(self.backbone_rpn), count(self.head)
        return {"backbone_rpn": backbone_rpn, "head_per_roi": head_per_roi, "total": backbone_rpn + rois * head_per_roi}

    def train_outputs(self, images, gt_boxes, gt_classes, seed, training=True, rows=None):
        """The two-stage forward with sampled targets (see TrainOutputs).

        images [B, H, W, C]; gt_boxes [B, M, 4] (pixels) and gt_classes int32 [B, M] (-1 pads);
        seed int [2] for the stateless sampling; rows (first, total): where these images sit in
        the global batch of a data-parallel step (see frcnn_tf.targets; default the whole batch).
        Proposals use train_proposals and take no gradient; training=False runs BatchNorm in
        inference mode.
        """
        features, rpn_logits, rpn_deltas = [tf.cast(t, tf.float32)
                                            for t in self.backbone_rpn(images, training=training)]
        image_shape = tf.shape(images)
        batch, height, width = image_shape[0], image_shape[1], image_shape[2]
        anchors = self.proposal.anchors(rpn_logits)
        rpn_labels, rpn_targets = targets.rpn_targets(anchors, gt_boxes, gt_classes, height, width,
                                                      self.rpn_sampling, seed, rows)
        proposals = self.proposal.propose(tf.stop_gradient(rpn_logits), tf.stop_gradient(rpn_deltas), anchors,
                                          height, width, self.train_proposals)
        proposal_valid = box_ops.area(proposals) > 0
        covered, total = targets.gt_recall(proposals, proposal_valid, gt_boxes, gt_classes >= 0)
        rois, roi_labels, roi_targets = targets.proposal_targets(
            proposals, proposal_valid, gt_boxes, gt_classes, self.num_classes, self.roi_sampling, seed + [0, 7],
            rows)
        foreground = (roi_labels >= 0) & (roi_labels < self.num_classes - 1)
        crops = layers.crop_rois(features, rois, self.crop.stride, self.crop.pool_size)
        class_logits, deltas = [tf.cast(t, tf.float32) for t in self.head(crops, training=training)]
        mini_batch = self.roi_sampling.mini_batch
        return TrainOutputs(rpn_logits=tf.reshape(rpn_logits, [batch, -1]),
                            rpn_deltas=tf.reshape(rpn_deltas, [batch, -1, 4]), rpn_labels=rpn_labels,
                            rpn_targets=rpn_targets, class_logits=tf.reshape(class_logits, [batch, mini_batch, -1]),
                            deltas=tf.reshape(deltas, [batch, mini_batch, -1]), roi_labels=roi_labels,
                            roi_targets=roi_targets, proposal_recall=covered / tf.maximum(total, 1.0),
                            foreground_rois=tf.reduce_sum(tf.cast(foreground, tf.float32)) / tf.cast(batch, tf.float32))

    def detection_model(self, settings):
        """image -> [boxes [B, K, 4], scores [B, K], classes [B, K], valid [B]]: the deployable graph.

        settings: settings.DetectionSettings (the section's proposals and final per-class NMS). The
        graph is a copy of the model's layers and current weights with the section's proposals.
        """
        model = with_proposals(self.model, settings.proposals)
        rois, probabilities, deltas = model.outputs
        outputs = layers.DetectionOutput(settings.box_weights, settings.score_threshold, settings.nms_iou,
                                         settings.max_boxes, name="detections",
                                         dtype="float32")([rois, probabilities, deltas, model.input])
        return tf.keras.Model(model.input, outputs, name=f"{self.model.name}_detector")
