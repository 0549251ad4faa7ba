"""The per-message series (``HotCounters``) expose exactly what prometheus-client's own types would."""

from prometheus_client import CollectorRegistry, Counter, Histogram

from proxy.metrics import LATENCY_BUCKETS, Metrics

# Below, on and above bucket bounds, and past the last one.
SECONDS = [0.0, 0.0004, 0.0005, 0.00051, 0.001, 0.0199, 0.02, 0.3, 5.0, 29.9, 30.0, 31.0, 600.0]


def samples(registry: CollectorRegistry, family: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in registry.collect()
        if f.name == family
        for s in f.samples
        if not s.name.endswith("_created")
    }


def test_latency_histogram_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = Metrics(ours)
    reference = Histogram("sipfed_relay_latency_seconds", "x", ["method"], buckets=LATENCY_BUCKETS, registry=theirs)
    for i, seconds in enumerate(SECONDS):
        method = "MESSAGE" if i % 3 else "SUBSCRIBE"
        metrics.final_response(method, 200, seconds)
        reference.labels(method).observe(seconds)
    got, want = samples(ours, "sipfed_relay_latency_seconds"), samples(theirs, "sipfed_relay_latency_seconds")
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9, key


def test_counters_match_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = Metrics(ours)
    received = Counter("sipfed_requests_received", "x", ["method", "peer"], registry=theirs)
    relayed = Counter("sipfed_requests_relayed", "x", ["method", "peer", "route"], registry=theirs)
    responses = Counter("sipfed_responses", "x", ["method", "status_class"], registry=theirs)
    for method, peer, status in [
        ("MESSAGE", "lync", 200),
        ("MESSAGE", "lync", 486),
        ("NOTIFY", "none", 200),
        ("MESSAGE", "lync", 200),
        ("other", "cups", 699),
    ]:
        metrics.request_received(method, peer)
        received.labels(method, peer).inc()
        metrics.request_relayed(method, peer, "tomt.local")
        relayed.labels(method, peer, "tomt.local").inc()
        metrics.final_response(method, status, 0.001)
        responses.labels(method, f"{status // 100}xx").inc()
    for family in ("sipfed_requests_received", "sipfed_requests_relayed", "sipfed_responses"):
        assert samples(ours, family) == samples(theirs, family), family
    assert ours.get_sample_value("sipfed_responses_total", {"method": "MESSAGE", "status_class": "2xx"}) == 2.0
