#!/usr/bin/env python3
"""The main job: `bin/quickstart.py` runs the workflow on generated sample data."""
from frcnn_tf.cli.quickstart import run

if __name__ == "__main__":
    run()
