"""Trains in a fresh process on N logical CPU devices under MirroredStrategy (the distribution tests' helper).

usage: python tests/mirrored_cpu_train.py REPLICAS SPEC MAX_STEPS_PER_EPOCH [SPEC MAX_STEPS_PER_EPOCH ...]
Logical devices must be configured before TensorFlow initialises its devices, hence a process of its own.
The specs are trained one after the other (MAX_STEPS_PER_EPOCH 0: no cap); prints the checkpoints written
and logs at INFO level, as bin/train.py does.
"""
import sys

import tensorflow as tf
from absl import logging

from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.train.trainer import train


def main(replicas, runs):
    logging.set_verbosity(logging.INFO)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    for spec_path, max_steps in runs:
        result = train(load_experiment_spec(spec_path), strategy=strategy, max_steps_per_epoch=max_steps or None)
        for path in result["checkpoints"]:
            print(path)


if __name__ == "__main__":
    arguments = sys.argv[2:]
    main(int(sys.argv[1]), [(arguments[i], int(arguments[i + 1])) for i in range(0, len(arguments), 2)])
