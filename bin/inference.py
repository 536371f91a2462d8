#!/usr/bin/env python3
"""inference: see `bin/inference.py --help`."""
from frcnn_tf.cli.inference import run

if __name__ == "__main__":
    run()
