#!/usr/bin/env python3
"""import_weights: `bin/import_weights.py -i SOURCE.pth|.safetensors|.h5 -o OUT.hdf5 -e SPEC [--overwrite]`."""
from frcnn_tf.cli.import_weights import run

if __name__ == "__main__":
    run()
