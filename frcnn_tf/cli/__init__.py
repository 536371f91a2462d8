"""Command-line front ends: absl flags, then one call into the package.

`bin/<step>.py` runs these from a checkout; `pip install` also puts them on
PATH as `frcnn-<step>` console scripts. User errors (FrcnnError) exit with one
line on stderr instead of a traceback, with exit status 1 (2 when TensorRT is missing).
"""
import sys

from absl import app

from frcnn_tf.errors import FrcnnError


def run_main(main):
    """absl's app.run with FrcnnError turned into `error: ...` and its exit status (default 1)."""

    def guarded(argv):
        try:
            return main(argv)
        except FrcnnError as err:
            print(f"error: {err}", file=sys.stderr)
            return getattr(err, "exit_code", 1)

    app.run(guarded)
