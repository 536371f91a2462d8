"""Data-parallel training: the tf.distribute strategy of a run and this process's role in it.

One machine with N GPUs (`--gpus N`): MirroredStrategy. Several machines, or several processes:
MultiWorkerMirroredStrategy, configured by the standard TF_CONFIG environment variable
(`{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": i}}`);
each worker uses `--gpus` of its GPUs (or its CPU). Every replica runs the same training step on
its own slice of the global batch; the first worker (or the `chief` task) is the chief: only it
writes checkpoints, TensorBoard events and validation results, the others write theirs to a
temporary folder that is removed at the end (TensorFlow's multi-worker pattern).
"""
import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from frcnn_tf.errors import FrcnnError
from frcnn_tf.io_utils import remove_stale_temporaries, temporary_path

# What a collective op raises on the others when a worker stops (MultiWorkerMirroredStrategy's
# coordination service notices the missing heartbeats within seconds and aborts the collectives).
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
               tf.errors.DeadlineExceededError)
_TASK = re.compile(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)")


def _tf_config():
    """TF_CONFIG's (cluster {job: [addresses]}, task type, task index), or None when it is unset."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        job, index = task["type"], int(task["index"])
        addresses = cluster[job]
    except (ValueError, KeyError, TypeError) as err:
        raise FrcnnError(f"TF_CONFIG: not a cluster and task ({type(err).__name__}: {err}); expected "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
                         ) from None
    unknown = sorted(set(cluster) - {"chief", "worker"})
    if unknown or job not in ("chief", "worker"):
        raise FrcnnError(f"TF_CONFIG: jobs {unknown or [job]} are not trained by frcnn_tf; use 'worker' (and "
                         "optionally one 'chief') tasks")
    if not 0 <= index < len(addresses):
        raise FrcnnError(f"TF_CONFIG: task index {index} is not one of the {len(addresses)} {job} addresses")
    return cluster, job, index


def strategy_for(gpus):
    """The strategy of a run: MultiWorkerMirroredStrategy under TF_CONFIG (each worker on `gpus` GPUs, or
    its CPU where it has none), MirroredStrategy on `gpus` > 1 GPUs, else None (TensorFlow's default)."""
    config = _tf_config()
    visible = tf.config.list_physical_devices("GPU")
    if gpus > 1 and len(visible) < gpus:
        raise FrcnnError(f"--gpus {gpus} asked for, but {len(visible)} GPUs are visible")
    if config is not None:
        if visible:
            tf.config.set_visible_devices(visible[:gpus], "GPU")
        _, job, index = config
        logging.info("TF_CONFIG: %s %d of a multi-worker run; waiting for every worker to start", job, index)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if gpus > 1:
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(gpus)])
    return None


@dataclasses.dataclass(frozen=True)
class Role:
    """This process in a run: chief (writes the outputs) or not, its task, and the addresses of all tasks."""

    chief: bool
    task: tuple = None  # (job, index) in a multi-worker run, else None
    addresses: dict = dataclasses.field(default_factory=dict)  # {(job, index): "host:port"}

    @classmethod
    def of(cls, strategy):
        resolver = strategy.cluster_resolver
        if resolver is None or not resolver.cluster_spec().jobs:
            return cls(chief=True)
        spec = resolver.cluster_spec()
        addresses = {(job, index): spec.task_address(job, index) for job in spec.jobs
                     for index in range(spec.num_tasks(job))}
        return cls(chief=strategy.extended.should_checkpoint, task=(resolver.task_type, resolver.task_id),
                   addresses=addresses)

    @property
    def multi_worker(self):
        return self.task is not None

    def name(self, task=None):
        """'worker 1 (host:port)' for `task` (default: this process)."""
        job, index = task or self.task
        return f"{job} {index} ({self.addresses[(job, index)]})"

    def describe(self, strategy):
        """How the replicas are spread, for the log."""
        if self.multi_worker:
            return (f"MultiWorkerMirroredStrategy over {len(self.addresses)} workers; this is {self.name()}"
                    f"{', the chief' if self.chief else ''}")
        if strategy.num_replicas_in_sync == 1:
            return "one device"
        return f"{type(strategy).__name__} on {', '.join(strategy.extended.worker_devices)}"

    @contextlib.contextmanager
    def scratch(self):
        """None on the chief; elsewhere a temporary folder (in the system's temporary directory, hidden, with
        the process id) for the worker's checkpoints and events, removed at the end; folders of killed
        workers are removed by the next run of that worker."""
        if self.chief:
            yield None
            return
        prefix = os.path.join(tempfile.gettempdir(), f"frcnn-{self.task[0]}{self.task[1]}")
        remove_stale_temporaries(prefix)
        folder = temporary_path(prefix)
        os.makedirs(folder)
        logging.info("%s is not the chief: its checkpoints and events go to %s, removed at the end", self.name(),
                     folder)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def lost_peer(self, err, epoch, step, last_good):
        """The FrcnnError for a collective op (one of PEER_ERRORS) that failed because another task stopped;
        None outside a multi-worker run."""
        if not self.multi_worker:
            return None
        tasks = [(job, int(index)) for job, index in _TASK.findall(err.message)]
        peers = [task for task in tasks if task in self.addresses and task != self.task]
        who = self.name(peers[0]) if peers else "another worker"
        resume = (f"resume with training_config.resume_from_model: {last_good}" if last_good else
                  "no checkpoint was written yet: start the run again")
        return FrcnnError(f"{who} stopped responding (see its log): the run stopped at epoch {epoch} step {step}; "
                          f"{resume}")
