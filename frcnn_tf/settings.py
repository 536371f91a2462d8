"""Small frozen, keyword-only settings objects: the one boundary between spec protos and the code.

Each object is built once from a validated spec section (`from_spec` / `from_section`) and
passed down; the layers, targets and detectors below read these, never the proto.
"""
import dataclasses

from frcnn_tf.spec.derived import regression_weights

POSITIVE_FRACTION = 0.25  # share of foreground RoIs per image (hard-coded in TLT)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProposalSettings:
    """RPN proposals for one use (training, evaluation, inference): top-k before NMS, kept after, NMS IoU."""

    pre_nms_top_n: int
    post_nms_top_n: int
    nms_iou: float

    @classmethod
    def from_section(cls, config):
        """From training_config, evaluation_config or inference_config (rpn_pre_nms_top_N, ...)."""
        return cls(pre_nms_top_n=config.rpn_pre_nms_top_N, post_nms_top_n=config.rpn_nms_max_boxes,
                   nms_iou=config.rpn_nms_overlap_threshold)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RpnSampling:
    """Anchor labelling for the RPN loss: IoU bounds, anchors per image, delta weights (y, x, h, w)."""

    min_overlap: float
    max_overlap: float
    mini_batch: int
    box_weights: tuple = (1.0, 1.0, 1.0, 1.0)

    @classmethod
    def from_spec(cls, spec):
        training = spec.training_config
        scaling = training.std_scaling or 1.0  # the Proposal layer divides predictions by std_scaling
        return cls(min_overlap=training.rpn_min_overlap, max_overlap=training.rpn_max_overlap,
                   mini_batch=training.rpn_mini_batch, box_weights=(scaling,) * 4)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoiSampling:
    """RoI sampling for the second stage: IoU bounds, RoIs per image, foreground share, GT boxes as RoIs,
    delta weights (y, x, h, w)."""

    min_overlap: float
    max_overlap: float
    mini_batch: int
    positive_fraction: float = POSITIVE_FRACTION
    gt_as_roi: bool = False
    box_weights: tuple = (1.0, 1.0, 1.0, 1.0)

    @classmethod
    def from_spec(cls, spec):
        training = spec.training_config
        return cls(min_overlap=training.classifier_min_overlap, max_overlap=training.classifier_max_overlap,
                   mini_batch=spec.model_config.roi_mini_batch, gt_as_roi=training.gt_as_roi,
                   box_weights=tuple(regression_weights(training)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectionSettings:
    """The deployable graph of one section: its proposals and the final per-class NMS.

    box_weights: classifier_regr_std (y, x, h, w) the model was trained with.
    """

    proposals: ProposalSettings
    score_threshold: float
    nms_iou: float
    max_boxes: int
    box_weights: tuple

    @classmethod
    def from_section(cls, section, box_weights):
        """From evaluation_config or inference_config."""
        return cls(proposals=ProposalSettings.from_section(section), score_threshold=section.object_confidence_thres,
                   nms_iou=section.classifier_nms_overlap_threshold, max_boxes=section.classifier_nms_max_boxes,
                   box_weights=tuple(box_weights))
