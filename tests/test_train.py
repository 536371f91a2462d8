"""Training end to end on the real dataset at 128x192: loss falls, checkpoints, resume, NaN stop."""
import os

import tensorflow as tf

import pytest
from frcnn_tf.data.pipeline import InputPipeline
from frcnn_tf.errors import FrcnnError
from frcnn_tf import schedules
from frcnn_tf.model import checkpoints
from frcnn_tf.model.frcnn import build_model
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.train.trainer import TrainStep, train, training_frcnn
from kitti_fixtures import small_training_spec

pytestmark = pytest.mark.slow  # training on the real dataset


def _spec(tmp_path, records, image_dir, **kw):
    return load_experiment_spec(small_training_spec(tmp_path / f"spec{len(os.listdir(tmp_path))}.txt", records,
                                                    image_dir, tmp_path / "models" / "frcnn.hdf5", **kw))


def test_loss_falls_on_real_data(tmp_path, traffic_light_records, traffic_lights):
    spec = _spec(tmp_path, traffic_light_records, traffic_lights)
    tf.keras.utils.set_random_seed(1)
    frcnn = training_frcnn(build_model(spec), spec)
    optimizer = schedules.build_optimizer(spec.training_config.optimizer,
                                          schedules.build_schedule(spec.training_config.learning_rate, 40))
    step = TrainStep(spec, frcnn, optimizer, tf.distribute.get_strategy())
    fixed = next(iter(InputPipeline(spec).dataset(training=False, batch_size=2)))
    seed = tf.constant([5, 5], tf.int64)

    def detection_loss():
        values = step.loss_values(fixed["images"], fixed["boxes"], fixed["classes"], seed)
        return float(values["total"] - values["regularization"])

    before = detection_loss()
    stream = iter(InputPipeline(spec).dataset(training=True, batch_size=2, repeat=True))
    for index in range(15):
        step.step(next(stream), tf.constant([0, index], tf.int64))
    after = detection_loss()
    assert after < 0.7 * before, (before, after)


def test_checkpoint_resume_and_nan_stop(tmp_path, traffic_light_records, traffic_lights):
    spec = _spec(tmp_path, traffic_light_records, traffic_lights, epochs=1)
    first = train(spec, max_steps_per_epoch=3)
    epoch1 = str(tmp_path / "models" / "frcnn.epoch1.hdf5")
    assert first["checkpoints"] == [epoch1] and os.path.isfile(epoch1)
    model, metadata = checkpoints.load_model(epoch1)
    assert metadata["epoch"] == 1 and metadata["class_names"] == ["green", "red", "yellow", "background"]
    assert int(model.optimizer.iterations) == 3

    resume = _spec(tmp_path, traffic_light_records, traffic_lights, epochs=2,
                   extra=[("  enable_qat: false\n", f'  enable_qat: false\n  resume_from_model: "{epoch1}"\n')])
    second = train(resume, max_steps_per_epoch=3)
    assert [h["epoch"] for h in second["history"]] == [2]
    model, metadata = checkpoints.load_model(second["checkpoints"][0])
    assert second["checkpoints"][0].endswith("frcnn.epoch2.hdf5") and int(model.optimizer.iterations) == 6
    # The schedule follows the resumed spec (2 epochs x 3 steps), not the first run's 3 steps.
    assert model.optimizer.get_config()["learning_rate"]["config"]["total_steps"] == 6

    before = open(epoch1, "rb").read()
    exploding = _spec(tmp_path, traffic_light_records, traffic_lights, epochs=3, extra=[
        ("  enable_qat: false\n", f'  enable_qat: false\n  resume_from_model: "{epoch1}"\n'),
        ("image_scaling_factor: 1.0", "image_scaling_factor: 1e-30")])
    with pytest.raises(FrcnnError, match=f"the loss became .* at epoch 2, step [12]; .*last good checkpoint: {epoch1}"):
        train(exploding, max_steps_per_epoch=3)
    assert open(epoch1, "rb").read() == before
    assert not [n for n in os.listdir(tmp_path / "models") if ".tmp" in n]


def test_pretrained_weights_load_by_name(tmp_path, traffic_light_records, traffic_lights):
    spec = _spec(tmp_path, traffic_light_records, traffic_lights)
    source = build_model(spec)
    checkpoints.save_model(source, str(tmp_path / "pre.hdf5"), {}, include_optimizer=False)
    target = build_model(spec)
    status = checkpoints.load_matching_weights(target, str(tmp_path / "pre.hdf5"))
    assert set(status.values()) == {"loaded"}
    for a, b in zip(source.weights, target.weights):
        assert (a.numpy() == b.numpy()).all()
    spec.dataset_config.target_class_mapping["yellow"] = "amber"  # 5 classes: the heads no longer fit
    status = checkpoints.load_matching_weights(build_model(spec), str(tmp_path / "pre.hdf5"))
    assert status["dense_class_td"] == "shape mismatch" and status["conv1"] == "loaded"
