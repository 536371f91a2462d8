"""Trains in a fresh process on N logical CPU devices under MirroredStrategy (the distribution tests' helper).

usage: python tests/mirrored_cpu_train.py REPLICAS SPEC MAX_STEPS_PER_EPOCH
Logical devices must be configured before TensorFlow initialises its devices, hence a process of its own.
Prints the checkpoints written, one per line.
"""
import sys

import tensorflow as tf

from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.train.trainer import train


def main(replicas, spec_path, max_steps):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    for path in train(load_experiment_spec(spec_path), strategy=strategy, max_steps_per_epoch=max_steps)["checkpoints"]:
        print(path)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
