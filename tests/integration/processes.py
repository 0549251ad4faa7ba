"""Stopping a child process the tests started: SIGTERM by PID, a bounded wait, then SIGKILL."""

from __future__ import annotations

import subprocess

from tests.integration.sipp.stunnel import terminate


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace_seconds: float = 10.0) -> int:
    code = terminate(proc, grace_seconds)
    assert code is not None
    return code
