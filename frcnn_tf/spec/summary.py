"""Short human-readable summaries of validated specs (printed by validate_spec)."""
from frcnn_tf.spec import loader, validate
from frcnn_tf.spec.derived import class_names, input_channels


def describe_experiment(spec):
    model = spec.model_config
    image = model.input_image_config
    channels = input_channels(image)
    if image.WhichOneof("image_size_config") == "size_height_width":
        size = f"{channels}x{image.size_height_width.height}x{image.size_height_width.width}"
    else:
        size = f"{channels} channels, shorter side {image.size_min.min}"
    lines = [
        "kind: experiment",
        f"arch: {model.arch}",
        f"input: {size} ({image.image_channel_order})",
        f"anchors: {len(model.anchor_box_config.scale) * len(model.anchor_box_config.ratio)} per position",
    ]
    if spec.HasField("dataset_config"):
        lines.append(f"classes: {', '.join(class_names(spec.dataset_config))}")
    if spec.HasField("training_config"):
        training = spec.training_config
        lines += [
            f"epochs: {training.num_epochs}, batch size per GPU: {training.batch_size_per_gpu}",
            f"optimizer: {training.optimizer.WhichOneof('optim')}, "
            f"lr schedule: {training.learning_rate.WhichOneof('lr_config')}",
            f"QAT: {'on' if training.enable_qat else 'off'}",
        ]
    sections = [f.name for f, _ in spec.ListFields() if f.type == f.TYPE_MESSAGE]
    lines.append(f"sections: {', '.join(sections)}")
    return lines


def describe_conversion(spec):
    kind = spec.WhichOneof("convert_config_type")
    if kind == "coco_config":
        return ["kind: conversion (COCO)", f"partitions: {spec.coco_config.num_partitions}"]
    kitti = spec.kitti_config
    lines = [
        "kind: conversion (KITTI)",
        f"root: {kitti.root_directory_path}",
        f"images: {kitti.image_dir_name}/*{kitti.image_extension}, labels: {kitti.label_dir_name}/*.txt",
        f"partition: {kitti.partition_mode}, folds: {kitti.num_partitions}, shards per fold: {kitti.num_shards or 1}",
    ]
    if kitti.partition_mode == "random":
        lines.append(f"validation split: {kitti.val_split:g}% (fold 0)")
    return lines


def validate_spec_file(path, kind="auto", parse_only=False):
    """Validates a spec file; returns its summary lines. Raises SpecError.

    An experiment spec must name a backbone frcnn_tf builds, unless parse_only (TLT's other
    backbones parse, so their specs can be read and converted)."""
    if kind == "auto":
        kind = loader.detect_kind(path)
    if kind == "conversion":
        return describe_conversion(loader.load_conversion_spec(path))
    spec, source = loader.parse_experiment_spec(path)
    if not parse_only and spec.model_config.arch not in validate.IMPLEMENTED_ARCHS:
        raise source.error("model_config.arch", f"model_config.arch: '{spec.model_config.arch}' is a TLT backbone "
                                                f"frcnn_tf does not build yet; use one of "
                                                f"{', '.join(validate.IMPLEMENTED_ARCHS)}")
    return describe_experiment(spec)
