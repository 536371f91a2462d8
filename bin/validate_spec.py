#!/usr/bin/env python3
"""Validate a spec: `bin/validate_spec.py -e SPEC [--kind experiment|conversion]`."""
from frcnn_tf.cli.validate_spec import run

if __name__ == "__main__":
    run()
