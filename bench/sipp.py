"""One bounded SIPp UAC run, and what it measured.

Throughput comes from SIPp's own stat file (``-trace_stat``: µs start and end stamps, successful and
failed call counts), latency from the scenario's ``gettimeofday`` log lines (``lat_us;N;µs``), not from
SIPp's RTDs, which tick in whole milliseconds.
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.lab import LOOPBACK, SIPP_DIR, LabError, free_port

LATENCY_RE = re.compile(rb"^lat_us;\d+;(\d+)", re.MULTILINE)
# The lines of tests/integration/sipp/ scenarios that name the transport; see tls_dialog_variant.
SIPP_VIA = "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]"
SIPP_CONTACT = "Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>"


@dataclass(frozen=True, slots=True)
class UacResult:
    """One SIPp UAC run."""

    calls: int
    """Calls asked for (-m)."""
    successful: int
    """Calls SIPp counted as successful."""
    failed: int
    """Calls SIPp counted as failed (timeouts, unexpected messages, failed checks); -1 if unknown."""
    wall_seconds: float
    """From SIPp's start stamp to its last stat dump (µs stamps), or the process wall time."""
    latencies_us: tuple[int, ...]
    """Per call, request sent -> 200 received, sorted."""
    exit_code: int
    """SIPp's exit code (0: all calls succeeded)."""
    aborted: bool
    """SIPp gave up (exit 255: its -timeout, or the connection refused or reset) or hit our outer bound."""

    @property
    def calls_per_second(self) -> float:
        return self.successful / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def clean(self) -> bool:
        """Every call asked for succeeded."""
        return self.exit_code == 0 and self.failed == 0 and self.successful == self.calls and not self.aborted

    def percentile_ms(self, p: float) -> float | None:
        """Nearest-rank percentile of the per-call latencies, in ms."""
        if not self.latencies_us:
            return None
        rank = max(1, min(len(self.latencies_us), math.ceil(p / 100 * len(self.latencies_us))))
        return self.latencies_us[rank - 1] / 1000


def _stat_row(path: Path) -> dict[str, str]:
    """The last row of a SIPp -trace_stat CSV as {column: value}."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    return dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))


def _epoch(stamp: str) -> float | None:
    """SIPp writes ``date<TAB>time<TAB>epoch.µs``; the last field is what we need."""
    with contextlib.suppress(ValueError, IndexError):
        return float(stamp.split("\t")[-1])
    return None


def _int(row: dict[str, str], key: str) -> int:
    try:
        return int(row[key])
    except (KeyError, ValueError):
        return -1


def tls_dialog_variant(scenario_xml: str, out_dir: Path, *, contact: str, alias: bool) -> Path:
    """A copy of tests/integration/sipp/``scenario_xml`` for a SIPp behind stunnel whose dialogs stay on TLS.

    SIPp speaks TCP to its stunnel, so its Contact says ``transport=TCP`` and a proxy sends in-dialog requests
    (NOTIFY, the un-SUBSCRIBE) on a new plain TCP connection straight to SIPp, where they overtake the 200 sent
    just before through stunnel. In the copy the Contact names a TLS address (``contact``: host:port, SIPp
    keywords allowed) and, if ``alias``, the Via offers its connection for reuse (RFC 5923), so the proxy sends
    the request on the connection the 200 took, in order. A line the copy needs that is missing is an error.
    """
    text = (SIPP_DIR / scenario_xml).read_text()
    via = SIPP_VIA.replace("[transport]", "TLS") + (";alias" if alias else "")
    for old, new in ((SIPP_VIA, via), (SIPP_CONTACT, f"Contact: <sip:sipp@{contact};transport=tls>")):
        if old not in text:
            raise LabError(f"{SIPP_DIR / scenario_xml}: no line {old!r} to rewrite for TLS dialogs")
        text = text.replace(old, new)
    out = out_dir / f"{Path(scenario_xml).stem}-tls-dialogs.xml"
    out.write_text(text)
    return out


def run_uac(
    workdir: Path,
    tag: str,
    *,
    scenario_xml: str,
    target_port: int,
    transport: str,
    calls: int,
    rate: int,
    limit: int,
    keys: dict[str, str],
    timeout_seconds: float,
    recv_timeout_ms: int = 5000,
    local_port: int | None = None,
) -> UacResult:
    """Run the SIPp UAC to completion against 127.0.0.1:target_port, bounded by ``timeout_seconds``.

    ``scenario_xml`` is a file in tests/integration/sipp/ or an absolute path; ``local_port``: SIPp's own port
    (default: a free one; SIPps started at once need ports picked together, see bench/workers.py)."""
    log, stat = workdir / f"{tag}.lat.log", workdir / f"{tag}.stat.csv"
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    args = [
        "sipp",
        f"{LOOPBACK}:{target_port}",
        "-sf",
        str(SIPP_DIR / scenario_xml),
        "-t",
        "u1" if transport == "udp" else "t1",
        "-i",
        LOOPBACK,
        "-p",
        str(local_port or free_port(kind)),
        "-s",
        "alice",
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-l",
        str(limit),
        "-nostdin",
        "-recv_timeout",
        str(recv_timeout_ms),
        "-timeout",
        f"{max(1, round(timeout_seconds))}s",
        "-timeout_error",
        "-trace_logs",
        "-log_file",
        str(log),
        "-trace_stat",
        "-stf",
        str(stat),
        "-fd",
        "1",
        "-trace_err",
        "-error_file",
        str(workdir / f"{tag}.errors"),
    ]
    for name, value in keys.items():
        args += ["-key", name, value]
    started = time.monotonic()
    try:
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
            timeout=timeout_seconds + 15,
            check=False,
        )
        code, outer_timeout = done.returncode, False
    except subprocess.TimeoutExpired:  # subprocess.run has killed it (by PID)
        code, outer_timeout = -9, True
    elapsed = time.monotonic() - started
    row = _stat_row(stat)
    start, end = _epoch(row.get("StartTime", "")), _epoch(row.get("CurrentTime", ""))
    wall = end - start if start is not None and end is not None and end > start else elapsed
    latencies = tuple(sorted(int(m) for m in LATENCY_RE.findall(log.read_bytes()))) if log.exists() else ()
    successful = _int(row, "SuccessfulCall(C)")
    return UacResult(
        calls=calls,
        successful=successful if successful >= 0 else len(latencies),
        failed=_int(row, "FailedCall(C)"),
        wall_seconds=wall,
        latencies_us=latencies,
        exit_code=code,
        aborted=outer_timeout or code == 255,
    )
