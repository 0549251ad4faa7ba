"""Liveness at the edge: OPTIONS health checks of route destinations, CRLF keep-alives on idle connections.

Both run from one periodic tick of the event loop (no timer per destination or per connection):

- Health checks (``health = {…}`` on a route): each destination gets an OPTIONS every
  ``interval_seconds``, sent by the proxy core as its own client transaction (``Proxy.probe``) over
  the same connections requests use; ``routes.probe.Prober`` decides when a destination goes down
  (``failures_to_down`` failures in a row) and comes back (``successes_to_up`` passes in a row). A down
  destination is tried last by requests (RFC 3263 §4.3), as a failed connect already makes it.
- Keep-alives (RFC 5626 §4.4.1): a connection sipfed opened that carried nothing for
  ``keepalive_seconds`` gets a CRLFCRLF ping. Anything the peer sends back (the CRLF pong, or a
  message) proves the flow alive. A peer that answered pings before and leaves one unanswered for
  ``keepalive_timeout_seconds`` has a dead flow: the connection is closed, and the next request opens
  a new one. A peer that never answers pings is left alone (it does not implement RFC 5626 pongs;
  the pings still keep NAT and firewall state warm).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.net.cert_expiry import report_seen
from proxy.net.connect import candidate_hop_key
from proxy.relay.types import Identity, NextHop, ProbeAnswer
from routes import Candidate, StaticRoute
from routes.dns import ResolutionError
from routes.probe import Prober, passed

if TYPE_CHECKING:
    from proxy.net.connection import StreamConnection
    from proxy.net.driver import Driver

log = logging.getLogger("sipfed.health")

PING = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class DestinationState:
    """One destination as the running proxy sees it (``sipfed_destination_up``, ``doctor --live``)."""

    route: str
    destination: str
    up: bool
    checked: bool
    """Health checks run for it (else ``up`` only says whether a failed request marked it down)."""
    detail: str
    """The last check's result, or why it was marked down."""


class Liveness:
    """The health checks and keep-alives of one Driver."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.probers: dict[str, Prober] = {}
        """Per route with ``health``, by route name."""
        self.known: dict[str, list[Candidate]] = {}
        """Per route, the candidates last resolved (DNS routes) or configured."""
        self.sent: dict[int, tuple[str, Candidate]] = {}
        """Health checks in flight: the core's token -> (route, candidate)."""
        self.keepalive_seconds = 0.0
        self.keepalive_timeout = 10.0
        self._task: asyncio.Task[None] | None = None

    # -- configuration ------------------------------------------------------------------------

    def configure(self, routes: list[StaticRoute], keepalive_seconds: float, keepalive_timeout: float) -> None:
        """(Re)load: a route keeps its check state when its check settings did not change."""
        probers: dict[str, Prober] = {}
        for route in routes:
            if route.health is None:
                continue
            old = self.probers.get(route.name)
            probers[route.name] = old if old is not None and old.check == route.health else Prober(route.health)
            self.known.setdefault(route.name, list(route.static_candidates))
        self.probers = probers
        self.keepalive_seconds = keepalive_seconds
        self.keepalive_timeout = keepalive_timeout
        if self._task is None:
            self._task = self.driver.loop.create_task(self._run())

    def tick_seconds(self) -> float:
        """How often the tick runs: often enough for the shortest check interval and keep-alive timing."""
        periods = [p.check.interval_seconds / 4 for p in self.probers.values()]
        if self.keepalive_seconds:
            periods += [self.keepalive_seconds / 3, self.keepalive_timeout / 3]
        return min([*periods, 5.0]) if periods else 5.0

    async def _run(self) -> None:
        while True:  # the server's lifetime; cancelled by Driver.close
            await asyncio.sleep(max(0.1, self.tick_seconds()))
            try:
                await self.tick()
            except Exception:  # one bad tick must not stop the checks for good
                log.exception("internal error in the health-check tick")

    async def tick(self) -> None:
        now = self.driver.loop.time()
        if self.keepalive_seconds:
            self.keepalives(now)
        for conn in list(self.driver.connections.values()):
            self.driver.forget_answered(conn)
        for name, prober in list(self.probers.items()):
            route = self.driver.routes.get(name)
            if route is None:
                continue
            candidates = await self._candidates(route)
            for candidate in prober.due(candidates, self.driver.loop.time()):
                self._send_check(route, candidate)
        self.driver.pump()

    async def _candidates(self, route: StaticRoute) -> list[Candidate]:
        if route.resolve is None or self.driver.resolver is None:
            return list(route.static_candidates)
        try:
            found = await self.driver.resolver.candidates_for(route, self.driver.loop.time())
        except ResolutionError as exc:
            log.warning("route %s: health checks skipped this round: DNS: %s", route.name, exc)
            return self.known.get(route.name, [])
        self.known[route.name] = found
        return found

    # -- health checks ------------------------------------------------------------------------

    def _send_check(self, route: StaticRoute, candidate: Candidate) -> None:
        proxy = self.driver.proxy
        listener = route.listener or _listener_for(proxy.policy.identities, candidate.transport)
        if listener is None:
            return
        hop = NextHop(
            candidate.transport,
            candidate.host,
            candidate.port,
            candidate.tls_name if candidate.transport == "tls" else None,
            listener,
            probe=True,
        )
        prober = self.probers[route.name]
        token = proxy.probe(hop, self.driver.loop.time(), prober.check.timeout_seconds)
        self.sent[token] = (route.name, candidate)

    def answered(self, answer: ProbeAnswer) -> None:
        """The core's outcome of one check: count it, and act on a change of state."""
        sent = self.sent.pop(answer.token, None)
        if sent is None:
            return
        name, candidate = sent
        prober = self.probers.get(name)
        if prober is None:
            return
        ok = passed(answer.status)
        if answer.status:
            result = f"{answer.status} {answer.reason}"
        elif answer.reason == "no answer in time":
            result = f"no answer in {prober.check.timeout_seconds:g} s"
        else:
            result = answer.reason  # why the destination could not be reached
        self.driver.observer.health_check(name, "pass" if ok else "fail")
        conn = self.driver.by_hop.get(candidate_hop_key(candidate)) if ok else None
        if conn is not None and conn.transport is not None and candidate.transport == "tls":
            # The check's connection may be the one requests reuse: it never meets a route's name otherwise.
            report_seen(self.driver.observer, "route", name, conn.transport.get_extra_info("ssl_object"))
        now = self.driver.loop.time()
        change = prober.record(candidate, ok, now, result)
        if change == "down":
            log.warning(
                "route %s: destination %s is down after %d failed health checks (last: %s)",
                name,
                candidate,
                prober.check.failures_to_down,
                result,
            )
            self.driver.failover.check_failed(candidate, result, now)
            self.driver.avoid(candidate)
        elif change == "up":
            log.warning(
                "route %s: destination %s is up again (%d health checks passed)",
                name,
                candidate,
                prober.check.successes_to_up,
            )
            self.driver.failover.check_passed(candidate)
        elif ok and not prober.is_down(candidate):
            self.driver.failover.check_passed(candidate)  # a failed request's mark ends when a check passes

    def is_down(self, route: str | None, candidate: Candidate) -> bool:
        """Health checks hold this destination down (a successful connect does not bring it back)."""
        prober = self.probers.get(route or "")
        return prober is not None and prober.is_down(candidate)

    def states(self) -> list[DestinationState]:
        """Every destination of every route, as requests would see it now."""
        now = self.driver.loop.time()
        out: list[DestinationState] = []
        for name, route in self.driver.routes.items():
            prober = self.probers.get(name)
            candidates = self.known.get(name) or list(route.static_candidates)
            for candidate in candidates:
                probe = prober.state(candidate) if prober else None
                marked = self.driver.failover.down_until(candidate, now) is not None
                up = (probe is None or probe.up) and not marked
                detail = self.driver.failover.reason(candidate) if marked else (probe.last_result if probe else "")
                out.append(DestinationState(name, str(candidate), up, probe is not None, detail))
        return out

    def states_threadsafe(self, timeout: float = 2.0) -> list[DestinationState]:
        """``states()`` computed on the event loop, for the metrics server's thread."""
        result: concurrent.futures.Future[list[DestinationState]] = concurrent.futures.Future()

        def compute() -> None:
            try:
                result.set_result(self.states())
            except Exception as exc:  # reported to the scrape, not lost
                result.set_exception(exc)

        self.driver.loop.call_soon_threadsafe(compute)
        return result.result(timeout)

    # -- keep-alives ---------------------------------------------------------------------------

    def keepalives(self, now: float) -> None:
        """RFC 5626 §4.4.1 on every connection sipfed opened: ping the idle, close the dead."""
        for conn in list(self.driver.connections.values()):
            if conn.outbound and conn.transport is not None and not conn.transport.is_closing():
                self._keepalive(conn, now)

    def _keepalive(self, conn: StreamConnection, now: float) -> None:
        observer = self.driver.observer
        if conn.ping_sent_at is not None:
            if conn.rx != conn.ping_rx:  # the pong (or any message): the flow is alive
                conn.ping_sent_at = None
                conn.pongs += 1
                observer.keepalive("answered")
            elif now - conn.ping_sent_at >= self.keepalive_timeout:
                conn.ping_sent_at = None
                if conn.pongs:
                    log.warning(
                        "connection to %s:%d: no keep-alive pong within %g s (RFC 5626 §4.4.1); closing "
                        "it, the next request opens a new one",
                        *_remote(conn),
                        self.keepalive_timeout,
                    )
                    observer.keepalive("unanswered")
                    assert conn.transport is not None
                    conn.transport.close()
                    return
                observer.keepalive("unsupported")
            else:
                return
        activity = conn.rx + conn.tx
        if activity != conn.seen_activity:
            conn.seen_activity, conn.idle_since = activity, now
            return
        if now - conn.idle_since >= self.keepalive_seconds:
            conn.ping_sent_at, conn.ping_rx = now, conn.rx
            conn.idle_since = now
            conn.send(PING)
            conn.seen_activity = conn.rx + conn.tx
            observer.keepalive("sent")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _listener_for(identities: dict[str, Identity], transport: str) -> str | None:
    """A route without a listener sends from the first listener of its transport (or the first of all)."""
    for name, identity in identities.items():
        if identity.transport == transport:
            return name
    return next(iter(identities), None)


def _remote(conn: StreamConnection) -> tuple[str, int]:
    return conn.flow.remote if conn.flow is not None else ("?", 0)
