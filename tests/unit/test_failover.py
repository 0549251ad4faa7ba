"""proxy/relay/failover.py: RFC 3263 §4.3 failover as one sans-IO object, each rule of its docstring driven
with hand-made time: which candidate a connect tries, what each failure kind does to it, and whether a
request goes on to the next candidate after a 503 or a lost connection."""

from __future__ import annotations

import math
import random

import pytest

from proxy.relay.failover import MAX_ATTEMPTS, Failover, candidate_hop, candidate_of
from proxy.relay.types import NextHop
from routes import Candidate, StaticRoute

A = Candidate("127.0.0.21", 5061, "tls", "a.tomt.local", priority=1)
B = Candidate("127.0.0.22", 5061, "tls", "b.tomt.local", priority=2)
C = Candidate("127.0.0.23", 5061, "tls", "c.tomt.local", priority=3)


def pool(*candidates: Candidate, down_seconds: float = 30.0) -> StaticRoute:
    first = candidates[0]
    return StaticRoute(
        "pool",
        "tomt.local",
        first.host,
        first.port,
        "tls",
        first.tls_name,
        "cisco",
        destinations=candidates,
        down_seconds=down_seconds,
    )


def dns_route() -> StaticRoute:
    return StaticRoute("dns", "tomt.local", "tomt.local", 5061, "tls", "tomt.local", "cisco", resolve="tomt.local")


def hop(route: StaticRoute, *, failover: bool = True) -> NextHop:
    return NextHop("tls", route.destination, route.port, route.tls_name, "cisco", route.name, failover=failover)


def fresh() -> Failover:
    return Failover(rng=random.Random(7))


# -- rule 2: the order of one connect ----------------------------------------------------------------


def test_a_connect_tries_up_candidates_by_priority() -> None:
    walk = fresh().plan(pool(C, A, B), [C, A, B], now=0.0)
    assert walk.candidates == [A, B, C]


def test_down_candidates_come_last_the_soonest_back_first() -> None:
    failover, route = fresh(), pool(A, B, C)
    failover.connect_failed(failover.plan(route, [A, B, C], 0.0), A, "refused", now=0.0)  # down until 30
    failover.unavailable(route, B, 5, "busy", now=0.0)  # down until 5
    assert failover.plan(route, [A, B, C], now=1.0).candidates == [C, B, A]
    assert failover.plan(route, [A, B, C], now=6.0).candidates == [B, C, A]  # B's mark has ended


def test_a_dns_failure_is_the_first_reason_of_the_walk() -> None:
    walk = fresh().plan(dns_route(), [], now=0.0, dns_error="SRV _sips._tcp.tomt.local: NXDOMAIN")
    assert walk.candidates == []
    assert walk.reason == "no candidate of route dns answered: DNS: SRV _sips._tcp.tomt.local: NXDOMAIN"


# -- rules 3 and 4: connect failures, TLS failures, timeouts --------------------------------------------


@pytest.mark.parametrize("reason", ["connection refused", "TLS: certificate verify failed", "timed out"])
def test_a_failed_connect_marks_the_candidate_down_for_down_seconds(reason: str) -> None:
    failover, route = fresh(), pool(A, B, down_seconds=12.0)
    walk = failover.plan(route, [A, B], now=100.0)
    mark = failover.connect_failed(walk, A, reason, now=100.0)
    assert (mark.candidate, mark.seconds, mark.reason) == (A, 12.0, reason)
    assert failover.down_until(A, 101.0) == 112.0
    assert failover.reason(A) == reason
    assert failover.down_until(A, 112.5) is None
    assert walk.failures == [f"{A}: {reason}"]


def test_every_candidate_failing_names_each_in_the_reason() -> None:
    failover, route = fresh(), pool(A, B)
    walk = failover.plan(route, [A, B], now=0.0)
    for candidate in walk.candidates:
        failover.connect_failed(walk, candidate, "connection refused", now=0.0)
    assert walk.reason == (f"no candidate of route pool answered: {A}: connection refused; {B}: connection refused")


# -- rule 5: a 503 and a lost connection ----------------------------------------------------------------


def test_a_503_sends_the_request_to_the_next_candidate_with_its_retry_after() -> None:
    failover, route = fresh(), pool(A, B, C)
    retry = failover.after_503(route, hop(route), attempt=1, retry_after="20 (maintenance);duration=60")
    assert retry is not None
    assert (retry.attempt, retry.retry_after) == (2, 20)
    mark = failover.unavailable(route, A, retry.retry_after, "Service Unavailable", now=0.0)
    assert (mark.seconds, mark.reason) == (20.0, "503 Service Unavailable")
    assert failover.after_503(route, hop(route), attempt=1, retry_after=None) == type(retry)(2, None)


def test_a_pool_tries_each_destination_once() -> None:
    failover, route = fresh(), pool(A, B, C)
    assert failover.after_503(route, hop(route), attempt=2, retry_after=None) is not None
    assert failover.after_503(route, hop(route), attempt=3, retry_after=None) is None  # A, B and C have had it


def test_a_dns_route_retries_at_most_max_attempts() -> None:
    failover, route = fresh(), dns_route()
    assert failover.may_retry(route, hop(route), MAX_ATTEMPTS - 1)
    assert not failover.may_retry(route, hop(route), MAX_ATTEMPTS)


def test_only_a_hop_the_route_chose_fails_over() -> None:
    """Rule 1: a hop a Route header or a dialog named is that host and no other."""
    failover, route = fresh(), pool(A, B)
    assert failover.after_503(route, hop(route, failover=False), 1, None) is None
    assert failover.after_loss(route, hop(route, failover=False), 1, provisional=False) is None
    assert failover.after_503(None, hop(route), 1, None) is None  # no route: a dialog's hop


def test_a_lost_connection_retries_unless_a_provisional_came() -> None:
    failover, route = fresh(), pool(A, B)
    assert failover.after_loss(route, hop(route), 1, provisional=False) == type(
        failover.after_loss(route, hop(route), 1, provisional=False)
    )(2)
    assert failover.after_loss(route, hop(route), 1, provisional=True) is None  # it may have acted on it
    mark = failover.lost(route, A, "the connection closed before it answered", now=5.0)
    assert failover.down_until(A, 6.0) == 5.0 + route.down_seconds
    assert mark.reason == "the connection closed before it answered"


# -- rule 6 and health checks ---------------------------------------------------------------------------


def test_a_connect_that_succeeds_clears_a_failed_requests_mark() -> None:
    failover, route = fresh(), pool(A, B)
    failover.lost(route, A, "lost", now=0.0)
    failover.connected(A, held_down=False)
    assert failover.down_until(A, 1.0) is None


def test_health_checks_hold_a_candidate_down_until_one_passes() -> None:
    failover = fresh()
    failover.check_failed(A, "no answer in 2 s", now=0.0)
    assert failover.down_until(A, 1e9) == math.inf
    failover.connected(A, held_down=True)  # a connect does not bring it back
    assert failover.down_until(A, 1e9) == math.inf
    assert failover.ranked([A, B], now=1e9) == [B, A]
    failover.check_passed(A)
    assert failover.down_until(A, 1e9) is None
    assert failover.ranked([A, B], now=1e9) == [A, B]


# -- the edge's helpers -----------------------------------------------------------------------------------


def test_a_candidate_hop_keeps_the_routes_listener_and_name_only_over_tls() -> None:
    route = pool(A)
    tcp = Candidate("127.0.0.24", 5060, "tcp", "d.tomt.local")
    assert candidate_hop(hop(route), B) == NextHop("tls", B.host, B.port, B.tls_name, "cisco", "pool", failover=True)
    assert candidate_hop(hop(route), tcp).tls_name is None
    assert candidate_of([A, B], candidate_hop(hop(route), B)) is B
    unknown = candidate_of([A], candidate_hop(hop(route), tcp))
    assert (unknown.host, unknown.port, unknown.transport) == (tcp.host, tcp.port, "tcp")
