"""evaluate: mAP of a model on the validation split, per class, with a report and a PR plot."""
import json
import os

from absl import logging

from frcnn_tf.detectors import load_detector
from frcnn_tf.drawing import pr_curve_png
from frcnn_tf.evaluation import evaluate_detector
from frcnn_tf.io_utils import atomic_write_bytes, atomic_write_text
from frcnn_tf.spec import parse_experiment_spec
from frcnn_tf.spec.validate import require_section

def run_evaluate(spec_path, model_path=None, results_dir=None, key=None):
    """Evaluates the model of the spec (or `model_path`), writes the report and PR plot; returns the result."""
    spec, source = parse_experiment_spec(spec_path)
    config = require_section(spec, source, "evaluation_config")
    require_section(spec, source, "dataset_config")
    model_path = model_path or config.model
    if not model_path:
        raise source.error("evaluation_config.model", "evaluation_config.model is empty; set it or pass -m")
    detector = load_detector(model_path, spec, config, key)
    result = evaluate_detector(spec, detector)
    stem = os.path.splitext(os.path.basename(model_path))[0]
    folder = results_dir or os.path.dirname(os.path.abspath(model_path))
    report = {k: v for k, v in result.items() if k not in ("pr", "detections")}
    report["model"] = model_path
    atomic_write_text(os.path.join(folder, f"{stem}_evaluation.json"), json.dumps(report, indent=2))
    atomic_write_bytes(os.path.join(folder, f"{stem}_pr_curve.png"), pr_curve_png(result))
    logging.info("wrote %s", os.path.join(folder, f"{stem}_evaluation.json"))
    return result
