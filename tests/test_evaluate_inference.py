"""Detection post-processing, evaluate and inference end to end on the real dataset."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REPO
from frcnn_tf.inference import kitti_lines
from frcnn_tf.model import layers
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.train.trainer import train
from kitti_fixtures import small_training_spec


def test_detect_by_hand():
    rois = tf.constant([[[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 40, 40], [0, 0, 0, 0]]], tf.float32)
    probabilities = tf.constant([[[0.7, 0.1, 0.2], [0.6, 0.1, 0.3], [0.1, 0.8, 0.1], [0.9, 0.05, 0.05]]])
    deltas = tf.zeros([1, 4, 8])
    deltas = tf.tensor_scatter_nd_update(deltas, [[0, 2, 6]], [tf.math.log(2.0) * 5])  # roi 2, class 1, dh
    boxes, scores, classes, valid = layers.detect(rois, probabilities, deltas, 100, 100, (10.0, 10.0, 5.0, 5.0),
                                                  score_threshold=0.15, nms_iou=0.5, max_boxes=5)
    assert int(valid[0]) == 2  # roi 1 is suppressed by roi 0 (IoU 0.91); the padding roi has no score
    assert classes.numpy()[0, :2].tolist() == [1, 0] and scores.numpy()[0, :2].tolist() == pytest.approx([0.8, 0.7])
    # roi 2 (centre 30, height 20) with dh = log 2: height 40 -> (10, 20, 50, 40).
    np.testing.assert_allclose(boxes.numpy()[0, 0], [10, 20, 50, 40], atol=1e-4)
    np.testing.assert_allclose(boxes.numpy()[0, 1], [0, 0, 10, 10], atol=1e-5)


def test_kitti_dump_format():
    found = {"boxes": np.array([[10.0, 20.5, 30.25, 40.0], [1, 1, 2, 2]]), "scores": np.array([0.912345678, 0.1]),
             "classes": np.array([1, 0])}
    assert kitti_lines(found, ["green", "red"], 0.5) == [
        "red 0 0 0 20.50 10.00 40.00 30.25 0 0 0 0 0 0 0 0.9123457"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, traffic_light_records, traffic_lights):
    tmp = tmp_path_factory.mktemp("trained")
    path = small_training_spec(tmp / "spec.txt", traffic_light_records, traffic_lights, tmp / "m" / "frcnn.hdf5",
                               extra=[("  batch_size: 1\n  validation_period", "  batch_size: 4\n  validation_period")])
    result = train(load_experiment_spec(path), max_steps_per_epoch=4)
    assert 0.0 <= result["history"][0]["validation_map"] <= 1.0  # validation_period_during_training: 1
    return path, result["checkpoints"][0], tmp


def _run(script, *args):
    return subprocess.run([sys.executable, str(REPO / "bin" / script), *args], capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_evaluate_cli_writes_report_and_plot(trained):
    path, checkpoint, tmp = trained
    result = _run("evaluate.py", "-e", path, "-m", checkpoint, "-r", str(tmp / "eval"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["class", "AP"] and [line.split()[0] for line in lines[1:5]] == [
        "green", "red", "yellow", "mAP"]
    report = json.load(open(tmp / "eval" / "frcnn.epoch1_evaluation.json"))
    assert report["images"] == 77 and set(report["ap"]) == {"green", "red", "yellow"}
    assert 0.0 <= report["map"] <= 1.0 and report["method"] == "area"
    with Image.open(tmp / "eval" / "frcnn.epoch1_pr_curve.png") as plot:
        assert plot.size == (640, 480)


@pytest.mark.slow
def test_inference_cli_writes_images_and_labels(trained, traffic_lights):
    path, checkpoint, tmp = trained
    images = tmp / "images"
    images.mkdir()
    for name in sorted(os.listdir(traffic_lights / "images"))[:3]:
        (images / name).write_bytes((traffic_lights / "images" / name).read_bytes())
    args = ["-e", path, "-m", checkpoint, "-i", str(images), "-o", str(tmp / "out"), "-l", str(tmp / "labels")]
    spec_text = open(path).read().replace("bbox_visualize_threshold: 0.6", "bbox_visualize_threshold: 0.01")
    open(path, "w").write(spec_text)
    result = _run("inference.py", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(tmp / "out")) == sorted(os.listdir(images))
    for name in os.listdir(images):
        with Image.open(images / name) as original, Image.open(tmp / "out" / name) as annotated:
            assert original.size == annotated.size
            width, height = original.size
        for line in open(tmp / "labels" / (os.path.splitext(name)[0] + ".txt")).read().splitlines():
            fields = line.split()
            assert len(fields) == 16 and fields[0] in ("green", "red", "yellow")
            x1, y1, x2, y2 = map(float, fields[4:8])
            assert 0 <= x1 <= x2 <= width + 0.01 and 0 <= y1 <= y2 <= height + 0.01 and float(fields[15]) >= 0.01
    again = _run("inference.py", *args)
    assert again.returncode == 1 and "pass --overwrite" in again.stderr
    assert _run("inference.py", *args, "--overwrite").returncode == 0
