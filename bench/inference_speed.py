#!/usr/bin/env python3
"""Benchmark: CPU inference milliseconds per image of a Keras model and its ONNX exports.

  python bench/inference_speed.py -e SPEC -m MODEL.hdf5 [-m MODEL_fp32.onnx -m MODEL_int8.onnx ...]
Each model (any backend load_detector takes) runs on the same batches of the spec's
validation images (evaluation_config.batch_size); one warm-up batch is not timed.
Prints one JSON object.
"""
import json
import os
import platform
import time

import numpy as np
from absl import app, flags, logging

from frcnn_tf.data.pipeline import InputPipeline
from frcnn_tf.detectors import load_detector
from frcnn_tf.spec import load_experiment_spec

flags.DEFINE_string("experiment_spec", None, "Spec of the model (validation data, NMS).", short_name="e")
flags.DEFINE_multi_string("model", None, "Model files to time (.hdf5/.tlt/.onnx/.engine).", short_name="m")
flags.DEFINE_integer("batches", 4, "Timed batches.")
flags.mark_flags_as_required(["experiment_spec", "model"])
FLAGS = flags.FLAGS


def ms_per_image(detector, batches):
    detector(batches[0])
    start = time.perf_counter()
    for images in batches[1:]:
        detector(images)
    return 1000 * (time.perf_counter() - start) / sum(len(images) for images in batches[1:])


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    spec = load_experiment_spec(FLAGS.experiment_spec)
    data = InputPipeline(spec).dataset(training=False, batch_size=spec.evaluation_config.batch_size)
    batches = [batch["images"].numpy() for batch in data.take(FLAGS.batches + 1)]
    if len(batches) < 2:
        raise SystemExit("error: fewer than two validation batches; lower evaluation_config.batch_size")
    rows = [{"model": path, "ms_per_image": round(ms_per_image(load_detector(path, spec, spec.evaluation_config),
                                                               batches), 1)} for path in FLAGS.model]
    print(json.dumps({"benchmark": "inference_speed", "input": list(np.shape(batches[0])[1:]),
                      "batch_size": len(batches[0]), "rois": spec.evaluation_config.rpn_nms_max_boxes,
                      "cpus": os.cpu_count(), "machine": platform.machine(), "models": rows}, indent=2))


if __name__ == "__main__":
    app.run(main)
