"""mAP of a detector on a spec's validation split (used by evaluate and by validation during training)."""
import numpy as np
from tqdm import tqdm

from frcnn_tf import metrics
from frcnn_tf.data.pipeline import InputPipeline
from frcnn_tf.detectors import to_file_pixels


def iou_thresholds(evaluation_config):
    if evaluation_config.WhichOneof("iou_threshold_config") == "gt_matching_iou_threshold_range":
        r = evaluation_config.gt_matching_iou_threshold_range
        return tuple(float(t) for t in np.arange(r.start, r.end, r.step))
    return (float(evaluation_config.gt_matching_iou_threshold),)


def collect(detector, dataset):
    """Runs the detector over a dataset; (detections, ground truths) per image in file pixels."""
    detections, ground_truths = [], []
    for batch in tqdm(dataset, desc="evaluating", unit="batch", disable=None):
        outputs = detector(batch["images"])
        for i, found in enumerate(outputs):
            scale, size = batch["scale"][i].numpy(), batch["original_size"][i].numpy()
            n = int(batch["num_boxes"][i])
            detections.append(to_file_pixels(found, scale, size))
            ground_truths.append({"boxes": batch["boxes"][i, :n].numpy() / np.tile(scale, 2),
                                  "classes": batch["classes"][i, :n].numpy(),
                                  "difficult": batch["occlusion"][i, :n].numpy() >= 1})  # TLT: occluded = difficult
    return detections, ground_truths


def evaluate_detector(spec, detector):
    """mAP of `detector` on the spec's validation split; returns metrics.evaluate's result + counts and
    the detections per image (file pixels), in the dataset's order."""
    config = spec.evaluation_config
    pipeline = InputPipeline(spec)
    pipeline.check_images(training=False)
    with pipeline.naming_bad_input(training=False):
        detections, ground_truths = collect(detector, pipeline.dataset(training=False, batch_size=config.batch_size))
    method = "voc07" if config.use_voc07_11point_metric else "area"
    result = metrics.evaluate(detections, ground_truths, detector.class_names, iou_thresholds(config), method)
    result["images"] = len(ground_truths)
    result["detections"] = detections
    result["method"] = method
    result["iou_thresholds"] = list(iou_thresholds(config))
    return result


def format_table(result):
    width = max(len(name) for name in result["ap"]) + 2
    lines = [f"{'class':<{width}}{'AP':>8}"]
    for name, ap in result["ap"].items():
        lines.append(f"{name:<{width}}{'n/a' if ap is None else f'{ap:.4f}':>8}")
    lines.append(f"{'mAP':<{width}}{result['map']:>8.4f}")
    lines.append(f"({result['images']} images, AP method {result['method']}, IoU {result['iou_thresholds']})")
    return lines
