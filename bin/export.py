#!/usr/bin/env python3
"""export: `bin/export.py -m MODEL -o OUT.onnx -e SPEC [--data_type fp32|fp16|int8] [--cal_cache_file F]`."""
from frcnn_tf.cli.export import run

if __name__ == "__main__":
    run()
