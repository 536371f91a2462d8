#!/usr/bin/env python3
"""KITTI -> TFRecords: `bin/dataset_convert.py -d SPEC -o OUTPUT_PREFIX`."""
from frcnn_tf.cli.dataset_convert import run

if __name__ == "__main__":
    run()
