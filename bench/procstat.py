"""CPU time and memory of a process and its descendants, read from /proc (Linux).

Kamailio is a main process plus forked workers; sipfed is one process today and may fork
workers later. Both are measured as a process tree so the figures stay comparable.
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat split after the ``(comm)`` field (which may hold spaces); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo and len(found) < 10_000:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds spent so far by the processes still alive in ``pids``."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def _status_kb(pid: int, key: str, name: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def peak_rss_kb(pids: list[int]) -> int:
    """Sum of VmHWM (peak resident set) over ``pids``; counts shared memory once per process."""
    return sum(_status_kb(pid, "VmHWM") for pid in pids)


def pss_kb(pids: list[int]) -> int:
    """Sum of the current proportional set size over ``pids`` (shared pages split between sharers)."""
    return sum(_status_kb(pid, "Pss", "smaps_rollup") for pid in pids)


def rss_kb(pids: list[int]) -> int:
    """Sum of the current resident set (VmRSS) over ``pids``."""
    return sum(_status_kb(pid, "VmRSS") for pid in pids)


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped on the IPv4 UDP socket(s) bound to ``port`` (receive buffer full)."""
    total = 0
    try:
        with open("/proc/net/udp") as f:
            for line in list(f)[1:]:
                parts = line.split()
                if len(parts) > 12 and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    total += int(parts[12])
    except (OSError, ValueError):
        pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS
