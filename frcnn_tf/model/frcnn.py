"""Faster R-CNN assembly: one flat Keras graph, plus the sub-graphs training needs.

The saved model maps a preprocessed image [B, H, W, C] to
  rois [B, R, 4] (pixels, y1 x1 y2 x2), class probabilities [B, R, C]
  (background last) and per-class deltas [B, R, 4 * (C - 1)] (dy dx dh dw,
  scaled by classifier_regr_std). Layer names follow TLT; pruning, QAT, weight
  loading and export find layers by these names.
"""
import dataclasses

import tensorflow as tf

from frcnn_tf.errors import FrcnnError
from frcnn_tf.model import layers, resnet
from frcnn_tf.proto import input_image_pb2, regularizer_config_pb2
from frcnn_tf.spec.summary import class_names

RPN_STRIDE = 16
POSITIVE_FRACTION = 0.25  # share of foreground RoIs per image (hard-coded in TLT)


@dataclasses.dataclass(frozen=True)
class ProposalSettings:
    """RPN proposal counts and NMS overlap for one use (training, evaluation, inference)."""

    pre_nms_top_n: int
    post_nms_top_n: int
    nms_iou: float

    @classmethod
    def of(cls, config):
        """From any config with rpn_pre_nms_top_N / rpn_nms_max_boxes / rpn_nms_overlap_threshold."""
        return cls(config.rpn_pre_nms_top_N, config.rpn_nms_max_boxes, config.rpn_nms_overlap_threshold)


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


def override_regularizers(model, regularizer, custom_objects):
    """`model` rebuilt with the spec's regularisers, for retraining a pruned model.

    As TLT: an L1/L2 `type` replaces the kernel regulariser of every conv/dense
    layer, NO_REG keeps the saved ones. The BN gamma sparsity term is always the
    spec's (weight 0 removes it), so a model pruned after sparsity training retrains
    without it.
    """
    kernel, gamma = kernel_regularizer(regularizer), gamma_regularizer(regularizer)
    config = model.get_config()
    for layer in config["layers"]:
        layer_config = layer["config"]
        if kernel is not None and "kernel_regularizer" in layer_config:
            layer_config["kernel_regularizer"] = tf.keras.regularizers.serialize(kernel)
        if layer["class_name"] == "BatchNormalization":
            layer_config["gamma_regularizer"] = tf.keras.regularizers.serialize(gamma) if gamma else None
    rebuilt = tf.keras.Model.from_config(config, custom_objects=custom_objects)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def input_shape(image_config):
    """(H, W, C) of the network input; H and W are None for size_min specs."""
    channels = 3 if image_config.image_type == input_image_pb2.RGB else 1
    if image_config.WhichOneof("image_size_config") == "size_height_width":
        return image_config.size_height_width.height, image_config.size_height_width.width, channels
    return None, None, channels


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
    settings = ProposalSettings.of(training)
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


def regression_weights(training_config):
    """classifier_regr_std as (y, x, h, w), the order of the delta vectors."""
    stds = training_config.classifier_regr_std
    return stds["y"], stds["x"], stds["h"], stds["w"]


def find_layer(model, name):
    """The layer called `name`, or the QAT wrapper `quant_<name>` around it."""
    names = {layer.name for layer in model.layers}
    return model.get_layer(name if name in names else f"quant_{name}")


class FasterRCNN:
    """A Faster R-CNN Keras model and the sub-graphs that share its layers.

    backbone_rpn: image -> (features, rpn logits [B, h, w, A], rpn deltas [B, h, w, 4A])
    head: RoI crops [N, P, P, C] -> (class logits [N, classes], deltas [N, 4 * (classes - 1)])
    """

    def __init__(self, model):
        self.model = model
        crop = model.get_layer("roi_pooling")
        # A layer shared with another graph (tfmot's QAT clone) has one node per graph; this
        # model's is the last.
        features, crop_output = crop.get_input_at(-1)[0], crop.get_output_at(-1)
        self.backbone_rpn = tf.keras.Model(model.input, [features, find_layer(model, "rpn_out_class").output,
                                                         find_layer(model, "rpn_out_regress").output])
        classifier = find_layer(model, "dense_class_td")
        self.head = tf.keras.Model(crop_output, [classifier.output, find_layer(model, "dense_regress_td").output])
        self.proposal = model.get_layer("proposal")
        self.crop_size = crop.pool_size
        self.num_classes = getattr(classifier, "layer", classifier).units

    def detection_model(self, weights, settings, score_threshold, nms_iou, max_boxes):
        """image -> [boxes [B, K, 4], scores [B, K], classes [B, K], valid [B]]: the deployable graph.

        settings: ProposalSettings for the RPN; the rest configure the final per-class NMS.
        """
        self.configure_proposals(settings)
        rois, probabilities, deltas = self.model.outputs
        outputs = layers.DetectionOutput(weights, score_threshold, nms_iou, max_boxes, name="detections",
                                         dtype="float32")([rois, probabilities, deltas, self.model.input])
        return tf.keras.Model(self.model.input, outputs, name=f"{self.model.name}_detector")

    def configure_proposals(self, settings):
        """Sets the proposal counts/NMS of the saved graph (weights are unaffected)."""
        self.proposal.pre_nms_top_n = settings.pre_nms_top_n
        self.proposal.post_nms_top_n = settings.post_nms_top_n
        self.proposal.nms_iou = settings.nms_iou
