"""The measurements, each run on every arm in alternation (A B C A B C) so machine drift cancels.

(a) closed loop: 50 calls in flight, a fixed call count, calls/s = successful calls / wall time;
(b) fixed offered rates: p50/p99 latency;
(c) step-up: the highest offered rate with zero failed calls, p99 < 10 ms and the rate really achieved;
(d) CPU seconds of the proxy's process tree around every run.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procstat
from bench.lab import Child, LabError
from bench.sipp import UacResult, run_uac

P99_LIMIT_MS = 10.0
ACHIEVED_FRACTION = 0.9
NOISY_CORE_FRACTION = 0.25
QUIET_BUDGET_SECONDS = 15.0
MAX_STEP_RATE = 24_000
"""The step-up ladder's top (calls/s). The SIPp UAS of this rig died after a step far past a proxy's limit
(128,000/s offered to the ceiling; 32,000/s to sipfed, which failed 39,000 calls) and ended the scenario.
A ladder that passes the top stops there, and its figure is a lower bound (the table says so)."""
CEILING = "ceiling"
"""The bare relay's arm (bench/bare_relay.py): the load phases and the storm, not the memory measurements."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A SIPp UAC/UAS pair and how it is carried."""

    name: str
    """Key in the results (``message-tls``)."""
    uac_transport: str
    """UAC -> proxy: ``tls`` (SIPp -> client stunnel -> proxy), ``tcp`` or ``udp`` (SIPp -> proxy)."""
    uas_transport: str
    """Proxy -> UAS: ``tls`` (proxy -> server stunnel -> SIPp), ``tcp`` or ``udp`` (proxy -> SIPp)."""
    uac_xml: str
    """UAC scenario: a file in tests/integration/sipp/, or an absolute path (bench/sipp/)."""
    uas_xml: str
    """UAS scenario, the same way."""
    transactions_per_call: int
    """Relayed transactions per SIPp call (MESSAGE: 1; SUBSCRIBE, NOTIFY, un-SUBSCRIBE, NOTIFY: 4)."""
    keys: tuple[tuple[str, str], ...]
    """SIPp -key pairs the UAC scenario requires."""
    tls_dialogs: bool = False
    """In-dialog requests stay on the TLS connections: the server stunnel listens on 127.0.0.2, both SIPps'
    Contacts name TLS addresses and the UAC's Via offers ``alias`` (tests' scenarios are rewritten for it by
    ``sipp.tls_dialog_variant``; bench/sipp/ ones are written so)."""
    kind: str = "load"
    """``load``: warm-up, closed loop, fixed rates, step-up; ``signin``: bench/signin.py's measurements."""


@dataclass(frozen=True, slots=True)
class Counts:
    """How much load each phase offers (full run or --quick)."""

    warmup_calls: int
    """Closed-loop calls per arm before anything is measured (connections, caches, allocator)."""
    closed_loop_calls: int
    """Calls per closed-loop run."""
    in_flight: int
    """Calls kept in flight in the closed loop (-l)."""
    repetitions: int
    """A B pairs per closed-loop and fixed-rate measurement."""
    fixed_seconds: float
    """Duration of each fixed-rate run."""
    step_seconds: float
    """Duration of each step-up run."""
    step_start_rate: int
    """First offered rate of the step-up (doubled until a step fails, then bisected)."""
    max_steps: int
    """Step-up runs per arm at most (including the bisection and one retry of a failed step)."""
    run_timeout_seconds: float
    """Bound on one SIPp run (SIPp's -timeout; the subprocess gets 15 s more)."""
    storm_calls: int
    """Sign-in storm: SUBSCRIBEs sent at once on one TLS connection, per run (``repetitions`` runs per arm)."""
    dialogs: int
    """Live subscription dialogs created to measure their memory."""
    dialog_rate: int
    """Calls/s at which they are created (the same for both arms, so transactions linger alike)."""
    idle_tls_connections: int
    """Idle mutual-TLS connections opened to measure their memory."""
    linger_seconds: float
    """Wait after creating them before memory is read (Kamailio's tm keeps a transaction ~5 s)."""


@dataclass
class Arm:
    """One proxy under test (or the bare relay) and where the SIPp UAC sends to reach it."""

    name: str
    """``sipfed``, ``kamailio`` or ``ceiling`` (the bare relay)."""
    proxy: Child
    """The proxy (or relay) process tree whose CPU and memory are measured."""
    target_port: int
    """The UAC's destination: the client stunnel in front of the proxy (TLS) or the proxy itself (UDP, TCP)."""
    udp_port: int | None = None
    """The proxy's UDP socket, whose kernel drop counter is read around each run (UDP scenario)."""
    tls_port: int | None = None
    """The proxy's own TLS listener, behind the client stunnel (TLS scenarios): idle connections go there."""
    sipp_keys: tuple[tuple[str, str], ...] = ()
    """SIPp -key pairs that override the scenario's for this arm (the ceiling: no Record-Route, ``maddr off``)."""
    runs: list[Measurement] = field(default_factory=list)
    """Every run on this arm, in order."""


def proxies(arms: list[Arm]) -> list[Arm]:
    """The arms that are SIP proxies: all but the ceiling."""
    return [arm for arm in arms if arm.name != CEILING]


@dataclass(frozen=True, slots=True)
class Measurement:
    """One SIPp UAC run against one arm, with the proxy's CPU time around it."""

    phase: str
    """``warmup``, ``closed_loop``, ``fixed:<rate>``, ``step``; sign-in: ``storm``, ``dialogs``."""
    offered_rate: int | None
    """Calls/s asked of SIPp (None for the closed loop and the storm: as fast as the proxy goes)."""
    result: UacResult
    """What SIPp measured."""
    cpu_seconds: float
    """User + system CPU of the proxy's process tree during the run."""
    transactions: int
    """Successful calls x transactions per call."""
    proxy_udp_drops: int
    """Datagrams the kernel dropped on the proxy's UDP socket during the run (receive buffer full)."""
    uas_udp_drops: int
    """The same for the SIPp UAS's UDP socket."""
    machine_cpu_seconds: float
    """Busy CPU of the whole machine during the run (SIPp, stunnel, both proxies, and anything else running)."""
    foreign_cpu_seconds: float
    """The part of ``machine_cpu_seconds`` spent outside the lab (other jobs, the kernel's own threads): noise."""

    def noisy(self) -> bool:
        """Other jobs took more than a quarter of a core on average during the run."""
        return self.foreign_cpu_seconds > NOISY_CORE_FRACTION * max(self.result.wall_seconds, 1.0)

    def passes(self) -> bool:
        """Step-up criterion: every call succeeded, p99 < 10 ms, and the offered rate was achieved."""
        p99 = self.result.percentile_ms(99)
        achieved = self.offered_rate is None or self.result.calls_per_second >= ACHIEVED_FRACTION * self.offered_rate
        return self.result.clean and p99 is not None and p99 < P99_LIMIT_MS and achieved

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "phase": self.phase,
            "offered_rate": self.offered_rate,
            "calls": r.calls,
            "successful": r.successful,
            "failed": r.failed,
            "exit_code": r.exit_code,
            "aborted": r.aborted,
            "wall_seconds": round(r.wall_seconds, 4),
            "calls_per_second": round(r.calls_per_second, 1),
            "p50_ms": r.percentile_ms(50),
            "p99_ms": r.percentile_ms(99),
            "max_ms": r.latencies_us[-1] / 1000 if r.latencies_us else None,
            "cpu_seconds": round(self.cpu_seconds, 3),
            "transactions": self.transactions,
            "machine_cpu_seconds": round(self.machine_cpu_seconds, 2),
            "foreign_cpu_seconds": round(self.foreign_cpu_seconds, 2),
            "proxy_udp_drops": self.proxy_udp_drops,
            "uas_udp_drops": self.uas_udp_drops,
            "noisy": self.noisy(),
            "passes": self.passes(),
        }


@dataclass
class Bench:
    """Runs SIPp UACs against the arms of one scenario."""

    scenario: Scenario
    counts: Counts
    workdir: Path
    arms: list[Arm]
    log: Callable[[str], None]
    uas_udp_port: int | None = None
    """The UAS's UDP socket (UDP scenario), for its drop counter."""
    health: Callable[[], str | None] = lambda: None
    """Checked before each run: a description of a dead lab helper (UAS, stunnel), or None."""
    lab_pids: Callable[[], list[int]] = list
    """Every lab process but the SIPp UAC, to tell the lab's CPU from other jobs'."""
    _serial: int = 0
    _quiet_waited: float = 0.0

    def measure(
        self,
        arm: Arm,
        phase: str,
        *,
        calls: int,
        rate: int,
        limit: int,
        timeout: float | None = None,
        recv_timeout_ms: int = 5000,
    ) -> Measurement:
        """One UAC run on ``arm`` with the proxy's CPU time read before and after."""
        self._serial += 1
        tag = f"{self.scenario.name}-{self._serial:03d}-{arm.name}-{phase.replace(':', '-')}"
        problem = self.health()
        if problem is not None:
            raise LabError(problem)
        self.settle(self.arms, quiet_machine=True)
        pids = arm.proxy.pids()
        drops_before = self._drops(arm)
        cpu_before, lab_before = procstat.cpu_seconds(pids), procstat.cpu_seconds(self.lab_pids())
        uac_before, machine_before = _children_cpu(), procstat.machine_busy_seconds()
        result = run_uac(
            self.workdir,
            tag,
            scenario_xml=self.scenario.uac_xml,
            target_port=arm.target_port,
            transport=self.scenario.uac_transport,
            calls=calls,
            rate=rate,
            limit=limit,
            keys={**dict(self.scenario.keys), **dict(arm.sipp_keys)},
            timeout_seconds=timeout or self.counts.run_timeout_seconds,
            recv_timeout_ms=recv_timeout_ms,
        )
        machine = procstat.machine_busy_seconds() - machine_before
        lab_cpu = procstat.cpu_seconds(self.lab_pids()) - lab_before + _children_cpu() - uac_before
        self.settle([arm])  # work the run left behind (retransmissions, 408s) is charged to it
        cpu = procstat.cpu_seconds(pids) - cpu_before
        proxy_drops, uas_drops = (after - before for after, before in zip(self._drops(arm), drops_before, strict=True))
        offered = rate if phase == "step" or phase.startswith("fixed:") else None
        run = Measurement(
            phase,
            offered,
            result,
            cpu,
            max(0, result.successful) * self.scenario.transactions_per_call,
            proxy_drops,
            uas_drops,
            machine,
            max(0.0, machine - lab_cpu),
        )
        arm.runs.append(run)
        p50, p99 = result.percentile_ms(50), result.percentile_ms(99)
        label = f"step {rate}/s" if phase == "step" else phase
        self.log(
            f"  {arm.name:<8} {label:<14} {result.successful:>6}/{calls:<6} ok {result.failed:>3} failed "
            f"{result.calls_per_second:>8.0f}/s  p50 {_ms(p50)} p99 {_ms(p99)}  cpu {cpu:.2f}s"
            f"{f'  udp drops {proxy_drops}+{uas_drops}' if proxy_drops or uas_drops else ''}"
            f"{f'  other jobs {run.foreign_cpu_seconds:.1f} CPU s' if run.noisy() else ''}"
            f"{'' if run.passes() or offered is None else '  (fails)'}"
        )
        return run

    def settle(self, arms: list[Arm], *, quiet_machine: bool = False, timeout: float = 6.0) -> None:
        """Wait (bounded) until the proxies are idle (< 10% of a core over 0.2 s) and, if ``quiet_machine``,
        until other jobs use < 25% of a core; waiting for other jobs stops once ``QUIET_BUDGET_SECONDS``
        have been spent on it in this scenario, so a machine that stays busy cannot stretch the bench."""
        deadline = time.monotonic() + timeout
        busy = ""
        while time.monotonic() < deadline:
            pids = [pid for arm in arms for pid in arm.proxy.pids()]
            lab_pids = self.lab_pids()
            before = procstat.cpu_seconds(pids), procstat.cpu_seconds(lab_pids), procstat.machine_busy_seconds()
            started = time.monotonic()
            time.sleep(0.2)
            proxies = procstat.cpu_seconds(pids) - before[0]
            foreign = procstat.machine_busy_seconds() - before[2] - (procstat.cpu_seconds(lab_pids) - before[1])
            waiting_for_others = quiet_machine and self._quiet_waited < QUIET_BUDGET_SECONDS and foreign >= 0.05
            if proxies < 0.02 and not waiting_for_others:
                return
            if proxies < 0.02:
                self._quiet_waited += time.monotonic() - started
            busy = "proxies" if proxies >= 0.02 else "other jobs on the machine"
        self.log(f"  (still busy after {timeout:.0f}s: {busy})")

    def _drops(self, arm: Arm) -> tuple[int, int]:
        """Kernel UDP drop counters of the proxy's and the UAS's sockets (0 when not UDP)."""
        return (
            procstat.udp_drops(arm.udp_port) if arm.udp_port else 0,
            procstat.udp_drops(self.uas_udp_port) if self.uas_udp_port else 0,
        )

    def alternating(self) -> Iterator[Arm]:
        """A B C A B C ...: every arm, ``repetitions`` times."""
        for _ in range(self.counts.repetitions):
            yield from self.arms

    def warmup(self) -> None:
        for arm in self.arms:
            self.measure(arm, "warmup", calls=self.counts.warmup_calls, rate=100_000, limit=self.counts.in_flight)

    def closed_loop(self) -> None:
        """(a) fixed call count with ``in_flight`` calls outstanding and an unreachable rate."""
        for arm in self.alternating():
            self.measure(
                arm, "closed_loop", calls=self.counts.closed_loop_calls, rate=100_000, limit=self.counts.in_flight
            )

    def fixed_rate(self, rate: int) -> None:
        """(b) open loop at ``rate`` calls/s for ``fixed_seconds``."""
        for arm in self.alternating():
            self.fixed_run(arm, f"fixed:{rate}", rate, self.counts.fixed_seconds)

    def fixed_run(self, arm: Arm, phase: str, rate: int, seconds: float) -> Measurement:
        calls = max(10, round(rate * seconds))
        # Room for 0.5 s of calls in flight: more than that fails the p99 limit anyway.
        return self.measure(
            arm,
            phase,
            calls=calls,
            rate=rate,
            limit=max(100, rate // 2),
            timeout=min(self.counts.run_timeout_seconds, seconds * 4 + 10),
        )

    def step_up(self) -> dict[str, int]:
        """(c) per arm: double the offered rate until a step fails (twice), then bisect; the arms interleaved
        (A B C, C B A, ...)."""
        ladders = {arm.name: _Ladder(self.counts.step_start_rate, self.counts.max_steps) for arm in self.arms}
        deadline = time.monotonic() + self.counts.max_steps * (self.counts.step_seconds * 3 + 15) * len(self.arms)
        turn = 0
        while time.monotonic() < deadline and any(not ladder.done for ladder in ladders.values()):
            order = self.arms if turn % 2 == 0 else list(reversed(self.arms))
            turn += 1
            for arm in order:
                ladder = ladders[arm.name]
                if not ladder.done:
                    rate = ladder.next_rate()
                    run = self.fixed_run(arm, "step", rate, self.counts.step_seconds)
                    ladder.record(rate, run.passes(), disturbed=run.noisy())
        return {name: ladder.best for name, ladder in ladders.items()}


@dataclass
class _Ladder:
    """Doubling, then three bisections between the best passing and the lowest failing rate."""

    start: int
    max_steps: int
    best: int = 0
    lowest_fail: int | None = None
    steps: int = 0
    bisections: int = 0
    retried: set[int] = field(default_factory=set)
    disturbed_retries: int = 0
    """Failed steps run again because other jobs took CPU during them (at most 2 per ladder)."""
    _retry: int | None = None
    top: int = MAX_STEP_RATE

    @property
    def done(self) -> bool:
        if self.steps >= self.max_steps:
            return True
        if self.best >= self.top:
            return True  # passed the ladder's top: a lower bound
        if self.lowest_fail is None or self._retry is not None:
            return False
        return self.bisections >= 3 or self.lowest_fail - self.best <= max(50, self.best // 20)

    def next_rate(self) -> int:
        if self._retry is not None:
            return self._retry
        if self.lowest_fail is None:
            return self.start if self.best == 0 else min(self.best * 2, self.top)
        self.bisections += 1
        return round_rate((self.best + self.lowest_fail) / 2)

    def record(self, rate: int, passed: bool, *, disturbed: bool = False) -> None:
        self.steps += 1
        self._retry = None
        if passed:
            self.best = max(self.best, rate)
        elif disturbed and self.disturbed_retries < 2:
            self.disturbed_retries += 1  # another job's CPU, not the proxy, may have failed it: run it again
            self._retry = rate
        elif rate not in self.retried:
            self.retried.add(rate)  # one retry: a lone stall (GC, a scheduler hiccup) does not end the ladder
            self._retry = rate
        else:
            self.lowest_fail = rate if self.lowest_fail is None else min(self.lowest_fail, rate)


def _children_cpu() -> float:
    """CPU of this process's reaped children (the SIPp UACs run to completion)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def round_rate(rate: float) -> int:
    return max(50, round(rate / 50) * 50)


def _ms(value: float | None) -> str:
    return f"{value:6.2f}ms" if value is not None else "    -   "
