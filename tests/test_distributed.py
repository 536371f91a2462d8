"""Issue 19: training on several replicas, on one machine (MirroredStrategy on two logical CPU devices) and
as two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy configured by TF_CONFIG).

What is compared, and why it must match: a run of 2 replicas with batch_size_per_gpu 1 against the run of
one replica with batch 2, from the same seed (so the same initial weights) on the same data, in float32.
- Data: the tiny data has one training file, fewer than the workers, so each worker takes its consecutive
  slice of every global batch (and MirroredStrategy hands its replicas consecutive batches): replica r
  trains on image r of the one-replica batch. An image's augmentation is seeded by its index in the
  global stream, so it is augmented alike in both runs.
- Sampling: the anchor and RoI sampling draws its random numbers for the global batch and each replica
  takes its images' rows (frcnn_tf.targets `rows`), so every image gets the samples it gets in the
  one-replica batch. gt_as_roi makes foreground RoIs certain, so every loss term is exercised.
- BatchNorm is frozen (the spec's freeze_bn, TLT's default): batch statistics of a replica's slice would
  differ from those of the whole batch (per-replica statistics, as under TLT's Horovod).
- Reduction: each replica divides its loss (the mean over its images) by the replica count and the
  optimizer sums the replicas' gradients: the gradient of the global-batch mean.
So each step's losses (the chief's TensorBoard events) and the weights after each step (its checkpoints)
agree up to float32 summation order; 1e-4 relative is the bound.
"""
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from frcnn_tf.errors import FrcnnError
from frcnn_tf.model import checkpoints
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.train import distribution
from frcnn_tf.train.trainer import LOSS_NAMES, train
from kitti_fixtures import converted_tiny_dataset, tiny_training_spec

NO_VALIDATION = ("validation_period_during_training: 1", "validation_period_during_training: 100")
GT_AS_ROI = ("gt_as_roi: false", "gt_as_roi: true")
TIMEOUT = 600  # seconds for a whole run of two workers
SCRATCH = r"is not the chief: its checkpoints and events go to (\S+), removed"  # in a worker's log


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(KITTI root, shard glob) of tiny_dataset converted with one shard per fold (9 training frames)."""
    return converted_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def _spec(folder, tiny, name, batch, epochs, extra=()):
    """A tiny spec writing to folder/name/m.hdf5 (checkpoint every epoch, no validation)."""
    root, records = tiny
    return tiny_training_spec(folder / f"{name}-{epochs}.txt", records, root, folder / name / "m.hdf5", epochs,
                              [NO_VALIDATION, GT_AS_ROI, ("batch_size_per_gpu: 2", f"batch_size_per_gpu: {batch}"),
                               *extra])


def _resuming(checkpoint):
    return ("  enable_qat: false\n", f'  enable_qat: false\n  resume_from_model: "{checkpoint}"\n')


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """The one-replica run: global batch 2, 3 epochs of one step; its output folder."""
    folder = tmp_path_factory.mktemp("reference")
    train(load_experiment_spec(_spec(folder, tiny, "one", 2, 3)), max_steps_per_epoch=1)
    return folder / "one"


def _events(folder):
    """{tag: {step: value}} of the TensorBoard scalars in folder/logs (exactly one events file)."""
    (path,) = (folder / "logs").iterdir()
    scalars = {}
    for record in tf.data.TFRecordDataset(str(path)):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return scalars


def _assert_trains_like(run, reference):
    """Each step's losses within 1e-4 relative and the weights after the first step (and the last) within 1e-4
    of each tensor's largest magnitude; returns (largest loss difference, largest weight difference), relative."""
    expected, got = _events(reference), _events(run)
    assert expected["loss/rcnn_regress"][0] > 0  # foreground RoIs: every loss term is compared
    loss_difference = 0.0
    for name in LOSS_NAMES:
        assert sorted(got[f"loss/{name}"]) == [0, 1, 2]
        for step, value in expected[f"loss/{name}"].items():
            assert got[f"loss/{name}"][step] == pytest.approx(value, rel=1e-4, abs=1e-7), (name, step)
            loss_difference = max(loss_difference, abs(got[f"loss/{name}"][step] - value) / max(abs(value), 1e-7))
    weight_difference = 0.0
    for epoch in (1, 3):
        ours, theirs = (checkpoints.load_model(str(folder / f"m.epoch{epoch}.hdf5"))[0] for folder in (run, reference))
        assert int(ours.optimizer.iterations) == epoch
        for mine, other in zip(ours.get_weights(), theirs.get_weights()):
            scale = max(float(np.abs(other).max()), 1e-6)
            difference = float(np.abs(mine - other).max()) / scale
            assert difference <= 1e-4, (epoch, difference)
            weight_difference = max(weight_difference, difference)
    return loss_difference, weight_difference


def _environment(**extra):
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONPATH": path, **extra}


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


class Workers:
    """Two `bin/train.py` processes on 127.0.0.1, worker 0 the chief; their output in folder/NAME-INDEX.{out,err}."""

    def __init__(self, folder, name, spec, max_steps=1):
        self.folder, self.name = folder, name
        self.addresses = [f"127.0.0.1:{port}" for port in _free_ports(2)]
        self.processes = []
        for index in range(2):
            config = {"cluster": {"worker": self.addresses}, "task": {"type": "worker", "index": index}}
            with open(folder / f"{name}-{index}.out", "w") as out, open(folder / f"{name}-{index}.err", "w") as err:
                self.processes.append(subprocess.Popen(
                    [sys.executable, str(REPO / "bin" / "train.py"), "-e", spec, "--max_steps_per_epoch",
                     str(max_steps)], stdout=out, stderr=err, env=_environment(TF_CONFIG=json.dumps(config))))

    def wait(self, index, timeout=TIMEOUT):
        try:
            return self.processes[index].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"worker {index} did not finish within {timeout} s:\n{self.output(index, 'err')[-3000:]}")

    def output(self, index, stream):
        return (self.folder / f"{self.name}-{index}.{stream}").read_text()

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def started():
    """Starts Workers and kills whichever are still running at the end of the test."""
    runs = []

    def start(*args, **kwargs):
        runs.append(Workers(*args, **kwargs))
        return runs[-1]
    yield start
    for run in runs:
        run.stop()


@pytest.mark.slow
def test_two_replicas_on_one_machine_train_as_one_replica_with_the_global_batch(tiny, reference, tmp_path):
    """MirroredStrategy on two logical CPU devices (a process of its own: logical devices must be set before
    TensorFlow starts); then a two-replica run of global batch 4 resumes the one-replica run (batch 2)."""
    two = _spec(tmp_path, tiny, "two", 1, 3)
    resumed = _spec(tmp_path, tiny, "resumed", 2, 3, [_resuming(reference / "m.epoch2.hdf5")])
    run = subprocess.run([sys.executable, str(REPO / "tests" / "mirrored_cpu_train.py"), "2", two, "1", resumed, "2"],
                         capture_output=True, text=True, env=_environment(), timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "training on 2 replica(s) (MirroredStrategy on " in run.stderr
    assert "global batch 2 = batch_size_per_gpu 1 x 2 replica(s)" in run.stderr
    differences = _assert_trains_like(tmp_path / "two", reference)
    print(f"MirroredStrategy, 2 replicas vs 1: largest relative differences: losses {differences[0]:.2e}, "
          f"weights {differences[1]:.2e}")

    # Resumed at epoch 3 with global batch 4 (2 steps per epoch) after 2 one-step epochs of batch 2: the stream
    # continues after the 4 examples seen and the schedule at the start of epoch 3 in this run's steps (2 x 2).
    assert "was trained with a global batch of 2, this run's is 4: training continues after its 4 examples, the " \
           "schedule at step 4" in run.stderr
    model, metadata = checkpoints.load_model(str(tmp_path / "resumed" / "m.epoch3.hdf5"))
    assert int(model.optimizer.iterations) == 6 and metadata["examples_seen"] == 4 + 2 * 4
    assert metadata["global_batch_size"] == 4


@pytest.mark.slow
def test_two_workers_train_as_one_replica_with_the_global_batch(tiny, reference, tmp_path, started):
    """Two worker processes (MultiWorkerMirroredStrategy through TF_CONFIG, the CLI's path); only the chief
    writes checkpoints and events, the other worker's scratch folder is gone at the end."""
    workers = started(tmp_path, "mw", _spec(tmp_path, tiny, "mw", 1, 3))
    assert [workers.wait(0), workers.wait(1)] == [0, 0], workers.output(0, "err")[-3000:]
    differences = _assert_trains_like(tmp_path / "mw", reference)  # _events: the chief's file alone
    print(f"MultiWorkerMirroredStrategy, 2 workers vs 1 replica: largest relative differences: losses "
          f"{differences[0]:.2e}, weights {differences[1]:.2e}")
    assert workers.output(0, "out").splitlines()[-3:] == [f"checkpoint: {tmp_path / 'mw' / f'm.epoch{epoch}.hdf5'}"
                                                          for epoch in (1, 2, 3)]
    assert "checkpoint:" not in workers.output(1, "out")
    assert "this is worker 0 (127.0.0.1:" in workers.output(0, "err")
    (scratch,) = re.findall(SCRATCH, workers.output(1, "err"))
    assert not os.path.exists(scratch)


@pytest.mark.slow
def test_a_dead_worker_stops_the_chief_naming_the_checkpoint_to_resume_from(tiny, tmp_path, started):
    """Worker 1 is killed once the chief has written a checkpoint: the chief ends within a bounded time with one
    error line naming the worker and the last checkpoint; two workers resume from it."""
    workers = started(tmp_path, "dead", _spec(tmp_path, tiny, "dead", 1, 50))
    first = tmp_path / "dead" / "m.epoch1.hdf5"
    deadline = time.monotonic() + TIMEOUT
    while not first.exists():
        assert workers.processes[0].poll() is None, workers.output(0, "err")[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within the timeout"
        time.sleep(0.2)
    workers.processes[1].kill()
    workers.processes[1].wait()  # reaped: its scratch folder now belongs to a dead process
    killed = time.monotonic()
    assert workers.wait(0, timeout=120) == 1
    elapsed = time.monotonic() - killed
    errors = [line for line in workers.output(0, "err").splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in workers.output(0, "err"), errors
    found = re.fullmatch(rf"error: worker 1 \({re.escape(workers.addresses[1])}\) stopped responding \(see its log\): "
                         r"the run stopped at epoch \d+ step 1; resume with training_config.resume_from_model: "
                         rf"({re.escape(str(tmp_path / 'dead'))}/m\.epoch(\d+)\.hdf5)", errors[0])
    assert found, errors[0]
    print(f"the chief stopped {elapsed:.1f} s after worker 1 was killed: {errors[0]}")
    checkpoint, epoch = found.group(1), int(found.group(2))
    assert os.path.isfile(checkpoint)
    (scratch,) = re.findall(SCRATCH, workers.output(1, "err"))
    assert os.path.isdir(scratch)  # a killed worker cannot clean up

    again = started(tmp_path, "resume", _spec(tmp_path, tiny, "dead", 1, epoch + 1, [_resuming(checkpoint)]))
    assert [again.wait(0), again.wait(1)] == [0, 0], again.output(0, "err")[-3000:]
    resumed = tmp_path / "dead" / f"m.epoch{epoch + 1}.hdf5"
    assert again.output(0, "out").splitlines()[-1] == f"checkpoint: {resumed}"
    model, metadata = checkpoints.load_model(str(resumed))
    assert int(model.optimizer.iterations) == epoch + 1 and metadata["examples_seen"] == 2 * (epoch + 1)
    assert f"{scratch}: removing a temporary folder left by an interrupted run" in again.output(1, "err")
    assert not os.path.exists(scratch)


def test_more_gpus_than_visible_and_bad_tf_config_are_one_line(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    visible = len(tf.config.list_physical_devices("GPU"))
    asked = max(visible + 1, 2)
    with pytest.raises(FrcnnError, match=rf"^--gpus {asked} asked for, but {visible} GPUs are visible$"):
        distribution.strategy_for(asked)
    for config, message in (("{cluster", r"TF_CONFIG: not a cluster and task \(JSONDecodeError"),
                            ('{"cluster": {"worker": ["a:1"]}}', r"TF_CONFIG: not a cluster and task \(KeyError"),
                            ('{"cluster": {"ps": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
                             r"jobs \['ps'\] are not trained by frcnn_tf"),
                            ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
                             "task index 1 is not one of the 1 worker addresses")):
        monkeypatch.setenv("TF_CONFIG", config)
        with pytest.raises(FrcnnError, match=message):
            distribution.strategy_for(1)


def test_a_lost_peer_is_named_from_tensorflows_message():
    """The messages are those TensorFlow 2.21 gave when worker 1, then worker 0 (the chief), was killed."""
    addresses = {("worker", 0): "127.0.0.1:5000", ("worker", 1): "127.0.0.1:5001"}
    chief = distribution.Role(chief=True, task=("worker", 0), addresses=addresses)
    worker = distribution.Role(chief=False, task=("worker", 1), addresses=addresses)
    heartbeat = tf.errors.UnavailableError(None, None, (
        "Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are unhealthy "
        "(stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed."))
    assert str(chief.lost_peer(heartbeat, 3, 1, "/m/m.epoch2.hdf5")) == (
        "worker 1 (127.0.0.1:5001) stopped responding (see its log): the run stopped at epoch 3 step 1; resume "
        "with training_config.resume_from_model: /m/m.epoch2.hdf5")
    reset = tf.errors.UnavailableError(None, None, (
        "Collective ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC error information from "
        "remote target /job:worker/replica:0/task:0 while calling /tensorflow.WorkerService/CompleteInstance"))
    assert str(worker.lost_peer(reset, 1, 2, None)) == (
        "worker 0 (127.0.0.1:5000) stopped responding (see its log): the run stopped at epoch 1 step 2; no "
        "checkpoint was written yet: start the run again")
    assert distribution.Role(chief=True).lost_peer(heartbeat, 1, 1, None) is None  # one process: not a lost peer
