"""The index lock (``filelock`` underneath): threads of one process take turns, a thread may re-enter, a
killed holder's lock is free at once, and a file that cannot be opened for writing means read-only."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time

import pytest

from indexer.locks import IndexLock, ReadOnlyIndexError, try_lock


def test_threads_take_turns_and_a_thread_may_reenter(tmp_path) -> None:
    lock = IndexLock(tmp_path / "write.lock")
    inside, overlaps = [0], []

    def work() -> None:
        for _ in range(20):
            with lock, lock:  # re-entrant within the thread
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.001)
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(overlaps) == 80 and max(overlaps) == 1  # never two holders at once


def test_a_killed_holder_releases_the_lock(tmp_path) -> None:
    path = tmp_path / "write.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from indexer.locks import IndexLock
lock = IndexLock(__import__('pathlib').Path({str(path)!r}))
lock.acquire()
print('held', flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = IndexLock(path)
        assert not try_lock(lock)  # another process holds it
        holder.kill()
        holder.wait(timeout=30)
        assert try_lock(lock)  # the kernel dropped the dead holder's flock; no stale marker is left
        lock.release()
    finally:
        holder.kill()


def test_an_unwritable_lock_file_means_read_only(tmp_path, monkeypatch) -> None:
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if os.fspath(path).startswith(str(tmp_path)) and flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    lock = IndexLock(tmp_path / "write.lock")
    with pytest.raises(ReadOnlyIndexError, match=r"read-only.*write\.lock"):
        lock.acquire()
    assert try_lock(lock) is False  # what opening an index does: search on, repairs skipped


def test_a_forked_child_takes_the_lock_of_its_own(tmp_path) -> None:
    """Celery's prefork pool forks after the index is open: the child must lock with its own descriptor."""
    import multiprocessing

    lock = IndexLock(tmp_path / "write.lock")
    with lock:
        pass  # the parent has used the lock before forking

    def child(queue) -> None:
        try:
            with lock:
                queue.put("locked")
        except Exception as exc:  # reported to the parent
            queue.put(repr(exc))

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    process.join(timeout=60)
    assert queue.get(timeout=5) == "locked"
