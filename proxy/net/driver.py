"""The asyncio bridge: sockets in, ``Proxy`` calls, outputs sent, one re-armed timer.

Connections are persistent and reused (RFC 5923): responses go back on the accepting
connection, requests toward a next hop reuse an open connection to it (or one the peer
offered with ``alias``), and a new connection is opened only when none is open.

This module keeps the connection table and the pump; opening a connection to a next hop (one hop, or a
pool or DNS route's candidates as ``Failover`` plans them) is proxy/net/connect.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from acl.peers import Trust
from acl.subjects import CertIdentity
from proxy.config import OwnSide
from proxy.config.topology import Topology
from proxy.net.connect import HopKey, candidate_hop_key, connect, connect_route, mark_route_down, resolve_and_send
from proxy.net.connection import DatagramEndpoint, StreamConnection
from proxy.net.crl_fetch import RevocationChecker
from proxy.net.gate import ConnectionGate
from proxy.net.health import Liveness
from proxy.net.hep_export import HepExport
from proxy.net.tls import classify, describe_failure
from proxy.net.trace import Trace
from proxy.relay.core import Proxy
from proxy.relay.failover import Failover, candidate_of
from proxy.relay.forwarding import reply_hop
from proxy.relay.limits import WarnLimiter
from proxy.relay.observe import Observer
from proxy.relay.types import Flow, HopUnavailable, NextHop, ProbeAnswer, RegisterAlias, SendOnFlow, SendToHop
from proxy.sip.grammar import is_ip_literal
from proxy.sip.parser import FramingError
from routes import Candidate, StaticRoute
from routes.resolver import Resolver

log = logging.getLogger("sipfed.net")


class InProcessLink(Protocol):
    """A flow that is not a socket: the XMPP gateway, which answers and originates SIP in the same process."""

    def send(self, data: bytes) -> bool: ...


class Driver:
    """Owns the sockets and feeds the proxy core."""

    def __init__(
        self,
        proxy: Proxy,
        loop: asyncio.AbstractEventLoop,
        *,
        client_ssl: ssl.SSLContext | None,
        connect_timeout: float,
        max_message_bytes: int,
        trust: Trust | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.proxy = proxy
        self.trust = trust or Trust()
        self.observer = observer or Observer()
        self.routes: dict[str, StaticRoute] = {}
        """Static routes by name: pools and DNS routes fail over between their candidates."""
        self.resolver: Resolver | None = None
        self.handshake_timeout = 10.0
        self.incomplete_timeout = 10.0
        self.server_contexts: dict[str, ssl.SSLContext] = {}
        self.gate = ConnectionGate()
        """What inbound connections may cost before they prove who they are ([limits], issue 14)."""
        self.trace: Trace | None = None
        self.hep: HepExport | None = None
        """[hep]: a copy of each SIP message to a HEP receiver; the connections and UDP sockets hand them over
        (they know the leg's own address), UDP sends below."""
        self.loop = loop
        self.client_ssl = client_ssl
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self.connections: dict[int, StreamConnection] = {}
        self.by_hop: dict[HopKey, StreamConnection] = {}
        self.aliases: dict[tuple[str, str, int], StreamConnection] = {}
        self.by_remote: dict[tuple[str, str, int], StreamConnection] = {}
        self.pending: dict[HopKey, list[tuple[bytes, int]]] = {}
        self.udp: dict[str, DatagramEndpoint] = {}
        self.udp_out: dict[str, DatagramEndpoint] = {}
        """Worker mode: each UDP listener's second socket, this worker's own, that the requests it sends leave
        from (their Via names its port, so their answers come back here); empty in one process."""
        self.own = OwnSide()
        """What is known of our own certificate (proxy/config/own.py): failures explain themselves with it."""
        self.topology = Topology({}, {})
        """Which listener faces which peers (proxy/config/topology.py)."""
        self.client_cert_required: dict[str, bool] = {}
        self.revocation: RevocationChecker | None = None
        """``[tls] revocation``: peers' chains against CRLs (proxy/net/revocation_check.py); None without [tls]."""
        """Per TLS listener: require_client_cert."""
        self.links: dict[int, InProcessLink] = {}
        """In-process flows (the XMPP gateway's), by connection id."""
        self.link_routes: dict[str, tuple[int, InProcessLink]] = {}
        """The same, by the route that leads to them."""
        self._ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.liveness = Liveness(self)
        self.warnings = WarnLimiter()
        """Repeated warnings about next hops, rate-limited."""
        self._unflushed: list[StreamConnection] = []
        self.reading = False
        """Inside a stream connection's read callback, which flushes what it queued when it returns."""

    @property
    def failover(self) -> Failover:
        """The core's RFC 3263 §4.3 decisions (proxy/relay/failover.py): the edge connects, this decides."""
        return self.proxy.failover

    # -- connection table -------------------------------------------------------------------

    def register(self, conn: StreamConnection, remote: tuple[str, str, int]) -> int:
        """A connection is up: its id, and its (transport, address, port) known for reuse (as Kamailio reuses
        accepted connections); ``unregister`` forgets both."""
        conn_id = next(self._ids)
        self.connections[conn_id] = conn
        self.by_remote[remote] = conn
        conn.keys.append(remote)
        return conn_id

    def read_started(self) -> None:
        """A stream connection's read callback began: what it queues waits for ``read_ended``."""
        self.reading = True

    def read_ended(self) -> None:
        """The read callback returns: write what it queued (``flush_soon``)."""
        self.reading = False
        self.flush()

    def forget_answered(self, conn: StreamConnection) -> None:
        """Drop the requests answered since the last look from ``conn``'s list of those sent on it (the list is
        for a lost connection: what to fail over or answer 503)."""
        if conn.sent:
            conn.sent = self.proxy.unanswered(conn.sent)

    def unregister(self, conn: StreamConnection) -> None:
        if conn.flow is not None:
            self.connections.pop(conn.flow.conn_id, None)
        for key in conn.keys:
            for table in (self.by_hop, self.aliases, self.by_remote):
                if table.get(key) is conn:
                    del table[key]

    def stream_factory(self, transport_name: str, listener: str) -> Callable[[], StreamConnection]:
        """Accepted connections; a TLS listener's context is looked up per connection (reload swaps it)."""
        return lambda: StreamConnection(
            self, transport_name, listener, outbound=False, tls=self.server_contexts.get(listener)
        )

    # -- into the core ----------------------------------------------------------------------

    def deliver(self, flow: Flow, data: bytes) -> None:
        if self.trace is not None:
            self.trace.message("RECV", flow.transport, flow.remote, flow.listener, data)
        now = self.loop.time()
        self.proxy.wall_offset = time.time() - now  # the digest nonces' clock (a 40 ns call)
        try:
            self.proxy.receive(flow, data, now, framed=flow.transport != "udp")
        except Exception:  # the core must never take the process down with it
            log.exception("internal error on a message from %s:%d", *flow.remote)
        self.pump()

    def framing_error(self, flow: Flow, error: FramingError) -> None:
        self.proxy.receive_framing_error(flow, error)
        self.pump()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.proxy.handle_timer(self.loop.time())
        except Exception:
            log.exception("internal error in a timer")
        self.pump()

    # -- out of the core --------------------------------------------------------------------

    def pump(self) -> None:
        """Send what the core produced and re-arm the one timer (aioquic's ``transmit``)."""
        while outputs := self.proxy.take_outputs():
            for output in outputs:
                try:
                    if isinstance(output, SendOnFlow):
                        self._send_on_flow(output.flow, output.data, output.via)
                    elif isinstance(output, SendToHop):
                        self._send_to_hop(output.hop, output.data, output.token)
                    elif isinstance(output, RegisterAlias):
                        self._register_alias(output)
                    elif isinstance(output, HopUnavailable):
                        self._hop_unavailable(output)
                    elif isinstance(output, ProbeAnswer):
                        self.liveness.answered(output)
                except Exception:  # one bad send must not take the others, or the connection, with it
                    log.exception("could not send %s", type(output).__name__)
                    if isinstance(output, SendToHop) and output.token:
                        self.proxy.hop_failed(output.token, "internal error sending", self.loop.time())
        deadline = self.proxy.get_timer()
        # Re-arm only for an earlier deadline: a later one is found when the armed timer fires
        # (handle_timer runs only what is due), so steady traffic does not churn loop timers.
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def flush_soon(self, conn: StreamConnection) -> None:
        """Write ``conn``'s queued messages when the read callback that queued them returns, or else at the
        end of this turn of the event loop: the requests and replies one read produced leave in a few writes
        per connection (``PIPELINE_BATCH`` messages each), not one per message."""
        if not self._unflushed and not self.reading:
            self.loop.call_soon(self._flush)
        self._unflushed.append(conn)

    def flush(self) -> None:
        """Write every connection's queued messages now."""
        if self._unflushed:
            self._flush()

    def _flush(self) -> None:
        conns, self._unflushed = self._unflushed, []
        for conn in conns:
            conn.flush_queued = False
            try:
                conn.flush()
            except Exception:  # one broken connection must not keep the others' messages
                log.exception("could not write to a connection")

    def _send_on_flow(self, flow: Flow, data: bytes, via: str = "") -> None:
        if self.trace is not None:
            self.trace.message("SEND", flow.transport, flow.remote, flow.listener, data)
        if flow.transport == "udp":
            udp = self._udp_for(flow.listener)
            if udp is not None:
                if self.hep is not None:
                    self._hep_udp(flow.listener, flow.remote, data)
                udp.sendto(data, flow.remote)
            return
        if flow.transport == "xmpp":  # the XMPP gateway's in-process flow (proxy/net/xmpp.py)
            link = self.links.get(flow.conn_id)
            if link is not None:
                link.send(data)
            return
        conn = self.connections.get(flow.conn_id)
        if conn is not None and conn.send(data):
            return
        hop = reply_hop(flow, via) if via else None
        if hop is None:
            self.warnings.warn(
                log,
                f"lost {flow.remote[0]}",
                self.loop.time(),
                "response to %s:%d lost: its connection closed first",
                *flow.remote,
            )
            return
        log.info(
            "response to %s:%d: its connection closed; sent on a new connection to %s:%d (RFC 3261 §18.2.2)",
            *flow.remote,
            hop.host,
            hop.port,
        )
        self._send_to_hop(hop, data, 0)

    def _send_to_hop(self, hop: NextHop, data: bytes, token: int) -> None:
        if self.trace is not None:
            self.trace.message("SEND", hop.transport, (hop.host, hop.port), hop.listener, data)
        if hop.transport == "xmpp":
            self._send_to_gateway(hop, data, token)
            return
        if hop.transport == "udp":
            udp = self._udp_for(hop.listener, self.udp_out)
            if udp is None:
                self.proxy.hop_failed(token, "no UDP listener is configured to send from", self.loop.time())
            elif is_ip_literal(hop.host):
                if self.hep is not None:
                    self._hep_udp(hop.listener, (hop.host.strip("[]"), hop.port), data, self.udp_out)
                udp.sendto(data, (hop.host.strip("[]"), hop.port))
            else:  # a name: resolve off the loop's critical path, then send (or fail the transaction)
                task = self.loop.create_task(resolve_and_send(self, udp, hop, data, token))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        route = self.routes.get(hop.route or "") if hop.failover else None
        # A pool or DNS route's requests go on the connection its candidate order chose (kept under the
        # route's own key, apart from each candidate's), never on whatever happens to be open.
        key: HopKey = ("route", route.name, 0, None) if route else (hop.transport, hop.host, hop.port, hop.tls_name)
        conn = self.by_hop.get(key) or (None if route else self._reusable(hop))
        if conn is not None and conn.send(data):
            if token:
                if conn.flow is not None:
                    self.proxy.sent_on(token, conn.flow.conn_id)
                conn.sent.append(token)
                if conn.outbound and not conn.heard_from:
                    conn.unanswered.append(token)
            return
        waiting = self.pending.get(key)
        if waiting is not None:
            waiting.append((data, token))
            return
        self.pending[key] = [(data, token)]
        task = self.loop.create_task(connect_route(self, key, hop, route) if route else connect(self, key, hop))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_to_gateway(self, hop: NextHop, data: bytes, token: int) -> None:
        """A request for an XMPP partner's domain: to the gateway, on the partner's in-process flow."""
        found = self.link_routes.get(hop.route or "")
        if found is None:
            if token:
                self.proxy.hop_failed(token, "the XMPP gateway for this domain is not running", self.loop.time())
            return
        conn_id, link = found
        if token:
            self.proxy.sent_on(token, conn_id)
        link.send(data)

    def next_link_id(self) -> int:
        """A connection id for an in-process flow (never one of a real connection)."""
        return next(self._ids)

    def attach_link(self, route: str, conn_id: int, link: InProcessLink) -> None:
        """The gateway's flow for ``route`` (``xmpp:<partner>``): requests the core sends along that route go to
        ``link``, responses on the flow with ``conn_id`` too."""
        self.links[conn_id] = link
        self.link_routes[route] = (conn_id, link)

    def _reusable(self, hop: NextHop) -> StreamConnection | None:
        """An open connection to the hop's address: one the peer offered by ``alias`` (RFC 5923),
        or one it opened from that very address and port (as Kamailio reuses accepted ones)."""
        where = (hop.transport, hop.host, hop.port)
        conn = self.aliases.get(where) or self.by_remote.get(where)
        if conn is None or conn.flow is None:
            return None
        if hop.tls_name is not None and hop.tls_name not in conn.flow.peer_names:
            return None  # RFC 5923 §5: reuse only a connection whose certificate names the hop
        return conn

    def _register_alias(self, alias: RegisterAlias) -> None:
        conn = self.connections.get(alias.flow.conn_id)
        if conn is not None:
            key = (alias.flow.transport, alias.host, alias.port)
            self.aliases[key] = conn
            conn.keys.append(key)

    def _hop_unavailable(self, out: HopUnavailable) -> None:
        """RFC 3263 §4.3: the candidate behind the flow answered 503: mark it down (for its Retry-After, or
        the route's down_seconds) and stop sending the route's new requests on its connection."""
        route = self.routes.get(out.route)
        conn = self.connections.get(out.flow.conn_id) if out.flow.conn_id else None
        if route is None or conn is None or conn.hop is None:
            return
        candidate = self._candidate_of(route, conn.hop)
        mark = self.failover.unavailable(route, candidate, out.retry_after, out.reason, self.loop.time())
        log.warning(
            "route %s: candidate %s answered %s; marked down for %g s", route.name, candidate, mark.reason, mark.seconds
        )
        self.avoid(candidate)

    def avoid(self, candidate: Candidate) -> None:
        """New requests of pool and DNS routes stop going to ``candidate``'s connection (it stays open for
        what is in flight, and for its own health checks)."""
        own = candidate_hop_key(candidate)
        for key, conn in list(self.by_hop.items()):
            hop = conn.hop
            if key != own and hop is not None and (hop.transport, hop.host, hop.port) == own[:3]:
                del self.by_hop[key]
                conn.keys.remove(key)

    def refused_after_handshake(self, conn: StreamConnection, exc: Exception | None) -> None:
        """The next hop closed before answering anything: fail what was sent at once (503), with the cause."""
        hop = conn.hop
        assert hop is not None
        if exc is not None:
            reason = describe_failure(exc, hop.tls_name, self.own)
        else:
            reason = "the peer closed the connection before answering" + (
                " (after the TLS handshake: did it refuse our certificate?)" if hop.transport == "tls" else ""
            )
        where = f" (route {hop.route})" if hop.route else ""
        self.warnings.warn(
            log, f"dropped {hop}", self.loop.time(), "next hop %s%s dropped the connection: %s", hop, where, reason
        )
        if hop.transport == "tls":
            self.observer.tls_handshake(hop.listener, "outbound", "failure", classify(exc) if exc else "other")
        mark_route_down(self, hop, reason)
        now = self.loop.time()
        for token in conn.unanswered:
            self.proxy.hop_failed(token, reason, now, "tls_failure" if hop.transport == "tls" else "other")
        conn.unanswered.clear()
        self.pump()

    def lost_with_requests(self, conn: StreamConnection, exc: Exception | None) -> None:
        """A connection closed with requests sent on it still unanswered: a transport failure for each
        (RFC 3261 §8.1.3.1). Pool and DNS routes retry them on their next candidate (RFC 3263 §4.3) and
        mark this one down; the rest get 503 at once instead of waiting for their timeout."""
        tokens = self.proxy.unanswered(conn.sent)
        conn.sent = []
        if not tokens:
            return
        remote = conn.flow.remote if conn.flow is not None else ("?", 0)
        reason = f"the connection to {remote[0]}:{remote[1]} closed before it answered" + (f" ({exc})" if exc else "")
        log.warning("%s: %d request(s) in flight on it", reason, len(tokens))
        now = self.loop.time()
        hop = conn.hop
        route = self.routes.get(hop.route or "") if hop is not None and hop.failover else None
        if hop is not None and route is not None:
            self.failover.lost(route, self._candidate_of(route, hop), reason, now)
        self.proxy.connection_lost(tokens, reason, now)
        self.pump()

    def _candidate_of(self, route: StaticRoute, hop: NextHop) -> Candidate:
        """The route's candidate a connection was opened to (as health marks know it)."""
        return candidate_of(self.liveness.known.get(route.name) or route.static_candidates, hop)

    def _udp_for(
        self, listener: str, first: dict[str, DatagramEndpoint] | None = None
    ) -> asyncio.DatagramTransport | None:
        """The UDP socket a message leaves on: the listener's (``first``'s, when it has one), else any."""
        endpoint = (first and first.get(listener)) or self.udp.get(listener) or next(iter(self.udp.values()), None)
        return endpoint.transport if endpoint is not None else None

    def _hep_udp(
        self, listener: str, remote: tuple[str, int], data: bytes, first: dict[str, DatagramEndpoint] | None = None
    ) -> None:
        """[hep]: a message leaves on the UDP socket ``_udp_for`` chose."""
        endpoint = (first and first.get(listener)) or self.udp.get(listener) or next(iter(self.udp.values()), None)
        if self.hep is not None and endpoint is not None:
            self.hep.capture("udp", endpoint.local, remote, data)

    def peer_at(self, transport: str, remote: tuple[str, int]) -> str | None:
        """Read-only, for ``sipfed ctl trace --peer``: the [[peers]] name of the open connection to or from
        ``remote`` (a next hop's address as its route names it included); over UDP, the peer the address
        binds to. None when no open connection or peer is known there."""
        if transport == "udp":
            bound = self.trust.bind(CertIdentity(), remote[0]) if self.trust.peers else None
            return bound.name if bound is not None else None
        where = (transport, remote[0], remote[1])
        conn = (
            self.by_remote.get(where)
            or self.aliases.get(where)
            or next((c for key, c in self.by_hop.items() if key[:3] == where), None)
        )
        return conn.flow.peer if conn is not None and conn.flow is not None else None

    async def close(self) -> None:
        self._flush()  # what the last turn queued goes out before the connections close
        await self.liveness.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        for task in list(self._tasks):
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self.hep is not None:  # after the last writes above, so their copies go out too
            self.hep.close()
            self.hep = None
