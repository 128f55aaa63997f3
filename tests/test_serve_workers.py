"""``grouprank serve --workers 2``, a real process tree: keep-alive connections opened in a burst reach
both workers (each listens on its own SO_REUSEPORT socket), a killed worker is replaced, a busy port is
refused, and SIGTERM stops every process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.processes import stop
from worker.server import listen_socket
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2
CONNECTIONS = 24


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthz(sock: socket.socket, port: int) -> bytes:
    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


def serving_workers(parent: psutil.Process, port: int) -> dict[int, int]:
    """Established connections on ``port`` per worker process."""
    counts = {}
    for child in parent.children(recursive=True):
        try:
            conns = child.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
            counts[child.pid] = sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port for c in conns)
    return counts


def wait_for(condition, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in Settings.env_names()}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GROUPRANK_PROGRESS="0")
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "grouprank.cli.main", "serve", "--port", str(port),
                                    "--workers", str(WORKERS), "--log-level", "warning"],
                                   cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    parent = psutil.Process(process.pid)
    try:
        wait_for(lambda: len(serving_workers(parent, port)) == WORKERS, 120, f"{WORKERS} listening workers")
        yield process, parent, port, log
    finally:
        stop(process, timeout=40)


def test_a_burst_of_keep_alive_connections_reaches_every_worker(server) -> None:
    _, parent, port, _ = server
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(CONNECTIONS)]
    try:
        for sock in socks:
            assert healthz(sock, port).startswith(b"HTTP/1.1 200")
        counts = serving_workers(parent, port)
        assert sum(counts.values()) == CONNECTIONS
        assert min(counts.values()) > 0, f"one worker took every connection: {counts}"
    finally:
        for sock in socks:
            sock.close()


def test_a_killed_worker_is_replaced_and_sigterm_stops_all(server) -> None:
    process, parent, port, log = server
    time.sleep(1.0)  # each worker has reported that it serves (a worker dying before that stops the server)
    victim = next(iter(serving_workers(parent, port)))
    os.kill(victim, signal.SIGKILL)
    try:
        workers = wait_for(lambda: (w := serving_workers(parent, port)) and len(w) == WORKERS and victim not in w
                           and w, 120, "a replacement worker")
    except BaseException:
        print(log.read_text(errors="replace")[-3000:])
        raise
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        assert healthz(sock, port).startswith(b"HTTP/1.1 200")
    children = parent.children(recursive=True)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=40) == 0
    # a helper child (not a worker; seen once still running here) may exit a moment after the parent
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], workers
    assert b"restarting it" in log.read_bytes()


def test_a_busy_port_is_refused_before_any_worker_starts(tmp_path) -> None:
    with listen_socket("127.0.0.1", free_port()) as taken:  # another server's reuse-port socket
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in Settings.env_names()}
        result = subprocess.run([sys.executable, "-m", "grouprank.cli.main", "serve", "--port", str(port),
                                 "--workers", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stdout + result.stderr

