"""RFC 3263 §4.3 failover for pool and DNS routes, in one sans-IO object: which candidate a request
tries, what each failure does to that candidate, and whether the request goes on to the next one.

``Proxy`` owns the one ``Failover``; the edge (``proxy.net.driver``) only connects to the candidate it
is given and reports the outcome, and the core asks it before re-sending a request. Time is passed in.

Rules:
1. Only a pool or a DNS route fails over, and only for the hop it chose (``NextHop.failover``): a hop a
   Route header or a dialog names is that host and no other.
2. One connect tries the route's candidates in ``routes.candidates.order``: the up ones in RFC 2782
   order, then the down ones, the one whose mark ends first leading, so a request always has somewhere
   to go.
3. A failure marks its candidate down (``Health``): for the route's ``down_seconds`` after a refused
   connect, a failed TLS handshake, a connect timeout or a connection lost with requests on it; for a
   503's Retry-After when it gives one; until a check passes after failed health checks.
4. A failed connect goes on to the next candidate at once, within the same try (nothing was sent).
   The requests fail (503) only when every candidate has.
5. A 503, or a connection lost before its request was answered, sends the request again as a new try
   (a new client transaction, the first try's deadline kept): each destination of a pool at most once,
   a DNS route's candidates at most ``MAX_ATTEMPTS`` times in all. A request that had a provisional
   response on the lost connection is not sent again (the next hop may have acted on it).
6. A connect that succeeds clears a failed request's mark, unless health checks hold the candidate
   down; a passed health check clears it too.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from proxy.relay.types import NextHop
from routes import Candidate, Health, StaticRoute, order

#: Rule 5: how many tries one request of a DNS route gets, at most (a pool's: one per destination).
MAX_ATTEMPTS = 4
_RETRY_AFTER_RE = re.compile(r"\s*(\d{1,6})")  # RFC 3261 §20.33: delta-seconds, then comment and params

FailureKind = Literal["connect_refused", "tls_failure", "timeout", "other"]
"""Why a connect failed (the ``sipfed_next_hop_failures_total`` kind)."""


@dataclass(frozen=True, slots=True)
class Mark:
    """Rule 3: a candidate marked down; the edge logs it and stops sending new requests to it."""

    candidate: Candidate
    """The candidate marked down."""
    seconds: float
    """For how long (``math.inf``: until a health check passes)."""
    reason: str
    """Why, as the log and ``sipfed ctl routes`` show it."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Rule 5: the request goes to the route's next candidate as try number ``attempt``."""

    attempt: int
    """The new try's number (the first try is 1)."""
    retry_after: int | None = None
    """A 503's Retry-After in seconds: how long the candidate that sent it is left alone (None: the
    route's ``down_seconds``)."""


@dataclass(slots=True)
class Walk:
    """Rules 2 and 4: one connect's way through a route's candidates, tried in turn until one connects."""

    route: StaticRoute
    """The pool or DNS route."""
    candidates: list[Candidate]
    """In the order to try them."""
    failures: list[str] = field(default_factory=list)
    """What went wrong so far, one entry per failed candidate (or the DNS lookup)."""

    @property
    def reason(self) -> str:
        """Why the requests fail once no candidate connected: the 503's reason phrase."""
        return f"no candidate of route {self.route.name} answered: " + ("; ".join(self.failures) or "none resolved")


class Failover:
    """RFC 3263 §4.3 for every pool and DNS route: the health table, the order, the retry decisions."""

    __slots__ = ("health", "max_attempts", "rng")

    def __init__(
        self, health: Health | None = None, rng: random.Random | None = None, max_attempts: int = MAX_ATTEMPTS
    ) -> None:
        self.health = health or Health()
        """Candidates marked down, per endpoint and expected name (a DNS refresh keeps what was learnt)."""
        self.rng = rng or random.Random()
        """RFC 2782's weighted draws."""
        self.max_attempts = max_attempts

    # -- a connect (the edge) -------------------------------------------------------------------------

    def plan(self, route: StaticRoute, found: Sequence[Candidate], now: float, dns_error: str = "") -> Walk:
        """Rule 2: the candidates one connect tries, in turn; ``dns_error`` when resolution failed."""
        return Walk(route, order(found, self.health, now, self.rng), [f"DNS: {dns_error}"] if dns_error else [])

    def connect_failed(self, walk: Walk, candidate: Candidate, reason: str, now: float) -> Mark:
        """Rules 3 and 4: a refused connect, a failed TLS handshake or a connect timeout (whatever its
        ``FailureKind``) marks the candidate down for the route's ``down_seconds``; the walk goes on to
        its next candidate."""
        walk.failures.append(f"{candidate}: {reason}")
        return self._mark(candidate, walk.route.down_seconds, reason, now)

    def connected(self, candidate: Candidate, held_down: bool) -> None:
        """Rule 6: a connect succeeded; ``held_down`` when health checks keep the candidate down."""
        if not held_down:
            self.health.mark_up(candidate)

    # -- after a request went out on a candidate's connection ------------------------------------------

    def after_503(self, route: StaticRoute | None, hop: NextHop, attempt: int, retry_after: str | None) -> Retry | None:
        """Rule 5 for the core: a 503 (with its Retry-After header, if any) to try ``attempt`` of a request
        toward ``hop``; None: no other candidate may take it, and the sender gets the answer."""
        if not self.may_retry(route, hop, attempt):
            return None
        match = _RETRY_AFTER_RE.match(retry_after or "")
        return Retry(attempt + 1, int(match.group(1)) if match else None)

    def unavailable(
        self, route: StaticRoute, candidate: Candidate, retry_after: int | None, reason: str, now: float
    ) -> Mark:
        """Rule 3 for the edge: ``candidate`` answered 503 ``reason``; left alone for Retry-After seconds."""
        seconds = float(retry_after) if retry_after else route.down_seconds
        return self._mark(candidate, seconds, f"503 {reason}", now)

    def after_loss(self, route: StaticRoute | None, hop: NextHop, attempt: int, provisional: bool) -> Retry | None:
        """Rule 5 for the core: the connection of try ``attempt`` closed before its final response;
        ``provisional`` when one came. None: the sender gets 503 at once."""
        if provisional or not self.may_retry(route, hop, attempt):
            return None
        return Retry(attempt + 1)

    def lost(self, route: StaticRoute, candidate: Candidate, reason: str, now: float) -> Mark:
        """Rule 3 for the edge: the connection to ``candidate`` closed with requests unanswered on it."""
        return self._mark(candidate, route.down_seconds, reason, now)

    def may_retry(self, route: StaticRoute | None, hop: NextHop, attempt: int) -> bool:
        """Rules 1 and 5: whether another candidate of the route may take a request's next try."""
        if route is None or not hop.failover or attempt >= self.max_attempts:
            return False
        return not route.destinations or attempt < len(route.destinations)  # each destination once

    # -- health checks (the edge's, routes.probe.Prober decides) ---------------------------------------

    def check_failed(self, candidate: Candidate, result: str, now: float) -> Mark:
        """Rule 3: health checks took the candidate down; it stays down until one passes."""
        return self._mark(candidate, math.inf, f"health check: {result}", now)

    def check_passed(self, candidate: Candidate) -> None:
        """Rule 6: a passed check (with the prober holding it up) ends any mark."""
        self.health.mark_up(candidate)

    # -- reading (``sipfed ctl routes``, ``/metrics``, ``doctor --live``) -------------------------------

    def ranked(self, candidates: Sequence[Candidate], now: float, rng: random.Random | None = None) -> list[Candidate]:
        """Rule 2 without a connect: the order a request would try ``candidates`` in now."""
        return order(candidates, self.health, now, rng or self.rng)

    def down_until(self, candidate: Candidate, now: float) -> float | None:
        """When ``candidate``'s mark ends (``math.inf``: when a check passes); None when it is not marked."""
        return self.health.down_until(candidate, now)

    def reason(self, candidate: Candidate) -> str:
        """Why ``candidate`` was last marked down ('' when it never was)."""
        return self.health.reason(candidate)

    def _mark(self, candidate: Candidate, seconds: float, reason: str, now: float) -> Mark:
        self.health.mark_down(candidate, now, seconds, reason)
        return Mark(candidate, seconds, reason)


def candidate_hop(hop: NextHop, candidate: Candidate) -> NextHop:
    """The route's hop, pointed at one of its candidates (the name to verify only over TLS)."""
    return replace(
        hop,
        transport=candidate.transport,
        host=candidate.host,
        port=candidate.port,
        tls_name=candidate.tls_name if candidate.transport == "tls" else None,
    )


def is_candidate(candidate: Candidate, hop: NextHop) -> bool:
    """Whether a connection opened to ``hop`` goes to ``candidate``'s endpoint."""
    return (candidate.transport, candidate.host, candidate.port) == (hop.transport, hop.host, hop.port)


def candidate_of(known: Sequence[Candidate], hop: NextHop) -> Candidate:
    """The candidate a connection to ``hop`` was opened to, as the health table knows it: one of ``known``
    (a route's candidates last resolved or configured), else one made from the hop itself."""
    return next(
        (c for c in known if is_candidate(c, hop)), Candidate(hop.host, hop.port, hop.transport, hop.tls_name or "")
    )
