"""Issue 14: the `.tlt` + key workflow, killed jobs and bad files never lose, corrupt or expose work.

Each test names the finding of the reliability review (F1-F17, and observations) it guards.
Data: tiny_dataset (12 PNG frames of 64x48) converted once; models: ResNet10 at 32x48.
"""
import os

import pytest

from frcnn_tf.data import convert
from frcnn_tf.errors import FrcnnError
from frcnn_tf.spec import load_conversion_spec, load_experiment_spec
from frcnn_tf.train import checkpoints
from frcnn_tf.train.trainer import train
from kitti_fixtures import tiny_dataset, tiny_training_spec, write_conversion_spec

NO_VALIDATION = ("validation_period_during_training: 1", "validation_period_during_training: 100")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(KITTI root, shard glob) of tiny_dataset converted with 3 validation frames, one shard per fold."""
    tmp = tmp_path_factory.mktemp("tiny")
    root = tiny_dataset(tmp / "kitti")
    spec = load_conversion_spec(write_conversion_spec(tmp / "convert.txt", root, val_split=25, shards=1))
    convert.convert(spec, str(tmp / "tfr" / "t"), workers=1)
    return root, str(tmp / "tfr" / "t-fold-*")


def _spec_path(tmp_path, tiny, output_model, epochs=1, extra=()):
    root, records = tiny
    name = f"spec{len([p for p in os.listdir(tmp_path) if p.startswith('spec')])}.txt"
    return tiny_training_spec(tmp_path / name, records, root, output_model, epochs, extra)


@pytest.mark.slow
def test_f1_tlt_checkpoints_open_with_the_spec_key_through_resume_evaluate_prune(tiny, tmp_path):
    from frcnn_tf.evaluate import run_evaluate
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
