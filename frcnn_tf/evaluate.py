"""evaluate: mAP of a model on the validation split, per class, with a report and a PR plot."""
import json
import os

import numpy as np
from absl import logging
from PIL import Image, ImageDraw
from tqdm import tqdm

from frcnn_tf import metrics
from frcnn_tf.data.pipeline import InputPipeline
from frcnn_tf.io_utils import atomic_write_bytes, atomic_write_text

PLOT_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def iou_thresholds(evaluation_config):
    if evaluation_config.WhichOneof("iou_threshold_config") == "gt_matching_iou_threshold_range":
        r = evaluation_config.gt_matching_iou_threshold_range
        return tuple(float(t) for t in np.arange(r.start, r.end, r.step))
    return (float(evaluation_config.gt_matching_iou_threshold),)


def collect(detector, dataset):
    """Runs the detector over a dataset; (detections, ground truths) per image in file pixels."""
    from frcnn_tf.predict import to_file_pixels

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
    """mAP of `detector` on the spec's validation split; returns metrics.evaluate's result + counts."""
    config = spec.evaluation_config
    pipeline = InputPipeline(spec)
    pipeline.check_images(training=False)
    with pipeline.naming_bad_input(training=False):
        detections, ground_truths = collect(detector, pipeline.dataset(training=False, batch_size=config.batch_size))
    method = "voc07" if config.use_voc07_11point_metric else "area"
    result = metrics.evaluate(detections, ground_truths, detector.class_names, iou_thresholds(config), method)
    result["images"] = len(ground_truths)
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


def pr_curve_png(result, size=(640, 480)):
    """A precision-recall plot of every class, as PNG bytes."""
    width, height = size
    left, right, top, bottom = 60, 20, 20, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")

    def point(recall, precision):
        return (left + recall * (width - left - right), height - bottom - precision * (height - top - bottom))

    for tick in np.linspace(0, 1, 6):
        draw.text((point(tick, 0)[0] - 8, height - bottom + 5), f"{tick:.1f}", fill="black")
        draw.text((left - 30, point(0, tick)[1] - 6), f"{tick:.1f}", fill="black")
    draw.text((width / 2 - 20, height - 20), "recall", fill="black")
    draw.text((5, top), "precision", fill="black")
    for index, (name, (recall, precision)) in enumerate(result["pr"].items()):
        color = PLOT_COLORS[index % len(PLOT_COLORS)]
        points = [point(0, 1)] + [point(r, p) for r, p in zip(recall, precision)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        ap = result["ap"][name]
        draw.text((width - right - 170, top + 8 + 14 * index), f"{name}: AP {ap:.3f}", fill=color)
    out = __import__("io").BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def run_evaluate(spec_path, model_path=None, results_dir=None, key=None):
    """Evaluates the model of the spec (or `model_path`); prints the table; returns the result."""
    from frcnn_tf.predict import load_detector
    from frcnn_tf.spec import parse_experiment_spec
    from frcnn_tf.spec.validate import require_section

    spec, source = parse_experiment_spec(spec_path)
    config = require_section(spec, source, "evaluation_config")
    require_section(spec, source, "dataset_config")
    model_path = model_path or config.model
    if not model_path:
        raise source.error("evaluation_config.model", "evaluation_config.model is empty; set it or pass -m")
    detector = load_detector(model_path, spec, config, key)
    result = evaluate_detector(spec, detector)
    for line in format_table(result):
        print(line)
    stem = os.path.splitext(os.path.basename(model_path))[0]
    folder = results_dir or os.path.dirname(os.path.abspath(model_path))
    report = {k: v for k, v in result.items() if k != "pr"}
    report["model"] = model_path
    atomic_write_text(os.path.join(folder, f"{stem}_evaluation.json"), json.dumps(report, indent=2))
    atomic_write_bytes(os.path.join(folder, f"{stem}_pr_curve.png"), pr_curve_png(result))
    logging.info("wrote %s", os.path.join(folder, f"{stem}_evaluation.json"))
    return result
