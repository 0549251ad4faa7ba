"""Overload protection in the core: in-flight cap, per-source and per-peer rate limits, size caps."""

from __future__ import annotations

from dataclasses import replace

from proxy.relay.core import RelaySettings
from proxy.relay.limits import Limits, TokenBuckets
from proxy.relay.types import SendOnFlow, SendToHop
from tests.unit.relay_harness import CISCO_OUT, LYNC_IN, answer, make_proxy, request


def limited(**limits: float) -> object:
    proxy = make_proxy()
    proxy.configure(RelaySettings(16, 180, Limits(**limits)))  # type: ignore[arg-type]
    return proxy


def statuses(outputs: list[object]) -> list[int]:
    return [int(o.data.split(b" ", 2)[1]) for o in outputs if isinstance(o, SendOnFlow)]


def test_token_bucket_refills_with_time_and_forgets_old_keys() -> None:
    buckets = TokenBuckets(rate=10, burst=2, max_keys=2)
    assert [buckets.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.allow("a", 0.1)  # 0.1 s at 10/s is one token
    buckets.allow("b", 0.1)
    buckets.allow("c", 0.1)
    assert len(buckets) == 2


def test_in_flight_cap_answers_503_with_retry_after_and_frees_on_final() -> None:
    proxy = limited(max_in_flight=2, retry_after_seconds=7)
    sent = []
    for i in range(3):
        proxy.receive(LYNC_IN, request(branch=f"z9hG4bKcap{i}"), 0.0)
        sent.extend(proxy.take_outputs())
    forwarded = [o for o in sent if isinstance(o, SendToHop)]
    assert len(forwarded) == 2
    refused = [o for o in sent if isinstance(o, SendOnFlow)]
    assert statuses(refused) == [503]
    assert b"Retry-After: 7\r\n" in refused[0].data
    assert b"transactions in flight" in refused[0].data
    assert proxy.pending() == 2
    proxy.receive(CISCO_OUT, answer(forwarded[0].data, 200, "OK"), 0.1)
    proxy.take_outputs()
    assert proxy.pending() == 1
    proxy.receive(LYNC_IN, request(branch="z9hG4bKcap9"), 0.2)
    assert any(isinstance(o, SendToHop) for o in proxy.take_outputs())


def test_per_source_rate_limit_spares_trusted_peers() -> None:
    proxy = limited(per_source_rate=5, burst_seconds=1)
    outcomes = []
    for i in range(8):
        proxy.receive(LYNC_IN, request(branch=f"z9hG4bKrate{i}"), 0.0)
        outcomes.extend(statuses(proxy.take_outputs()))
    assert outcomes.count(503) == 3  # a burst of 5, then refused
    peer_flow = replace(LYNC_IN, peer="lync")
    for i in range(8):
        proxy.receive(peer_flow, request(branch=f"z9hG4bKpeer{i}"), 0.0)
        assert 503 not in statuses(proxy.take_outputs())


def test_per_peer_rate_limit() -> None:
    proxy = limited(per_peer_rate=2, burst_seconds=1)
    peer_flow = replace(LYNC_IN, peer="lync")
    outcomes = []
    for i in range(4):
        proxy.receive(peer_flow, request(branch=f"z9hG4bKpr{i}"), 0.0)
        outcomes.extend(statuses(proxy.take_outputs()))
    assert outcomes == [503, 503]


def test_retransmission_of_a_refused_request_gets_the_same_503() -> None:
    proxy = limited(per_source_rate=1, burst_seconds=1)
    proxy.receive(LYNC_IN, request(branch="z9hG4bKa"), 0.0)
    proxy.take_outputs()
    proxy.receive(LYNC_IN, request(branch="z9hG4bKb"), 0.0)
    first = proxy.take_outputs()
    proxy.receive(LYNC_IN, request(branch="z9hG4bKb"), 0.0)
    assert [o.data for o in proxy.take_outputs()] == [o.data for o in first]  # type: ignore[attr-defined]


def test_header_count_and_line_length_caps_answer_400() -> None:
    proxy = make_proxy()
    proxy.configure(replace(proxy.settings, max_headers=20, max_header_line_bytes=300))
    proxy.receive(LYNC_IN, request(headers=tuple(f"X-H{i}: v" for i in range(30))), 0.0)
    out = proxy.take_outputs()
    assert statuses(out) == [400]
    assert b"too many header fields" in out[0].data  # type: ignore[attr-defined]
    proxy.receive(LYNC_IN, request(branch="z9hG4bKlong", headers=("X-Long: " + "a" * 400,)), 0.0)
    out = proxy.take_outputs()
    assert statuses(out) == [400]
    assert b"longer than 300 bytes" in out[0].data  # type: ignore[attr-defined]
