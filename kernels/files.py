"""Atomic file writes: a reader sees the old file or the whole new one, never a part."""
import os
import tempfile
from typing import Any, Callable


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Calls ``write(binary_file)`` on a temporary file beside ``path``, fsyncs, then renames it.

    ``os.replace`` within one directory is atomic on POSIX, so an interrupted
    run leaves either no file or a complete one (plus, at worst, a hidden
    ``.tmp`` file that nothing reads).
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
