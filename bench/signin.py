"""The sign-in measurements (scenario ``signin-tls``), each on both proxies (the storm on the ceiling too):

(a) memory per live subscription dialog: the RSS and PSS delta of the proxy's process tree around ``dialogs``
    SUBSCRIBE (Expires 3600) + 200 + NOTIFY dialogs created at ``dialog_rate``, read once their transactions
    have stopped lingering;
(c) sign-in storm: ``storm_calls`` SUBSCRIBEs (and their NOTIFYs) sent at once on one TLS connection (SIPp
    ``-t t1`` through the client stunnel): time to complete them all, failures, completion rate;
(b) memory per idle TLS connection: the delta around ``idle_tls_connections`` mutual-TLS connections from this
    process to the proxy's TLS listener, one OPTIONS each, then idle; and the proxy's CPU per handshake.

(a) and (c) share one lab, in that order. Heaps do not shrink (Kamailio's shared memory and CPython's arenas
stay resident once touched), so a delta is only what the new things keep if the transactions that made them
fit in memory freed before. Hence the warm-up is half as many dialogs made the same way (same rate, same
calls in flight: Kamailio's tm keeps each transaction ~5 s, sipfed frees it at once), the baseline is read
once those transactions are gone, and the storm comes last: its burst of transactions in flight grows
sipfed's heap by far more than 10,000 dialogs take, and dialogs made after it would fill the holes unseen.
(b) runs against a fresh sipfed and a fresh Kamailio with one TCP worker (see bench/kamailio.cfg: Kamailio
5.6.3 with OpenSSL 3 crashes when several workers run many handshakes).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import idle_tls, procstat
from bench.phases import Arm, Bench, Measurement, proxies

STORM_RATE = 100_000
"""SIPp's -r for the storm: far above what either proxy takes, so SIPp sends as fast as the connection drains."""
DIALOGS_IN_FLIGHT = 200
IDLE_TLS_SECONDS = 60.0
"""Bound on opening (and, again, on pinging) the idle connections to one proxy."""
IDLE_TLS_WARMUP = 20
"""Connections opened, pinged and closed before the baseline (OpenSSL's and the proxy's first-use costs)."""
STABLE_KB = 64
"""Two memory readings 0.5 s apart within this (or 0.2%) count as stable."""
STABLE_MAX_SECONDS = 10.0
"""Longest wait for a stable reading after the minimum wait."""


@dataclass(frozen=True, slots=True)
class MemoryStep:
    """The proxy tree's memory around creating ``count`` live things on one arm."""

    arm: str
    """``sipfed`` or ``kamailio``."""
    what: str
    """``dialogs`` (live subscription dialogs) or ``idle_tls`` (idle TLS connections)."""
    asked: int
    """How many were asked for."""
    count: int
    """How many were made and confirmed: successful SIPp calls, connections whose OPTIONS was answered."""
    rss_kb: tuple[int, int]
    """VmRSS summed over the process tree, before and after."""
    pss_kb: tuple[int, int]
    """PSS (smaps_rollup) summed over the process tree, before and after."""
    settle_seconds: float
    """Waited after creating them until the reading was stable."""
    problems: dict[str, int] = field(default_factory=dict)
    """What failed, by kind (idle connections)."""
    cpu_seconds: float | None = None
    """The proxy tree's CPU while the idle connections were opened (their handshakes)."""

    def cpu_ms_each(self) -> float | None:
        return 1000 * self.cpu_seconds / self.count if self.cpu_seconds is not None and self.count > 0 else None

    def bytes_each(self, kind: str) -> float | None:
        """Delta per item in bytes, of ``rss`` or ``pss``; None if nothing was created."""
        before, after = self.rss_kb if kind == "rss" else self.pss_kb
        return (after - before) * 1024 / self.count if self.count > 0 else None

    def to_json(self) -> dict[str, Any]:
        rss, pss = self.bytes_each("rss"), self.bytes_each("pss")
        return {
            "arm": self.arm,
            "what": self.what,
            "asked": self.asked,
            "count": self.count,
            "rss_kb_before_after": list(self.rss_kb),
            "pss_kb_before_after": list(self.pss_kb),
            "rss_bytes_each": round(rss) if rss is not None else None,
            "pss_bytes_each": round(pss) if pss is not None else None,
            "settle_seconds": round(self.settle_seconds, 1),
            "problems": self.problems,
            "cpu_seconds": self.cpu_seconds,
        }


def memory_kb(arm: Arm) -> tuple[int, int]:
    """(RSS, PSS) of the arm's process tree, in kB."""
    pids = arm.proxy.pids()
    return procstat.rss_kb(pids), procstat.pss_kb(pids)


def settled_memory_kb(arm: Arm, minimum_seconds: float) -> tuple[tuple[int, int], float]:
    """Wait ``minimum_seconds``, then until two RSS readings 0.5 s apart agree (at most ``STABLE_MAX_SECONDS``
    more); returns (RSS, PSS) and the seconds waited."""
    started = time.monotonic()
    time.sleep(minimum_seconds)
    rss = procstat.rss_kb(arm.proxy.pids())
    while time.monotonic() - started < minimum_seconds + STABLE_MAX_SECONDS:
        time.sleep(0.5)
        again = procstat.rss_kb(arm.proxy.pids())
        stable = abs(again - rss) <= max(STABLE_KB, rss // 500)
        rss = again
        if stable:
            break
    return memory_kb(arm), time.monotonic() - started


def run(bench: Bench, steps: list[MemoryStep], log: Callable[[str], None]) -> None:
    """Warm-up, storm, dialogs; memory steps are appended to ``steps`` as they are measured (so a lab failure
    keeps what was measured). Storm runs land in each arm's ``runs``; the ceiling has no dialogs (no state)."""
    counts, name = bench.counts, bench.scenario.name
    log(f"{name}: warm-up, {counts.dialogs // 2} dialogs per arm at {counts.dialog_rate}/s")
    for arm in proxies(bench.arms):
        _dialogs(bench, arm, "warmup", counts.dialogs // 2)
    log(f"{name}: {counts.dialogs} live subscription dialogs per arm at {counts.dialog_rate}/s")
    for arm in proxies(bench.arms):
        steps.append(live_dialogs(bench, arm, log))
    log(f"{name}: sign-in storm, {counts.storm_calls} SUBSCRIBEs at once on one TLS connection")
    for arm in bench.alternating():
        bench.measure(
            arm,
            "storm",
            calls=counts.storm_calls,
            rate=STORM_RATE,
            limit=counts.storm_calls,
            recv_timeout_ms=round(counts.run_timeout_seconds * 1000),
        )


def idle_tls_memory(bench: Bench, certs: Path, steps: list[MemoryStep], log: Callable[[str], None]) -> None:
    """(b) on each arm of ``bench`` (proxies that have seen no traffic yet)."""
    log(f"{bench.scenario.name}: {bench.counts.idle_tls_connections} idle TLS connections per arm")
    context = idle_tls.client_context(certs)
    for arm in bench.arms:
        steps.append(idle_connections(bench, arm, context, log))


def idle_connections(bench: Bench, arm: Arm, context: ssl.SSLContext, log: Callable[[str], None]) -> MemoryStep:
    """(b) on one arm: a few connections first (first-use costs); then open, ping, read memory once stable,
    close."""
    assert arm.tls_port is not None
    count = bench.counts.idle_tls_connections
    warm = idle_tls.IdleConnections(arm.tls_port)
    try:
        warm.open(context, IDLE_TLS_WARMUP, time.monotonic() + IDLE_TLS_SECONDS)
        warm.ping(time.monotonic() + IDLE_TLS_SECONDS)
    finally:
        warm.close()
    bench.settle(bench.arms)
    before = memory_kb(arm)
    conns = idle_tls.IdleConnections(arm.tls_port)
    started, cpu_before = time.monotonic(), procstat.cpu_seconds(arm.proxy.pids())
    try:
        conns.open(context, count, started + IDLE_TLS_SECONDS)
        opened, cpu = time.monotonic() - started, procstat.cpu_seconds(arm.proxy.pids()) - cpu_before
        conns.ping(time.monotonic() + IDLE_TLS_SECONDS)
        after, waited = settled_memory_kb(arm, 1.0)
    finally:
        conns.close()
    step = MemoryStep(
        arm.name,
        "idle_tls",
        count,
        conns.answered,
        (before[0], after[0]),
        (before[1], after[1]),
        waited,
        dict(conns.problems),
        cpu,
    )
    log(
        f"  {arm.name:<8} idle TLS   {conns.answered:>6}/{count:<6} answered, opened in {opened:.1f}s "
        f"(proxy CPU {cpu:.2f}s)  {_each(step)}{'  problems: ' + str(step.problems) if step.problems else ''}"
    )
    bench.settle([arm])  # the proxy closing them is not charged to the next arm
    return step


def live_dialogs(bench: Bench, arm: Arm, log: Callable[[str], None]) -> MemoryStep:
    """(a) on one arm: memory once earlier transactions are gone, ``dialogs`` calls at ``dialog_rate``, memory
    once theirs are gone."""
    counts = bench.counts
    bench.settle(bench.arms)
    before, _ = settled_memory_kb(arm, counts.linger_seconds)
    run = _dialogs(bench, arm, "dialogs", counts.dialogs)
    after, waited = settled_memory_kb(arm, counts.linger_seconds)
    step = MemoryStep(
        arm.name,
        "dialogs",
        counts.dialogs,
        max(0, run.result.successful),
        (before[0], after[0]),
        (before[1], after[1]),
        waited,
    )
    log(f"  {arm.name:<8} dialogs    {step.count:>6}/{counts.dialogs:<6} live after {waited:.1f}s  {_each(step)}")
    return step


def _dialogs(bench: Bench, arm: Arm, phase: str, calls: int) -> Measurement:
    """SUBSCRIBE + 200 + NOTIFY dialogs left live, at ``dialog_rate`` with at most 200 calls in flight."""
    rate = bench.counts.dialog_rate
    return bench.measure(
        arm,
        phase,
        calls=calls,
        rate=rate,
        limit=DIALOGS_IN_FLIGHT,
        timeout=calls / rate * 2 + bench.counts.run_timeout_seconds,
    )


def _each(step: MemoryStep) -> str:
    rss, pss = step.bytes_each("rss"), step.bytes_each("pss")
    if rss is None or pss is None:
        return "nothing created"
    return (
        f"RSS {step.rss_kb[0] / 1024:.1f} -> {step.rss_kb[1] / 1024:.1f} MB, {rss:,.0f} B each; PSS {pss:,.0f} B each"
    )
