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


def make_public(folder: str | Path) -> None:
    """Give a folder made private (``mkdtemp`` makes it 0700; safetensors writes 0600) the modes of an
    ordinary one before it is renamed into place: folders 0755, files 0644, so a worker running as
    another user can read a model."""
    root = Path(folder)
    root.chmod(0o755)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)

