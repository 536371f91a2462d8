#!/usr/bin/env python3
"""Anchor fit of a spec's training boxes: `bin/anchor_coverage.py -e SPEC`."""
from frcnn_tf.cli.anchor_coverage import run

if __name__ == "__main__":
    run()
