#!/usr/bin/env python3
"""check_onnx: `bin/check_onnx.py MODEL.onnx [...]`: TensorRT 10.x/11.x parser rules, exit 1 on any problem."""
from frcnn_tf.cli.check_onnx import run

if __name__ == "__main__":
    run()
