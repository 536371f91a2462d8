"""Command-line front ends: absl flags, then one call into the package.

`bin/<step>.py` runs these from a checkout; `pip install` also puts them on
PATH as `frcnn-<step>` console scripts. User errors (FrcnnError) and I/O failures
(disk full, read-only or missing folders: OSError and TensorFlow's I/O errors)
exit with one line on stderr instead of a traceback, with exit status 1 (2 when
TensorRT is missing).
"""
import sys

from absl import app

from frcnn_tf.errors import FrcnnError


def io_error_line(err):
    """`PATH: what happened` for an OSError or a TensorFlow I/O error, or None for other errors."""
    if isinstance(err, OSError):
        return f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err)
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        if isinstance(err, (tf.errors.NotFoundError, tf.errors.PermissionDeniedError,
                            tf.errors.ResourceExhaustedError, tf.errors.DataLossError,
                            tf.errors.FailedPreconditionError, tf.errors.AlreadyExistsError)):
            return err.message.strip().splitlines()[0]
    return None


def run_main(main):
    """absl's app.run with FrcnnError and I/O errors turned into `error: ...` and an exit status (default 1)."""

    def guarded(argv):
        try:
            return main(argv)
        except FrcnnError as err:  # one line, also when a library's message (h5py's) spans several
            print(f"error: {' '.join(line.strip() for line in str(err).splitlines())}", file=sys.stderr)
            return getattr(err, "exit_code", 1)
        except Exception as err:  # noqa: BLE001 - only I/O failures are turned into one line
            line = io_error_line(err)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            return 1

    app.run(guarded)
