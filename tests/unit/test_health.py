"""Health checks and 503 failover with time driven by hand: ``routes.probe`` state, its config, and the
core's own OPTIONS (``Proxy.probe``) and RFC 3263 §4.3 retry on the next candidate after a 503."""

from __future__ import annotations

import pytest

from proxy.relay.types import HopUnavailable, NextHop, ProbeAnswer, SendToHop
from proxy.sip.message import Request, parse_message
from routes import Candidate, StaticRoute, parse_routes
from routes.probe import HealthCheck, Prober, passed
from tests.unit.relay_harness import CISCO_OUT, LYNC_IN, answer, hops, make_proxy, only_reply, replies, request, send

A = Candidate("127.0.0.21", 5061, "tls", "cups.tomt.local", priority=10)
B = Candidate("127.0.0.22", 5061, "tls", "cups.tomt.local", priority=20)
CHECK = HealthCheck(interval_seconds=10, timeout_seconds=2, failures_to_down=3, successes_to_up=2)


# -- the state machine ---------------------------------------------------------------------------


def test_new_candidates_are_due_at_once_then_every_interval() -> None:
    prober = Prober(CHECK)
    assert prober.due([A, B], 0.0) == [A, B]
    assert prober.due([A, B], 1.0) == []  # in flight
    prober.record(A, True, 0.1, "200 OK")
    prober.record(B, True, 0.1, "200 OK")
    assert prober.due([A, B], 9.99) == []
    assert prober.due([A, B], 10.0) == [A, B]


def test_a_check_in_flight_is_not_sent_twice_even_when_overdue() -> None:
    prober = Prober(CHECK)
    prober.due([A], 0.0)
    assert prober.due([A], 25.0) == []
    prober.record(A, False, 25.0, "timeout")
    assert prober.due([A], 25.0) == [A]


def test_down_after_failures_in_a_row_and_up_after_successes_in_a_row() -> None:
    prober = Prober(CHECK)
    now = 0.0
    results = []
    for ok in (False, False, True, False, False, False, True, False, True, True, False):
        prober.due([A], now)
        results.append(prober.record(A, ok, now, "x"))
        now += 10
    # a pass resets the failure run; three in a row take it down; two passes in a row bring it back
    assert results == [None, None, None, None, None, "down", None, None, None, "up", None]
    assert not prober.is_down(A)
    state = prober.state(A)
    assert state is not None
    assert state.checks == 11
    assert state.failures == 1
    assert state.changed_at == 90.0


def test_candidates_gone_from_dns_are_forgotten_and_late_results_ignored() -> None:
    prober = Prober(CHECK)
    prober.due([A, B], 0.0)
    prober.due([B], 10.0)
    assert prober.state(A) is None
    assert prober.record(A, False, 10.0, "late") is None


@pytest.mark.parametrize(
    ("status", "ok"),
    [(200, True), (404, True), (483, True), (100, False), (500, False), (503, False), (408, True), (0, False)],
)
def test_what_counts_as_alive(status: int, ok: bool) -> None:
    assert passed(status) is ok


# -- config ----------------------------------------------------------------------------------------


def test_health_config_defaults_and_table() -> None:
    routes, problems = parse_routes(
        [
            {"match_uri": "a.example", "destination": "a.example", "health": True},
            {
                "match_uri": "b.example",
                "destination": "b.example",
                "health": {"interval_seconds": 5, "timeout_seconds": 1, "failures_to_down": 2, "successes_to_up": 1},
            },
            {"match_uri": "c.example", "destination": "c.example", "health": False},
        ]
    )
    assert problems == []
    assert routes[0].health == HealthCheck()
    assert routes[1].health == HealthCheck(5.0, 1.0, 2, 1)
    assert routes[2].health is None


def test_health_config_problems_name_the_key() -> None:
    _, problems = parse_routes(
        [
            {"match_uri": "a.example", "destination": "a.example", "health": "yes"},
            {
                "match_uri": "b.example",
                "destination": "b.example",
                "health": {"interval_seconds": 0, "failures_to_down": 0, "every": 3},
            },
            {
                "match_uri": "c.example",
                "destination": "c.example",
                "health": {"interval_seconds": 1, "timeout_seconds": 5},
            },
        ]
    )
    text = "\n".join(problems)
    assert "routes[0].health: must be true, false or a table" in text
    assert "routes[1].health.every: unknown key" in text
    assert "routes[1].health.interval_seconds: 0 must be a number of seconds from 0.5 to 3600" in text
    assert "routes[1].health.failures_to_down: 0 must be a whole number from 1 to 100" in text
    assert "routes[2].health.timeout_seconds: 5 is longer than interval_seconds (1)" in text


# -- the core's own OPTIONS --------------------------------------------------------------------------


def test_probe_is_an_options_that_is_never_relayed_and_its_answer_comes_back() -> None:
    px = make_proxy()
    hop = NextHop("tls", "127.0.0.21", 5061, "cups.tomt.local", "cisco", probe=True)
    token = px.probe(hop, 0.0, 2.0)
    (sent,) = hops(px.take_outputs())
    options = parse_message(sent.data)
    assert isinstance(options, Request)
    assert options.method == "OPTIONS"
    assert options.uri == "sip:cups.tomt.local:5061;transport=tls"
    assert options.headers.get("max-forwards") == "0"  # RFC 3261 §16.3 step 3: answered, not relayed
    assert options.top_via.host == "sipfed.tomt.local"
    assert sent.token == token
    outputs = send(px, answer(sent.data, 200, "OK"), CISCO_OUT)
    assert outputs == [ProbeAnswer(token, 200, "OK")]
    px.handle_timer(5.0)
    assert px.take_outputs() == []  # no timeout after the answer


def test_probe_timeout_and_unreachable() -> None:
    px = make_proxy()
    hop = NextHop("tls", "127.0.0.21", 5061, "cups.tomt.local", "cisco", probe=True)
    silent = px.probe(hop, 0.0, 2.0)
    refused = px.probe(hop, 0.0, 2.0)
    px.take_outputs()
    px.hop_failed(refused, "connection refused", 0.1)
    assert px.take_outputs() == [ProbeAnswer(refused, 0, "connection refused")]
    px.handle_timer(1.99)
    assert px.take_outputs() == []
    px.handle_timer(2.0)
    assert px.take_outputs() == [ProbeAnswer(silent, 0, "no answer in time")]


# -- RFC 3263 §4.3: 503 from one candidate, the next one is tried ----------------------------------

POOL = StaticRoute("pool", "pool.tomt.local", A.host, A.port, "tls", "cups.tomt.local", "cisco", destinations=(A, B))


def test_503_from_a_pool_member_is_retried_on_the_next_within_the_transaction() -> None:
    px = make_proxy(POOL)
    first, _ = _forwarded(send(px, request(uri="sip:alice@pool.tomt.local")))
    outputs = send(px, answer(first.data, 503, "Busy", headers=("Retry-After: 30 (maintenance)",)), CISCO_OUT, 1.0)
    unavailable = [o for o in outputs if isinstance(o, HopUnavailable)]
    assert unavailable == [HopUnavailable(CISCO_OUT, "pool", 30, "Busy")]
    assert replies(outputs, LYNC_IN) == []  # the sender sees nothing of the 503
    second, retry = _forwarded(outputs)
    assert outputs.index(unavailable[0]) < outputs.index(second)  # the edge avoids the member first
    assert retry.top_via.branch != parse_message(first.data).top_via.branch  # a new client transaction
    assert retry.body == parse_message(first.data).body
    final = only_reply(send(px, answer(second.data, 200, "OK"), CISCO_OUT, 1.5))
    assert final.status == 200


def test_the_retry_keeps_the_first_deadline() -> None:
    px = make_proxy(POOL)
    first, _ = _forwarded(send(px, request(uri="sip:alice@pool.tomt.local")))
    send(px, answer(first.data, 503, "Busy"), CISCO_OUT, 10.0)
    px.handle_timer(15.99)
    assert replies(px.take_outputs(), LYNC_IN) == []
    px.handle_timer(16.0)
    assert only_reply(px.take_outputs()).status == 408  # 16 s after the request, not 16 s after the retry


def test_when_every_member_answered_503_the_sender_gets_500() -> None:
    px = make_proxy(POOL)
    first, _ = _forwarded(send(px, request(uri="sip:alice@pool.tomt.local")))
    second, _ = _forwarded(send(px, answer(first.data, 503, "Busy"), CISCO_OUT, 1.0))
    outputs = send(px, answer(second.data, 503, "Busy too"), CISCO_OUT, 2.0)
    assert not any(isinstance(o, HopUnavailable) for o in outputs)
    assert only_reply(outputs).status == 500  # RFC 3261 §16.7 step 6


def test_503_from_a_single_destination_route_is_not_retried() -> None:
    px = make_proxy()
    first, _ = _forwarded(send(px, request()))
    assert only_reply(send(px, answer(first.data, 503, "Busy"), CISCO_OUT)).status == 500


def _forwarded(outputs: list[object]) -> tuple[SendToHop, Request]:
    sends = [o for o in outputs if isinstance(o, SendToHop)]
    assert len(sends) == 1, outputs
    message = parse_message(sends[0].data)
    assert isinstance(message, Request)
    return sends[0], message


def test_a_connection_lost_with_requests_on_it_retries_them_on_the_next_candidate() -> None:
    px = make_proxy(POOL)
    first, _ = _forwarded(send(px, request(uri="sip:alice@pool.tomt.local")))
    assert px.unanswered([first.token, 999]) == [first.token]
    px.connection_lost([first.token], "the connection to 127.0.0.21:5061 closed before it answered", 1.0)
    second, _ = _forwarded(px.take_outputs())
    assert px.unanswered([first.token]) == []
    assert only_reply(send(px, answer(second.data, 200, "OK"), CISCO_OUT, 1.5)).status == 200


def test_a_connection_lost_under_a_single_destination_route_is_503_at_once() -> None:
    px = make_proxy()
    first, _ = _forwarded(send(px, request()))
    px.connection_lost([first.token], "the connection to 127.0.0.2:5062 closed before it answered", 1.0)
    response = only_reply(px.take_outputs())
    assert response.status == 503
    assert "closed before it answered" in response.reason
