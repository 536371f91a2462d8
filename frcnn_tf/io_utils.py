"""File output: the project's one mechanism for temporary files and for protecting existing outputs.

Every output is written under a hidden temporary name beside its final path,
`.<name>.tmp-<pid>-<random>`, then flushed to disk and renamed. The leading dot
keeps temporary files out of every glob the specs use (`PREFIX-fold-*`, `dir/*`),
and the process id lets a later run remove what a killed run left behind.
"""
import contextlib
import glob
import os
import re
import secrets
import shutil

from absl import logging

from frcnn_tf.errors import FrcnnError

TEMP_MARK = ".tmp-"
_TEMP_PID = re.compile(re.escape(TEMP_MARK) + r"([0-9]+)-[0-9a-f]+$")


def apply_umask(path):
    """Gives a file created with mode 0600 the permissions a normally created file would have."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def temporary_path(path):
    """A new hidden temporary name in the folder of `path` (no file is created)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def _sync(path):
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _commit(temp_path, path):
    """Flushes the finished temporary file to disk, gives it normal permissions and renames it to `path`."""
    _sync(temp_path)
    apply_umask(temp_path)
    os.replace(temp_path, path)
    _sync(os.path.dirname(os.path.abspath(path)))  # the rename itself


@contextlib.contextmanager
def atomic_output(path):
    """Yields a temporary path to write `path` to; it becomes `path` when the block succeeds and is
    removed when it fails, so readers see the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temp_path = temporary_path(path)
    try:
        yield temp_path
        _commit(temp_path, path)
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)


def atomic_write_bytes(path, data):
    """Writes `data` to `path` so that readers see the old file or the whole new one."""
    with atomic_output(path) as temp_path:
        with open(temp_path, "wb") as out:
            out.write(data)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(prefix):
    """Removes temporary files (or folders) of outputs starting with `prefix` that killed processes left;
    returns them."""
    folder, name = os.path.split(os.path.abspath(prefix))
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}*{TEMP_MARK}*"))):
        found = _TEMP_PID.search(path)
        if found and not _alive(int(found.group(1))):
            if os.path.isdir(path):
                logging.warning("%s: removing a temporary folder left by an interrupted run", path)
                shutil.rmtree(path)
            else:
                logging.warning("%s: removing a temporary file left by an interrupted run", path)
                os.remove(path)
            removed.append(path)
    return removed


def refuse_to_overwrite(paths, overwrite, choice="another path", sources=None):
    """FrcnnError for a path planned twice, or for the first existing path unless overwrite.

    paths: planned output files (None entries skipped); sources: what each is written from,
    named in the error when two sources would write the same path.
    """
    sources = sources if sources is not None else [None] * len(paths)
    planned = {}
    for path, source in zip(paths, sources):
        if path and path in planned:
            raise FrcnnError(f"{path}: would be written for both {planned[path]} and {source}; "
                             "rename one of them or move it to another folder")
        planned[path] = source
    existing = [path for path in planned if path and os.path.exists(path)]
    if existing and not overwrite:
        count = f" ({len(existing)} output files would be replaced)" if len(existing) > 1 else ""
        raise FrcnnError(f"{existing[0]}: exists{count}; choose {choice} or pass --overwrite")
