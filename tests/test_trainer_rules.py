"""Small trainer rules with hand-computed numbers: early stopping, one-line errors."""
import types

from absl import app

from frcnn_tf.cli import run_main
from frcnn_tf.errors import FrcnnError
from frcnn_tf.train.trainer import early_stop


def _history(*losses):
    return [{"total": value} for value in losses]


def test_early_stop_by_hand():
    config = types.SimpleNamespace(patience=2, min_delta=0.1)
    assert not early_stop(_history(3.0, 2.0), config)  # not more epochs than patience yet
    assert not early_stop(_history(3.0, 2.0, 1.85), config)  # 1.85 < 2.0 - 0.1: improved
    assert early_stop(_history(3.0, 2.0, 1.95, 1.92), config)  # best 2.0; the last two stay above 1.9
    assert not early_stop(_history(3.0, 2.0, 1.95, 1.89), config)  # 1.89 < 1.9
    assert early_stop(_history(1.0, 1.5, 1.2), types.SimpleNamespace(patience=2, min_delta=0.0))


def test_a_multi_line_library_message_is_printed_on_one_line(capsys, monkeypatch):
    def main(argv):
        raise FrcnnError("m.epoch2.hdf5: cannot write the checkpoint (Can't close file (time = Fri\n, errno = 28));"
                         " last good checkpoint: m.epoch1.hdf5")

    statuses = []
    monkeypatch.setattr(app, "run", lambda guarded: statuses.append(guarded(["prog"])))
    run_main(main)
    assert statuses == [1]
    err = capsys.readouterr().err
    assert err == ("error: m.epoch2.hdf5: cannot write the checkpoint (Can't close file (time = Fri , errno = 28)); "
                   "last good checkpoint: m.epoch1.hdf5\n")
