#!/usr/bin/env python3
"""prune: `bin/prune.py -m MODEL -o OUTPUT -pth 0.2 -eq union [-pg 8] [-nf 16] [-el LAYERS]`."""
from frcnn_tf.cli.prune import run

if __name__ == "__main__":
    run()
