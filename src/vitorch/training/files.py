"""Durable file writes for checkpoints and logs: temporary file, fsync, atomic rename, fsync of the directory.

``os.replace`` makes a rename atomic, but only ``fsync`` makes it durable: without it a
power loss can leave the new name pointing at a file whose bytes never reached the
disk.  The file is fsynced before the rename and the directory after it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomically", "fsync_directory"]


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def write_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file: flushed and fsynced, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path
