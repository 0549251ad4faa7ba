"""OPTIONS health checks of a route's destinations: when each is due, and what a result does to it.

Sans-IO: the edge sends the OPTIONS and reports each outcome with the time; ``Prober`` answers which
candidates are due and when one changes state. A candidate starts up (traffic flows from the first
second), goes down after ``failures_to_down`` failed checks in a row and comes back after
``successes_to_up`` answered checks in a row — the hysteresis of Kamailio's dispatcher
(``ds_probing_threshold`` / ``ds_inactive_threshold``), so one lost check does not move a pool.

A check passes on any final response below 500: the destination parsed the OPTIONS and answered
(a 404 or 483 from a proxy that will not serve OPTIONS itself still proves it is alive). A 5xx
(503 above all, RFC 3263 §4.3), no answer within ``timeout_seconds``, a refused connection or a
failed TLS handshake is a failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from routes.candidates import Candidate, HealthKey


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """How one route's destinations are checked (``health = {…}`` on a ``[[routes]]`` entry)."""

    interval_seconds: float = 10.0
    """Time between two checks of one destination."""
    timeout_seconds: float = 2.0
    """A check with no final response by then failed."""
    failures_to_down: int = 3
    """Failed checks in a row that mark a destination down."""
    successes_to_up: int = 2
    """Passed checks in a row that bring a down destination back."""


def passed(status: int) -> bool:
    """A final response below 500 proves the destination alive; 5xx (503 above all) does not, nor does
    no answer at all (status 0: a timeout or no connection)."""
    return 200 <= status < 500


@dataclass(slots=True)
class ProbeState:
    """What the checks have learnt about one destination."""

    up: bool = True
    failures: int = 0
    """Failed checks in a row."""
    successes: int = 0
    """Passed checks in a row."""
    in_flight: bool = False
    next_due: float = 0.0
    changed_at: float = 0.0
    """When ``up`` last changed (or the first check was sent)."""
    last_result: str = "not checked yet"
    """"200 OK", "timeout after 2 s", "connection refused"…: for logs and ``sipfed doctor --live``."""
    checks: int = 0


class Prober:
    """Health-check state for every destination of one route."""

    __slots__ = ("check", "states")

    def __init__(self, check: HealthCheck) -> None:
        self.check = check
        self.states: dict[HealthKey, ProbeState] = {}

    def due(self, candidates: Iterable[Candidate], now: float) -> list[Candidate]:
        """The candidates whose check should be sent now (each is then in flight until ``record``);
        a candidate seen for the first time is due at once. Candidates gone from the list are forgotten."""
        present: set[HealthKey] = set()
        out: list[Candidate] = []
        for candidate in candidates:
            key = candidate.key
            if key in present:
                continue
            present.add(key)
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = ProbeState(next_due=now, changed_at=now)
            if not state.in_flight and state.next_due <= now:
                state.in_flight = True
                state.next_due = now + self.check.interval_seconds
                out.append(candidate)
        for key in [k for k in self.states if k not in present]:
            del self.states[key]
        return out

    def record(self, candidate: Candidate, ok: bool, now: float, result: str) -> str | None:
        """One check's outcome; returns ``"down"`` or ``"up"`` when the destination changed state."""
        state = self.states.get(candidate.key)
        if state is None:
            return None  # forgotten meanwhile (a DNS refresh dropped it)
        state.in_flight = False
        state.checks += 1
        state.last_result = result
        if ok:
            state.failures = 0
            state.successes += 1
            if not state.up and state.successes >= self.check.successes_to_up:
                state.up, state.changed_at = True, now
                return "up"
        else:
            state.successes = 0
            state.failures += 1
            if state.up and state.failures >= self.check.failures_to_down:
                state.up, state.changed_at = False, now
                return "down"
        return None

    def is_down(self, candidate: Candidate) -> bool:
        state = self.states.get(candidate.key)
        return state is not None and not state.up

    def state(self, candidate: Candidate) -> ProbeState | None:
        return self.states.get(candidate.key)
