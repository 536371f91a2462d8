"""The reliability review's tries (/work/shared/reference/reliability_findings.md), replayed on tiny data.

Every try runs a `bin/` command the way a user would and checks the promise it tests: bad input
ends with one `error: ...` line (rc 1, no traceback), outputs are atomic and protected, a killed
job leaves nothing a glob picks up, the `.tlt` key workflow holds. Slow (about 10 minutes on two
cores): `python -m pytest -m slow tests/test_adversarial.py -s` prints the tried/passed counts.
"""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from conftest import REPO
from kitti_fixtures import kitti_line, make_kitti, tiny_dataset, tiny_training_spec, write_conversion_spec

pytestmark = pytest.mark.slow
SPEC = (REPO / "specs" / "frcnn_resnet18_train.txt").read_text()
KEY = ("random_seed: 42", 'random_seed: 42\nenc_key: "secret"')
NO_VALIDATION = ("validation_period_during_training: 1", "validation_period_during_training: 100")


def _run(script, *args, env=None):
    return subprocess.run([sys.executable, str(REPO / "bin" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


def _one_line_error(result, *parts):
    """rc 1, no traceback, the last stderr line is `error: ...` containing every part."""
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    ok = result.returncode == 1 and "Traceback" not in result.stderr and last.startswith("error: ")
    return ok and all(part in last for part in parts), last


def _ok(result):
    return result.returncode == 0, result.stderr.strip().splitlines()[-1:] if result.returncode else "rc 0"


class Tries:
    def __init__(self):
        self.results = []

    def check(self, name, outcome):
        passed, detail = outcome if isinstance(outcome, tuple) else (outcome, "")
        self.results.append((name, bool(passed), detail))
        print(f"{'PASS' if passed else 'FAIL'}  {name}  {'' if passed else detail}", flush=True)


def _spec_tries(tries, tmp):
    def spec(name, text, data=None):
        path = tmp / name
        path.write_bytes(data if data is not None else text.encode("utf-8"))
        return path

    cases = [
        ("misspelt field", spec("typo.txt", SPEC.replace("use_pooling", "use_poling")), ["use_pooling"]),
        ("wrong type", spec("type.txt", SPEC.replace("num_epochs: 12", 'num_epochs: "twelve"')), []),
        ("out of range", spec("range.txt", SPEC.replace("batch_size_per_gpu: 8", "batch_size_per_gpu: -1")), []),
        ("random bytes", spec("bytes.txt", "", os.urandom(2000)), []),
        ("an HDF5 file", spec("h5.txt", "", b"\x89HDF\r\n\x1a\n" + bytes(500)), []),
        ("UTF-16", spec("utf16.txt", "", SPEC.encode("utf-16")), []),
        ("cut mid-token", spec("cut1.txt", SPEC[:SPEC.index("rpn_stride") + 5]), []),
        ("cut mid-block", spec("cut2.txt", SPEC[:SPEC.index("  arch:")]), ["not closed"]),
        ("vgg16 (F17)", spec("vgg.txt", SPEC.replace('arch: "resnet:18"', 'arch: "vgg16"').replace(
            "  freeze_blocks: 0\n", "")), ["vgg16", "does not build yet"]),
        ("resnet:11 lists buildable backbones (F17)", spec("r11.txt", SPEC.replace("resnet:18", "resnet:11")),
         ["use one of resnet:10"]),
    ]
    for name, path, parts in cases:
        tries.check(f"validate_spec: {name}", _one_line_error(_run("validate_spec.py", "-e", path), str(path),
                                                              *parts))
    tries.check("validate_spec: a directory", _one_line_error(_run("validate_spec.py", "-e", tmp), str(tmp)))
    tries.check("validate_spec: UTF-8 with a BOM (F15)",
                _ok(_run("validate_spec.py", "-e", spec("bom.txt", "", b"\xef\xbb\xbf" + SPEC.encode()))))


def _convert_tries(tries, tmp, root):
    spec = write_conversion_spec(tmp / "conv.txt", root, val_split=25, shards=2)
    tries.check("convert: works", _ok(_run("dataset_convert.py", "-d", spec, "-o", tmp / "tfr" / "base")))
    tries.check("convert: existing outputs refused",
                _one_line_error(_run("dataset_convert.py", "-d", spec, "-o", tmp / "tfr" / "base"), "--overwrite"))
    tries.check("convert: -o with a trailing slash (F11)",
                _one_line_error(_run("dataset_convert.py", "-d", spec, "-o", f"{tmp}/tfr/dirprefix/"), "is a folder"))
    tries.check("convert: -o in a folder that cannot be created (F11)",
                _one_line_error(_run("dataset_convert.py", "-d", spec, "-o", "/proc/frcnn_tf/out/k"), "/proc/"))
    many = write_conversion_spec(tmp / "many.txt", root, val_split=25, shards=50)
    result = _run("dataset_convert.py", "-d", many, "-o", tmp / "tfr_many" / "m")
    tries.check("convert: more shards than images warns (F16)",
                (result.returncode == 0 and "shards will be empty" in result.stderr, result.stderr[-300:]))
    bad = make_kitti(tmp / "bad", {"000000": [kitti_line("car", (2, 2, 30, 30))],
                                   "000001": ["car 0 0 0 nan 1 2 3 0 0 0 0 0 0 0"], "000002": ["too few fields"],
                                   "000003": [kitti_line("car", (30, 30, 2, 2))], "000004": None,
                                   "000005": [kitti_line("car", (2, 2, 30, 30))]})
    Image.open(bad / "images" / "000005.png").save(bad / "images" / "000005.png", format="TIFF")
    (bad / "images" / "000006.png").write_bytes(b"")
    (bad / "labels" / "000006.txt").write_text(kitti_line("car", (2, 2, 30, 30)))
    bad_spec = write_conversion_spec(tmp / "badconv.txt", bad, val_split=0, shards=1)
    result = _run("dataset_convert.py", "-d", bad_spec, "-o", tmp / "tfr_bad" / "b")
    tries.check("convert: bad set reported as FILE:LINE and skipped, TIFF flagged (S, F7)",
                (result.returncode == 0 and "000001.txt:1:" in result.stderr and "TIFF image" in result.stderr,
                 result.stderr[-500:]))
    result = _run("dataset_convert.py", "-d", bad_spec, "-o", tmp / "tfr_strict" / "b", "--strict")
    tries.check("convert: --strict writes nothing, not even the folder",
                (_one_line_error(result, "nothing written")[0] and not (tmp / "tfr_strict").exists(), result.stderr))
    # kill -9 while shards are written (F2): nothing the documented glob matches is left behind.
    child = subprocess.Popen([sys.executable, "-c", f"""
import time
from frcnn_tf.data import convert, records
from frcnn_tf.spec import load_conversion_spec
def slow(*args, **kwargs):
    print("writing", flush=True)
    time.sleep(120)
records.make_example = slow
convert.convert(load_conversion_spec({str(spec)!r}), {str(tmp / 'tfr_kill' / 'k')!r}, workers=1)
"""], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = os.listdir(tmp / "tfr_kill")
    tries.check("convert: kill -9 while writing leaves nothing PREFIX-fold-* matches (F2)",
                (left and not glob.glob(str(tmp / "tfr_kill" / "k-fold-*")) and not glob.glob(
                    str(tmp / "tfr_kill" / "*")), left))
    result = _run("dataset_convert.py", "-d", spec, "-o", tmp / "tfr_kill" / "k")
    tries.check("convert: the next run removes the killed run's temporaries",
                (result.returncode == 0 and not [n for n in os.listdir(tmp / "tfr_kill") if n.startswith(".")],
                 os.listdir(tmp / "tfr_kill")))


def _train_spec(tmp, name, root, records, output, epochs=1, extra=()):
    return tiny_training_spec(tmp / name, records, root, output, epochs, extra)


def _model_tries(tries, tmp, root):
    records = str(tmp / "tfr" / "base-fold-*")
    steps = ("--max_steps_per_epoch", 2)
    tlt = _train_spec(tmp, "tlt.txt", root, records, tmp / "mt" / "m.tlt", 1, [KEY, NO_VALIDATION])
    tries.check("train: .tlt with enc_key", _ok(_run("train.py", "-e", tlt, *steps)))
    epoch1 = tmp / "mt" / "m.epoch1.tlt"
    tries.check("evaluate: -k secret opens the trained .tlt (F1)",
                _ok(_run("evaluate.py", "-e", tlt, "-m", epoch1, "-k", "secret", "-r", tmp / "ev1")))
    tries.check("evaluate: -k total is a wrong key (F1)",
                _one_line_error(_run("evaluate.py", "-e", tlt, "-m", epoch1, "-k", "total", "-r", tmp / "ev2"),
                                "wrong key"))
    resume = _train_spec(tmp, "resume.txt", root, records, tmp / "mt" / "m.tlt", 2, [
        KEY, NO_VALIDATION, ("  enable_qat: false\n", f'  enable_qat: false\n  resume_from_model: "{epoch1}"\n')])
    tries.check("train: resume the .tlt with the spec's key (F1, R)", _ok(_run("train.py", "-e", resume, *steps)))
    finished = _train_spec(tmp, "finished.txt", root, records, tmp / "mt" / "m.tlt", 1, [
        KEY, ("  enable_qat: false\n", f'  enable_qat: false\n  resume_from_model: "{epoch1}"\n')])
    tries.check("train: resuming a finished run says so",
                _one_line_error(_run("train.py", "-e", finished), "the run is finished"))
    tries.check("train: a second run into the same output_model is refused (F6)",
                _one_line_error(_run("train.py", "-e", tlt, *steps), "m.epoch1.tlt: exists", "--overwrite"))
    pruned = tmp / "pruned.tlt"
    tries.check("prune: the trained .tlt with -k secret (F1)",
                _ok(_run("prune.py", "-m", tmp / "mt" / "m.epoch2.tlt", "-o", pruned, "-k", "secret", "-pth", 0.5)))
    for flags, part in ((("-pg", 0), "-pg"), (("-pth", 5), "-pth"), (("-pth", -1), "-pth"), (("-pg", -8), "-pg"),
                        (("-nf", 0, "-pth", 1), "-nf")):
        tries.check(f"prune: {' '.join(map(str, flags))} refused (F12)",
                    _one_line_error(_run("prune.py", "-m", epoch1, "-o", tmp / "p_bad.tlt", "-k", "secret", *flags),
                                    part))
    # A TLT-style glob matching the conversion's JSON (F8); validation each epoch (F4 order).
    tries.check("train: tfrecords_path 'tfr/base*' (F8)",
                _ok(_run("train.py", "-e", _train_spec(tmp, "glob.txt", root, str(tmp / "tfr" / "base*"),
                                                        tmp / "mg" / "m.hdf5"), *steps)))
    nowhere = _train_spec(tmp, "nowhere.txt", tmp / "nowhere", records, tmp / "mn" / "m.hdf5")
    tries.check("train: image_directory_path points nowhere (F7)",
                _one_line_error(_run("train.py", "-e", nowhere), "image not found"))
    _convert_val0(tmp, root)
    val0 = _train_spec(tmp, "val0.txt", root, str(tmp / "tfr_val0" / "v-fold-*"), tmp / "mv" / "m.hdf5")
    result = _run("train.py", "-e", val0, *steps)
    tries.check("train: val_split 0 with validation is refused before epoch 1 (F4)",
                (_one_line_error(result, "no validation shards")[0] and "epoch 1/1" not in result.stderr,
                 result.stderr[-300:]))
    model = tmp / "mg" / "m.epoch1.hdf5"
    wrong_ext = _train_spec(tmp, "ext.txt", root, records, tmp / "mg" / "m.hdf5", 1,
                            [("image_extension: 'png'", "image_extension: 'jpg'")])
    tries.check("evaluate: image_extension jpg for .png data (F7)",
                _one_line_error(_run("evaluate.py", "-e", wrong_ext, "-m", model), "image not found"))
    _dense_tries(tries, tmp, tlt, epoch1)
    _inference_tries(tries, tmp, root, tlt, epoch1)
    # kill -9 evaluate of a .tlt while it loads (F10): no plaintext in the temp folder.
    system_temp = tmp / "system_temp"
    system_temp.mkdir()
    child = subprocess.Popen([sys.executable, str(REPO / "bin" / "evaluate.py"), "-e", tlt, "-m", str(epoch1), "-k",
                              "secret", "-r", str(tmp / "ev3")], env={**os.environ, "TMPDIR": str(system_temp)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8)
    child.send_signal(signal.SIGKILL)
    child.wait()
    tries.check("evaluate: kill -9 of a .tlt evaluation leaves no plaintext model (F10)",
                (not [n for n in os.listdir(system_temp) if n.endswith((".hdf5", ".h5"))], os.listdir(system_temp)))


def _convert_val0(tmp, root):
    spec = write_conversion_spec(tmp / "val0.txt.conv", root, val_split=0, shards=1)
    assert _run("dataset_convert.py", "-d", spec, "-o", tmp / "tfr_val0" / "v").returncode == 0


def _dense_tries(tries, tmp, tlt, epoch1):
    import tensorflow as tf

    image = tf.keras.Input([4])
    tf.keras.Model(image, tf.keras.layers.Dense(2)(image)).save(str(tmp / "dense.hdf5"), save_format="h5")
    dense = tmp / "dense.hdf5"
    for script, args in (("evaluate.py", ("-e", tlt, "-m", dense)),
                         ("inference.py", ("-e", tlt, "-m", dense, "-i", tmp / "base" / "images", "-o",
                                           tmp / "dense_out")),
                         ("prune.py", ("-m", dense, "-o", tmp / "dense_pruned.hdf5"))):
        tries.check(f"{script}: a Keras model that is not frcnn_tf (F14)",
                    _one_line_error(_run(script, *args), "not an frcnn_tf model"))


def _inference_tries(tries, tmp, root, tlt, epoch1):
    same = tmp / "same"
    same.mkdir()
    shutil.copy(root / "images" / "000000.png", same / "a.png")
    Image.open(root / "images" / "000001.png").convert("RGB").save(same / "a.jpg")
    tries.check("inference: a.jpg + a.png is refused before any work (F3)",
                _one_line_error(_run("inference.py", "-e", tlt, "-m", epoch1, "-k", "secret", "-i", same, "-o",
                                     tmp / "same_out" / "img", "-l", tmp / "same_out" / "lab"),
                                "would be written for both"))
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    for name in ("000002.png", "000003.png"):
        shutil.copy(root / "images" / name, corrupt / name)
    (corrupt / "text.jpg").write_text("not an image")
    (corrupt / "zero.jpg").write_bytes(b"")
    data = (root / "images" / "000004.png").read_bytes()
    (corrupt / "cut.png").write_bytes(data[: len(data) // 3])
    Image.open(root / "images" / "000005.png").save(corrupt / "tiff.jpg", format="TIFF")
    result = _run("inference.py", "-e", tlt, "-m", epoch1, "-k", "secret", "-i", corrupt, "-o", tmp / "cor" / "img",
                  "-l", tmp / "cor" / "lab")
    tries.check("inference: unreadable images are skipped with a warning and counted (F9)",
                (result.returncode == 0 and "4 unreadable images skipped" in result.stdout
                 and result.stderr.count("unreadable image") >= 4, result.stderr[-500:]))


def test_replay_the_reliability_tries(tmp_path):
    root = tiny_dataset(tmp_path / "base", count=16)
    tries = Tries()
    _spec_tries(tries, tmp_path)
    _convert_tries(tries, tmp_path, root)
    _model_tries(tries, tmp_path, root)
    passed = sum(ok for _, ok, _ in tries.results)
    print(f"adversarial replay: {len(tries.results)} tried, {passed} passed")
    assert passed == len(tries.results), [(name, detail) for name, ok, detail in tries.results if not ok]
