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


@pytest.fixture(scope="session")
def traffic_light_records(traffic_lights, tmp_path_factory):
    """The real dataset converted once: shards at <dir>/tl-fold-00{0,1}-of-002-shard-0000{0,1}-of-00002."""
    from frcnn_tf.data import convert
    from frcnn_tf.spec import load_conversion_spec
    from kitti_fixtures import write_conversion_spec

    tmp = tmp_path_factory.mktemp("records")
    spec = load_conversion_spec(write_conversion_spec(tmp / "c.txt", traffic_lights, val_split=14, shards=2,
                                                      extension=".jpg"))
    convert.convert(spec, str(tmp / "tl"), workers=2)
    return tmp
