"""One training run at a time: a Redis lock when a Redis URL is given (runs on several machines), else a
file lock (one machine, ``filelock``). Both are released if the holder dies: the file lock with its process, the
Redis lock when its TTL runs out (a background thread renews it while the run is alive)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import filelock

from grouprank.errors import GroupRankError, require


class PipelineBusy(GroupRankError):
    """Another training run holds the lock."""


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """``filelock``'s flock lock on ``path``, not waited for: ``PipelineBusy`` if another run holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path, fallback_to_soft=False)
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        raise PipelineBusy(f"another training run holds the lock {path}") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def redis_lock(url: str, key: str, ttl_s: float = 120.0) -> Iterator[None]:
    redis = require("redis", "serve")
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    lock = client.lock(key, timeout=ttl_s, blocking=False, thread_local=False)
    try:
        acquired = lock.acquire()
    except redis.ConnectionError as exc:
        raise GroupRankError(f"cannot reach Redis at {url} for the training lock: {exc}") from None
    if not acquired:
        raise PipelineBusy(f"another training run holds the Redis lock {key!r}")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                lock.reacquire()
            except Exception:  # lost or unreachable: the run goes on, the next one may start after the TTL
                return

    renewer = threading.Thread(target=renew, name="train-lock-renewer", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(Exception):  # already expired
            lock.release()
        client.close()


def run_lock(work_dir: str | Path, redis_url: str | None, key: str) -> AbstractContextManager[None]:
    """The lock a pipeline run holds: Redis with ``redis_url``, else ``work_dir/pipeline.lock``."""
    if redis_url:
        return redis_lock(redis_url, key)
    return file_lock(Path(work_dir) / "pipeline.lock")
