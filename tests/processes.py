"""Helpers for tests that run real server processes."""

from __future__ import annotations

import signal
import subprocess


def stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it is still running after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
