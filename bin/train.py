#!/usr/bin/env python3
"""Train: `bin/train.py -e SPEC [-r RESULTS_DIR] [--gpus N]`."""
from frcnn_tf.cli.train import run

if __name__ == "__main__":
    run()
