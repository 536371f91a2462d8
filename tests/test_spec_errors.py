"""Located one-line errors, path expansion and TLT defaults of the spec loader."""
import os

import pytest

from conftest import REPO
from frcnn_tf.errors import SpecError
from frcnn_tf.spec import load_conversion_spec, load_experiment_spec, parse_experiment_spec
from frcnn_tf.spec.derived import class_names

TRAIN_SPEC = (REPO / "specs" / "frcnn_resnet18_train.txt").read_text()


def _write(tmp_path, text, name="spec.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _error(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_experiment_spec(path)
    assert "\n" not in str(info.value)
    return str(info.value).replace(path, "SPEC")


def _line_of(text, needle):
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number, line.index(needle.strip()) + 1  # 1-based column of the token
    raise AssertionError(needle)


@pytest.mark.parametrize("old,new,anchor,message", [
    ("rpn_max_overlap: 0.7", "rpn_max_overlap: 0.2", "rpn_min_overlap:",
     "training_config.rpn_min_overlap: needs 0 < rpn_min_overlap < rpn_max_overlap <= 1"),
    ('arch: "resnet:18"', 'arch: "resnet18x"', 'arch: "resnet18x"',
     "model_config.arch: unknown backbone 'resnet18x'"),
    ("rpn_nms_max_boxes: 2000", "rpn_nms_max_boxes: 20000", "rpn_nms_max_boxes: 20000",
     "training_config.rpn_nms_max_boxes: needs 0 < rpn_nms_max_boxes (20000) < rpn_pre_nms_top_N (12000)"),
    ("batch_size_per_gpu: 8", "batch_size_per_gpu: 0", "batch_size_per_gpu: 0",
     "training_config.batch_size_per_gpu: must be > 0, got 0"),
    ("height: 384", "height: 16", "height: 16",
     "model_config.input_image_config.size_height_width.height: must be at least 32 pixels, got 16"),
    ("output_image_width: 1248", "output_image_width: 1000", "output_image_width: 1000",
     "augmentation_config.preprocessing.output_image_width: must equal the model input size 1248"),
    ("annealing_points: 0.9", "annealing_points: 0.5", "annealing_points: 0.5",
     "training_config.learning_rate.soft_start.annealing_points: must increase"),
    ("image_channel_order: 'bgr'", "image_channel_order: 'l'", "image_channel_order: 'l'",
     "model_config.input_image_config.image_channel_order: must be 'bgr' or 'rgb' for image_type RGB, got 'l'"),
    ("gt_matching_iou_threshold: 0.5", "gt_matching_iou_threshold: 1.5", "gt_matching_iou_threshold: 1.5",
     "evaluation_config.gt_matching_iou_threshold: must be in (0, 1), got 1.5"),
    ("freeze_blocks: 1", "freeze_blocks: 4", "freeze_blocks: 4",
     "model_config.freeze_blocks: 4 is not a block of resnet:18; allowed: [0, 1, 2, 3]"),
    ("freeze_blocks: 1", "freeze_blocks: 3.4028235677973366e+38", "freeze_blocks: 3.4",  # hypothesis found it
     "model_config.freeze_blocks: inf is not a block of resnet:18; allowed: [0, 1, 2, 3]"),
    ("weight: 1e-4", "weight: 1e-4\n    bn_gamma_l1_weight: -0.01", "bn_gamma_l1_weight:",
     "training_config.regularizer.bn_gamma_l1_weight: must be in [0, 1), got -0.01"),
    ("weight: 1e-4", "weight: 1e-4\n    bn_gamma_polarization: 1.5", "bn_gamma_polarization:",
     "training_config.regularizer.bn_gamma_polarization: must be in [0, 1], got 1.5"),
    ("type: L2", "type: L3", " L3",
     "unknown value 'L3' (expected one of NO_REG, L1, L2)"),
    ("  use_pooling: false", "  use_poling: false", "use_poling",
     "unknown field 'use_poling' in ModelConfig; did you mean 'use_pooling'?"),
    ("rpn_mini_batch: 256", "rpn_mini_batch: -3", "-3",
     "rpn_mini_batch: Value out of range: -3"),
])
def test_located_validation_errors(tmp_path, old, new, anchor, message):
    assert old in TRAIN_SPEC
    text = TRAIN_SPEC.replace(old, new, 1)
    line, column = _line_of(text, anchor)
    error = _error(tmp_path, text)
    assert error.startswith(f"SPEC:{line}:{column}: "), error
    assert message in error


def test_map_entry_errors_point_at_the_entry(tmp_path):
    text = TRAIN_SPEC.replace("key: 'w' value: 5.0", "key: 'w' value: -5.0")
    line, _ = _line_of(text, "key: 'w' value: -5.0")
    assert _error(tmp_path, text).startswith(f"SPEC:{line}:3: training_config.classifier_regr_std: 'w' must be > 0")


def test_missing_regression_std_key(tmp_path):
    text = TRAIN_SPEC.replace("  classifier_regr_std { key: 'h' value: 5.0 }\n", "")
    assert "needs exactly the keys x, y, w, h, got ['w', 'x', 'y']" in _error(tmp_path, text)


def test_background_class_is_reserved(tmp_path):
    text = TRAIN_SPEC.replace("key: 'square' value: 'square'", "key: 'square' value: 'background'")
    line, _ = _line_of(text, "value: 'background'")
    assert _error(tmp_path, text).startswith(f"SPEC:{line}:3: dataset_config.target_class_mapping: 'background'")


def test_unclosed_block_and_missing_file(tmp_path):
    assert "a '{' block is not closed" in _error(tmp_path, TRAIN_SPEC[: TRAIN_SPEC.index("  all_projections")])
    with pytest.raises(SpecError, match="cannot read the spec file"):
        load_experiment_spec(str(tmp_path / "missing.txt"))


def test_non_utf8_is_located(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"random_seed: 1\nverbose: tr\xe9\n")
    with pytest.raises(SpecError) as info:
        load_experiment_spec(str(path))
    assert str(info.value) == f"{path}:2:12: the spec is not UTF-8 text; save it as UTF-8"


def test_paths_expand_env_vars_and_resolve_against_the_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("FRCNN_DATA", "/data/root")
    monkeypatch.setenv("KEY", "secret")
    text = (TRAIN_SPEC.replace('"../workdir/tfrecords/sample-fold-*"', '"${FRCNN_DATA}/tfrecords/*"')
            .replace('"../workdir/models/frcnn_resnet18.hdf5"', '"$FRCNN_DATA/m.hdf5"')
            .replace("random_seed: 42", "random_seed: 42\nenc_key: '$KEY'"))
    (tmp_path / "sub").mkdir()
    spec = load_experiment_spec(_write(tmp_path / "sub", text))
    assert spec.dataset_config.data_sources[0].tfrecords_path == "/data/root/tfrecords/*"
    assert spec.training_config.output_model == "/data/root/m.hdf5"
    assert spec.dataset_config.data_sources[0].image_directory_path == os.path.join(str(tmp_path), "workdir",
                                                                                    "sample_data")
    assert spec.enc_key == "secret"
    # Non-path strings are left alone.
    assert spec.model_config.arch == "resnet:18"


def test_tlt_zero_means_one_defaults(tmp_path):
    text = (TRAIN_SPEC.replace("  batch_size: 1\n", "")
            .replace("validation_period_during_training: 1", "validation_period_during_training: 0"))
    spec, _ = parse_experiment_spec(_write(tmp_path, text))
    assert spec.inference_config.batch_size == 1
    assert spec.evaluation_config.batch_size == 1
    assert spec.evaluation_config.validation_period_during_training == 1
    assert spec.training_config.checkpoint_interval == 1
    assert class_names(spec.dataset_config) == ["circle", "square", "triangle", "background"]


def test_conversion_spec_rules(tmp_path):
    base = (REPO / "specs" / "kitti_convert.txt").read_text()
    spec = load_conversion_spec(_write(tmp_path, base))
    assert spec.kitti_config.root_directory_path == os.path.join(str(tmp_path.parent), "workdir", "sample_data") \
        or spec.kitti_config.root_directory_path.endswith("workdir/sample_data")
    for old, new, message in [
        ('partition_mode: "random"', 'partition_mode: "shuffle"', "must be 'random' or 'sequence', got 'shuffle'"),
        ("num_partitions: 2", "num_partitions: 3", "random partitioning makes 2 folds"),
        ("val_split: 20", "val_split: 100", "is a percentage in [0, 100), got 100"),
        ('image_extension: ".jpg"', 'image_extension: "jpg"', "the KITTI extension includes the dot"),
    ]:
        path = _write(tmp_path, base.replace(old, new))
        line, _ = _line_of(base.replace(old, new), new)
        with pytest.raises(SpecError) as info:
            load_conversion_spec(path)
        assert str(info.value).startswith(f"{path}:{line}:3: kitti_config.")
        assert message in str(info.value)
    spec = load_conversion_spec(_write(tmp_path, base.replace('  image_extension: ".jpg"\n', "")))
    assert spec.kitti_config.image_extension == ".png"
