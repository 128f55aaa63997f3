"""Running the API: one uvicorn server, or several worker processes that each listen on a socket of their
own (``SO_REUSEPORT``), so the kernel spreads connections over them.

uvicorn's own ``workers=N`` shares one listening socket: a new connection wakes every worker and asyncio
accepts a whole backlog's worth per wake-up, so keep-alive clients that connect in a burst can all land on
one worker while the others idle (measured: 50 connections of 50 on one of two workers). With a socket per
worker the kernel assigns each connection to one of them by a hash of its addresses.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import socket
import sys
import time
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
    it sends one message on ``started`` (a pipe's end) once it serves."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                started.send(True)

    sock = listen_socket(host, port)
    # Ctrl-C reaches every process of the group: uvicorn shuts down gracefully, then re-raises it
    with contextlib.suppress(KeyboardInterrupt):
        Server(uvicorn.Config(APP, factory=True, log_level=log_level, access_log=access_log)).run(sockets=[sock])


class Started:
    """Whether a worker has reported that it serves (a message on its pipe; pipes need no semaphores,
    which multiprocessing would report as leaked at exit)."""

    def __init__(self, receiver: Any) -> None:
        self._receiver = receiver
        self._seen = False

    def is_set(self) -> bool:
        if not self._seen:
            try:
                self._seen = self._receiver.poll() and bool(self._receiver.recv())
            except (OSError, EOFError):  # the worker closed its end without a message: it never served
                return False
        return self._seen


class Supervisor:
    """Starts the worker processes, restarts one that dies after it has served, stops them all on
    SIGINT/SIGTERM, and gives up (an error) when a worker of the first start dies before it could serve."""

    def __init__(self, host: str, port: int, workers: int, log_level: str, access_log: bool) -> None:
        self.args = (host, port, log_level, access_log)
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._stopping = False  # a plain flag: an Event's lock could deadlock inside a signal handler

    def _start(self) -> tuple[Any, Started]:
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(target=run_worker, args=(*self.args, sender), name="grouprank-api")
        process.start()
        sender.close()  # the child holds its own copy
        return process, Started(receiver)

    def _on_signal(self, *_: Any) -> None:
        self._stopping = True

    def run(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        processes: list[tuple[Any, Started]] = []
        first_start, failed = True, None
        try:
            for _ in range(self.workers):
                processes.append(self._start())  # one by one: a failed start still stops the others
            while failed is None and not self._stopping:
                time.sleep(0.5)
                if first_start and all(started.is_set() for _, started in processes):
                    first_start = False
                for n, (process, started) in enumerate(processes):
                    if process.is_alive() or self._stopping:
                        continue
                    if first_start and not started.is_set():
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
