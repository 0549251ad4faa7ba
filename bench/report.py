"""Figures per arm from the runs, the sipfed/Kamailio ratio of each (and, for throughput, each proxy's fraction of
the ceiling), the printed table and the JSON file."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.phases import CEILING, Arm, Counts, Measurement, proxies
from bench.signin import MemoryStep


@dataclass(frozen=True, slots=True)
class Figure:
    """One compared figure of one scenario."""

    key: str
    """JSON key (``closed_loop_calls_per_s``)."""
    label: str
    """Table label."""
    unit: str
    """Unit shown in the table."""
    better: str
    """``higher`` or ``lower``: which way is good (for the reader; nothing asserts it)."""
    values: dict[str, float | None]
    """Arm name -> value (None: not measured; no key: not measured on that arm by design)."""
    throughput: bool = False
    """A throughput figure: each proxy's fraction of the ceiling (the bare relay) is reported."""

    def ratio(self, numerator: str = "sipfed", denominator: str = "kamailio") -> float | None:
        a, b = self.values.get(numerator), self.values.get(denominator)
        if a is None or b is None or b == 0:
            return None
        return a / b

    def of_ceiling(self, arm: str) -> float | None:
        """``arm``'s fraction of the ceiling, for a throughput figure (of a time, the ceiling's over the arm's:
        a fraction of the rate either way)."""
        if not self.throughput:
            return None
        return self.ratio(arm, CEILING) if self.better == "higher" else self.ratio(CEILING, arm)

    def to_json(self) -> dict[str, Any]:
        ratio = self.ratio()
        fractions = {f"{arm}_fraction_of_ceiling": _round(self.of_ceiling(arm)) for arm in ("sipfed", "kamailio")}
        return {
            "label": self.label,
            "unit": self.unit,
            "better": self.better,
            **{arm: _round(v) for arm, v in self.values.items()},
            "ratio_sipfed_kamailio": round(ratio, 3) if ratio is not None else None,
            **(fractions if self.throughput else {}),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def pooled_percentile_ms(runs: list[Measurement], p: float) -> float | None:
    """Nearest-rank percentile over the latencies of several runs together."""
    latencies = sorted(lat for run in runs for lat in run.result.latencies_us)
    if not latencies:
        return None
    return latencies[max(1, math.ceil(p / 100 * len(latencies))) - 1] / 1000


def _phase(arm: Arm, phase: str) -> list[Measurement]:
    return [run for run in arm.runs if run.phase == phase]


def _failed(run: Measurement) -> int:
    """Calls that did not succeed (failed, or never completed before the run's bound)."""
    return max(0, run.result.calls - max(0, run.result.successful))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def closed_loop_rate(arm: Arm) -> float | None:
    """Mean completed calls/s of the closed-loop runs."""
    return _mean([run.result.calls_per_second for run in _phase(arm, "closed_loop")])


def cpu_per_1k(runs: list[Measurement]) -> float | None:
    """CPU seconds per 1,000 relayed transactions over ``runs``."""
    transactions = sum(run.transactions for run in runs)
    return 1000 * sum(run.cpu_seconds for run in runs) / transactions if transactions else None


def figures(
    arms: list[Arm],
    *,
    fixed_rates: list[int],
    step_best: dict[str, int],
    memory: dict[str, dict[str, float]],
    transactions_per_call: int = 1,
) -> list[Figure]:
    """Every compared figure of one scenario, in table order (rates are SIPp calls/s)."""

    def each(value: Any) -> dict[str, float | None]:
        return {arm.name: value(arm) for arm in arms}

    out = [
        Figure(
            "closed_loop_calls_per_s",
            "closed loop, 50 in flight",
            "calls/s",
            "higher",
            each(closed_loop_rate),
            throughput=True,
        ),
        Figure(
            "closed_loop_p99_ms",
            "  p99 latency in the closed loop",
            "ms",
            "lower",
            each(lambda a: pooled_percentile_ms(_phase(a, "closed_loop"), 99)),
        ),
        Figure(
            "closed_loop_failed",
            "  failed calls in the closed loop",
            "calls",
            "lower",
            each(lambda a: float(sum(_failed(run) for run in _phase(a, "closed_loop")))),
        ),
    ]
    for rate in fixed_rates:
        runs = {arm.name: _phase(arm, f"fixed:{rate}") for arm in arms}
        at = f"{rate}/s" if transactions_per_call == 1 else f"{rate}/s ({rate * transactions_per_call} tx/s)"
        out += [
            Figure(
                f"p50_ms_at_{rate}",
                f"p50 latency at {at}",
                "ms",
                "lower",
                {name: pooled_percentile_ms(r, 50) for name, r in runs.items()},
            ),
            Figure(
                f"p99_ms_at_{rate}",
                f"p99 latency at {at}",
                "ms",
                "lower",
                {name: pooled_percentile_ms(r, 99) for name, r in runs.items()},
            ),
            Figure(
                f"failed_at_{rate}",
                f"  failed calls at {at}",
                "calls",
                "lower",
                {name: float(sum(_failed(x) for x in r)) for name, r in runs.items()},
            ),
        ]
    out += [
        Figure(
            "max_rate_p99_under_10ms",
            "step-up: max rate, 0 failed, p99<10ms",
            "calls/s",
            "higher",
            {arm.name: float(step_best[arm.name]) if arm.name in step_best else None for arm in arms},
            throughput=True,
        ),
        Figure(
            "cpu_s_per_1k_tx",
            "CPU per 1,000 transactions (closed loop)",
            "CPU s",
            "lower",
            each(lambda a: cpu_per_1k(_phase(a, "closed_loop"))),
        ),
    ]
    if fixed_rates:
        out.append(
            Figure(
                f"cpu_s_per_1k_tx_at_{fixed_rates[0]}",
                f"CPU per 1,000 transactions at {fixed_rates[0]}/s",
                "CPU s",
                "lower",
                each(lambda a: cpu_per_1k(_phase(a, f"fixed:{fixed_rates[0]}"))),
            )
        )
    return out + _memory_figures(proxies(arms), memory)


def _memory_figures(arms: list[Arm], memory: dict[str, dict[str, float]]) -> list[Figure]:
    return [
        Figure(
            "rss_start_mb",
            "RSS at start (sum over processes)",
            "MB",
            "lower",
            {arm.name: memory[arm.name].get("rss_start_mb") for arm in arms},
        ),
        Figure(
            "peak_rss_mb",
            "peak RSS, VmHWM (sum over processes)",
            "MB",
            "lower",
            {arm.name: memory[arm.name].get("peak_rss_mb") for arm in arms},
        ),
        Figure(
            "pss_end_mb",
            "PSS at end (shared pages split)",
            "MB",
            "lower",
            {arm.name: memory[arm.name].get("pss_end_mb") for arm in arms},
        ),
    ]


def signin_figures(
    arms: list[Arm], steps: list[MemoryStep], *, memory: dict[str, dict[str, float]], counts: Counts
) -> list[Figure]:
    """The figures of the ``signin-tls`` scenario (bench/signin.py), in table order."""

    def storm(value: Any) -> dict[str, float | None]:
        return {arm.name: value(_phase(arm, "storm")) if _phase(arm, "storm") else None for arm in arms}

    def step(what: str, value: Any) -> dict[str, float | None]:
        found = {s.arm: s for s in steps if s.what == what}
        return {arm.name: value(found[arm.name]) if arm.name in found else None for arm in proxies(arms)}

    def rss(s: MemoryStep) -> float | None:
        return s.bytes_each("rss")

    def pss(s: MemoryStep) -> float | None:
        return s.bytes_each("pss")

    def count(s: MemoryStep) -> float:
        return float(s.count)

    return [
        Figure(
            "storm_seconds",
            f"sign-in storm: {counts.storm_calls:,} SUBSCRIBE+NOTIFY",
            "s",
            "lower",
            storm(lambda runs: _mean([r.result.wall_seconds for r in runs])),
            throughput=True,
        ),
        Figure(
            "storm_calls_per_s",
            "  completion rate in the storm",
            "calls/s",
            "higher",
            storm(lambda runs: _mean([r.result.calls_per_second for r in runs])),
        ),
        Figure(
            "storm_failed",
            "  failed calls in the storm",
            "calls",
            "lower",
            storm(lambda runs: float(sum(_failed(r) for r in runs))),
        ),
        Figure(
            "storm_p99_ms",
            "  p99 SUBSCRIBE -> 200 in the storm",
            "ms",
            "lower",
            storm(lambda runs: pooled_percentile_ms(runs, 99)),
        ),
        Figure(
            "storm_cpu_s_per_1k_tx", "  CPU per 1,000 transactions in the storm", "CPU s", "lower", storm(cpu_per_1k)
        ),
        Figure(
            "dialog_rss_bytes", "memory per live dialog, RSS (target <2 KB)", "bytes", "lower", step("dialogs", rss)
        ),
        Figure("dialog_pss_bytes", "memory per live dialog, PSS", "bytes", "lower", step("dialogs", pss)),
        Figure(
            "dialogs_live", f"  dialogs created (of {counts.dialogs:,})", "dialogs", "higher", step("dialogs", count)
        ),
        Figure(
            "idle_tls_rss_bytes", "memory per idle TLS connection, RSS (<64KB)", "bytes", "lower", step("idle_tls", rss)
        ),
        Figure("idle_tls_pss_bytes", "memory per idle TLS connection, PSS", "bytes", "lower", step("idle_tls", pss)),
        Figure(
            "idle_tls_answered",
            f"  idle TLS connections (of {counts.idle_tls_connections:,})",
            "conns",
            "higher",
            step("idle_tls", count),
        ),
        Figure(
            "tls_handshake_cpu_ms",
            "  proxy CPU per accepted TLS handshake",
            "CPU ms",
            "lower",
            step("idle_tls", MemoryStep.cpu_ms_each),
        ),
        *_memory_figures(proxies(arms), memory),
    ]


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return f"{100 * value:.0f}%" if value is not None else "-"


def table(results: dict[str, list[Figure]], notes: dict[str, list[str]] | None = None) -> str:
    """A fixed-width table: scenario, figure, unit, sipfed, Kamailio, ratio sipfed/Kamailio and, where the ceiling
    was measured, its value and each proxy's % of it (throughput figures); notes under the scenario's name."""
    header = f"{'figure':<44} {'unit':<8} {'sipfed':>10} {'kamailio':>10} {'sipfed/kam':>11}"
    lines: list[str] = []
    notes = notes or {}
    for scenario in [*results, *(name for name in notes if name not in results)]:
        figs = results.get(scenario, [])
        lines += ["", f"== {scenario}", *notes.get(scenario, [])]
        if not figs:
            continue
        ceiling = any(CEILING in fig.values for fig in figs)
        head = header + (f" {'ceiling':>10} {'sipfed%ceil':>11} {'kam%ceil':>9}" if ceiling else "")
        lines += [head, "-" * len(head)]
        for fig in figs:
            ratio = fig.ratio()
            line = (
                f"{fig.label:<44} {fig.unit:<8} {_cell(fig.values.get('sipfed')):>10} "
                f"{_cell(fig.values.get('kamailio')):>10} "
                f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>11}"
            )
            if ceiling:
                line += (
                    f" {_cell(fig.values.get(CEILING)):>10} {_percent(fig.of_ceiling('sipfed')):>11} "
                    f"{_percent(fig.of_ceiling('kamailio')):>9}"
                )
            lines.append(line)
    return "\n".join(lines)


def write_json(results_dir: Path, stamp: str, document: dict[str, Any]) -> Path:
    """``results_dir/<stamp>.json`` and a copy as ``latest.json`` (written whole, then renamed)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    path = results_dir / f"{stamp}.json"
    for target in (path, results_dir / "latest.json"):
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(target)
    return path


def noise_note(arms: list[Arm]) -> str:
    """How many measured runs other jobs on the machine disturbed (> 1/4 core on average)."""
    runs = [run for arm in arms for run in arm.runs if run.phase != "warmup"]
    noisy = [run for run in runs if run.noisy()]
    if not noisy:
        return f"   ({len(runs)} runs, none disturbed by other jobs on the machine)"
    worst = max(run.foreign_cpu_seconds / max(run.result.wall_seconds, 1.0) for run in noisy)
    return (
        f"   ({len(noisy)} of {len(runs)} runs disturbed by other jobs on the machine, up to {worst:.0%} of a core;"
        " see foreign_cpu_seconds in the JSON)"
    )
