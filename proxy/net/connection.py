"""The asyncio protocols of one connection or UDP socket: bytes in, framed messages to the Driver.

``StreamConnection`` frames TCP/TLS byte streams (inbound TLS runs through a ``TlsSession`` so a
refused client gets its alert); ``DatagramEndpoint`` hands each datagram over whole. ``ConnectionGate``
(proxy/net/gate.py) bounds what inbound connections may cost before they prove who they are.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from acl.peers import Trust
from acl.subjects import CertIdentity
from proxy.net.cert_expiry import report_seen
from proxy.net.gate import RESERVED_FILES, ConnectionGate, connection_cap, valid_sip
from proxy.net.inbound_check import check_inbound
from proxy.net.revocation_check import hold_inbound
from proxy.net.tls import classify, describe_inbound, peer_identity
from proxy.net.tls_session import TlsSession
from proxy.relay.types import Flow, NextHop
from proxy.sip.parser import FramingError, Ping, StreamFramer

if TYPE_CHECKING:
    from proxy.net.driver import Driver

log = logging.getLogger("sipfed.net")

UDP_RECEIVE_BUFFER = 2 * 1024 * 1024
"""SO_RCVBUF asked for on UDP listeners (the kernel doubles it, capped at net.core.rmem_max): a burst that
arrives while the loop is busy waits in the socket instead of being dropped, as SIP servers configure
theirs (Kamailio's maxbuffer). The default (~208 KB) lost a few datagrams per step in make bench's UDP
step-up at 12,000-16,000 calls/s, each one a failed call."""

__all__ = [
    "PIPELINE_BATCH",
    "RESERVED_FILES",
    "ConnectionGate",
    "DatagramEndpoint",
    "StreamConnection",
    "connection_cap",
    "valid_sip",
]


#: A read that held many messages writes every PIPELINE_BATCH of them as soon as they are ready, so the next
#: hop starts on them while the rest are worked on. Measured on message-tls, closed loop, sipfed/Kamailio:
#: one write per read 1.01x (CPU 0.83x); every 4 messages 1.11x (0.87x); every 8 1.15x (0.92x); every
#: message 0.80x (1.19x: a TLS record and a system call per message).
PIPELINE_BATCH = 4


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection, accepted or opened; frames messages with a StreamFramer.

    Accepted TLS connections run their handshake through a TlsSession (MemoryBIO) so that a
    refused client gets its alert and the refusal is logged in plain words; outbound ones use
    asyncio's TLS, whose failures arrive as exceptions in ``proxy.net.connect.connect``.
    """

    def __init__(
        self, driver: Driver, transport_name: str, listener: str, outbound: bool, tls: ssl.SSLContext | None = None
    ) -> None:
        self.driver = driver
        self.transport_name = transport_name
        self.listener = listener
        self.outbound = outbound
        self.framer = StreamFramer(driver.max_message_bytes)
        self.transport: asyncio.Transport | None = None
        self.flow: Flow | None = None
        self.keys: list[Any] = []
        self.session = TlsSession(tls) if tls is not None else None
        self.hop: NextHop | None = None
        """Outbound: the hop this connection was opened for."""
        self.unanswered: list[int] = []
        """Outbound, until the peer first sends anything: tokens of requests sent on this connection."""
        self.sent: list[int] = []
        """Tokens of requests sent on this connection (the liveness tick drops the answered ones)."""
        self.heard_from = False
        self.rx = 0
        """Reads so far, and sends: what keep-alives look at to tell an idle connection (proxy.net.health)."""
        self.tx = 0
        self.seen_activity = 0
        self.idle_since = driver.loop.time()
        self.ping_sent_at: float | None = None
        self.ping_rx = 0
        self.pongs = 0
        self.outbox: list[bytes] = []
        """What ``send`` queued and ``flush`` has not written yet."""
        self.flush_queued = False
        """In the Driver's list of connections to flush."""
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self.source: str | None = None
        """Inbound: the address the Driver's ConnectionGate counts this connection under (None: not counted)."""
        self.proven = False
        """Bound to a trusted peer, or a valid SIP message arrived (ConnectionGate rule 2)."""
        self.last_valid = 0.0
        """Inbound: when the last valid SIP message arrived (or the connection, before any)."""
        self._idle_timer: asyncio.TimerHandle | None = None
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        """This connection's own address and port, and its peer's: the addresses of this leg in [hep] copies."""
        self.remote: tuple[str, int] = ("0.0.0.0", 0)
        self.held: list[bytes] | None = None
        """Inbound TLS: what was decrypted while the peer's chain waits for a CRL (proxy/net/revocation_check.py)."""
        self.revocation_task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.local = _address(self.transport.get_extra_info("sockname"))
        self.remote = _address(self.transport.get_extra_info("peername"))
        if not self.outbound and not self._admitted():
            return
        if self.session is not None:
            self._handshake_timer = self.driver.loop.call_later(self.driver.handshake_timeout, self._handshake_late)
            return
        self.established(peer_identity(self.transport.get_extra_info("ssl_object")))

    def _admitted(self) -> bool:
        """ConnectionGate rules 1-3 for an accepted connection: False (and closed at once) when over a limit."""
        assert self.transport is not None
        driver, gate = self.driver, self.driver.gate
        source = str((self.transport.get_extra_info("peername") or ("0.0.0.0", 0))[0])
        now = driver.loop.time()
        refused = gate.admit(source, self.session is not None, now)
        if refused is not None:
            driver.observer.connection_refused(self.listener, refused)
            gate.warnings.warn(
                log,
                refused,
                now,
                "listener %s: closed a new connection from %s at once (%s)",
                self.listener,
                source,
                _REFUSALS[refused],
            )
            self.transport.close()
            return False
        self.source = source
        self.last_valid = now
        self._idle_timer = driver.loop.call_later(gate.idle_seconds, self._idle_check)
        return True

    def _prove(self) -> None:
        assert self.source is not None
        self.proven = True
        self.driver.gate.proven(self.source, self.session is not None)

    def _note(self, frame: bytes) -> None:
        """An unbound inbound connection's framed message: a valid one proves it and restarts its idle time.
        Once proven, a message is looked at again only when a quarter of the idle time has gone by."""
        now = self.driver.loop.time()
        if self.proven and now - self.last_valid < self.driver.gate.idle_seconds / 4:
            return
        settings = self.driver.proxy.settings
        if valid_sip(frame, settings.max_headers, settings.max_header_line_bytes):
            self.last_valid = now
            if not self.proven:
                self._prove()

    def _idle_check(self) -> None:
        """ConnectionGate rule 4: close an unbound inbound connection that has gone ``idle_seconds`` without a
        valid SIP message (keep-alives and garbage do not count), unless requests sipfed sent on it are still
        unanswered. A connection bound to a trusted peer is never closed by this rule."""
        self._idle_timer = None
        transport, flow, driver = self.transport, self.flow, self.driver
        if transport is None or transport.is_closing() or (flow is not None and flow.peer is not None):
            return
        idle = driver.gate.idle_seconds
        now = driver.loop.time()
        left = self.last_valid + idle - now
        if left > 0 or (self.sent and driver.proxy.unanswered(self.sent)):
            self._idle_timer = driver.loop.call_later(left if left > 0 else idle / 4, self._idle_check)
            return
        driver.observer.connection_closed(self.listener, "unauthenticated_idle")
        remote = transport.get_extra_info("peername") or ("?", 0)
        driver.gate.warnings.warn(
            log,
            "unauthenticated_idle",
            now,
            "closing the connection from %s:%s: bound to "
            "no trusted peer and no valid SIP message for %g s "
            "(limits.unauthenticated_idle_seconds)",
            remote[0],
            remote[1],
            idle,
            level=logging.INFO,
        )
        transport.close()

    def rebind(self, trust: Trust) -> str:
        """After a reload (issue 14, "Reload re-binds"): bind this open connection again by its certificate
        and address against the new ``[[peers]]``. Returns ``kept`` (the same binding), ``rebound`` (a new
        Flow: bound to another peer now, or to one where it was bound to none) or ``closed``.

        The rule: a connection bound to a peer that its certificate no longer binds it to (the peer is gone,
        or its subjects or networks changed) is **closed, not demoted** to unbound. What was admitted on it,
        and what sipfed may still send on it (aliases, connection reuse), was decided for that peer; closed,
        it connects again and meets the new configuration from its handshake on, as any new connection does.
        """
        flow = self.flow
        if flow is None or self.transport is None or self.transport.is_closing():
            return "kept"  # still in its handshake: it is bound with the new table when that completes
        bound = trust.bind(flow.identity, flow.remote[0])
        name = bound.name if bound else None
        if name == flow.peer:
            return "kept"
        observer = self.driver.observer
        if name is None:
            log.warning(
                "reload: connection %s %s:%d closed: its certificate no longer binds it to peer %r "
                "(closed, not demoted; it may connect again)",
                "to" if self.outbound else "from",
                *flow.remote,
                flow.peer,
            )
            observer.connection_closed(self.listener, "trust_reload")
            self.transport.close()
            return "closed"
        log.info(
            "reload: connection %s %s:%d now bound to peer %r (was %s)",
            "to" if self.outbound else "from",
            *flow.remote,
            name,
            repr(flow.peer) if flow.peer else "none",
        )
        self.flow = replace(flow, peer=name)
        observer.connection(self.listener, flow.peer or "none", -1)
        observer.connection(self.listener, name, 1)
        if self.source is not None and not self.proven:
            self._prove()
        return "rebound"

    def established(self, identity: CertIdentity) -> None:
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername") or ("0.0.0.0", 0)
        bound = self.driver.trust.bind(identity, peer[0])
        conn_id = self.driver.register(self, (self.transport_name, peer[0], peer[1]))
        self.flow = Flow(
            self.transport_name, self.listener, (peer[0], peer[1]), conn_id, identity, bound.name if bound else None
        )
        log.debug(
            "connection %d %s %s:%d %s peer=%s",
            conn_id,
            "to" if self.outbound else "from",
            peer[0],
            peer[1],
            identity.describe(),
            self.flow.peer,
        )
        observer = self.driver.observer
        if self.transport_name == "tls" and not self.outbound:
            observer.tls_handshake(self.listener, "inbound", "success", "none")
            driver = self.driver
            check_inbound(
                driver.topology,
                self.listener,
                driver.client_cert_required.get(self.listener, True),
                identity,
                bound,
                (peer[0], peer[1]),
                driver.gate.warnings,
                observer,
                driver.loop.time(),
            )
            if bound is not None and self.session is not None:
                report_seen(observer, "peer", bound.name, self.session.obj)
        observer.connection(self.listener, self.flow.peer or "none", 1)
        if bound is not None and self.source is not None:
            self._prove()

    def data_received(self, data: bytes) -> None:
        driver = self.driver
        driver.read_started()
        try:
            self._received(data)
        finally:
            driver.read_ended()

    def _received(self, data: bytes) -> None:
        assert self.transport is not None
        self.rx += 1
        if not self.heard_from:
            self.heard_from = True
            self.unanswered.clear()
            if self.outbound and self.transport_name == "tls":
                # Only now do we know the peer accepted us: over TLS 1.3 it judges our
                # certificate after our side of the handshake has already finished.
                self.driver.observer.tls_handshake(self.listener, "outbound", "success", "none")
                if self.hop is not None and self.hop.route is not None:  # set once connected: not at _established
                    ssl_object = self.transport.get_extra_info("ssl_object")
                    report_seen(self.driver.observer, "route", self.hop.route, ssl_object)
        if self.session is not None:
            data = self._decrypt(data)
            if self.held is not None:
                self.held.append(data)
                return
            if not data or self.flow is None:
                return
        self.frames(data)

    def frames(self, data: bytes) -> None:
        """The SIP messages, keep-alives and framing errors in ``data``, in order, to the Driver."""
        assert self.transport is not None
        assert self.flow is not None
        for frame in self.framer.feed(data):
            if isinstance(frame, bytes):
                if self.source is not None and self.flow.peer is None:
                    self._note(frame)
                hep = self.driver.hep
                if hep is not None:
                    hep.capture(self.transport_name, self.remote, self.local, frame)
                self.driver.deliver(self.flow, frame)
            elif isinstance(frame, Ping):
                self.send(b"\r\n")  # RFC 5626 §4.4.1 pong
            elif isinstance(frame, FramingError):
                self.driver.framing_error(self.flow, frame)
                if frame.fatal:
                    self.flush()  # the 400 goes out before the connection closes
                    self.transport.close()
        self._watch_stall()

    def _watch_stall(self) -> None:
        """An incomplete message may wait so long (slow sender, Content-Length past the body), no longer."""
        if self.framer.pending and self._stall_timer is None:
            self._stall_timer = self.driver.loop.call_later(self.driver.incomplete_timeout, self._stalled)
        elif not self.framer.pending and self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self) -> None:
        self._stall_timer = None
        if self.transport is None or self.flow is None or not self.framer.pending:
            return
        log.warning(
            "closing the connection from %s:%d: %d bytes of an incomplete message for %g s (a slow sender, "
            "or a Content-Length larger than the body)",
            *self.flow.remote,
            self.framer.pending,
            self.driver.incomplete_timeout,
        )
        self.driver.observer.slow_sender(self.listener, "message")
        self.transport.close()

    def _decrypt(self, data: bytes) -> bytes:
        session, transport = self.session, self.transport
        assert session is not None
        assert transport is not None
        was_handshaken = session.handshaken
        try:
            plaintext, out = session.receive(data)
        except ssl.SSLError as exc:
            transport.write(session.pending())  # the alert, so the peer's log names the cause too
            self.refused(exc)
            return b""
        if out:
            transport.write(out)
        if session.handshaken and not was_handshaken:
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
            identity = CertIdentity.from_ssl_dict(session.obj.getpeercert())
            if hold_inbound(self, identity, plaintext):  # tls.revocation: decided later, or refused
                return b""
            self.established(identity)
        if session.closed:
            transport.close()
        return plaintext

    def refused(self, exc: BaseException) -> None:
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername") or ("?", 0)
        description = describe_inbound(exc, self.listener, self.driver.own)
        # A handshake flood logs each kind of refusal once per 10 s, with the count of the rest.
        self.driver.gate.warnings.warn(
            log, description, self.driver.loop.time(), "%s from %s:%s", description, peer[0], peer[1]
        )
        self.driver.observer.tls_handshake(self.listener, "inbound", "failure", classify(exc))
        self.transport.close()

    def _handshake_late(self) -> None:
        if self.session is not None and not self.session.handshaken and self.transport is not None:
            self.driver.observer.slow_sender(self.listener, "handshake")
            self.refused(TimeoutError(f"no TLS handshake within {self.driver.handshake_timeout:g} s"))

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._handshake_timer, self._stall_timer, self._idle_timer, self.revocation_task):
            if timer is not None:
                timer.cancel()
        if self.source is not None:
            self.driver.gate.closed(self.source, self.proven)
            self.source = None
        self.driver.unregister(self)
        if self.outbound and not self.heard_from and self.unanswered and self.hop is not None:
            self.driver.refused_after_handshake(self, exc)
        elif self.sent:
            self.driver.lost_with_requests(self, exc)
        if self.flow is not None:
            self.driver.observer.connection(self.listener, self.flow.peer or "none", -1)

    def send(self, data: bytes) -> bool:
        """Queue ``data``: what one read produces goes out in writes of ``PIPELINE_BATCH`` messages (one TLS
        record, one system call each), the rest when the Driver flushes, in order. False if closing."""
        if self.transport is None or self.transport.is_closing():
            return False
        hep = self.driver.hep
        if hep is not None and len(data) > 4:  # CRLF keep-alives (RFC 5626 §4.4.1) are not SIP messages
            hep.capture(self.transport_name, self.local, self.remote, data)
        if not self.flush_queued:
            self.flush_queued = True
            self.driver.flush_soon(self)
        outbox = self.outbox
        outbox.append(data)
        self.tx += 1
        if len(outbox) >= PIPELINE_BATCH:
            self.flush()
        return True

    def flush(self) -> None:
        outbox, self.outbox = self.outbox, []
        transport = self.transport
        if not outbox or transport is None or transport.is_closing():
            return
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        if self.session is not None:
            data = self.session.send(data)
        transport.write(data)


_REFUSALS = {
    "max_connections": "limits.max_connections inbound connections are open",
    "per_source": "limits.max_connections_per_source connections from that address are open and unproven",
    "handshake_rate": "over limits.handshakes_per_source_per_second from that address, before its TLS handshake",
}


class DatagramEndpoint(asyncio.DatagramProtocol):
    """A UDP socket: each datagram is one message."""

    def __init__(self, driver: Driver, listener: str) -> None:
        self.driver = driver
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None
        self._flows: dict[tuple[str, int], Flow] = {}
        """The Flow of each source address, made once (a Flow per datagram was a tenth of its cost)."""
        self._trust: object = None
        """The trust table the cached flows were bound with (a reload brings a new one)."""
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        """The socket's address (a wildcard when bound to one: the datagram's own destination is not asked for)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.local = _address(self.transport.get_extra_info("sockname"))
        sock = self.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        except (AttributeError, OSError) as exc:  # the default buffer still works, with less room for bursts
            log.warning("udp %s: could not enlarge the receive buffer: %s", self.listener, exc)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if data.strip(b"\r\n") == b"":
            return  # keep-alive CRLFs on UDP carry nothing
        trust = self.driver.trust
        if trust is not self._trust or len(self._flows) >= 4096:
            self._flows.clear()
            self._trust = trust
        key = (str(addr[0]), addr[1])
        flow = self._flows.get(key)
        if flow is None:
            bound = trust.bind(CertIdentity(), key[0]) if trust.peers else None
            flow = self._flows[key] = Flow("udp", self.listener, key, 0, peer=bound.name if bound else None)
        hep = self.driver.hep
        if hep is not None:
            hep.capture("udp", key, self.local, data)
        self.driver.deliver(flow, data)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp %s: %s", self.listener, exc)


def _address(name: object) -> tuple[str, int]:
    """A socket address (IPv6 ones come with flow info and scope) as (host, port); unknown: ("0.0.0.0", 0)."""
    if isinstance(name, tuple) and len(name) >= 2:
        return str(name[0]), int(name[1])
    return "0.0.0.0", 0
