"""dataset_convert on the real dataset and on defective synthetic input."""
import collections
import glob
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import REPO
from frcnn_tf.data import convert, records
from frcnn_tf.errors import FrcnnError
from frcnn_tf.spec import load_conversion_spec
from kitti_fixtures import kitti_line, make_kitti, write_conversion_spec


def _read_records(prefix):
    out = {}
    for path in sorted(glob.glob(prefix + "-*")):
        if path.endswith(".json"):
            continue
        out[path] = [records.parse_example(r) for r in tf.data.TFRecordDataset(path)]
    return out


def _real_spec(tmp_path, root, val_split=14, shards=4):
    return load_conversion_spec(write_conversion_spec(tmp_path / "convert.txt", root, val_split=val_split,
                                                      shards=shards, extension=".jpg"))


@pytest.fixture(scope="module")
def converted_real(traffic_lights, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    spec = _real_spec(tmp, traffic_lights)
    summary = convert.convert(spec, str(tmp / "out" / "tl"), workers=2)
    return summary, str(tmp / "out" / "tl"), tmp


def test_real_dataset_counts(converted_real, traffic_lights):
    summary, prefix, _ = converted_real
    labels = sorted(glob.glob(str(traffic_lights / "labels" / "*.txt")))
    images = sorted(glob.glob(str(traffic_lights / "images" / "*.jpg")))
    assert len(images) == len(labels) == 557
    expected = collections.Counter()
    for path in labels:
        for line in open(path):
            if line.strip():
                expected[line.split()[0].lower()] += 1
    shards = _read_records(prefix)
    assert len(shards) == 8
    assert sum(len(v) for v in shards.values()) == 557 == summary["total_images"]
    got = collections.Counter(c.decode() for examples in shards.values() for e in examples
                              for c in e[records.OBJECT_CLASS].numpy())
    assert got == expected
    assert summary["total_objects"] == dict(sorted(expected.items()))
    fold0 = sum(len(v) for k, v in shards.items() if "-fold-000-of-002-" in k)
    assert fold0 == 557 * 14 // 100 == 77  # floor(N * val_split / 100)
    assert summary["folds"][0]["role"] == "validation" and summary["folds"][0]["images"] == 77
    assert json.load(open(prefix + "_summary.json")) == summary


def test_real_dataset_record_fields_match_labels(converted_real, traffic_lights):
    _, prefix, _ = converted_real
    example = next(iter(_read_records(prefix).values()))[0]
    stem = example[records.FRAME_ID].numpy().decode().split("/")[-1]
    assert example[records.FRAME_ID].numpy().decode() == f"images/{stem}"
    lines = [line.split() for line in open(traffic_lights / "labels" / f"{stem}.txt") if line.strip()]
    assert [c.decode() for c in example[records.OBJECT_CLASS].numpy()] == [f[0].lower() for f in lines]
    for key, column in ((records.X1, 4), (records.Y1, 5), (records.X2, 6), (records.Y2, 7)):
        assert example[key].numpy().tolist() == pytest.approx([float(f[column]) for f in lines])
    assert example[records.ENCODED].numpy() == b""


def test_same_seed_same_shards_and_other_seed_differs(converted_real, traffic_lights):
    _, prefix, tmp = converted_real
    spec = _real_spec(tmp, traffic_lights)
    again = str(tmp / "again" / "tl")
    convert.convert(spec, again, workers=1)
    first = {os.path.basename(p)[2:]: open(p, "rb").read() for p in glob.glob(prefix + "-*")}
    second = {os.path.basename(p)[2:]: open(p, "rb").read() for p in glob.glob(again + "-*")}
    assert first.keys() == second.keys() and first == second
    other = str(tmp / "other" / "tl")
    convert.convert(spec, other, workers=1, seed=7)
    third = {os.path.basename(p)[2:]: open(p, "rb").read() for p in glob.glob(other + "-*")}
    assert third != first


def _defective(tmp_path):
    good = kitti_line("Car", (5, 5, 30, 30))
    return make_kitti(tmp_path / "kitti", {
        "000000": [good, kitti_line("Pedestrian", (40, 10, 50, 40), occlusion=2)],
        "000001": [good, "Car 0 0 0 1 2 3"],
        "000002": [good.replace("30.00 30.00", "3O.00 30.00")],
        "000003": [kitti_line("Car", (30, 5, 5, 30)), kitti_line("Van", (50, 10, 80, 40))],
        "000004": [],
        "000005": None,
        "000006": [good],
        "000007": [good],
    })


def test_defective_input_is_reported_and_skipped(tmp_path):
    root = _defective(tmp_path)
    (root / "labels" / "999999.txt").write_text(kitti_line("Car", (1, 1, 5, 5)) + "\n")
    data = (root / "images" / "000007.png").read_bytes()
    (root / "images" / "000007.png").write_bytes(data[: len(data) // 2])
    spec = load_conversion_spec(write_conversion_spec(tmp_path / "c.txt", root, val_split=0, shards=1))
    prefix = str(tmp_path / "out" / "kitti")
    summary = convert.convert(spec, prefix, workers=1)
    problems = json.load(open(prefix + "_warnings.json"))
    labels = root / "labels"
    assert f"{labels}/000001.txt:2: expected 15 fields, found 7; line skipped" in problems
    assert f"{labels}/000002.txt:1: field '3O.00' is not a number; line skipped" in problems
    assert any(p.startswith(f"{labels}/000003.txt:1: box (30, 5, 5, 30) has x2 <= x1") for p in problems)
    assert any(p.startswith(f"{labels}/000003.txt:2: box (50, 10, 80, 40) reaches outside") for p in problems)
    assert f"{labels}/000004.txt: empty label file; the image is kept with no objects" in problems
    assert f"{root}/images/000005.png: image has no label file; skipped" in problems
    assert f"{labels}/999999.txt: label file has no image *.png; skipped" in problems
    assert any(p.startswith(f"{root}/images/000007.png: unreadable image") for p in problems)
    assert summary["total_images"] == 6  # 000000-000004 and 000006
    assert summary["total_objects"] == {"car": 3, "pedestrian": 1, "van": 1}  # 000000, 000001, 000006
    # val_split 0: the training data stays fold 001 (TLT would write it as fold 000).
    assert summary["shards"] == [f"{prefix}-fold-001-of-002-shard-00000-of-00001"]
    van = [e for es in _read_records(prefix).values() for e in es if b"van" in e[records.OBJECT_CLASS].numpy()]
    assert van[0][records.X2].numpy().tolist() == [64.0]  # clipped to the 64 px wide image


def test_strict_mode_writes_nothing_and_outputs_are_not_overwritten(tmp_path):
    root = _defective(tmp_path)
    spec = load_conversion_spec(write_conversion_spec(tmp_path / "c.txt", root))
    prefix = str(tmp_path / "out" / "kitti")
    with pytest.raises(FrcnnError, match=r"problems in the input; nothing written"):
        convert.convert(spec, prefix, workers=1, strict=True)
    assert not os.path.exists(os.path.dirname(prefix)) or os.listdir(os.path.dirname(prefix)) == []
    convert.convert(spec, prefix, workers=1)
    before = sorted(os.listdir(os.path.dirname(prefix)))
    with pytest.raises(FrcnnError, match="output exists .* pass --overwrite"):
        convert.convert(spec, prefix, workers=1)
    spec.kitti_config.num_shards = 1
    convert.convert(spec, prefix, workers=1, overwrite=True)
    after = sorted(os.listdir(os.path.dirname(prefix)))
    assert len(before) == 6 and len(after) == 4  # 2x2 shards -> 2x1 shards; stale shards removed
    assert not [name for name in after if ".tmp" in name]


def test_failure_while_writing_leaves_no_shards(tmp_path, monkeypatch):
    root = _defective(tmp_path)
    spec = load_conversion_spec(write_conversion_spec(tmp_path / "c.txt", root))
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    real = records.make_example
    monkeypatch.setattr(records, "make_example", failing)
    prefix = str(tmp_path / "out" / "kitti")
    with pytest.raises(OSError, match="disk full"):
        convert.convert(spec, prefix, workers=1)
    assert os.listdir(os.path.dirname(prefix)) == []


def test_sequence_partition(tmp_path):
    frames = {f"{i:06d}": [kitti_line("Car", (1, 1, 9, 9))] for i in range(7)}
    root = make_kitti(tmp_path / "kitti", frames)
    (root / "seq.json").write_text(json.dumps({"b": ["000000", "000001"], "a": ["000002", "000003"],
                                               "c": ["000004", "000005", "000006"]}))
    spec = load_conversion_spec(write_conversion_spec(tmp_path / "c.txt", root, mode="sequence", folds=2, shards=0,
                                                      extra='kitti_sequence_to_frames_file: "seq.json"'))
    prefix = str(tmp_path / "out" / "seq")
    convert.convert(spec, prefix, workers=1)
    # Sorted by (-length, name): c, a, b; round robin -> [c, b], [a]; reversed -> fold 0 = a.
    by_fold = {path.split("-fold-")[1][:3]: sorted(e[records.FRAME_ID].numpy().decode()[-1] for e in examples)
               for path, examples in _read_records(prefix).items()}
    assert by_fold == {"000": ["2", "3"], "001": ["0", "1", "4", "5", "6"]}
    assert sorted(os.path.basename(p) for p in glob.glob(prefix + "-fold-*")) == [
        "seq-fold-000-of-002", "seq-fold-001-of-002"]


def test_embedded_images(tmp_path):
    root = make_kitti(tmp_path / "kitti", {"000000": [kitti_line("Car", (1, 1, 9, 9))]})
    spec = load_conversion_spec(write_conversion_spec(tmp_path / "c.txt", root, val_split=0, shards=0))
    prefix = str(tmp_path / "out" / "emb")
    convert.convert(spec, prefix, workers=1, embed_images=True)
    (example,) = [e for es in _read_records(prefix).values() for e in es]
    assert example[records.ENCODED].numpy() == (root / "images" / "000000.png").read_bytes()


@pytest.mark.slow
def test_cli_prints_class_table_and_one_line_errors(tmp_path):
    root = make_kitti(tmp_path / "kitti", {f"{i:06d}": [kitti_line("Car", (1, 1, 9, 9))] for i in range(4)})
    spec = write_conversion_spec(tmp_path / "c.txt", root)
    script = str(REPO / "bin" / "dataset_convert.py")
    result = subprocess.run([sys.executable, script, "-d", spec, "-o", str(tmp_path / "out" / "k"), "--workers", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert ["car", "1", "3", "4"] in [line.split() for line in result.stdout.splitlines()]
    result = subprocess.run([sys.executable, script, "-d", spec, "-o", str(tmp_path / "out" / "k")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "pass --overwrite" in result.stderr
