#!/usr/bin/env python3
"""Benchmark: training seconds per image and inference seconds per image at 384x1248 on this CPU.

Uses the default spec (TLT settings: 256 RPN anchors and 256 RoIs sampled per image,
12000/2000 training proposals, 6000/300 evaluation proposals) on synthetic images with
a few ground-truth boxes each, so no dataset is needed. Prints one JSON object.
  python bench/train_step.py [--batch_sizes 1,4] [--steps 3]
"""
import json
import os
import pathlib
import platform
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from frcnn_tf import schedules
from frcnn_tf.model.frcnn import build_model
from frcnn_tf.settings import DetectionSettings
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.spec.derived import regression_weights
from frcnn_tf.train.trainer import TrainStep, amp_policy, training_frcnn

REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("spec", str(REPO / "specs" / "frcnn_resnet18_train.txt"), "Experiment spec.")
flags.DEFINE_list("batch_sizes", ["1", "4"], "Training batch sizes to time.")
flags.DEFINE_integer("steps", 3, "Timed steps per measurement (after one warm-up step).")
flags.DEFINE_bool("use_amp", False, "Time bfloat16 mixed precision (the train command's --use_amp).")
FLAGS = flags.FLAGS
TORCH_PEER = {"train_s_per_image": 2.97, "inference_s_per_image": 0.94}


def _batch(batch_size, height, width, rng):
    boxes = np.zeros([batch_size, 100, 4], np.float32)
    classes = -np.ones([batch_size, 100], np.int32)
    for b in range(batch_size):
        for i in range(6):
            y, x = rng.uniform(0, height - 120), rng.uniform(0, width - 200)
            boxes[b, i] = [y, x, y + rng.uniform(30, 120), x + rng.uniform(30, 200)]
            classes[b, i] = i % 3
    return {"images": tf.constant(rng.normal(size=[batch_size, height, width, 3]).astype(np.float32) * 50),
            "boxes": tf.constant(boxes), "classes": tf.constant(classes)}


def _time(function, steps):
    function()  # trace + warm up
    start = time.perf_counter()
    for _ in range(steps):
        function()
    return (time.perf_counter() - start) / steps


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    if FLAGS.use_amp:
        tf.keras.mixed_precision.set_global_policy(amp_policy())
    spec = load_experiment_spec(FLAGS.spec)
    size = spec.model_config.input_image_config.size_height_width
    rng = np.random.default_rng(0)
    frcnn = training_frcnn(build_model(spec), spec)
    optimizer = schedules.build_optimizer(spec.training_config.optimizer,
                                          schedules.build_schedule(spec.training_config.learning_rate, 1000))
    step = TrainStep(spec, frcnn, optimizer, tf.distribute.get_strategy())
    seed = tf.constant([0, 0], tf.int64)
    result = {"benchmark": "train_step", "precision": tf.keras.mixed_precision.global_policy().name,
              "input": f"{size.height}x{size.width}", "arch": spec.model_config.arch,
              "roi_mini_batch": spec.model_config.roi_mini_batch, "cpus": os.cpu_count(),
              "machine": platform.machine(), "torch_peer": TORCH_PEER, "train": [], "inference": []}
    for batch_size in (int(b) for b in FLAGS.batch_sizes):
        batch = _batch(batch_size, size.height, size.width, rng)
        seconds = _time(lambda: step.step(batch, seed)["total"].numpy(), FLAGS.steps)
        result["train"].append({"batch_size": batch_size, "s_per_step": round(seconds, 3),
                                "s_per_image": round(seconds / batch_size, 3)})
    detector = frcnn.detection_model(DetectionSettings.from_section(spec.evaluation_config,
                                                                    regression_weights(spec.training_config)))
    infer = tf.function(lambda images: detector(images, training=False))
    images = _batch(1, size.height, size.width, rng)["images"]
    seconds = _time(lambda: [t.numpy() for t in infer(images)], FLAGS.steps)
    result["inference"].append({"batch_size": 1, "rois": spec.evaluation_config.rpn_nms_max_boxes,
                                "s_per_image": round(seconds, 3)})
    best = min(r["s_per_image"] for r in result["train"])
    result["train_vs_torch_peer"] = round(best / TORCH_PEER["train_s_per_image"], 3)
    result["inference_vs_torch_peer"] = round(seconds / TORCH_PEER["inference_s_per_image"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
