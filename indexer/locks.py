"""The index's file locks: ``filelock``'s flock locks (exclusive, re-entrant within a thread, threads take
turns, released by the kernel if the holder dies), which a read-only index never needs to take."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import filelock

from grouprank.errors import GroupRankError

READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class ReadOnlyIndexError(GroupRankError):
    """The index directory cannot be written (a read-only mount or no permission): search only."""


class IndexLock:
    """An exclusive lock on a file of the index; ``ReadOnlyIndexError`` where that file cannot be opened
    for writing. Pure flock: no soft-lock fallback, whose marker files would outlive a killed holder. A
    process forked from the opener (Celery's prefork pool) gets a lock of its own: filelock refuses to
    use one inherited across a fork."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pid: int | None = None  # the process that made _filelock
        self._filelock: filelock.BaseFileLock | None = None
        self._renew = threading.Lock()

    @property
    def _lock(self) -> filelock.BaseFileLock:
        """This process's lock, made on first use (again after a fork: the parent's is not ours to use)."""
        with self._renew:
            if self._filelock is None or self._pid != os.getpid():
                self._filelock, self._pid = filelock.FileLock(self.path, fallback_to_soft=False), os.getpid()
            return self._filelock

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (creating its file); False if ``blocking`` is off and another holder has it."""
        try:
            self._lock.acquire(blocking=blocking)
        except filelock.Timeout:
            return False
        except OSError as exc:
            if exc.errno in READ_ONLY_ERRNOS:
                raise ReadOnlyIndexError(f"{self.path.parent}: the index is read-only, it can be searched but "
                                         f"not written (cannot open {self.path.name}: {exc.strerror})") from None
            raise
        return True

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> IndexLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_lock(lock: IndexLock) -> bool:
    """Take ``lock`` if it is free and can be taken: not on a read-only index (searching needs no lock)."""
    try:
        return lock.acquire(blocking=False)
    except ReadOnlyIndexError:
        return False
