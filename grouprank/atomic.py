"""Atomic file writes: readers (and a process restarted after a crash) see the old content or the new,
never a half-written file behind the final name."""

from __future__ import annotations

import os
import threading
from pathlib import Path

TMP_SUFFIX = ".tmp"
"""Suffix of the temporary sibling a write goes through (``.<name>.<pid>.<thread>.tmp``): leftovers of a
crash match ``.*.tmp`` and are safe to delete."""


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, fsync it, rename it over ``path`` and fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
