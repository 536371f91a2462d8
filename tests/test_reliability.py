"""Issue 14: the `.tlt` + key workflow, killed jobs and bad files never lose, corrupt or expose work.

Each test names the finding of the reliability review (F1-F17, and observations) it guards.
Data: tiny_dataset (12 PNG frames of 64x48) converted once; models: ResNet10 at 32x48.
"""
import os

import pytest

from conftest import REPO
from frcnn_tf.data import convert
from frcnn_tf.errors import FrcnnError
from frcnn_tf.spec import load_conversion_spec, load_experiment_spec
from frcnn_tf.model import checkpoints
from frcnn_tf.train.trainer import train
from kitti_fixtures import converted_tiny_dataset, tiny_training_spec, write_conversion_spec

REPO_SPECS = REPO / "specs"
NO_VALIDATION = ("validation_period_during_training: 1", "validation_period_during_training: 100")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(KITTI root, shard glob) of tiny_dataset converted with 3 validation frames, one shard per fold."""
    return converted_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def _spec_path(tmp_path, tiny, output_model, epochs=1, extra=()):
    root, records = tiny
    name = f"spec{len([p for p in os.listdir(tmp_path) if p.startswith('spec')])}.txt"
    return tiny_training_spec(tmp_path / name, records, root, output_model, epochs, extra)


@pytest.mark.slow
def test_f1_tlt_checkpoints_open_with_the_spec_key_through_resume_evaluate_prune_export(tiny, tmp_path):
    from frcnn_tf.evaluate import run_evaluate
    from frcnn_tf.export.onnx_export import run_export
    from frcnn_tf.prune import PruneOptions, run_prune

    keyed = ("random_seed: 42", 'random_seed: 42\nenc_key: "secret"')
    first = train(load_experiment_spec(_spec_path(tmp_path, tiny, tmp_path / "m" / "m.tlt", 1,
                                                  [keyed, NO_VALIDATION])), max_steps_per_epoch=2)
    epoch1 = str(tmp_path / "m" / "m.epoch1.tlt")
    assert first["checkpoints"] == [epoch1]
    for wrong in ("total", "other"):
        with pytest.raises(FrcnnError, match="wrong key"):
            checkpoints.load_model(epoch1, key=wrong)
    resume = _spec_path(tmp_path, tiny, tmp_path / "m" / "m.tlt", 2,
                        [keyed, NO_VALIDATION, ("  enable_qat: false\n",
                                                f'  enable_qat: false\n  resume_from_model: "{epoch1}"\n')])
    epoch2 = train(load_experiment_spec(resume), max_steps_per_epoch=2)["checkpoints"][0]
    assert epoch2.endswith("m.epoch2.tlt") and int(checkpoints.load_model(epoch2, key="secret")[0]
                                                   .optimizer.iterations) == 4
    assert 0.0 <= run_evaluate(resume, epoch2, str(tmp_path / "eval"))["map"] <= 1.0  # the spec's enc_key
    with pytest.raises(FrcnnError, match="wrong key"):
        run_evaluate(resume, epoch2, str(tmp_path / "eval"), key="total")
    pruned = str(tmp_path / "pruned.tlt")
    run_prune(epoch2, pruned, PruneOptions(threshold=0.5, min_filters=8), key="secret")
    checkpoints.load_model(pruned, key="secret")
    with pytest.raises(FrcnnError, match="wrong key"):
        run_prune(epoch2, str(tmp_path / "p2.tlt"), PruneOptions(), key="total")
    assert run_export(resume, epoch2, str(tmp_path / "m.onnx"))["class_names"] == ["car"]  # the spec's enc_key
    assert run_export(resume, pruned, str(tmp_path / "p.onnx"), key="secret")["class_names"] == ["car"]
    for wrong in ("total", "other"):
        with pytest.raises(FrcnnError, match="wrong key"):
            run_export(resume, epoch2, str(tmp_path / f"{wrong}.onnx"), key=wrong)


@pytest.fixture(scope="module")
def trained_tlt(tiny, tmp_path_factory):
    """(spec path, epoch-1 checkpoint) of a 1-epoch, 2-step run written as .tlt with enc_key "secret"."""
    tmp = tmp_path_factory.mktemp("trained")
    path = _spec_path(tmp, tiny, tmp / "m" / "m.tlt", 1, [("random_seed: 42", 'random_seed: 42\nenc_key: "secret"'),
                                                           NO_VALIDATION])
    return path, train(load_experiment_spec(path), max_steps_per_epoch=2)["checkpoints"][0]


def test_f1_checkpoints_are_encrypted_with_the_spec_key(trained_tlt):
    _, checkpoint = trained_tlt
    model, metadata = checkpoints.load_model(checkpoint, key="secret")
    assert metadata["epoch"] == 1 and int(model.optimizer.iterations) == 2
    for wrong in ("total", "rpn_class", "not-the-key"):
        with pytest.raises(FrcnnError, match="wrong key"):
            checkpoints.load_model(checkpoint, key=wrong)


def _copy_tree(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


def _convert(root, prefix, **spec_options):
    """Converts root to the shard prefix; the spec goes beside the prefix's folder."""
    spec_path = os.path.join(os.path.dirname(os.path.dirname(prefix)), os.path.basename(prefix) + "_convert.txt")
    spec = load_conversion_spec(write_conversion_spec(spec_path, root, **spec_options))
    return convert.convert(spec, prefix, workers=1)


def test_f2_a_killed_conversion_leaves_nothing_the_shard_glob_matches(tiny, tmp_path):
    """kill -9 while shards are written: no shard-glob match; the next run removes the leftovers."""
    import glob
    import signal
    import subprocess
    import sys
    import time

    root, _ = tiny
    spec = write_conversion_spec(tmp_path / "c.txt", root, val_split=25, shards=4)
    prefix = str(tmp_path / "tfr" / "k")
    # The writer stops at its first record, so the kill always lands while a shard is open.
    child = subprocess.Popen([sys.executable, "-c", f"""
import time
from frcnn_tf.data import convert, records
from frcnn_tf.spec import load_conversion_spec
def slow(*args, **kwargs):
    print("writing", flush=True)
    time.sleep(60)
records.make_example = slow
convert.convert(load_conversion_spec({spec!r}), {prefix!r}, workers=1)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
        time.sleep(0.5)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    left = os.listdir(tmp_path / "tfr")
    assert left and all(name.startswith(".") for name in left), left  # temporaries only, hidden
    assert glob.glob(prefix + "-fold-*") == [] and glob.glob(str(tmp_path / "tfr" / "*")) == []
    convert.convert(load_conversion_spec(spec), prefix, workers=1)
    assert not [name for name in os.listdir(tmp_path / "tfr") if name.startswith(".")]
    assert len(glob.glob(prefix + "-fold-*")) == 8


def test_f3_images_with_the_same_stem_are_refused_before_any_work(tmp_path):
    from PIL import Image

    from frcnn_tf.inference import run_inference

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(images / name)
    spec = str(tmp_path / "spec.txt")
    (tmp_path / "spec.txt").write_text((REPO_SPECS / "frcnn_resnet18_train.txt").read_text())
    with pytest.raises(FrcnnError, match=r"a.txt: would be written for both .*a.jpg and .*a.png"):
        run_inference(spec, str(tmp_path / "missing.hdf5"), str(images), None, str(tmp_path / "labels"))
    assert not (tmp_path / "labels").exists()


def test_f4_validation_inputs_are_checked_before_epoch_one(tiny, tmp_path):
    root, _ = tiny
    _convert(root, str(tmp_path / "tfr" / "v"), val_split=0, shards=1)
    spec = load_experiment_spec(_spec_path(tmp_path, tiny, tmp_path / "m" / "m.hdf5", 1, [
        (tiny[1], str(tmp_path / "tfr" / "v-fold-*"))]))
    with pytest.raises(FrcnnError, match="no validation shards"):
        train(spec, max_steps_per_epoch=1)
    assert not (tmp_path / "m").exists()


def test_f4_f7_a_bad_validation_image_is_named_and_the_checkpoint_kept(tiny, tmp_path, caplog):
    import json

    root = _copy_tree(tiny[0], tmp_path / "kitti")
    _convert(root, str(tmp_path / "tfr" / "v"), val_split=25, shards=1)
    summary = json.loads((tmp_path / "tfr" / "v_summary.json").read_text())
    assert summary["folds"][0]["images"] == 3
    # Find a validation frame from the records, then replace its image by text after conversion.
    from frcnn_tf.data.pipeline import InputPipeline

    spec = load_experiment_spec(_spec_path(tmp_path, (root, str(tmp_path / "tfr" / "v-fold-*")),
                                           tmp_path / "m" / "m.hdf5", 1))
    bad = next(InputPipeline(spec).split_images(training=False))[0]
    with open(bad, "w") as handle:
        handle.write("not an image")
    result = train(spec, max_steps_per_epoch=1)
    assert result["checkpoints"] == [str(tmp_path / "m" / "m.epoch1.hdf5")]
    assert os.path.isfile(result["checkpoints"][0]) and "validation_map" not in result["history"][0]
    assert f"validation after epoch 1 failed, training continues: {bad}: unreadable image" in caplog.text
    caplog.clear()  # validate=False (the quickstart evaluates next): the validation split is not read
    result = train(spec, max_steps_per_epoch=1, overwrite=True, validate=False)
    assert "validation_map" not in result["history"][0] and "validation after epoch" not in caplog.text


def test_f5_f6_a_checkpoint_is_written_only_with_finite_weights_and_runs_are_not_overwritten(tiny, tmp_path,
                                                                                               monkeypatch):
    import numpy as np

    from frcnn_tf.train import trainer

    output = tmp_path / "m" / "m.hdf5"
    spec = load_experiment_spec(_spec_path(tmp_path, tiny, output, 1, [NO_VALIDATION]))
    output.parent.mkdir()
    (tmp_path / "m" / "m.epoch1.hdf5").write_bytes(b"an earlier run")
    (tmp_path / "m" / "m.epoch2.hdf5").write_bytes(b"an earlier run")
    with pytest.raises(FrcnnError, match=r"m.epoch1.hdf5: exists \(2 output files would be replaced\); choose "
                                         "another output_model, resume that run with resume_from_model, or pass "
                                         "--overwrite"):
        train(spec)

    real_step = trainer.TrainStep.__init__

    def diverging(self, *args, **kwargs):  # the last step leaves huge (finite) weights, as base_lr 50 did
        real_step(self, *args, **kwargs)
        step = self.step

        def blow_up(batch, seed):
            values = step(batch, seed)
            kernel = self.frcnn.model.get_layer("dense_class_td").weights[0]
            kernel.assign(np.full(kernel.shape, 1e30, np.float32))
            return values
        self.step = blow_up
    monkeypatch.setattr(trainer.TrainStep, "__init__", diverging)
    with pytest.raises(FrcnnError, match=r"the loss of the weights at the end of epoch 1 became (inf|nan) \(not "
                                         r"saved as .*m.epoch1.hdf5\); training stopped \(last good checkpoint: "
                                         r"none written\)"):
        train(spec, max_steps_per_epoch=1, overwrite=True)
    assert (tmp_path / "m" / "m.epoch1.hdf5").read_bytes() == b"an earlier run"


def test_f7_missing_and_undecodable_images_are_named_before_or_when_training(tiny, tmp_path):
    from PIL import Image

    root = _copy_tree(tiny[0], tmp_path / "kitti")
    _convert(root, str(tmp_path / "tfr" / "t"), val_split=25, shards=1)
    records = str(tmp_path / "tfr" / "t-fold-*")
    wrong_folder = load_experiment_spec(_spec_path(tmp_path, (tmp_path / "nowhere", records),
                                                   tmp_path / "m" / "m.hdf5", 1, [NO_VALIDATION]))
    with pytest.raises(FrcnnError, match=r"nowhere/images/0000\d\d.png: image not found \(9 of the 9 training "
                                         "images are missing\); check dataset_config image_directory_path"):
        train(wrong_folder)
    from frcnn_tf.evaluation import evaluate_detector

    wrong_extension = load_experiment_spec(_spec_path(tmp_path, (root, records), tmp_path / "m" / "m.hdf5", 1, [
        ("image_extension: 'png'", "image_extension: 'jpg'")]))
    with pytest.raises(FrcnnError, match=r"images/0000\d\d.jpg: image not found \(3 of the 3 validation"):
        evaluate_detector(wrong_extension, detector=None)

    spec = load_experiment_spec(_spec_path(tmp_path, (root, records), tmp_path / "m" / "m.hdf5", 1, [NO_VALIDATION]))
    from frcnn_tf.data.pipeline import InputPipeline

    # TIFF under a .png name (PIL reads it, TF does not)
    for path, _ in InputPipeline(spec).split_images(training=True):
        Image.open(path).convert("RGB").save(path, format="TIFF")
    with pytest.raises(FrcnnError, match=r"images/0000\d\d.png: unreadable image \(.*\); fix or remove it"):
        train(spec, max_steps_per_epoch=1)
    assert not [name for name in os.listdir(tmp_path / "m") if name.endswith(".hdf5")]


def test_f7_conversion_skips_formats_training_cannot_decode(tmp_path):
    from PIL import Image

    from kitti_fixtures import kitti_line, make_kitti

    root = make_kitti(tmp_path / "kitti", {f"{i:06d}": [kitti_line("car", (2, 2, 20, 20))] for i in range(3)})
    Image.open(root / "images" / "000001.png").save(root / "images" / "000001.png", format="TIFF")
    summary = _convert(root, str(tmp_path / "tfr" / "t"), val_split=0, shards=1)
    assert summary["total_images"] == 2
    warnings = (tmp_path / "tfr" / "t_warnings.json").read_text()
    assert "000001.png: TIFF image, which training cannot decode; save it as JPEG or PNG; skipped" in warnings


def test_f8_tlt_style_globs_skip_the_conversion_json(tiny, tmp_path, caplog):
    from frcnn_tf.data.pipeline import shard_sources

    root, records = tiny
    folder = os.path.dirname(records)
    for pattern in (f"{folder}/t*", f"{folder}/*"):
        spec = load_experiment_spec(_spec_path(tmp_path, (root, pattern), tmp_path / "m.hdf5"))
        files = [f for split in (True, False) for fs, _ in shard_sources(spec.dataset_config, split) for f in fs]
        assert sorted(os.path.basename(f) for f in files) == ["t-fold-000-of-002-shard-00000-of-00001",
                                                              "t-fold-001-of-002-shard-00000-of-00001"]
    assert "t_summary.json: not a TFRecord file; ignored" in caplog.text


def test_f9_inference_skips_unreadable_images_and_says_so(trained_tlt, tiny, tmp_path, caplog):
    import shutil

    from PIL import Image

    from frcnn_tf.inference import run_inference

    spec, checkpoint = trained_tlt
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(tiny[0] / "images" / "000000.png", images / "good.png")
    (images / "text.jpg").write_text("not an image")
    (images / "empty.jpg").write_bytes(b"")
    good = (tiny[0] / "images" / "000001.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 3])
    Image.open(images / "good.png").save(images / "tiff.jpg", format="TIFF")
    from frcnn_tf.cli.inference import summary_line

    result = run_inference(spec, checkpoint, str(images), str(tmp_path / "out"), str(tmp_path / "labels"))
    assert sorted(os.path.basename(p) for p in result["detections"]) == ["good.png"]
    assert "1 images (4 unreadable images skipped, listed above)" in summary_line(result)
    for name in ("empty.jpg", "text.jpg", "tiff.jpg", "truncated.png"):
        assert f"{images / name}: unreadable image" in caplog.text
    assert os.listdir(tmp_path / "labels") == ["good.txt"]


def test_f10_a_tlt_model_is_decrypted_in_memory_only(trained_tlt, tmp_path):
    """kill -9 while a .tlt model loads: no plaintext copy is left in the temp folder or beside the model."""
    import signal
    import subprocess
    import sys

    _, checkpoint = trained_tlt
    before = set(os.listdir(os.path.dirname(checkpoint)))
    system_temp = tmp_path / "system_temp"
    system_temp.mkdir()
    child = subprocess.Popen([sys.executable, "-c", f"""
import time
import tensorflow as tf
from frcnn_tf.model import checkpoints
def slow(*args, **kwargs):
    print("loading", flush=True)
    time.sleep(60)
tf.keras.models.load_model = slow
checkpoints.load_model({checkpoint!r}, key="secret")
"""], stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(system_temp)})
    try:
        assert child.stdout.readline() == "loading\n"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    assert os.listdir(system_temp) == [] and set(os.listdir(os.path.dirname(checkpoint))) == before


def _cli(script, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(REPO / "bin" / script), *args], capture_output=True, text=True,
                          timeout=300)


def test_f11_io_failures_are_one_error_line(tiny, tmp_path):
    import errno

    import tensorflow as tf

    from frcnn_tf.cli import io_error_line

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    assert io_error_line(full) == f"{tmp_path / 'x'}: No space left on device"
    assert io_error_line(tf.errors.ResourceExhaustedError(None, None, "out/k-fold-000; No space left on device")) \
        == "out/k-fold-000; No space left on device"
    assert io_error_line(ValueError("a bug")) is None  # programming errors keep their traceback
    spec = write_conversion_spec(tmp_path / "c.txt", tiny[0])
    result = _cli("dataset_convert.py", "-d", spec, "-o", str(tmp_path / "tfr") + "/")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'tfr'}/: is a folder; -o takes a file "
                                                      f"name prefix such as {tmp_path / 'tfr' / 'kitti'}")


def test_f11_a_checkpoint_that_cannot_be_written_names_the_last_good_one(tiny, tmp_path, monkeypatch):
    import errno

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "Can't close file")

    monkeypatch.setattr(checkpoints, "save_model", disk_full)
    spec = load_experiment_spec(_spec_path(tmp_path, tiny, tmp_path / "m" / "m.hdf5", 1, [NO_VALIDATION]))
    with pytest.raises(FrcnnError, match=r"m.epoch1.hdf5: cannot write the checkpoint \(.*Can't close file\); "
                                         "last good checkpoint: none written"):
        train(spec, max_steps_per_epoch=1)


@pytest.mark.parametrize("options, message", [
    (dict(threshold=5.0), r"pruning threshold \(-pth\) 5 is outside \[0, 1\]"),
    (dict(threshold=-1.0), r"pruning threshold \(-pth\) -1 is outside \[0, 1\]"),
    (dict(granularity=0), r"pruning granularity \(-pg\) must be at least 1, got 0"),
    (dict(granularity=-8), r"pruning granularity \(-pg\) must be at least 1, got -8"),
    (dict(min_filters=0, threshold=1.0), r"minimum number of filters \(-nf\) must be at least 1, got 0"),
])
def test_f12_out_of_range_prune_options_are_refused(options, message):
    import tensorflow as tf

    from frcnn_tf.prune import PruneOptions, plan

    image = tf.keras.Input([8, 8, 3])
    model = tf.keras.Model(image, tf.keras.layers.Conv2D(4, 3, name="conv")(image))
    with pytest.raises(FrcnnError, match=message):
        plan(model, PruneOptions(**options))


def test_f14_a_keras_model_that_is_not_frcnn_tf_is_one_line(tmp_path):
    import tensorflow as tf

    image = tf.keras.Input([4])
    tf.keras.Model(image, tf.keras.layers.Dense(2)(image)).save(str(tmp_path / "dense.hdf5"), save_format="h5")
    with pytest.raises(FrcnnError, match=r"dense.hdf5: not an frcnn_tf model \(no frcnn_tf metadata\)"):
        checkpoints.load_model(str(tmp_path / "dense.hdf5"))


def test_f15_a_spec_with_a_byte_order_mark_parses(tmp_path):
    text = (REPO_SPECS / "frcnn_resnet18_train.txt").read_text()
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_experiment_spec(str(tmp_path / "bom.txt")).model_config.arch == "resnet:18"


def test_f16_more_shards_than_images_warns(tiny, tmp_path, caplog):
    _convert(tiny[0], str(tmp_path / "tfr" / "t"), val_split=25, shards=5)
    assert "fold 0 has 3 images for num_shards 5: 2 shards will be empty" in caplog.text


def test_f17_validate_spec_rejects_backbones_train_cannot_build(tmp_path):
    from frcnn_tf.errors import SpecError
    from frcnn_tf.spec.summary import validate_spec_file

    text = (REPO_SPECS / "frcnn_resnet18_train.txt").read_text()
    (tmp_path / "vgg.txt").write_text(text.replace('arch: "resnet:18"', 'arch: "vgg16"').replace(
        "  freeze_blocks: 0\n", ""))
    with pytest.raises(SpecError, match=r"vgg.txt:19:\d+: model_config.arch: 'vgg16' is a TLT backbone frcnn_tf "
                                        "does not build yet; use one of resnet:10, resnet:18"):
        validate_spec_file(str(tmp_path / "vgg.txt"))
    (tmp_path / "odd.txt").write_text(text.replace('arch: "resnet:18"', 'arch: "resnet:11"'))
    with pytest.raises(SpecError, match=r"unknown backbone 'resnet:11'; use one of resnet:10, resnet:18, resnet:34, "
                                        r"resnet:50, resnet:101$"):
        validate_spec_file(str(tmp_path / "odd.txt"))


def test_resuming_a_finished_run_says_so(trained_tlt, tmp_path, tiny):
    _, checkpoint = trained_tlt
    spec = load_experiment_spec(_spec_path(tmp_path, tiny, tmp_path / "m" / "m.tlt", 1, [
        ("random_seed: 42", 'random_seed: 42\nenc_key: "secret"'),
        ("  enable_qat: false\n", f'  enable_qat: false\n  resume_from_model: "{checkpoint}"\n')]))
    with pytest.raises(FrcnnError, match=r"m.epoch1.tlt: the run is finished \(epoch 1 of num_epochs 1\); raise "
                                         "training_config.num_epochs"):
        train(spec)


def test_a_resumed_stream_continues_where_the_first_run_stopped(tiny, tmp_path):
    from frcnn_tf.data.pipeline import InputPipeline

    pipeline = InputPipeline(load_experiment_spec(_spec_path(tmp_path, tiny, tmp_path / "m.hdf5")))
    stream = iter(pipeline.dataset(training=True, batch_size=2, repeat=True))
    batches = [next(stream) for _ in range(6)]
    resumed = next(iter(pipeline.dataset(training=True, batch_size=2, repeat=True, start=5 * 2)))
    assert resumed["frame_id"].numpy().tolist() == batches[5]["frame_id"].numpy().tolist()
    assert (resumed["images"].numpy() == batches[5]["images"].numpy()).all()  # same augmentation too


def test_temporaries_of_killed_runs_are_removed_and_outputs_are_synced(tmp_path, monkeypatch):
    import subprocess
    import sys

    from frcnn_tf import io_utils
    from frcnn_tf.train.trainer import _check_output_model

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    folder = tmp_path / "m"
    folder.mkdir()
    stale = folder / f".m.epoch2.hdf5.tmp-{dead}-0a1b2c3d"
    running = folder / f".m.epoch2.hdf5.tmp-{os.getpid()}-0a1b2c3d"  # a live writer's file is kept
    stale.write_bytes(b"half a checkpoint")
    running.write_bytes(b"being written")
    spec = load_experiment_spec(str(REPO_SPECS / "frcnn_resnet18_train.txt"))
    _check_output_model(str(folder / "m.hdf5"), spec.training_config, overwrite=False)
    assert sorted(os.listdir(folder)) == [running.name]

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda handle: synced.append(handle) or real_fsync(handle))
    io_utils.atomic_write_text(str(tmp_path / "out" / "a.json"), "{}")
    assert len(synced) == 2  # the file before the rename, then its folder


def test_f15_an_invalid_escape_is_reported_on_its_own_line(tmp_path):
    from frcnn_tf.errors import SpecError

    text = (REPO_SPECS / "frcnn_resnet18_train.txt").read_text().replace("image_channel_order: 'bgr'",
                                                                        "image_channel_order: 'bgr\\xff'")
    (tmp_path / "escape.txt").write_text(text)
    with pytest.raises(SpecError, match=r"escape.txt:8:26: invalid string \('utf-8' codec can't decode byte 0xff"):
        load_experiment_spec(str(tmp_path / "escape.txt"))
