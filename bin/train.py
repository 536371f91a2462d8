#!/usr/bin/env python3
"""Train: `bin/train.py -e SPEC [-r RESULTS_DIR] [--gpus N]` (with TF_CONFIG: one worker of several)."""
from frcnn_tf.cli.train import run

if __name__ == "__main__":
    run()
