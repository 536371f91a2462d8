"""The reliability review's tries (/work/shared/reference/reliability_findings.md), replayed on tiny data.

Every try runs a `bin/` command the way a user would and checks the promise it tests: bad input
ends with one `error: ...` line (rc 1, no traceback), outputs are atomic and protected, a killed
job leaves nothing a glob picks up, the `.tlt` key workflow holds. Slow (about 10 minutes on two
cores): `python -m pytest -m slow tests/test_adversarial.py -s` prints the tried/passed counts.
"""
import contextlib
import glob
import os
import pathlib
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


def _one_line_error(result, *parts, returncode=1):
    """rc 1 (or `returncode`), no traceback, the last stderr line is `error: ...` containing every part."""
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    ok = result.returncode == returncode and "Traceback" not in result.stderr and last.startswith("error: ")
    return ok and all(part in last for part in parts), last


def _ok(result):
    return result.returncode == 0, result.stderr.strip().splitlines()[-1:] if result.returncode else "rc 0"


class Tries:
    def __init__(self):
        self.results = []
        self.not_tried = []

    def check(self, name, outcome):
        passed, detail = outcome if isinstance(outcome, tuple) else (outcome, "")
        self.results.append((name, bool(passed), detail))
        print(f"{'PASS' if passed else 'FAIL'}  {name}  {'' if passed else detail}", flush=True)

    def skip(self, name, why):
        self.not_tried.append(name)
        print(f"NOT TRIED  {name}  ({why})", flush=True)


@contextlib.contextmanager
def _tmpfs(path, size, read_only=False):
    """A tmpfs of `size` bytes mounted at `path` (yields False where mounting is not allowed: not root)."""
    path.mkdir(parents=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


def _weights_finite(path):
    """Every float dataset of the Keras HDF5 `path` is finite (and the file opens)."""
    import h5py
    import numpy as np

    finite = []
    with h5py.File(path, "r") as model:
        model.visititems(lambda name, item: finite.append(bool(np.isfinite(item[()]).all()))
                         if isinstance(item, h5py.Dataset) and item.dtype.kind == "f" else None)
    return bool(finite) and all(finite)


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
        ("invalid escape on line 8 (F15)", spec("escape.txt", SPEC.replace("'bgr'", "'bgr\\xff'")),
         [":8:26: invalid string"]),
    ]
    for name, path, parts in cases:
        tries.check(f"validate_spec: {name}", _one_line_error(_run("validate_spec.py", "-e", path), str(path),
                                                              *parts))
    tries.check("validate_spec: a directory", _one_line_error(_run("validate_spec.py", "-e", tmp), str(tmp)))
    conversion = write_conversion_spec(tmp / "kind.txt", tmp)
    tries.check("dataset_convert: given a training spec",
                _one_line_error(_run("dataset_convert.py", "-d", REPO / "specs" / "frcnn_resnet18_train.txt", "-o",
                                     tmp / "kind_out" / "k"), "frcnn_resnet18_train.txt"))
    tries.check("train: given a conversion spec", _one_line_error(_run("train.py", "-e", conversion), conversion))
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


def _disk_tries(tries, tmp, root, spec):
    """Read-only and full disks (F11): one `error: PATH: ...` line, nothing partial under a final name."""
    shards = [path for path in glob.glob(str(tmp / "tfr" / "base-fold-*"))]
    pages = sum(-(-os.path.getsize(path) // 4096) for path in shards)
    cases = [("-o on a read-only tmpfs", "ro", 1 << 20, True, "ro/k", "Read-only file system"),
             ("-o in a subfolder of a read-only tmpfs", "ro_sub", 1 << 20, True, "ro_sub/sub/k",
              "Read-only file system"),
             ("a tmpfs fills while shards are written", "full", max(pages // 2, 1) * 4096, False, "full/k",
              "No space left on device"),
             ("the tmpfs fits the shards, not the summary", "fits", pages * 4096, False, "fits/base",
              "No space left on device")]
    for name, folder, size, read_only, prefix, message in cases:
        with _tmpfs(tmp / folder, size, read_only) as mounted:
            if not mounted:
                tries.skip(f"convert: {name} (F11)", "mounting a tmpfs needs root")
                continue
            result = _run("dataset_convert.py", "-d", spec, "-o", tmp / prefix)
            left = [str(path) for path in (tmp / folder).rglob("*") if path.name.startswith(".")]
            tries.check(f"convert: {name} (F11)", (_one_line_error(result, message)[0] and not left,
                                                   (result.stderr[-300:], left)))


def _checkpoint_disk_tries(tries, tmp, root, records, checkpoint_size):
    """Checkpoints on a tmpfs that holds one of them, and on one that holds none (F11)."""
    for name, size, last_good in (("the 2nd checkpoint does not fit", checkpoint_size * 3 // 2, "m.epoch1.hdf5"),
                                  ("no checkpoint fits", 2 << 20, "none written")):
        folder = tmp / f"ckpt_{size}"
        with _tmpfs(folder, size) as mounted:
            if not mounted:
                tries.skip(f"train: {name} (F11)", "mounting a tmpfs needs root")
                continue
            spec = _train_spec(tmp, f"ckpt_{size}.txt", root, records, folder / "m.hdf5", 2, [NO_VALIDATION])
            result = _run("train.py", "-e", spec, "--max_steps_per_epoch", 2)
            finals = sorted(folder.glob("m.epoch*.hdf5"))
            tries.check(f"train: {name}: one line naming the last good checkpoint (F11, A)",
                        (_one_line_error(result, "cannot write the checkpoint", "last good checkpoint: ")[0]
                         and last_good in result.stderr.strip().splitlines()[-1]
                         and all(_weights_finite(path) for path in finals)
                         and not [path for path in folder.iterdir() if path.name.startswith(".")],
                         (result.stderr[-400:], os.listdir(folder))))


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
    _model_file_tries(tries, tmp, tlt, epoch1, model)
    _export_tries(tries, tmp, root, _train_spec(tmp, "export.txt", root, records, tmp / "mg" / "m.hdf5"), model)
    _validation_tries(tries, tmp, root, records)
    _divergence_tries(tries, tmp, root, records)
    _kill_tries(tries, tmp, root, records)
    _checkpoint_disk_tries(tries, tmp, root, records, model.stat().st_size)
    _odd_image_tries(tries, tmp)
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


def _divergence_tries(tries, tmp, root, records):
    """NaN stops (N, F5): the named last good checkpoint has finite weights; every kept one does."""
    for name, lr, epochs in (("lr 1e6 stops with none written", ("base_lr: 0.02", "base_lr: 1e6"), 1),
                             ("soft start up to base_lr 50 (F5)", ("base_lr: 0.02", "base_lr: 50.0"), 3)):
        folder = tmp / f"nan_{epochs}"
        spec = _train_spec(tmp, f"nan_{epochs}.txt", root, records, folder / "m.hdf5", epochs,
                           [NO_VALIDATION, lr,
                            ("start_lr: 0.002", "start_lr: 1e6" if epochs == 1 else "start_lr: 0.002")])
        result = _run("train.py", "-e", spec, "--max_steps_per_epoch", 4)
        kept = sorted(folder.glob("m.epoch*.hdf5")) if folder.exists() else []
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        named = last.split("last good checkpoint: ")[-1].split(")")[0] if "last good checkpoint: " in last else None
        stopped = _one_line_error(result, "training stopped")[0] and named is not None
        tries.check(f"train: {name}", ((stopped or result.returncode == 0)
                                        and all(_weights_finite(path) for path in kept)
                                        and (named in (None, "none written") or _weights_finite(named))
                                        and (epochs > 1 or named == "none written"), (last, kept)))


def _validation_tries(tries, tmp, root, records):
    """F4: validation inputs checked before epoch 1; a bad validation image is named, the checkpoint kept."""
    val0 = _train_spec(tmp, "val0_2.txt", root, str(tmp / "tfr_val0" / "v-fold-*"), tmp / "mv2" / "m.hdf5", 2, [
        ("validation_period_during_training: 1", "validation_period_during_training: 2"),
        ("  enable_qat: false\n", "  enable_qat: false\n  checkpoint_interval: 2\n")])
    result = _run("train.py", "-e", val0, "--max_steps_per_epoch", 2)
    tries.check("train: val_split 0, validation period 2, checkpoint interval 2 (F4)",
                (_one_line_error(result, "no validation shards")[0] and "epoch 1/2" not in result.stderr,
                 result.stderr[-300:]))
    from frcnn_tf.data.pipeline import InputPipeline
    from frcnn_tf.spec import load_experiment_spec

    garbage_root = tmp / "garbage"
    shutil.copytree(root, garbage_root)
    spec = _train_spec(tmp, "garbage.txt", garbage_root, records, tmp / "mgb" / "m.hdf5", 1)
    validation = [path for path, _ in InputPipeline(load_experiment_spec(spec)).split_images(training=False)]
    with open(validation[0], "wb") as image:
        image.write(os.urandom(3000))
    result = _run("train.py", "-e", spec, "--max_steps_per_epoch", 2)
    tries.check("train: a validation image replaced by garbage is named, the checkpoint kept (F4, F7)",
                (result.returncode == 0 and f"{validation[0]}: unreadable image" in result.stderr
                 and (tmp / "mgb" / "m.epoch1.hdf5").exists(), result.stderr[-300:]))


def _kill_tries(tries, tmp, root, records):
    """kill -9 mid-run, while the epoch-2 checkpoint is written (A), then resume from epoch 1 (R)."""
    folder = tmp / "mkill"
    spec = _train_spec(tmp, "kill.txt", root, records, folder / "m.hdf5", 3, [NO_VALIDATION])
    child = subprocess.Popen([sys.executable, str(REPO / "bin" / "train.py"), "-e", spec, "--max_steps_per_epoch", "3"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and child.poll() is None:
        names = os.listdir(folder) if folder.exists() else []
        if any("epoch2" in name for name in names):
            break
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    names = sorted(os.listdir(folder))
    finals = sorted(folder.glob("m.epoch*.hdf5"))
    tries.check("train: kill -9 while the epoch-2 checkpoint is written leaves only whole checkpoints (A)",
                ((folder / "m.epoch1.hdf5") in finals and all(_weights_finite(path) for path in finals), names))
    resume = _train_spec(tmp, "kill_resume.txt", root, records, folder / "m.hdf5", 3, [
        NO_VALIDATION, ("  enable_qat: false\n", f'  enable_qat: false\n  resume_from_model: "{finals[-1]}"\n')])
    result = _run("train.py", "-e", resume, "--max_steps_per_epoch", 3)
    epoch = int(finals[-1].name.split("epoch")[1].split(".")[0]) + 1
    tries.check("train: resume after the kill continues at the next epoch and removes the temporaries (R)",
                (result.returncode == 0 and f"at epoch {epoch}" in result.stderr
                 and not [name for name in os.listdir(folder) if name.startswith(".")]
                 and (folder / "m.epoch3.hdf5").exists(), (names, result.stderr[-300:])))


def _odd_image_tries(tries, tmp):
    """Decodable images in odd formats and modes (under .png names) train; odd labels are read or reported."""
    odd = tiny_dataset(tmp / "odd", count=10)
    images = odd / "images"
    Image.open(images / "000000.png").convert("RGBA").save(images / "000000.png")
    Image.open(images / "000001.png").convert("L").save(images / "000001.png")
    Image.open(images / "000002.png").convert("I;16").save(images / "000002.png")
    Image.open(images / "000003.png").convert("CMYK").save(images / "000003.png", format="JPEG")
    Image.open(images / "000004.png").save(images / "000004.png", format="BMP")
    Image.open(images / "000005.png").save(images / "000005.png", format="WEBP")
    (odd / "labels" / "000006.txt").write_bytes(kitti_line("car", (4, 4, 36, 30)).encode() + b"\nvoiture\xe9 0 0 0 1 1 "
                                                b"9 9 0 0 0 0 0 0 0\n")
    spec = write_conversion_spec(tmp / "odd.txt", odd, val_split=0, shards=1)
    result = _run("dataset_convert.py", "-d", spec, "-o", tmp / "tfr_odd" / "o")
    tries.check("convert: odd image formats accepted, a latin-1 label line reported as FILE:LINE (S)",
                (result.returncode == 0 and "000006.txt:" in result.stderr and "000005" not in result.stderr,
                 result.stderr[-400:]))
    huge = tiny_dataset(tmp / "huge", count=1)
    (huge / "labels" / "000000.txt").write_text("\n".join([kitti_line("car", (4, 4, 36, 30))] * 100000) + "\n")
    started = time.time()
    result = _run("dataset_convert.py", "-d", write_conversion_spec(tmp / "huge.txt", huge, val_split=0, shards=1),
                  "-o", tmp / "tfr_huge" / "h")
    tries.check("convert: a 100,000-line label file", (result.returncode == 0 and time.time() - started < 120,
                                                       result.stderr[-300:]))
    train_spec = _train_spec(tmp, "odd_train.txt", odd, str(tmp / "tfr_odd" / "o-fold-*"), tmp / "modd" / "m.hdf5",
                             1, [NO_VALIDATION])
    tries.check("train: RGBA, grey, 16-bit, CMYK JPEG, BMP and WebP images train",
                _ok(_run("train.py", "-e", train_spec, "--max_steps_per_epoch", 5)))


def _model_file_tries(tries, tmp, tlt, epoch1, model):
    """Keys, damaged model files, class lists and TensorRT where it is absent (K, E)."""
    for name, args, parts in (
            ("evaluate: a .tlt without a key", ("-m", epoch1), ("key",)),
            ("evaluate: a .tlt with a wrong key", ("-m", epoch1, "-k", "wrong"), ("wrong key",))):
        plain = tmp / "nokey.txt"
        plain.write_text(pathlib.Path(tlt).read_text().replace('enc_key: "secret"\n', ""))
        tries.check(name, _one_line_error(_run("evaluate.py", "-e", plain, *args, "-r", tmp / "evk"), *parts))
    truncated = tmp / "truncated.hdf5"
    truncated.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    corrupt_onnx = tmp / "corrupt.onnx"
    corrupt_onnx.write_bytes(os.urandom(5000))
    empty = tmp / "empty.hdf5"
    import h5py

    h5py.File(empty, "w").close()
    for name, path in (("a truncated HDF5", truncated), ("an HDF5 without a model", empty),
                       ("a corrupt ONNX", corrupt_onnx)):
        tries.check(f"evaluate: {name}", _one_line_error(_run("evaluate.py", "-e", tlt, "-m", path, "-r", tmp / "evc"),
                                                         str(path)))
    classes = tmp / "classes.txt"
    classes.write_text(pathlib.Path(tlt).read_text().replace("key: 'car' value: 'car'", "key: 'car' value: 'truck'"))
    tries.check("evaluate: a spec whose classes differ from the model's",
                _one_line_error(_run("evaluate.py", "-e", classes, "-m", model, "-r", tmp / "evcl"),
                                "the model's classes ['car', 'background'] differ"))
    engine = tmp / "m.engine"
    engine.write_bytes(b"not an engine")
    tries.check("evaluate: a .engine without TensorRT exits 2",
                _one_line_error(_run("evaluate.py", "-e", tlt, "-m", engine, "-r", tmp / "eve"), "TensorRT",
                                returncode=2))


def _export_tries(tries, tmp, root, spec, model):
    """Export and its INT8 calibration input (O, E, F13, F14); build_engine without TensorRT."""
    onnx = tmp / "exp" / "m.onnx"
    result = _run("export.py", "-m", model, "-o", onnx, "-e", spec)
    tries.check("export: fp32, and the ONNX passes the TensorRT rules",
                (result.returncode == 0 and _run("check_onnx.py", onnx).returncode == 0, result.stderr[-300:]))
    tries.check("export: an existing ONNX is refused", _one_line_error(_run("export.py", "-m", model, "-o", onnx, "-e",
                                                                            spec), "--overwrite"))
    tries.check("export: a Keras model that is not frcnn_tf (F14)",
                _one_line_error(_run("export.py", "-m", tmp / "dense.hdf5", "-o", tmp / "exp" / "d.onnx", "-e", spec),
                                "not an frcnn_tf model"))
    tries.check("export: int8 --batch_size 0 (F13)",
                _one_line_error(_run("export.py", "-m", model, "-o", tmp / "exp" / "b0.onnx", "-e", spec, "--data_type",
                                     "int8", "--batch_size", 0), "--batch_size 0"))
    calibration = tmp / "cal"
    calibration.mkdir()
    for index in range(4):
        shutil.copy(root / "images" / f"{index:06d}.png", calibration / f"{index:06d}.png")
    (calibration / "text.png").write_text("not an image")
    (calibration / "zero.png").write_bytes(b"")
    result = _run("export.py", "-m", model, "-o", tmp / "exp" / "q.onnx", "-e", spec, "--data_type", "int8",
                  "--cal_image_dir", calibration, "--batches", 6, "--batch_size", 1)
    tries.check("export: int8 with unreadable calibration images names and skips them (F13)",
                (result.returncode == 0 and "text.png" in result.stderr and "zero.png" in result.stderr
                 and (tmp / "exp" / "q.onnx").exists(), result.stderr[-400:]))
    result = _run("export.py", "-m", model, "-o", tmp / "exp" / "q10.onnx", "-e", spec, "--data_type", "int8",
                  "--cal_image_dir", calibration, "--batches", 10, "--batch_size", 8)
    tries.check("export: int8 on 4 images for --batches 10 x --batch_size 8 warns (F13)",
                (result.returncode == 0
                 and "fewer than (--batches 10 + 1 held back) x --batch_size 8" in result.stderr,
                 result.stderr[-400:]))
    tries.check("build_engine: without TensorRT exits 2 with one line",
                _one_line_error(_run("build_engine.py", "-m", onnx, "--engine_file", tmp / "exp" / "m.engine"),
                                "TensorRT", returncode=2))


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
    _disk_tries(tries, tmp_path, root, write_conversion_spec(tmp_path / "disk.txt", root, val_split=25, shards=2))
    _model_tries(tries, tmp_path, root)
    passed = sum(ok for _, ok, _ in tries.results)
    print(f"adversarial replay: {len(tries.results)} tried, {passed} passed, {len(tries.not_tried)} not tried "
          f"(need root): {tries.not_tried}")
    assert passed == len(tries.results), [(name, detail) for name, ok, detail in tries.results if not ok]
