"""Next-hop candidates: RFC 2782 selection order and a health table, with time and randomness passed in.

A route yields candidates (its configured ``destinations``, or what RFC 3263 DNS resolution found);
``order`` turns them into the list one request tries, in turn, per RFC 3263 §4.3: candidates marked
down by an earlier failure go last, so they are still tried when nothing else is left.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

HealthKey = tuple[str, str, int, str]
"""(transport, host, port, tls_name): what a failure is remembered against."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One place a request may be sent to."""

    host: str
    """Where to connect: an address from DNS, or the configured FQDN or IP address."""
    port: int
    """The next hop's port."""
    transport: str
    """``tls``, ``tcp`` or ``udp``."""
    tls_name: str
    """The name the next hop's certificate must carry."""
    priority: int = 0
    """RFC 2782 priority: lower is tried first."""
    weight: int = 0
    """RFC 2782 weight: the share of first attempts within one priority."""
    source: str = "static"
    """Where it came from, for logs and ``sipfed routes --resolve``: ``static``, ``SRV _sips._tcp.tomt.it``…"""
    target: str = ""
    """The name ``host`` was resolved from (an SRV target); "" when ``host`` is the configured name itself."""
    rank: int = 0
    """The preference of the NAPTR record or SRV service it came from: every rank-0 candidate before rank 1."""

    def __init__(
        self,
        host: str,
        port: int,
        transport: str,
        tls_name: str,
        priority: int = 0,
        weight: int = 0,
        source: str = "static",
        target: str = "",
        rank: int = 0,
    ) -> None:
        # Written out, not generated: mypyc compiles this one (routes/candidates.py is in the compiled core), and
        # runs a generated __init__ as Python.
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "tls_name", tls_name)
        object.__setattr__(self, "priority", priority)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "rank", rank)

    @property
    def key(self) -> HealthKey:
        """Health is kept per endpoint and expected name, so a DNS refresh keeps what was learnt."""
        return (self.transport, self.host, self.port, self.tls_name)

    @property
    def group(self) -> tuple[int, int, str, int, str]:
        """RFC 2782 selects among SRV records, not addresses: the addresses of one target stay together."""
        return (self.rank, self.priority, self.target or self.host, self.port, self.transport)

    def __str__(self) -> str:
        via = f" ({self.target})" if self.target and self.target != self.host else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}{via}"


def rfc2782_order(candidates: Iterable[Candidate], rng: random.Random) -> list[Candidate]:
    """RFC 2782 "Usage rules": lowest priority first; within a priority, weighted random selection
    where weight-0 entries are placed first and so are chosen only when the draw is exactly 0."""
    groups: dict[tuple[int, int, str, int, str], list[Candidate]] = {}
    for candidate in candidates:
        groups.setdefault(candidate.group, []).append(candidate)
    by_level: dict[tuple[int, int], list[list[Candidate]]] = {}
    for key, members in groups.items():
        by_level.setdefault(key[:2], []).append(members)
    ordered: list[Candidate] = []
    for level in sorted(by_level):
        for members in _weighted_sequence(by_level[level], rng):
            ordered.extend(members)
    return ordered


def _weighted_sequence(groups: list[list[Candidate]], rng: random.Random) -> list[list[Candidate]]:
    """RFC 2782: repeatedly draw a uniform number in [0, sum of weights] and take the first entry
    whose running sum reaches it. Zero-weight entries go first, in random order ("any order")."""
    zero = [g for g in groups if g[0].weight == 0]
    rng.shuffle(zero)
    remaining = zero + [g for g in groups if g[0].weight > 0]
    chosen: list[list[Candidate]] = []
    while remaining:
        draw = rng.randint(0, sum(g[0].weight for g in remaining))
        running = 0
        for index, group in enumerate(remaining):
            running += group[0].weight
            if running >= draw:
                chosen.append(remaining.pop(index))
                break
    return chosen


class Health:
    """Candidates marked down after a failure, until a time; time is always passed in (monotonic seconds).

    Bounded: past ``max_entries`` the expired marks are dropped, then the ones ending soonest.
    """

    __slots__ = ("_down", "max_entries")

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._down: dict[HealthKey, tuple[float, str]] = {}

    def mark_down(self, candidate: Candidate, now: float, seconds: float, reason: str = "") -> None:
        """RFC 3263 §4.3: a candidate that refused, failed TLS or timed out is avoided for ``seconds``."""
        self._down[candidate.key] = (now + seconds, reason)
        if len(self._down) > self.max_entries:
            self._prune(now)

    def mark_up(self, candidate: Candidate) -> None:
        """A success (an answer, a passed health check) clears the mark at once."""
        self._down.pop(candidate.key, None)

    def is_up(self, candidate: Candidate, now: float) -> bool:
        return self.down_until(candidate, now) is None

    def down_until(self, candidate: Candidate, now: float) -> float | None:
        """When the mark ends, or None if the candidate is up."""
        mark = self._down.get(candidate.key)
        if mark is None:
            return None
        if mark[0] <= now:
            del self._down[candidate.key]
            return None
        return mark[0]

    def reason(self, candidate: Candidate) -> str:
        """Why it was marked down ("" if up or no reason was given)."""
        mark = self._down.get(candidate.key)
        return mark[1] if mark else ""

    def down(self, now: float) -> dict[HealthKey, tuple[float, str]]:
        """Every current mark, (until, reason) per key: for metrics and ``sipfed doctor --live``."""
        self._prune(now, keep=len(self._down))
        return dict(self._down)

    def _prune(self, now: float, keep: int | None = None) -> None:
        limit = self.max_entries if keep is None else keep
        for key in [k for k, (until, _) in self._down.items() if until <= now]:
            del self._down[key]
        if len(self._down) > limit:
            soonest = sorted(self._down, key=lambda k: self._down[k][0])
            for key in soonest[: len(self._down) - limit]:
                del self._down[key]


def order(candidates: Sequence[Candidate], health: Health, now: float, rng: random.Random) -> list[Candidate]:
    """The list one request tries, in turn (RFC 3263 §4.3): up candidates in RFC 2782 order, then the
    down ones, the one whose mark ends first leading, so a request still has somewhere to go."""
    ranked = rfc2782_order(candidates, rng)
    up = [c for c in ranked if health.is_up(c, now)]
    down = [c for c in ranked if not health.is_up(c, now)]
    down.sort(key=lambda c: health.down_until(c, now) or now)
    return up + down
