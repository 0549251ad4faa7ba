"""Every Prometheus series sipfed exports, declared once, on a registry passed in.

Names are prefixed ``sipfed_``; labels are bounded (method, configured peer/route/listener
names, status class, fixed reason sets) — never a raw URI or certificate subject.
"""

from __future__ import annotations

import bisect
import gc
import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from proxy import __version__, build_kind
from proxy.net.health import DestinationState
from proxy.relay.observe import Observer
from proxy.xmpp.outbox import XmppObserver

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class Metrics(Observer):
    """The Observer that counts into Prometheus series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        ProcessCollector(registry=registry)
        c = self._counter
        self.hot = HotCounters()
        registry.register(self.hot)
        self.requests_refused = c(
            "requests_refused_total", "Requests sipfed answered itself with an error", ["method", "status"]
        )
        self.route_misses = c("route_misses_total", "Out-of-dialog requests for a domain with no route", [])
        self.hop_failures = c(
            "next_hop_failures_total", "Next hops that could not be reached or did not answer", ["route", "reason"]
        )
        self.tls = c("tls_handshakes_total", "TLS handshakes", ["listener", "direction", "outcome", "reason"])
        self.revocation = c(
            "revocation_checks_total",
            "Peer certificate chains checked against CRLs (tls.revocation), by verdict reason and decision",
            ["direction", "reason", "admitted"],
        )
        self.connections = Gauge(
            "sipfed_open_connections", "Open TCP/TLS connections", ["listener", "peer"], registry=registry
        )
        self.subscriptions = Gauge(
            "sipfed_subscriptions_active", "Subscription dialogs through sipfed", ["event"], registry=registry
        )
        self.subscription_changes = c(
            "subscription_changes_total", "Subscriptions created, refreshed, terminated", ["event", "change"]
        )
        self.digest_outcomes = c(
            "digest_total", "sipfed's own digest: challenged, passed, failed, stale, replayed", ["outcome"]
        )
        self.digest_throttles = c(
            "digest_throttled_total", "Digest attempts refused unchecked by a lockout after failed attempts", ["scope"]
        )
        self.shield = c(
            "challenges_shielded_total",
            "Next hops' 401/407 kept from sources that cannot answer: answered or blocked",
            ["action"],
        )
        self.malformed_total = c("malformed_messages_total", "Messages that did not parse", ["kind"])
        self.security_drops = c(
            "security_drops_total", "Messages or header values a security rule dropped without an answer", ["reason"]
        )
        self.overloads = c("overload_total", "Requests refused with 503 by a limit", ["reason"])
        self.slow_senders = c(
            "slow_senders_total", "Connections closed for an incomplete message or handshake", ["listener", "stage"]
        )
        self.config_reloads = c("config_reloads_total", "Config reloads", ["outcome"])
        # At 0 from the start, so the alert rules' increase() counts the first refusal or block too.
        for outcome in ("applied", "refused"):
            self.config_reloads.labels(outcome)
        for action in ("answered", "blocked"):
            self._child(self.shield, action)
        self.health_checks = c(
            "health_checks_total", "OPTIONS health checks of route destinations", ["route", "result"]
        )
        self.gc_pauses = Histogram(
            "sipfed_gc_pause_seconds",
            "Passes of Python's cyclic garbage collector",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.keepalives = c("keepalives_total", "RFC 5626 CRLF keep-alives on connections sipfed opened", ["result"])
        self.connections_refused = c(
            "connections_refused_total",
            "Accepted connections closed at once by a connection limit",
            ["listener", "reason"],
        )
        self.connections_closed = c(
            "connections_closed_total",
            "Open connections closed by a rule (idle and unauthenticated, unbound by a reload)",
            ["listener", "reason"],
        )
        self.hep_sent_total = c("hep_sent_total", "SIP messages copied to the [hep] receiver (HEP3 over UDP)", [])
        self.hep_dropped_total = c(
            "hep_dropped_total",
            "SIP messages not copied to the [hep] receiver: queue or "
            "socket buffer full, too large for HEP, receiver unreachable",
            ["reason"],
        )
        self.topology_problems = c(
            "topology_problems_total",
            "Inbound TLS connections that show a setup problem: wrong_listener (a trusted peer on the listener that "
            "faces the other side), unlisted_certificate (no [[peers]] entry names it), no_certificate (none on a "
            "listener that does not require one, where peers are expected)",
            ["listener", "kind"],
        )
        self.certificates = Gauge(
            "sipfed_certificate_expiry_timestamp_seconds",
            "Not-after time (Unix seconds) of our certificates (role ours: listener name, or xmpp) and of the "
            "certificate each trusted peer (role peer) and each route's next hop (role route) last showed",
            ["role", "name"],
            registry=registry,
        )
        Info("sipfed_build", "Version information", registry=registry).info(
            {"version": __version__, "python": platform.python_version(), "core": build_kind()}
        )
        Gauge("sipfed_start_time_seconds", "When sipfed started (Unix time)", registry=registry).set(time.time())

    def _counter(self, name: str, doc: str, labels: list[str]) -> Counter:
        return Counter(f"sipfed_{name}", doc, labels, registry=self.registry)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(...)``, remembered: label sets are bounded, and labels() is the slow part."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_received(self, method: str, peer: str) -> None:
        received = self.hot.received
        key = (method, peer)
        received[key] = received.get(key, 0) + 1

    def request_relayed(self, method: str, peer: str, route: str) -> None:
        relayed = self.hot.relayed
        key = (method, peer, route)
        relayed[key] = relayed.get(key, 0) + 1

    def request_refused(self, method: str, status: int) -> None:
        self._child(self.requests_refused, method, str(status)).inc()

    def final_response(self, method: str, status: int, seconds: float) -> None:
        hot = self.hot
        key = (method, _STATUS_CLASSES[status // 100] if status < 700 else status_class(status))
        hot.responses[key] = hot.responses.get(key, 0) + 1
        buckets = hot.latency.get(method)
        if buckets is None:
            buckets = hot.latency[method] = [0] * (len(LATENCY_BUCKETS) + 2)
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the bucket whose bound is >= seconds
        buckets[-1] += seconds  # the last slot holds the sum

    def route_miss(self) -> None:
        self.route_misses.inc()

    def hop_failure(self, route: str, reason: str) -> None:
        self._child(self.hop_failures, route, reason).inc()

    def digest(self, outcome: str) -> None:
        self._child(self.digest_outcomes, outcome).inc()

    def digest_throttled(self, scope: str) -> None:
        self._child(self.digest_throttles, scope).inc()

    def shielded(self, action: str) -> None:
        self._child(self.shield, action).inc()

    def overload(self, reason: str) -> None:
        self._child(self.overloads, reason).inc()

    def slow_sender(self, listener: str, stage: str) -> None:
        self._child(self.slow_senders, listener, stage).inc()

    def security_drop(self, reason: str) -> None:
        self._child(self.security_drops, reason).inc()

    def malformed(self, kind: str) -> None:
        self._child(self.malformed_total, kind).inc()

    def subscription(self, event: str, change: str) -> None:
        self._child(self.subscription_changes, event, change).inc()
        if change == "created":
            self._child(self.subscriptions, event).inc()
        elif change == "terminated":
            self._child(self.subscriptions, event).dec()

    def tls_handshake(self, listener: str, direction: str, outcome: str, reason: str) -> None:
        self._child(self.tls, listener, direction, outcome, reason).inc()

    def revocation_check(self, direction: str, reason: str, admitted: bool) -> None:
        self._child(self.revocation, direction, reason, "true" if admitted else "false").inc()

    def health_check(self, route: str, result: str) -> None:
        self._child(self.health_checks, route, result).inc()

    def keepalive(self, result: str) -> None:
        self._child(self.keepalives, result).inc()

    def connection_refused(self, listener: str, reason: str) -> None:
        self._child(self.connections_refused, listener, reason).inc()

    def connection_closed(self, listener: str, reason: str) -> None:
        self._child(self.connections_closed, listener, reason).inc()

    def hep_sent(self, count: int) -> None:
        """``count`` HEP packets went out (told once per flush, not per message)."""
        self.hep_sent_total.inc(count)

    def hep_dropped(self, reason: str, count: int) -> None:
        """``count`` copies dropped: ``queue_full``, ``too_large`` or ``unreachable``."""
        self._child(self.hep_dropped_total, reason).inc(count)

    def topology_problem(self, listener: str, kind: str) -> None:
        self._child(self.topology_problems, listener, kind).inc()

    def certificate_expiry(self, role: str, name: str, not_after: float | None) -> None:
        """Set, or remove (None), one series; not through ``_child``: a removed child must not be reused."""
        if not_after is None:
            self.certificates.remove(role, name)
        else:
            self.certificates.labels(role, name).set(not_after)

    def watch_gc(self, warn_seconds: float = 0.05) -> Callable[[str, dict[str, int]], None]:
        """Time every collector pass into ``sipfed_gc_pause_seconds``; log the ones that stall the loop."""
        started: list[float] = [0.0]
        log = logging.getLogger("sipfed")

        def callback(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
                return
            seconds = time.perf_counter() - started[0]
            self._child(self.gc_pauses, str(info.get("generation", -1))).observe(seconds)
            if seconds >= warn_seconds:
                log.warning(
                    "garbage collector pass (generation %d) stalled the event loop for %.0f ms, freeing %d objects",
                    info.get("generation", -1),
                    seconds * 1000,
                    info.get("collected", 0),
                )

        gc.callbacks.append(callback)
        return callback

    def watch_destinations(self, states: Callable[[], Iterable[DestinationState]]) -> None:
        """``sipfed_destination_up{route, destination}``, read from the running state at each scrape."""
        self.registry.register(_DestinationCollector(states))

    def connection(self, listener: str, peer: str, delta: int) -> None:
        self._child(self.connections, listener, peer).inc(delta)


_STATUS_CLASSES = tuple(f"{n}xx" for n in range(7))


class HotCounters(Collector):
    """The series every relayed message touches, as plain dictionaries read at scrape time.

    prometheus-client's Counter.inc takes a lock and looks up its child; four of them per MESSAGE and
    its 200 were 8 % of the core's time (bench/core_profile.py). Here the event loop adds to ints and the
    scrape thread copies the dictionaries (``dict.copy`` and ``list(...)`` run under the GIL in one step).
    """

    FAMILIES: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {
        "sipfed_requests_received": ("Requests received", ("method", "peer")),
        "sipfed_requests_relayed": ("Requests forwarded to a next hop", ("method", "peer", "route")),
        "sipfed_responses": ("Final responses sent upstream", ("method", "status_class")),
        "sipfed_relay_latency_seconds": ("Request in to final response out", ("method",)),
    }

    def __init__(self) -> None:
        self.received: dict[tuple[str, str], int] = {}
        self.relayed: dict[tuple[str, str, str], int] = {}
        self.responses: dict[tuple[str, str], int] = {}
        self.latency: dict[str, list[float]] = {}
        """Per method: one count per bucket of LATENCY_BUCKETS, one for +Inf, then the sum."""

    def describe(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        return self._families()

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        return self._families(self)

    def _families(self, data: HotCounters | None = None) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        counters: list[tuple[str, dict[Any, int]]] = [
            ("sipfed_requests_received", data.received.copy() if data else {}),
            ("sipfed_requests_relayed", data.relayed.copy() if data else {}),
            ("sipfed_responses", data.responses.copy() if data else {}),
        ]
        for name, values in counters:
            doc, labels = self.FAMILIES[name]
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in sorted(values.items()):
                family.add_metric(key, value)
            yield family
        doc, labels = self.FAMILIES["sipfed_relay_latency_seconds"]
        histogram = HistogramMetricFamily("sipfed_relay_latency_seconds", doc, labels=labels)
        for method, slots in sorted((data.latency.copy() if data else {}).items()):
            slots = list(slots)
            cumulative, buckets = 0.0, []
            for bound, count in zip((*[str(b) for b in LATENCY_BUCKETS], "+Inf"), slots[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            histogram.add_metric([method], buckets, slots[-1])
        yield histogram


class _DestinationCollector(Collector):
    """1 for a destination requests may go to first, 0 for one marked down (by failed requests or checks)."""

    def __init__(self, states: Callable[[], Iterable[DestinationState]]) -> None:
        self.states = states

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "sipfed_destination_up", "Route destinations: 1 up, 0 marked down", labels=["route", "destination"]
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sipfed_destination_up", "Route destinations: 1 up, 0 marked down", labels=["route", "destination"]
        )
        for state in self.states():
            family.add_metric([state.route, state.destination], 1.0 if state.up else 0.0)
        yield family


class XmppMetrics(XmppObserver):
    """The XMPP federation's series (issue 15): labels are configured partner names and fixed words."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.streams = Counter(
            "sipfed_xmpp_streams_total",
            "XMPP server-to-server streams by partner and direction: authenticated (sasl, dialback), refused, "
            "failed, closed",
            ["partner", "direction", "outcome"],
            registry=registry,
        )
        self.stanzas = Counter(
            "sipfed_xmpp_stanzas_total",
            "Stanzas through the SIP<->XMPP gateway: direction in (XMPP to SIP) or out, kind message, presence, "
            "subscription, iq; outcome relayed, refused, error, bounced, dropped",
            ["partner", "direction", "kind", "outcome"],
            registry=registry,
        )
        self.standing = Gauge(
            "sipfed_xmpp_subscriptions",
            "Standing presence subscriptions through the gateway: xmpp_to_sip (an XMPP contact watches a SIP user) "
            "and sip_to_xmpp",
            ["direction"],
            registry=registry,
        )

        self.keepalives = Counter(
            "sipfed_xmpp_keepalives_total",
            "Whitespace keep-alives sent on idle XMPP streams (partners with keepalive = true)",
            ["partner"],
            registry=registry,
        )

    def stream(self, partner: str, direction: str, outcome: str) -> None:
        self.streams.labels(partner, direction, outcome).inc()

    def stanza(self, partner: str, direction: str, kind: str, outcome: str) -> None:
        self.stanzas.labels(partner, direction, kind, outcome).inc()

    def subscriptions(self, watches: int, watchers: int) -> None:
        self.standing.labels("xmpp_to_sip").set(watches)
        self.standing.labels("sip_to_xmpp").set(watchers)

    def keepalive(self, partner: str) -> None:
        self.keepalives.labels(partner).inc()
