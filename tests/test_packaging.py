"""Packaging: the default specs are package data, so a non-editable install runs frcnn-quickstart."""
import fnmatch
import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

PACKAGE_SPECS = REPO / "frcnn_tf" / "specs"
# The specs derive_specs reads, and the ones the README lists.
SPEC_NAMES = {"kitti_convert.txt", "frcnn_resnet18_train.txt", "frcnn_resnet18_retrain_qat.txt",
              "frcnn_resnet18_grayscale.txt"}


def test_specs_are_found_through_importlib_resources():
    from frcnn_tf import quickstart

    found = {entry.name for entry in (importlib.resources.files("frcnn_tf") / "specs").iterdir()
             if entry.name.endswith(".txt")}
    assert found == SPEC_NAMES
    for name in SPEC_NAMES:
        assert (quickstart.SPECS_DIR / name).read_bytes() == (PACKAGE_SPECS / name).read_bytes()


def test_top_level_specs_is_the_package_folder():
    """One copy of each spec in git: the user-facing specs/ links to frcnn_tf/specs."""
    top = REPO / "specs"
    assert top.is_symlink(), "specs/ should be a symlink to frcnn_tf/specs (a checkout without symlinks?)"
    assert os.readlink(top) == os.path.join("frcnn_tf", "specs")  # relative: survives moving the checkout
    assert top.resolve() == PACKAGE_SPECS.resolve()


def test_pyproject_package_data_lists_the_specs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data.get("frcnn_tf", [])
    for name in SPEC_NAMES:
        assert any(fnmatch.fnmatch(f"specs/{name}", pattern) for pattern in patterns), name


def test_wheel_carries_the_specs_and_quickstart_reads_them_from_it(tmp_path):
    """Builds a wheel from a copy of the sources (the checkout's build/ and egg-info stay untouched),
    unpacks it and derives the quickstart specs with only the unpacked package importable first."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(REPO / "frcnn_tf", source / "frcnn_tf", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("frcnn_tf-*.whl")
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        for name in SPEC_NAMES:
            assert archive.read(f"frcnn_tf/specs/{name}") == (PACKAGE_SPECS / name).read_bytes()
        archive.extractall(installed)

    code = ("import json, sys, frcnn_tf.quickstart as q\n"
            "paths = q.derive_specs(sys.argv[1], sys.argv[2], q.QuickstartOptions(), ['car'])\n"
            "print(json.dumps([q.__file__, str(q.SPECS_DIR)] + list(paths)))\n")
    env = {**os.environ, "PYTHONPATH": str(installed)}  # ahead of the editable install's finder
    workdir = tmp_path / "work"
    result = subprocess.run([sys.executable, "-c", code, str(workdir), str(tmp_path / "data")], env=env,
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    module, specs_dir, *written = json.loads(result.stdout.strip().splitlines()[-1])
    assert module.startswith(str(installed)) and specs_dir.startswith(str(installed))
    assert sorted(os.path.basename(path) for path in written) == [
        "frcnn_resnet10_retrain_qat.txt", "frcnn_resnet10_train.txt", "kitti_convert.txt"]  # the main job's arch
    assert all(os.path.isfile(path) and path.startswith(str(workdir)) for path in written)


def test_paths_under_top_level_specs_still_read():
    """README, bin/ examples and tests name specs/<file> at the top of the checkout."""
    for name in SPEC_NAMES:
        assert (REPO / "specs" / name).read_bytes() == (PACKAGE_SPECS / name).read_bytes()
