"""The child processes the tests start: stopping one (SIGTERM by PID, a bounded wait, then SIGKILL) and
reading its resident memory."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.sipp.stunnel import terminate


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace_seconds: float = 10.0) -> int:
    code = terminate(proc, grace_seconds)
    assert code is not None
    return code


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB (VmRSS in /proc/PID/status); 0 when it is not listed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
