"""Validation of parsed specs (TLT's `validate_spec` rules, with clearer errors).

Each check names the offending field; the error is located in the spec text.
Sections that are absent are not checked here: the command that needs a
section asks for it with `require_section`.
Effective defaults that TLT substitutes (`0 means 1`) are written into the
message, so later code reads one value.
"""

from absl import logging

from frcnn_tf.proto import input_image_pb2, regularizer_config_pb2
from frcnn_tf.spec.derived import CHECKPOINT_NAME

# Backbone strings TLT/TAO accept; frcnn_tf builds the ones in IMPLEMENTED_ARCHS.
KNOWN_ARCHS = (
    [f"resnet:{n}" for n in (10, 18, 34, 50, 101)]
    + ["resnet101", "vgg16", "vgg:16", "vgg:19", "googlenet", "mobilenet_v1", "mobilenet_v2"]
    + ["darknet:19", "darknet:53"]
    + [f"efficientnet:b{n}" for n in range(8)]
)
IMPLEMENTED_ARCHS = [f"resnet:{n}" for n in (10, 18, 34, 50, 101)]
_FREEZABLE_BLOCKS = {
    "resnet": range(0, 4), "vgg": range(1, 6), "googlenet": range(0, 8),
    "mobilenet_v1": range(12), "mobilenet_v2": range(14), "darknet": range(6), "efficientnet": range(8),
}
# TLT requires 160 px; frcnn_tf allows smaller inputs (tests train at 128x192).
MIN_IMAGE_SIDE = 32


class _Checker:
    """Raises the first failed check as a located SpecError."""

    def __init__(self, source, prefix=""):
        self.source = source
        self.prefix = prefix

    def at(self, section):
        return _Checker(self.source, f"{self.prefix}{section}.")

    def check(self, ok, field, message, **where):
        if not ok:
            raise self.source.error(self.prefix + field, f"{self.prefix}{field}: {message}", **where)

    def positive(self, message, *fields):
        for field in fields:
            self.check(getattr(message, field) > 0, field, f"must be > 0, got {getattr(message, field):g}")

    def open_unit(self, message, *fields):
        for field in fields:
            value = getattr(message, field)
            self.check(0 < value < 1, field, f"must be in (0, 1), got {value:g}")


def require_section(spec, source, section):
    """Raises a located SpecError unless `spec` has the message field `section`."""
    if not spec.HasField(section):
        raise source.error("", f"the spec has no {section} section, which this command needs")
    return getattr(spec, section)


def arch_family(arch):
    """'resnet:18' -> 'resnet', 'vgg16' -> 'vgg', 'mobilenet_v2' -> 'mobilenet_v2'."""
    name = arch.split(":")[0]
    return name if name.startswith("mobilenet") else name.rstrip("0123456789")


def _input_image(image, c):
    c.check(image.image_type in (input_image_pb2.RGB, input_image_pb2.GRAY_SCALE), "image_type",
            "must be RGB or GRAY_SCALE")
    size = image.WhichOneof("image_size_config")
    c.check(size is not None, "size_height_width", "set size_height_width { height width } or size_min { min }")
    if size == "size_height_width":
        hw = image.size_height_width
        for field in ("height", "width"):
            c.check(getattr(hw, field) >= MIN_IMAGE_SIDE, f"size_height_width.{field}",
                    f"must be at least {MIN_IMAGE_SIDE} pixels, got {getattr(hw, field)}")
    else:
        c.check(image.size_min.min >= MIN_IMAGE_SIDE, "size_min.min",
                f"must be at least {MIN_IMAGE_SIDE} pixels, got {image.size_min.min}")
    order = image.image_channel_order
    allowed = ("bgr", "rgb") if image.image_type == input_image_pb2.RGB else ("l",)
    c.check(order in allowed, "image_channel_order",
            f"must be {' or '.join(repr(a) for a in allowed)} for image_type "
            f"{input_image_pb2.ImageType.Name(image.image_type)}, got '{order}'")
    keys = set(image.image_channel_mean)
    c.check(keys == set(order), "image_channel_mean",
            f"keys must be exactly {sorted(set(order))} to match image_channel_order '{order}', got {sorted(keys)}")
    for key, value in image.image_channel_mean.items():
        c.check(0 <= value <= 255, "image_channel_mean", f"'{key}' must be in [0, 255], got {value:g}", key=key)
    c.positive(image, "image_scaling_factor", "max_objects_num_per_image")


def _model(model, c):
    c.check(model.HasField("input_image_config"), "input_image_config", "is required")
    _input_image(model.input_image_config, c.at("input_image_config"))
    c.check(model.arch in KNOWN_ARCHS, "arch",
            f"unknown backbone '{model.arch}'; use one of {', '.join(IMPLEMENTED_ARCHS)}")
    anchors = model.anchor_box_config
    c.check(len(anchors.scale) > 0, "anchor_box_config.scale", "needs at least one anchor scale")
    c.check(len(anchors.ratio) > 0, "anchor_box_config.ratio", "needs at least one anchor ratio")
    for name in ("scale", "ratio"):
        for i, value in enumerate(getattr(anchors, name)):
            c.check(value > 0, f"anchor_box_config.{name}", f"must be > 0, got {value:g}", index=i)
    c.positive(model, "roi_mini_batch")
    c.check(model.rpn_stride == 16, "rpn_stride", f"must be 16 (the backbone's stride), got {model.rpn_stride}")
    c.check(model.roi_pooling_config.pool_size > 0, "roi_pooling_config.pool_size", "must be > 0")
    c.check(model.dropout_rate >= 0, "dropout_rate", "must be >= 0")
    c.check(model.drop_connect_rate >= 0, "drop_connect_rate", "must be >= 0")
    allowed = _FREEZABLE_BLOCKS.get(arch_family(model.arch), range(0))
    for i, block in enumerate(model.freeze_blocks):
        c.check(block in allowed, "freeze_blocks",  # a float field: 1.0 is block 1, 1.5 and inf are none
                f"{block:g} is not a block of {model.arch}; allowed: {list(allowed)}", index=i)


def _augmentation(aug, model, c):
    image = model.input_image_config
    pre = aug.preprocessing
    if image.WhichOneof("image_size_config") == "size_height_width":
        for field, expected in (("output_image_width", image.size_height_width.width),
                                ("output_image_height", image.size_height_width.height)):
            value = getattr(pre, field)
            c.check(value in (0, expected), f"preprocessing.{field}",
                    f"must equal the model input size {expected} (or be omitted), got {value}")
    # Channels the image files decode to; grayscale models also accept 3 (TAO's
    # default_spec_grayscale.txt does this) and convert after decoding.
    allowed = (0, 3) if image.image_type == input_image_pb2.RGB else (0, 1, 3)
    c.check(pre.output_image_channel in allowed, "preprocessing.output_image_channel",
            f"must be one of {allowed[1:]} for this image_type, got {pre.output_image_channel}")
    for field in ("min_bbox_width", "min_bbox_height"):
        c.check(getattr(pre, field) >= 0, f"preprocessing.{field}", "must be >= 0")
    spatial = aug.spatial_augmentation
    for field in ("hflip_probability", "vflip_probability", "rotate_probability"):
        c.check(0 <= getattr(spatial, field) <= 1, f"spatial_augmentation.{field}", "must be in [0, 1]")
    for field in ("zoom_min", "zoom_max", "translate_max_x", "translate_max_y"):
        c.check(getattr(spatial, field) >= 0, f"spatial_augmentation.{field}", "must be >= 0")
    c.check((spatial.zoom_min or 1) <= (spatial.zoom_max or 1), "spatial_augmentation.zoom_max",
            "must be >= zoom_min")
    color = aug.color_augmentation
    for field in ("color_shift_stddev", "hue_rotation_max", "saturation_shift_max", "contrast_scale_max"):
        c.check(getattr(color, field) >= 0, f"color_augmentation.{field}", "must be >= 0")


def _dataset(dataset, c):
    c.check(len(dataset.data_sources) > 0, "data_sources", "needs at least one data source")
    for i, source in enumerate(dataset.data_sources):
        c.check(source.tfrecords_path != "", "data_sources", "tfrecords_path is empty", index=i)
    c.check(dataset.image_extension.lower() in ("jpg", "jpeg", "png"), "image_extension",
            f"must be jpg, jpeg or png (no dot), got '{dataset.image_extension}'")
    c.check(len(dataset.target_class_mapping) > 0, "target_class_mapping", "is empty; map at least one class")
    for key, value in dataset.target_class_mapping.items():
        c.check(value.lower() != "background", "target_class_mapping",
                "'background' is reserved for the model's background class", key=key)
    if dataset.HasField("validation_data_source"):
        c.check(dataset.validation_data_source.tfrecords_path != "", "validation_data_source.tfrecords_path",
                "is empty")


def _learning_rate(lr, c):
    kind = lr.WhichOneof("lr_config")
    c.check(kind is not None, "", "set soft_start { ... } or step { ... }")
    if kind == "soft_start":
        s = lr.soft_start
        c = c.at("soft_start")
        c.positive(s, "base_lr", "start_lr", "annealing_divider")
        c.check(0 <= s.soft_start < 1, "soft_start", f"must be in [0, 1), got {s.soft_start:g}")
        previous = s.soft_start
        for i, point in enumerate(s.annealing_points):
            c.check(previous < point <= 1, "annealing_points",
                    f"must increase, be after soft_start and at most 1; got {point:g} after {previous:g}", index=i)
            previous = point
    else:
        c = c.at("step")
        c.positive(lr.step, "base_lr", "gamma")
        c.check(0 < lr.step.step_size <= 100, "step_size", "is a percentage of training, in (0, 100]")


def _training(training, c):
    c.positive(training, "batch_size_per_gpu", "num_epochs", "rpn_mini_batch", "rpn_nms_max_boxes", "std_scaling",
               "lambda_rpn_regr", "lambda_rpn_class", "lambda_cls_regr", "lambda_cls_class")
    c.check(0 < training.rpn_min_overlap < training.rpn_max_overlap <= 1, "rpn_min_overlap",
            "needs 0 < rpn_min_overlap < rpn_max_overlap <= 1")
    c.check(0 <= training.classifier_min_overlap < training.classifier_max_overlap <= 1, "classifier_min_overlap",
            "needs 0 <= classifier_min_overlap < classifier_max_overlap <= 1")
    stds = training.classifier_regr_std
    c.check(set(stds) == {"x", "y", "w", "h"}, "classifier_regr_std",
            f"needs exactly the keys x, y, w, h, got {sorted(stds)}")
    for key, value in stds.items():
        c.check(value > 0, "classifier_regr_std", f"'{key}' must be > 0", key=key)
    _rpn_nms(training, c)
    reg = training.regularizer
    if reg.type != regularizer_config_pb2.RegularizerConfig.NO_REG:
        c.check(0 < reg.weight < 1, "regularizer.weight", f"must be in (0, 1) for L1/L2, got {reg.weight:g}")
    c.check(0 <= reg.bn_gamma_l1_weight < 1, "regularizer.bn_gamma_l1_weight",
            f"must be in [0, 1), got {reg.bn_gamma_l1_weight:g}")
    c.check(0 <= reg.bn_gamma_polarization <= 1, "regularizer.bn_gamma_polarization",
            f"must be in [0, 1], got {reg.bn_gamma_polarization:g}")
    c.check(training.optimizer.WhichOneof("optim") is not None, "optimizer", "set adam, sgd or rmsprop")
    _learning_rate(training.learning_rate, c.at("learning_rate"))
    if training.resume_from_model:
        c.check(CHECKPOINT_NAME.search(training.resume_from_model), "resume_from_model",
                "must be a checkpoint named <stem>.epoch<N>.<ext> (as train writes them)")
    if training.HasField("early_stopping"):
        stop = training.early_stopping
        c.check(stop.monitor == "loss", "early_stopping.monitor", f"only 'loss' is supported, got '{stop.monitor}'")
        c.check(stop.min_delta >= 0, "early_stopping.min_delta", "must be >= 0")
        c.check(stop.patience > 0, "early_stopping.patience", "must be > 0")
    if training.checkpoint_interval == 0:
        training.checkpoint_interval = 1
    if training.checkpoint_interval > training.num_epochs:
        logging.warning("checkpoint_interval %d > num_epochs %d: no checkpoint will be saved",
                        training.checkpoint_interval, training.num_epochs)


def _rpn_nms(config, c):
    c.check(0 < config.rpn_nms_max_boxes < config.rpn_pre_nms_top_N, "rpn_nms_max_boxes",
            f"needs 0 < rpn_nms_max_boxes ({config.rpn_nms_max_boxes}) < rpn_pre_nms_top_N "
            f"({config.rpn_pre_nms_top_N})")
    c.open_unit(config, "rpn_nms_overlap_threshold")


def _detection_output(config, c):
    _rpn_nms(config, c)
    c.open_unit(config, "classifier_nms_overlap_threshold", "object_confidence_thres")
    c.positive(config, "classifier_nms_max_boxes")
    if config.batch_size == 0:
        config.batch_size = 1


def _inference(inference, c):
    _detection_output(inference, c)
    c.open_unit(inference, "bbox_visualize_threshold")


def _evaluation(evaluation, c):
    _detection_output(evaluation, c)
    kind = evaluation.WhichOneof("iou_threshold_config")
    c.check(kind is not None, "gt_matching_iou_threshold",
            "set gt_matching_iou_threshold or gt_matching_iou_threshold_range")
    if kind == "gt_matching_iou_threshold":
        c.open_unit(evaluation, "gt_matching_iou_threshold")
    else:
        r = evaluation.gt_matching_iou_threshold_range
        c.check(0 < r.start < r.end <= 1 and 0 < r.step < 1, "gt_matching_iou_threshold_range",
                "needs 0 < start < end <= 1 and 0 < step < 1")
    if evaluation.labels_dump_ir:
        logging.warning("%s: evaluation_config.labels_dump_ir has no effect (a misspelling kept for "
                        "TAO compatibility)", c.source.path)
    if evaluation.validation_period_during_training == 0:
        evaluation.validation_period_during_training = 1


def experiment(spec, source):
    """Validates an Experiment in place (fills TLT's effective defaults)."""
    c = _Checker(source)
    c.check(spec.HasField("model_config"), "model_config", "the spec has no model_config section")
    _model(spec.model_config, c.at("model_config"))
    if spec.HasField("augmentation_config"):
        _augmentation(spec.augmentation_config, spec.model_config, c.at("augmentation_config"))
    if spec.HasField("dataset_config"):
        _dataset(spec.dataset_config, c.at("dataset_config"))
    if spec.HasField("training_config"):
        _training(spec.training_config, c.at("training_config"))
    if spec.HasField("inference_config"):
        _inference(spec.inference_config, c.at("inference_config"))
    if spec.HasField("evaluation_config"):
        _evaluation(spec.evaluation_config, c.at("evaluation_config"))


def conversion(spec, source):
    """Validates a DatasetExportConfig in place (".png" default extension)."""
    c = _Checker(source)
    kind = spec.WhichOneof("convert_config_type")
    c.check(kind is not None, "kitti_config", "the spec has no kitti_config section")
    if kind == "coco_config":
        coco = spec.coco_config
        c = c.at("coco_config")
        c.check(len(coco.img_dir_names) == len(coco.annotation_files) == coco.num_partitions, "num_partitions",
                "needs one img_dir_names and one annotation_files entry per partition")
        c.check(len(coco.num_shards) in (1, coco.num_partitions), "num_shards",
                "give one value, or one per partition")
        return
    kitti = spec.kitti_config
    c = c.at("kitti_config")
    for field in ("root_directory_path", "image_dir_name", "label_dir_name"):
        c.check(getattr(kitti, field) != "", field, "is required")
    c.check(kitti.partition_mode in ("random", "sequence"), "partition_mode",
            f"must be 'random' or 'sequence', got '{kitti.partition_mode}'")
    if kitti.partition_mode == "random":
        c.check(kitti.num_partitions == 2, "num_partitions",
                f"random partitioning makes 2 folds (validation, training); got {kitti.num_partitions}")
        c.check(0 <= kitti.val_split < 100, "val_split", f"is a percentage in [0, 100), got {kitti.val_split:g}")
    else:
        c.check(kitti.kitti_sequence_to_frames_file != "", "kitti_sequence_to_frames_file",
                "is required for partition_mode 'sequence'")
    if not kitti.image_extension:
        kitti.image_extension = ".png"
    c.check(kitti.image_extension.startswith("."), "image_extension",
            f"the KITTI extension includes the dot, e.g. '.png'; got '{kitti.image_extension}'")
