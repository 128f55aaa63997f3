"""Running the API: one uvicorn server, or several worker processes that each listen on a socket of their
own (``SO_REUSEPORT``), so the kernel spreads connections over them.

uvicorn's own ``workers=N`` shares one listening socket: a new connection wakes every worker and asyncio
accepts a whole backlog's worth per wake-up, so keep-alive clients that connect in a burst can all land on
one worker while the others idle (measured: 50 connections of 50 on one of two workers). With a socket per
worker the kernel assigns each connection to one of them by a hash of its addresses.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import sys
import threading
from typing import Any

from grouprank.errors import GroupRankError

APP = "worker.api:app_from_env"  # each process builds the app from the GROUPRANK_* environment


def serve(host: str, port: int, workers: int, log_level: str, access_log: bool) -> None:
    """Serve the API on ``host:port`` with ``workers`` processes until SIGINT/SIGTERM."""
    import uvicorn

    if workers == 1 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run(APP, factory=True, host=host, port=port, workers=workers, log_level=log_level,
                    access_log=access_log)
        return
    _check_free(host, port)
    Supervisor(host, port, workers, log_level, access_log).run()


def listen_socket(host: str, port: int, reuse_port: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet), shareable with other ``SO_REUSEPORT`` ones."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GroupRankError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _check_free(host: str, port: int) -> None:
    """Bind without ``SO_REUSEPORT`` once: fails if anything, another grouprank included, holds the port
    (whose reuse-port sockets would otherwise silently share it with ours)."""
    listen_socket(host, port, reuse_port=False).close()


def run_worker(host: str, port: int, log_level: str, access_log: bool, started: Any) -> None:
    """One worker process: uvicorn on its own reuse-port socket (uvicorn handles SIGTERM gracefully);
    ``started`` (an Event) is set once it serves."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                started.set()

    sock = listen_socket(host, port)
    Server(uvicorn.Config(APP, factory=True, log_level=log_level, access_log=access_log)).run(sockets=[sock])


class Supervisor:
    """Starts the worker processes, restarts one that dies after it has served, stops them all on
    SIGINT/SIGTERM, and gives up (an error) when a worker dies before it could serve."""

    def __init__(self, host: str, port: int, workers: int, log_level: str, access_log: bool) -> None:
        self.args = (host, port, log_level, access_log)
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._stop = threading.Event()

    def _start(self) -> tuple[Any, Any]:
        started = self._context.Event()
        process = self._context.Process(target=run_worker, args=(*self.args, started), name="grouprank-api")
        process.start()
        return process, started

    def run(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        processes = [self._start() for _ in range(self.workers)]
        failed = None
        try:
            while failed is None and not self._stop.wait(0.5):
                for n, (process, started) in enumerate(processes):
                    if process.is_alive():
                        continue
                    if not started.is_set():
                        failed = f"API worker {process.pid} exited with code {process.exitcode} before it served"
                        break
                    print(f"API worker {process.pid} exited with code {process.exitcode}; restarting it",
                          file=sys.stderr, flush=True)
                    processes[n] = self._start()
        finally:
            for process, _ in processes:
                if process.is_alive():
                    process.terminate()
            for process, _ in processes:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
                    process.join()
        if failed is not None:
            raise GroupRankError(failed)
