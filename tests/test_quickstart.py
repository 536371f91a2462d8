"""The main job end to end at a tiny size, on generated sample data."""
import pytest
import json
import re
import os

import numpy as np
import onnx

from frcnn_tf import sample_data
from frcnn_tf.machine import cpu_description, native_bfloat16, speed_flags
from frcnn_tf.quickstart import (QuickstartOptions, derive_specs, fold_classes, format_summary, parse_class_map,
                                 run_name, run_quickstart)
from frcnn_tf.spec import load_experiment_spec


def test_sample_data_is_deterministic_and_labelled(tmp_path):
    first = sample_data.generate(str(tmp_path / "a"), num_images=5, seed=3)
    second = sample_data.generate(str(tmp_path / "b"), num_images=5, seed=3)
    assert first == second and sum(first.values()) >= 5
    for name in ("000000", "000004"):
        assert (tmp_path / "a" / "images" / f"{name}.jpg").read_bytes() == (
            tmp_path / "b" / "images" / f"{name}.jpg").read_bytes()
        for line in (tmp_path / "a" / "labels" / f"{name}.txt").read_text().splitlines():
            fields = line.split()
            assert len(fields) == 15 and fields[0] in sample_data.CLASSES
            x1, y1, x2, y2 = map(float, fields[4:8])
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 192
    assert (tmp_path / "a" / "images" / "000000.jpg").read_bytes() != sample_data_image(tmp_path, seed=4)


@pytest.mark.slow
def test_whole_workflow_at_tiny_size(tmp_path):
    options = QuickstartOptions(num_images=24, image_height=96, image_width=160, epochs=1, qat_epochs=1, batch_size=2,
                                roi_mini_batch=16, eval_rois=16, max_steps_per_epoch=2, calibration_batches=2)
    rows, artifacts = run_quickstart(str(tmp_path), options=options)
    stages = [row["stage"] for row in rows]
    detail = {row["stage"]: row.get("detail", "") for row in rows}
    # A model of 2 steps is all but untrained: the onnxruntime layout's check may refuse it (seen on AVX-512
    # with ResNet10: 5.6 % of the TensorRT form's detections shared). The optional CPU layout's refusal is a
    # row; the workflow goes on.
    cpu_refused = detail["export ONNX QAT INT8 CPU"].startswith("refused: the onnxruntime INT8 graph diverges")
    assert stages == ["generate sample data", "dataset_convert", "fit anchors", "train", "evaluate (Keras FP32)",
                      "prune", "retrain pruned model with QAT", "evaluate (Keras QAT)",
                      "export ONNX FP32", "evaluate (onnxruntime FP32)",
                      "export ONNX FP16", "evaluate (onnxruntime FP16)",
                      "export ONNX INT8", "evaluate (onnxruntime INT8)",
                      "export ONNX QAT INT8", "evaluate (onnxruntime QAT INT8)",
                      "export ONNX QAT INT8 CPU"] + ["evaluate (onnxruntime QAT INT8 CPU)"] * (not cpu_refused) + [
                      "TensorRT engine (INT8)", "inference"]
    for key in ("model", "pruned model", "QAT model", "ONNX FP32", "ONNX FP16", "ONNX INT8", "ONNX QAT INT8"):
        assert os.path.isfile(artifacts[key]), key
    assert "skipped: TensorRT is not installed" in rows[-2]["detail"]
    spec_names = [f"frcnn_resnet10_{kind}.txt" for kind in ("train", "retrain_qat")]  # named by the default arch
    assert os.path.basename(artifacts["ONNX QAT INT8"]) == "frcnn_resnet10_qat_int8.onnx"
    assert re.fullmatch(r"vs Keras QAT: \d+\.\d% / \d+\.\d% of detections match",
                        detail["evaluate (onnxruntime QAT INT8)"])
    assert detail["evaluate (onnxruntime INT8)"].startswith("vs ONNX FP32: ")
    cpu_graphs = sorted(name for name in os.listdir(tmp_path / "export") if "_cpu" in name)
    if cpu_refused:
        assert "ONNX QAT INT8 CPU" not in artifacts and cpu_graphs == []  # nothing written
    else:
        assert detail["evaluate (onnxruntime QAT INT8 CPU)"].startswith("vs ONNX QAT INT8: ")
        assert cpu_graphs == ["frcnn_resnet10_qat_int8_cpu.onnx", "frcnn_resnet10_qat_int8_cpu_evaluation.json",
                              "frcnn_resnet10_qat_int8_cpu_pr_curve.png"]  # and no TensorRT cache
    # The float training pushes channels to zero for pruning; the pruned model retrains without it.
    regularizers = [load_experiment_spec(os.path.join(artifacts["specs"], name)).training_config.regularizer
                    for name in spec_names]
    assert (regularizers[0].bn_gamma_l1_weight, regularizers[0].bn_gamma_polarization) == (
        np.float32(options.sparsity_weight), 1.0)
    assert regularizers[1].bn_gamma_l1_weight == 0
    # The from-scratch recipe: ground-truth boxes join the proposals, 16 RoIs per image.
    for name in spec_names:
        spec = load_experiment_spec(os.path.join(artifacts["specs"], name))
        assert spec.training_config.gt_as_roi and spec.model_config.roi_mini_batch == 16
        assert spec.model_config.arch == "resnet:10"
    # Both specs train with the fitted anchor scales the summary names.
    scales = [list(load_experiment_spec(os.path.join(artifacts["specs"], name)).model_config.anchor_box_config.scale)
              for name in spec_names]
    assert scales[0] == scales[1]
    assert detail["fit anchors"].startswith(f"scales {' '.join(f'{v:.4g}' for v in scales[0])}: ")
    onnx.checker.check_model(onnx.load(artifacts["ONNX FP32"]))
    keras_map = next(r["map"] for r in rows if r["stage"] == "evaluate (Keras FP32)")
    onnx_map = next(r["map"] for r in rows if r["stage"] == "evaluate (onnxruntime FP32)")
    assert abs(keras_map - onnx_map) < 1e-3
    report = json.load(open(artifacts["model"].replace(".hdf5", "_evaluation.json")))
    assert set(report["ap"]) == set(sample_data.CLASSES)
    assert len(os.listdir(os.path.join(artifacts["inference"], "labels"))) == 8
    lines = format_summary(rows, artifacts)
    assert lines[0].split()[:2] == ["stage", "seconds"] and any("ONNX FP32:" in line for line in lines)
    assert np.isfinite([row["seconds"] for row in rows]).all()


def sample_data_image(tmp_path, seed):
    sample_data.generate(str(tmp_path / f"seed{seed}"), num_images=1, seed=seed)
    return (tmp_path / f"seed{seed}" / "images" / "000000.jpg").read_bytes()


@pytest.mark.parametrize("flags, native", [("fpu avx2 fma avx512f avx512_vnni", False),
                                           ("fpu avx512f avx512_bf16 avx512_vnni", True),
                                           ("fpu avx512f amx_bf16 amx_tile amx_int8", True),
                                           ("fpu avx2 fma", False)])
def test_native_bfloat16_reads_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert native_bfloat16(str(cpuinfo)) is native
    assert native_bfloat16(str(tmp_path / "missing")) is False
    assert cpu_description(str(cpuinfo)) == ("X", set(flags.split()))
    assert speed_flags(str(cpuinfo)) == [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                                                     "amx_tile", "amx_bf16", "amx_int8") if f in flags.split()]


def test_class_map_folds_the_traffic_light_classes_first_match_wins(tmp_path):
    class_map = parse_class_map(" Red*=red, green*=green,yellow*=yellow,,greenleft=never ")
    assert class_map == (("red*", "red"), ("green*", "green"), ("yellow*", "yellow"), ("greenleft", "never"))
    classes = ["green", "greenleft", "red", "redpeople", "yellowtime", "car"]
    assert fold_classes(classes, class_map) == {"green": "green", "greenleft": "green", "red": "red",
                                                "redpeople": "red", "yellowtime": "yellow", "car": "car"}
    assert fold_classes(classes, ()) == {name: name for name in classes}
    for bad in ("red*", "=red", "red*="):
        with pytest.raises(ValueError, match="PATTERN=CLASS"):
            parse_class_map(bad)
    options = QuickstartOptions(class_map=(("red*", "red"), ("green*", "green")))
    _, train_spec, _ = derive_specs(str(tmp_path), str(tmp_path / "data"), options, ["green", "greenleft", "red"])
    mapping = load_experiment_spec(train_spec).dataset_config.target_class_mapping
    assert dict(mapping) == {"green": "green", "greenleft": "green", "red": "red"}


def test_qat_fine_tunes_at_a_tenth_of_the_learning_rate_the_float_training_ended_with(tmp_path):
    _, train_spec, qat_spec = derive_specs(str(tmp_path), str(tmp_path / "data"), QuickstartOptions(), ["a"])
    float_schedule = load_experiment_spec(train_spec).training_config.learning_rate.soft_start
    qat = load_experiment_spec(qat_spec).training_config
    # 0.01, annealed twice by 10 (at 0.8 and 0.9 of the run): 0.0001; QAT a tenth of it
    assert (float_schedule.base_lr, list(float_schedule.annealing_points), float_schedule.annealing_divider) == (
        pytest.approx(0.01), [pytest.approx(0.8), pytest.approx(0.9)], 10.0)
    assert qat.learning_rate.soft_start.base_lr == pytest.approx(1e-5)
    assert qat.optimizer.sgd.lr == pytest.approx(1e-5)
    assert qat.learning_rate.soft_start.start_lr == pytest.approx(1e-6)


def test_the_arch_names_the_specs_models_and_exports(tmp_path):
    assert run_name("resnet:10") == "frcnn_resnet10" and run_name("resnet:101") == "frcnn_resnet101"
    options = QuickstartOptions(arch="resnet:18")
    _, train_spec, qat_spec = derive_specs(str(tmp_path), str(tmp_path / "data"), options, ["a"])
    assert (os.path.basename(train_spec), os.path.basename(qat_spec)) == (
        "frcnn_resnet18_train.txt", "frcnn_resnet18_retrain_qat.txt")
    train, qat = load_experiment_spec(train_spec), load_experiment_spec(qat_spec)
    assert train.model_config.arch == qat.model_config.arch == "resnet:18"
    assert os.path.basename(train.training_config.output_model) == "frcnn_resnet18.hdf5"
    assert os.path.basename(qat.training_config.retrain_pruned_model) == "frcnn_resnet18_pruned.hdf5"
    assert os.path.basename(qat.evaluation_config.model) == "frcnn_resnet18_qat.epoch1.hdf5"
