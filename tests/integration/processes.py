"""Stopping a child process the tests started: SIGTERM by PID, a bounded wait, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace_seconds: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode
