"""Atomic file output: write to a temporary name in the same folder, then rename."""
import os
import tempfile

from frcnn_tf.errors import FrcnnError


def apply_umask(path):
    """Gives a mkstemp file (mode 0600) the permissions a normally created file would have."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def atomic_write_bytes(path, data):
    """Writes `data` to `path` so that readers see the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        apply_umask(temp_path)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def refuse_to_overwrite(paths, overwrite, choice="another path"):
    """FrcnnError for the first existing path (None entries skipped) unless overwrite."""
    for path in paths:
        if path and os.path.exists(path) and not overwrite:
            raise FrcnnError(f"{path}: exists; choose {choice} or pass --overwrite")
