#!/usr/bin/env python3
"""evaluate: see `bin/evaluate.py --help`."""
from frcnn_tf.cli.evaluate import run

if __name__ == "__main__":
    run()
