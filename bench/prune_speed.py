#!/usr/bin/env python3
"""Benchmark pruning: parameters, multiply-accumulates and CPU inference time before/after.

  python bench/prune_speed.py -m MODEL.hdf5 -e SPEC [--thresholds 0.1,0.2,0.4] [--score bn_folded] [--runs 5]
MACs count conv/dense work per image; layers after the RoI crop run once per RoI
(evaluation_config.rpn_nms_max_boxes of them). Prints one JSON object.
"""
import json
import os
import platform
import time

import tensorflow as tf
from absl import app, flags, logging

from frcnn_tf.model.frcnn import FasterRCNN
from frcnn_tf.settings import DetectionSettings
from frcnn_tf.spec.derived import regression_weights
from frcnn_tf.prune import SCORES, PruneOptions, prune_model
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.model import checkpoints

flags.DEFINE_string("model", None, "Trained model (.hdf5).", short_name="m")
flags.DEFINE_string("experiment_spec", None, "Spec; its evaluation_config sets the RoI count.", short_name="e")
flags.DEFINE_list("thresholds", ["0.1", "0.2", "0.4"], "Pruning thresholds (-pth).")
flags.DEFINE_enum("score", "bn_folded", list(SCORES), "Filter score (prune's --score).")
flags.DEFINE_integer("runs", 5, "Timed inference runs (after one warm-up).")
flags.mark_flags_as_required(["model", "experiment_spec"])
FLAGS = flags.FLAGS


def macs(model, rois):
    return FasterRCNN(model).multiply_accumulates(rois)["total"]


def seconds_per_image(model, spec, runs):
    detector = FasterRCNN(model).detection_model(DetectionSettings.from_section(
        spec.evaluation_config, regression_weights(spec.training_config)))
    infer = tf.function(lambda images: detector(images, training=False))
    images = tf.random.normal([1, *model.input_shape[1:]]) * 50
    [t.numpy() for t in infer(images)]
    start = time.perf_counter()
    for _ in range(runs):
        [t.numpy() for t in infer(images)]
    return (time.perf_counter() - start) / runs


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    spec = load_experiment_spec(FLAGS.experiment_spec)
    model, _ = checkpoints.load_model(FLAGS.model)
    rois = spec.evaluation_config.rpn_nms_max_boxes
    base = {"params": model.count_params(), "gmacs": round(macs(model, rois) / 1e9, 2),
            "s_per_image": round(seconds_per_image(model, spec, FLAGS.runs), 3)}
    rows = []
    for threshold in (float(t) for t in FLAGS.thresholds):
        options = PruneOptions(threshold=threshold, score=FLAGS.score)
        pruned, _ = prune_model(model, options, checkpoints.CUSTOM_OBJECTS)
        row = {"threshold": threshold, "params": pruned.count_params(), "gmacs": round(macs(pruned, rois) / 1e9, 2),
               "s_per_image": round(seconds_per_image(pruned, spec, FLAGS.runs), 3)}
        row["params_ratio"] = round(row["params"] / base["params"], 3)
        row["speedup"] = round(base["s_per_image"] / row["s_per_image"], 2)
        rows.append(row)
    print(json.dumps({"benchmark": "prune_speed", "model": FLAGS.model, "input": list(model.input_shape[1:]),
                      "rois": rois, "score": FLAGS.score, "cpus": os.cpu_count(), "machine": platform.machine(),
                      "unpruned": base, "pruned": rows}, indent=2))


if __name__ == "__main__":
    app.run(main)
