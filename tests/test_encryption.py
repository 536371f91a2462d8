"""Encrypted .tlt model files: round trip, wrong key, missing key, key resolution."""
import os

import numpy as np
import pytest
import tensorflow as tf

from frcnn_tf.errors import FrcnnError
from frcnn_tf.proto import experiment_pb2
from frcnn_tf.model import checkpoints


def _model():
    image = tf.keras.Input([4])
    return tf.keras.Model(image, tf.keras.layers.Dense(2, name="dense")(image))


def test_tlt_round_trip_and_wrong_key(tmp_path):
    model = _model()
    path = str(tmp_path / "m.tlt")
    checkpoints.save_model(model, path, {"class_names": ["a"]}, include_optimizer=False, key="s3cret")
    data = open(path, "rb").read()
    assert data.startswith(b"FRCNNTF1") and b"HDF" not in data[:64]
    loaded, metadata = checkpoints.load_model(path, key="s3cret")
    assert metadata == {"class_names": ["a"]}
    np.testing.assert_array_equal(loaded.get_layer("dense").kernel.numpy(), model.get_layer("dense").kernel.numpy())
    with pytest.raises(FrcnnError, match=r"m.tlt: wrong key \(enc_key in the spec or -k\)"):
        checkpoints.load_model(path, key="wrong")
    with pytest.raises(FrcnnError, match="encrypted; set enc_key in the spec or pass -k"):
        checkpoints.load_model(path)
    with pytest.raises(FrcnnError, match="encrypted; set enc_key in the spec or pass -k"):
        checkpoints.save_model(model, str(tmp_path / "n.tlt"), {}, key=None)
    target = _model()
    assert checkpoints.load_matching_weights(target, path, key="s3cret") == {"dense": "loaded"}
    assert not [p for p in tmp_path.iterdir() if p.suffix not in (".tlt",)]
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.tlt").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_key_resolution():
    spec = experiment_pb2.Experiment(enc_key="tlt")
    assert checkpoints.model_key(spec) == "tlt" and checkpoints.model_key(spec, "cli") == "cli"
    assert checkpoints.model_key(experiment_pb2.Experiment(enc_key="$KEY")) is None  # unset variable
    assert checkpoints.model_key(experiment_pb2.Experiment()) is None


def test_a_model_file_is_written_once_and_a_tlt_never_in_plaintext(tmp_path, monkeypatch):
    import errno

    written = []
    monkeypatch.setattr(checkpoints, "atomic_write_bytes", lambda path, data: written.append((path, data)))
    checkpoints.save_model(_model(), str(tmp_path / "m.tlt"), {}, include_optimizer=False, key="s3cret")
    assert [path for path, _ in written] == [str(tmp_path / "m.tlt")] and not os.listdir(tmp_path)
    assert written[0][1].startswith(b"FRCNNTF1") and b"\x89HDF" not in written[0][1]

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", path)
    monkeypatch.setattr(checkpoints, "atomic_write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        checkpoints.save_model(_model(), str(tmp_path / "m.hdf5"), {}, include_optimizer=False)
