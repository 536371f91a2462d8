"""Every reference TLT/TAO spec and every project default spec validates unchanged."""
import subprocess
import sys

import pytest

from conftest import REPO
from frcnn_tf.spec.summary import validate_spec_file


def test_every_shared_spec_validates(shared_specs):
    files = sorted(shared_specs.rglob("*.txt"))
    assert len(files) == 67
    kinds = {}
    for path in files:
        lines = validate_spec_file(str(path), parse_only=True)  # vgg, googlenet, ... parse but do not build
        kinds[str(path.relative_to(shared_specs))] = lines[0]
    assert kinds["tao_dataset_convert/kitti_spec.txt"].startswith("kind: conversion")
    assert kinds["tlt3_seed/frcnn_tfrecords_kitti_trainval.txt"].startswith("kind: conversion")
    assert sum(kind == "kind: experiment" for kind in kinds.values()) == 64, kinds


def test_tao_fields_are_kept(shared_specs):
    from frcnn_tf.spec import load_experiment_spec

    spec = load_experiment_spec(str(shared_specs / "tlt3_seed" / "default_spec_resnet18_retrain_spec.txt"))
    assert spec.inference_config.trt_inference.trt_data_type == "int8"
    assert spec.evaluation_config.trt_evaluation.max_workspace_size_MB == 2000
    assert spec.training_config.enable_qat
    spec = load_experiment_spec(str(shared_specs / "tao_faster_rcnn" / "default_spec_resnet18.txt"))
    assert spec.training_config.visualizer.num_images == 3 or not spec.training_config.HasField("visualizer")


@pytest.mark.parametrize("name", ["frcnn_resnet18_train.txt", "frcnn_resnet18_retrain_qat.txt",
                                  "frcnn_resnet18_grayscale.txt", "kitti_convert.txt"])
def test_project_default_specs_validate(name):
    validate_spec_file(str(REPO / "specs" / name))


def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "bin" / "validate_spec.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_summary_and_exit_codes(shared_specs, tmp_path):
    result = _cli("-e", str(shared_specs / "tlt3_seed" / "default_spec_resnet18_retrain_spec.txt"))
    assert result.returncode == 0, result.stderr
    assert "arch: resnet:18" in result.stdout
    assert "input: 3x384x1248 (bgr)" in result.stdout
    assert "classes: car, cyclist, person, background" in result.stdout
    assert "epochs: 12" in result.stdout
    assert "QAT: on" in result.stdout

    result = _cli("--experiment_spec", str(shared_specs / "tao_dataset_convert" / "kitti_random_split.txt"))
    assert result.returncode == 0, result.stderr
    assert "validation split: 20% (fold 0)" in result.stdout

    bad = tmp_path / "bad.txt"
    bad.write_text("random_seed: 1\nmodel_config {\n  arch: 'resnet:18'\n  anchor_box_confg {}\n}\n")
    result = _cli("-e", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}:4:3: unknown field 'anchor_box_confg' in ModelConfig; did you mean 'anchor_box_config'?"]
