"""Shared test fixtures: repository paths and the shared real data."""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("FRCNN_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_specs():
    path = SHARED / "specs"
    if not path.is_dir():
        pytest.skip(f"reference specs not found at {path} (set FRCNN_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def traffic_lights():
    path = SHARED / "data" / "traffic_lights"
    if not path.is_dir():
        pytest.skip(f"real dataset not found at {path} (set FRCNN_SHARED_DIR)")
    return path
