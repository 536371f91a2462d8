#!/usr/bin/env python3
"""build_engine: `bin/build_engine.py -m MODEL.onnx --engine_file F [--max_batch_size N]` (tlt-converter)."""
from frcnn_tf.cli.build_engine import run

if __name__ == "__main__":
    run()
