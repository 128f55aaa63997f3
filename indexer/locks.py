"""The index's file locks: exclusive fcntl locks, re-entrant within a process, that a read-only index
never needs to take."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

from grouprank.errors import GroupRankError

READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class ReadOnlyIndexError(GroupRankError):
    """The index directory cannot be written (a read-only mount or no permission): search only."""


class FileLock:
    """An exclusive fcntl lock on a file, re-entrant within a process (threads take turns)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (creating its file); False if ``blocking`` is off and another holder has it.
        ``ReadOnlyIndexError`` if the file can be neither created nor opened for writing."""
        if not self._thread_lock.acquire(blocking):
            return False
        if self._depth == 0:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                self._thread_lock.release()
                if exc.errno in READ_ONLY_ERRNOS:
                    raise ReadOnlyIndexError(f"{self.path.parent}: the index is read-only, it can be searched but "
                                             f"not written (cannot open {self.path.name}: {exc.strerror})") from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._thread_lock.release()
                return False
            self._fd = fd
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._thread_lock.release()

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_lock(lock: FileLock) -> bool:
    """Take ``lock`` if it is free and can be taken: not on a read-only index (searching needs no lock)."""
    try:
        return lock.acquire(blocking=False)
    except ReadOnlyIndexError:
        return False
