#!/usr/bin/env python3
"""Benchmark: training and inference seconds per image, against the matched torch peer in the same run.

Uses the default spec (TLT settings: 256 RPN anchors and 256 RoIs sampled per image,
12000/2000 training proposals, 6000/300 evaluation proposals) on synthetic images with
a few ground-truth boxes each, so no dataset is needed. For each precision (fp32, and bf16 =
the train command's --use_amp) it times a training step per batch size and one inference
pass, measures this machine's matrix-multiply rate in the same precision, and reports the
fraction of that rate the model reaches (model GFLOP / seconds / rate; a training image
counts 3x the forward at the training RoI count). With --peer PYTHON (or PEER_PYTHON) it
runs ../shared/peer/peer_torchvision.py --head tlt (TLT's model layer for layer, same
threads, --amp for bf16) in the same invocation and reports ours / peer. Prints one JSON object.
Each precision's row also goes to stderr as soon as it is measured. bf16 runs by default only
where the CPU has native bfloat16 (AVX512_BF16 or AMX-BF16).
  python bench/train_step.py [--peer PY] [--precisions fp32,bf16] [--batch_sizes 1,4] [--steps 3]
"""
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from frcnn_tf import schedules
from frcnn_tf.machine import cpu_description, native_bfloat16, speed_flags
from frcnn_tf.model.frcnn import build_model
from frcnn_tf.settings import DetectionSettings
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.spec.derived import regression_weights
from frcnn_tf.train.trainer import TrainStep, amp_policy, training_frcnn

REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("spec", str(REPO / "specs" / "frcnn_resnet18_train.txt"), "Experiment spec.")
flags.DEFINE_list("batch_sizes", ["1", "4"], "Training batch sizes to time.")
flags.DEFINE_list("precisions", None, "fp32 and/or bf16 (bfloat16 mixed precision, --use_amp); default fp32, and\n"
                  "bf16 where the CPU has native bfloat16 (emulated, the peer's bf16 step took over 18 min here).")
flags.DEFINE_integer("steps", 3, "Timed steps per measurement (after one warm-up step).")
flags.DEFINE_integer("threads", os.cpu_count(), "Threads for TensorFlow and for the peer.")
flags.DEFINE_string("peer", os.environ.get("PEER_PYTHON"),
                    "Python of the torch peer's venv (../shared/peer/setup.sh); default $PEER_PYTHON.")
flags.DEFINE_string("peer_dir", os.environ.get("PEER_DIR", str(REPO.parent / "shared" / "peer")),
                    "Folder of peer_torchvision.py; default $PEER_DIR or ../shared/peer.")
FLAGS = flags.FLAGS
MATMUL_SIZE = 2048


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


def matmul_gflops(dtype, steps=10):
    """This machine's square matrix-multiply rate in GFLOP/s (2 n^3 per product), TensorFlow, dtype."""
    a = tf.random.normal([MATMUL_SIZE, MATMUL_SIZE], dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x), tf.float32)))
    return 2 * MATMUL_SIZE ** 3 / _time(lambda: product(a).numpy(), steps) / 1e9


def run_peer(python, peer_dir, size, threads, steps, bf16):
    """peer_torchvision.py --head tlt at batch 1: {'train_s_per_img', 'infer_s_per_img', ...}."""
    command = [python, str(pathlib.Path(peer_dir) / "peer_torchvision.py"), "--head", "tlt",
               "--height", str(size.height), "--width", str(size.width), "--steps", str(steps),
               "--threads", str(threads), "--batch", "1"] + (["--amp"] if bf16 else [])
    logging.info("peer: %s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"error: the peer failed ({' '.join(command)}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1])


def measure(spec, precision, rng):
    """One precision's row: train per batch size, inference, matmul rate and fractions of it."""
    tf.keras.mixed_precision.set_global_policy(amp_policy() if precision == "bf16" else "float32")
    size = spec.model_config.input_image_config.size_height_width
    frcnn = training_frcnn(build_model(spec), spec)
    optimizer = schedules.build_optimizer(spec.training_config.optimizer,
                                          schedules.build_schedule(spec.training_config.learning_rate, 1000))
    step = TrainStep(spec, frcnn, optimizer, tf.distribute.get_strategy())
    seed = tf.constant([0, 0], tf.int64)
    rate = matmul_gflops(tf.bfloat16 if precision == "bf16" else tf.float32)
    train_gflop = 3 * 2 * frcnn.multiply_accumulates(spec.model_config.roi_mini_batch)["total"] / 1e9
    infer_gflop = 2 * frcnn.multiply_accumulates(spec.evaluation_config.rpn_nms_max_boxes)["total"] / 1e9
    row = {"precision": precision, "policy": tf.keras.mixed_precision.global_policy().name,
           "matmul_gflops": round(rate, 1), "train_gflop_per_image": round(train_gflop, 1),
           "inference_gflop_per_image": round(infer_gflop, 1), "train": []}
    for batch_size in (int(b) for b in FLAGS.batch_sizes):
        batch = _batch(batch_size, size.height, size.width, rng)
        seconds = _time(lambda: step.step(batch, seed)["total"].numpy(), FLAGS.steps) / batch_size
        row["train"].append({"batch_size": batch_size, "s_per_image": round(seconds, 3),
                             "fraction_of_matmul_rate": round(train_gflop / seconds / rate, 3)})
    detector = frcnn.detection_model(DetectionSettings.from_section(spec.evaluation_config,
                                                                    regression_weights(spec.training_config)))
    infer = tf.function(lambda images: detector(images, training=False))
    images = _batch(1, size.height, size.width, rng)["images"]
    seconds = _time(lambda: [t.numpy() for t in infer(images)], FLAGS.steps)
    row["inference"] = {"batch_size": 1, "rois": spec.evaluation_config.rpn_nms_max_boxes,
                        "s_per_image": round(seconds, 3),
                        "fraction_of_matmul_rate": round(infer_gflop / seconds / rate, 3)}
    if FLAGS.peer:
        peer = run_peer(FLAGS.peer, FLAGS.peer_dir, size, FLAGS.threads, FLAGS.steps, precision == "bf16")
        by_batch = {r["batch_size"]: r["s_per_image"] for r in row["train"]}
        ours_train = by_batch.get(1, min(by_batch.values()))  # the peer runs batch 1
        row["peer"] = {**peer, "train_fraction_of_matmul_rate": round(train_gflop / peer["train_s_per_img"] / rate, 3),
                       "inference_fraction_of_matmul_rate": round(infer_gflop / peer["infer_s_per_img"] / rate, 3)}
        row["train_vs_peer"] = round(ours_train / peer["train_s_per_img"], 3)
        row["inference_vs_peer"] = round(seconds / peer["infer_s_per_img"], 3)
    return row


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    spec = load_experiment_spec(FLAGS.spec)
    size = spec.model_config.input_image_config.size_height_width
    result = {"benchmark": "train_step", "input": f"{size.height}x{size.width}", "arch": spec.model_config.arch,
              "roi_mini_batch": spec.model_config.roi_mini_batch, "cpus": os.cpu_count(), "threads": FLAGS.threads,
              "cpu": cpu_description()[0], "cpu_flags": speed_flags(), "machine": platform.machine(),
              "rows": []}
    for precision in FLAGS.precisions or (["fp32", "bf16"] if native_bfloat16() else ["fp32"]):
        result["rows"].append(measure(spec, precision, np.random.default_rng(0)))
        print(json.dumps(result["rows"][-1]), file=sys.stderr, flush=True)  # kept if a later row is interrupted
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
