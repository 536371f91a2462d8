#!/usr/bin/env python3
"""Benchmark: each command's milliseconds per image against the model's pure forward, per backend.

  python bench/inference_speed.py -e SPEC -m MODEL.hdf5 [-m MODEL_fp32.onnx -m MODEL_int8.onnx ...]
For each model (any backend load_detector takes), on the spec's validation images:
  forward    the detector alone on preloaded batches (evaluation_config.batch_size; one warm-up
             batch not timed), the floor every command is measured against;
  evaluate   the evaluate command's work (input pipeline, detector, matching, mAP) on the whole
             validation split, with the model already loaded and warmed up;
  inference  the inference command's work (decode, detector, annotated image and KITTI file
             written) on --inference_images validation image files, into a temporary folder;
  calibration (float models) the INT8 calibration pass: export's PTQ pass for a float .onnx
             (onnx_export.calibrate), enable_qat's conversion for a float Keras model
             (trainer.quantize_for_training), on the forward's batches. Per image is the slope
             between the first batch alone and all of them; the rest is its fixed cost (session or
             model build, the thresholds).
Each command's ratio to the forward, each model's mAP, and each model's forward ratio to the
baseline (--baseline, default the first .onnx model: INT8 / FP32 is its inverse). Prints one JSON object.
"""
import functools
import json
import os
import platform
import tempfile
import time

import numpy as np
import onnx
from absl import app, flags, logging

from frcnn_tf import quantize
from frcnn_tf.data.pipeline import InputPipeline
from frcnn_tf.detectors import load_detector
from frcnn_tf.evaluation import evaluate_detector
from frcnn_tf.export import onnx_export
from frcnn_tf.inference import infer_folder
from frcnn_tf.machine import cpu_description, speed_flags
from frcnn_tf.model import checkpoints
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.train.trainer import quantize_for_training

flags.DEFINE_string("experiment_spec", None, "Spec of the model (validation data, NMS).", short_name="e")
flags.DEFINE_multi_string("model", None, "Model files to time (.hdf5/.tlt/.onnx/.engine).", short_name="m")
flags.DEFINE_integer("batches", 4, "Timed batches of the pure forward.")
flags.DEFINE_integer("inference_images", 16, "Validation image files the inference command is timed on.")
flags.DEFINE_string("baseline", None, "Model whose forward the others are compared with (default: the first .onnx).")
flags.mark_flags_as_required(["experiment_spec", "model"])
FLAGS = flags.FLAGS


def ms_per_image(detector, batches):
    detector(batches[0])
    start = time.perf_counter()
    for images in batches[1:]:
        detector(images)
    return 1000 * (time.perf_counter() - start) / sum(len(images) for images in batches[1:])


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def validation_image_paths(pipeline, count):
    """The first `count` validation image files (records that embed their image are skipped)."""
    return [path for path, encoded in pipeline.split_images(training=False) if not encoded][:count]


def calibration_pass(path, spec, batches):
    """(ms per image, fixed seconds) of the model's INT8 calibration pass, or None for a quantized model."""
    if path.endswith(".onnx"):
        proto = onnx.load(path)
        if any(node.op_type == "QuantizeLinear" for node in proto.graph.node):
            return None
        run = functools.partial(onnx_export.calibrate, proto)
    else:
        model = checkpoints.load_model(path)[0]
        if quantize.is_quantized(model):
            return None
        run = functools.partial(quantize_for_training, model, spec)
    _, first = _timed(lambda: run(batches[:1]))
    _, whole = _timed(lambda: run(batches))
    per_image = (whole - first) / sum(len(images) for images in batches[1:])
    return 1000 * per_image, first - per_image * len(batches[0])


def measure(path, spec, batches, image_paths):
    detector = load_detector(path, spec, spec.evaluation_config)
    forward = ms_per_image(detector, batches)
    result, seconds = _timed(lambda: evaluate_detector(spec, detector))
    evaluate = 1000 * seconds / result["images"]
    row = {"model": path, "map": round(result["map"], 4), "forward_ms_per_image": round(forward, 1),
           "evaluate_ms_per_image": round(evaluate, 1), "evaluate_vs_forward": round(evaluate / forward, 2)}
    if image_paths:
        with tempfile.TemporaryDirectory() as folder:
            _, seconds = _timed(lambda: infer_folder(spec, detector, image_paths, os.path.join(folder, "images"),
                                                     os.path.join(folder, "labels"), spec.inference_config))
        inference = 1000 * seconds / len(image_paths)
        row.update(inference_ms_per_image=round(inference, 1), inference_vs_forward=round(inference / forward, 2))
    calibration = calibration_pass(path, spec, batches)
    if calibration:
        per_image, fixed = calibration
        row.update(calibration_ms_per_image=round(per_image, 1), calibration_vs_forward=round(per_image / forward, 2),
                   calibration_fixed_s=round(fixed, 1))
    return row


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    spec = load_experiment_spec(FLAGS.experiment_spec)
    pipeline = InputPipeline(spec)
    data = pipeline.dataset(training=False, batch_size=spec.evaluation_config.batch_size)
    batches = [batch["images"].numpy() for batch in data.take(FLAGS.batches + 1)]
    if len(batches) < 2:
        raise SystemExit("error: fewer than two validation batches; lower evaluation_config.batch_size")
    image_paths = validation_image_paths(pipeline, FLAGS.inference_images)
    rows = [measure(path, spec, batches, image_paths) for path in FLAGS.model]
    baseline = FLAGS.baseline or next((path for path in FLAGS.model if path.endswith(".onnx")), FLAGS.model[0])
    base_ms = next(row["forward_ms_per_image"] for row in rows if row["model"] == baseline)
    for row in rows:
        row["forward_speedup_vs_baseline"] = round(base_ms / row["forward_ms_per_image"], 2)
    print(json.dumps({"benchmark": "inference_speed", "input": list(np.shape(batches[0])[1:]),
                      "batch_size": len(batches[0]), "rois": spec.evaluation_config.rpn_nms_max_boxes,
                      "cpus": os.cpu_count(), "cpu": cpu_description()[0], "cpu_flags": speed_flags(),
                      "machine": platform.machine(), "baseline": baseline, "models": rows}, indent=2))


if __name__ == "__main__":
    app.run(main)
