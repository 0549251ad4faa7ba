"""The asyncio edge of XMPP federation: the S2S listener, outbound streams found by SRV, dialback checks with
partners' Authoritative Servers, keep-alives, and the gateway's in-process SIP flows into the proxy core.

Rules:
1. RFC 6120 §3.2: a partner's servers are ``_xmpp-server._tcp.<domain>`` SRV targets in RFC 2782 order, each
   tried in turn; without SRV records, the domain itself on 5269; ``address`` in its ``[[xmpp.partners]]``
   entry overrides both.
2. One outbound stream per (our domain, partner domain); stanzas wait for it to authenticate, and fail (the
   gateway maps the reason to a SIP status) when it cannot, for ``FAILED_SECONDS`` after which a new try is
   made.
3. A stream still negotiating after ``connect_timeout_seconds`` is closed; one idle for ``keepalive_seconds``
   gets a whitespace keep-alive (RFC 6120 §4.6.1) when its partner has ``keepalive = true``; one silent for
   ``idle_timeout_seconds`` is closed.
4. Inbound connections are bounded: ``MAX_CONNECTIONS`` in all, ``MAX_UNAUTHENTICATED_PER_SOURCE`` per source
   address until they authenticate.
5. Every refused stream is logged once, in words: which setting refused it and the fix.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

from OpenSSL import SSL

from acl.subjects import CertIdentity
from proxy.net.xmpp_conn import XmppConnection
from proxy.relay.types import Flow
from proxy.xmpp.gateway import Gateway
from proxy.xmpp.inbound import InboundStream
from proxy.xmpp.outbound import OutboundStream
from proxy.xmpp.outbox import SendSip, SendStanza, XmppObserver
from proxy.xmpp.policy import Partner, XmppConfig
from proxy.xmpp.store import SubscriptionStore
from proxy.xmpp.stream import (
    Authenticated,
    Closed,
    DialbackAnswer,
    DialbackRequest,
    Failed,
    Incoming,
    Ready,
    StreamEvent,
)
from proxy.xmpp.xml import to_bytes
from routes.candidates import Candidate, rfc2782_order
from routes.dns import DnsFailure, NoRecords, Query, Srv
from routes.resolver import DnspythonSource

log = logging.getLogger("sipfed.xmpp")

FAILED_SECONDS = 5.0
"""Rule 2: how long a failed partner's stanzas fail at once, with the same reason, before a new try."""
MAX_CONNECTIONS = 1024
MAX_UNAUTHENTICATED_PER_SOURCE = 32
TICK_SECONDS = 1.0
XMPP_PORT = 5269
_RNG = random.Random()  # RFC 2782's weighted draws need no secrecy


@dataclass(slots=True)
class OutLink:
    """Rule 2: our stream from ``local`` to ``remote``, and what waits for it."""

    local: str
    remote: str
    partner: Partner
    conn: XmppConnection | None = None
    ready: bool = False
    deadline: float = 0.0
    queue: list[tuple[bytes, int]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class GatewayLink:
    """The in-process flow between the proxy core and the gateway for one partner: the core sees a peer bound
    to the partner's domains (``xmpp:<name>``), on the ``xmpp`` listener; writes go to the gateway on the next
    turn of the loop (never inside the core's own output loop)."""

    def __init__(self, edge: XmppEdge, partner: str, conn_id: int, address: str) -> None:
        self.edge = edge
        self.partner = partner
        self.flow = Flow("xmpp", "xmpp", (address, 0), conn_id, CertIdentity(), f"xmpp:{partner}")
        self._queue: list[bytes] = []

    def send(self, data: bytes) -> bool:
        if not self._queue:
            self.edge.loop.call_soon(self._deliver)
        self._queue.append(data)
        return True

    def _deliver(self) -> None:
        queue, self._queue = self._queue, []
        gateway = self.edge.gateway
        if gateway is None:
            return
        now = time.time()
        for data in queue:
            try:
                gateway.sip_in(self.partner, data, now)
            except Exception:  # one bad message must not take the gateway down
                log.exception("gateway: internal error on a SIP message from the core")
        self.edge.pump()


class XmppEdge:
    """The listener, the connections and the gateway of ``[xmpp]``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, driver: object, observer: XmppObserver | None = None) -> None:
        from proxy.net.driver import Driver  # the edge and the driver know each other only here

        assert isinstance(driver, Driver)
        self.loop = loop
        self.driver = driver
        self.observer = observer or XmppObserver()
        self.config: XmppConfig | None = None
        self.secret = ""
        self.gateway: Gateway | None = None
        self.server: asyncio.Server | None = None
        self.port = 0
        self.conns: set[XmppConnection] = set()
        self.links: dict[tuple[str, str], OutLink] = {}
        self.failed: dict[tuple[str, str], tuple[float, str, str]] = {}
        self.verifying: dict[tuple[str, str, str], XmppConnection] = {}
        """Dialback keys being checked: (originating, receiving, stream id) -> the inbound stream waiting."""
        self.asking: dict[tuple[str, str, str], XmppConnection] = {}
        """The same keys -> the verify connection asking the Authoritative Server."""
        self.sip_links: dict[str, GatewayLink] = {}
        self._contexts: dict[bool, SSL.Context] = {}
        self.dns: DnspythonSource | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._gateway_timer: asyncio.TimerHandle | None = None
        self._gateway_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- start, reload -----------------------------------------------------------------------------------

    async def bind(self, config: XmppConfig) -> int:
        """Bind the S2S listener (its port goes into the proxy core's ``xmpp`` identity)."""
        host, port = config.listen
        self.config = config
        self.server = await self.loop.create_server(self._accept, host, port, reuse_address=True)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    def start_gateway(self, store: SubscriptionStore) -> None:
        """Once the core knows the gateway's routes: the gateway restores its subscriptions (store rule 5)."""
        assert self.config is not None
        self.gateway = Gateway(self.config, store, self.observer)
        self.gateway.restore(time.time())
        self._tick = self.loop.call_later(TICK_SECONDS, self._on_tick)
        self.pump()

    def configure(
        self,
        config: XmppConfig,
        contexts: dict[bool, SSL.Context],
        dns: DnspythonSource,
        sip_address: str,
    ) -> None:
        """(Re)load: partners, TLS material, DNS; a SIP flow per partner."""
        self.config = config
        self.secret = config.dialback_secret or self.secret or secrets.token_hex(32)
        self._contexts = contexts
        self.dns = dns
        if self.gateway is not None:
            self.gateway.config = config
            self.gateway.subscriptions.config = config
        for partner in config.partners:
            if partner.name not in self.sip_links:
                conn_id = self.driver.next_link_id()
                link = GatewayLink(self, partner.name, conn_id, sip_address)
                self.sip_links[partner.name] = link
                self.driver.attach_link(f"xmpp:{partner.name}", conn_id, link)

    def tls_context(self, server: bool) -> SSL.Context | None:
        return self._contexts.get(server)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.conns):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        for handle in (self._tick, self._gateway_timer):
            if handle is not None:
                handle.cancel()

    # -- inbound (rule 4) ----------------------------------------------------------------------------------

    def _accept(self) -> XmppConnection:
        assert self.config is not None
        stream = InboundStream(
            max_stanza_bytes=self.config.max_stanza_bytes,
            config=self.config,
            stream_id=secrets.token_hex(8),
            secret=self.secret,
            tls_available=True in self._contexts,
        )
        return XmppConnection(self, stream, "in")

    def connected(self, conn: XmppConnection) -> None:
        if conn.role == "in":
            unproven = Counter(c.remote[0] for c in self.conns if c.role == "in" and not _authenticated(c))
            if len(self.conns) >= MAX_CONNECTIONS or unproven[conn.remote[0]] >= MAX_UNAUTHENTICATED_PER_SOURCE:
                log.warning("XMPP connection from %s:%d refused: too many connections (rule 4)", *conn.remote)
                conn.stream.fail("resource-constraint", "too many connections")
                self.observer.stream("unknown", "in", "refused")
        self.conns.add(conn)

    def disconnected(self, conn: XmppConnection, exc: Exception | None) -> None:
        self.conns.discard(conn)
        if conn.role == "out":
            link = next((lk for lk in self.links.values() if lk.conn is conn), None)
            if link is not None:
                self._drop_link(link, "remote-server-timeout", f"the connection to {link.remote} closed")
        elif conn.role == "verify":
            for key, asking in list(self.asking.items()):
                if asking is conn:
                    self._verdict(key, False, f"the Authoritative Server of {key[0]} closed the connection unanswered")
        else:
            for key, waiting in list(self.verifying.items()):
                if waiting is conn:
                    del self.verifying[key]

    # -- events ----------------------------------------------------------------------------------------

    def on_event(self, conn: XmppConnection, event: StreamEvent) -> None:
        stream = conn.stream
        partner = stream.partner
        name = partner.name if partner is not None else "unknown"
        if isinstance(event, Incoming):
            if self.gateway is not None:
                self.gateway.stanza_in(event.stanza, event.local, event.remote, time.time())
                self.pump()
        elif isinstance(event, Authenticated):
            conn.partner = name
            self.observer.stream(name, "in", event.method)
            log.info(
                "XMPP stream from %s (%s:%d) authenticated for %s by %s, %s",
                event.remote,
                *conn.remote,
                event.local,
                "SASL EXTERNAL" if event.method == "sasl" else "dialback",
                _tls_words(conn),
            )
        elif isinstance(event, Ready):
            self._ready(conn, event)
        elif isinstance(event, DialbackRequest):
            self._verify(conn, event)
        elif isinstance(event, DialbackAnswer):
            self._verdict((event.originating, event.receiving, event.stream_id), event.valid, "")
            if conn.role == "verify" and not self._verifies_pending(conn):
                conn.close()
        elif isinstance(event, Failed):
            self._failed(conn, event, name)
        elif isinstance(event, Closed) and conn.role == "in":
            self.observer.stream(name, "in", "closed")

    def _failed(self, conn: XmppConnection, event: Failed, name: str) -> None:
        where = f"{conn.remote[0]}:{conn.remote[1]}"
        if conn.role == "in":
            self.observer.stream(name, "in", "refused" if event.ours else "failed")
            log.warning(
                "XMPP stream from %s (%s) %s: %s", name, where, "refused" if event.ours else "ended", event.reason
            )
            return
        self.observer.stream(name, "out", "failed")
        link = next((lk for lk in self.links.values() if lk.conn is conn), None)
        if link is not None:
            condition = (
                "forbidden" if event.condition in ("not-authorized", "policy-violation") else ("service-unavailable")
            )
            self._drop_link(link, condition, event.reason)

    # -- outbound (rules 1-3) ----------------------------------------------------------------------------

    def send_stanza(self, out: SendStanza) -> None:
        assert self.config is not None
        key = (out.local, out.remote)
        data = to_bytes(out.stanza)
        link = self.links.get(key)
        if link is not None and link.ready and link.conn is not None and not link.conn.closed:
            link.conn.write(data)
            self._sent(out.token)
            return
        failed = self.failed.get(key)
        if link is None and failed is not None and failed[0] > self.loop.time():
            self._unsent(out.token, failed[1], failed[2])
            return
        if link is None:
            partner = self.config.partner_for(out.remote)
            if partner is None:
                self._unsent(out.token, "remote-server-not-found", f"{out.remote} is not an XMPP partner")
                return
            deadline = self.loop.time() + self.config.connect_timeout_seconds
            link = OutLink(out.local, out.remote, partner, deadline=deadline)
            self.links[key] = link
            link.task = self._spawn(self._open(link))
        link.queue.append((data, out.token))

    async def _open(self, link: OutLink) -> None:
        assert self.config is not None
        try:
            targets = await self.targets(link.remote, link.partner)
        except DnsFailure as exc:
            self._drop_link(link, "remote-server-not-found", f"cannot look up {link.remote}: {exc}")
            return
        problems = []
        for host, port in targets:
            stream = OutboundStream(
                max_stanza_bytes=self.config.max_stanza_bytes,
                local=link.local,
                remote=link.remote,
                partner=link.partner,
                secret=self.secret,
                tls_available=False in self._contexts,
            )
            conn = XmppConnection(self, stream, "out", link.partner.name)
            link.conn = conn
            try:
                await asyncio.wait_for(
                    self.loop.create_connection(functools.partial(_same, conn), host, port),
                    max(0.1, link.deadline - self.loop.time()),
                )
                return
            except (OSError, TimeoutError) as exc:
                problems.append(f"{host}:{port}: {getattr(exc, 'strerror', None) or exc or 'timed out'}")
        link.conn = None
        why = "; ".join(problems) or f"no server found for {link.remote}"
        self._drop_link(link, "remote-server-not-found", f"cannot reach {link.remote}: {why}")

    async def targets(self, domain: str, partner: Partner | None) -> list[tuple[str, int]]:
        """Rule 1."""
        if partner is not None and partner.address is not None:
            return [partner.address]
        assert self.dns is not None
        try:
            answer = await self.dns.query(Query(f"_xmpp-server._tcp.{domain}", "SRV"))
        except NoRecords:  # RFC 6120 §3.2.2: the domain itself, on the default port
            return [(address, XMPP_PORT) for address in await self._addresses(domain)]
        records = [r for r in answer.records if isinstance(r, Srv) and r.target not in (".", "")]
        ordered = rfc2782_order(
            [Candidate(r.target, r.port, "tcp", domain, r.priority, r.weight) for r in records], _RNG
        )
        out = []
        for candidate in ordered:
            try:
                out += [(address, candidate.port) for address in await self._addresses(candidate.host)]
            except DnsFailure as exc:
                log.info("XMPP: SRV target %s of %s not found: %s", candidate.host, domain, exc)
        return out

    async def _addresses(self, name: str) -> list[str]:
        try:
            ipaddress.ip_address(name)
            return [name]
        except ValueError:
            pass
        assert self.dns is not None
        try:
            answer = await self.dns.query(Query(name, "A"))
        except NoRecords as exc:
            raise DnsFailure(Query(name, "A"), "no address (A) record") from exc
        return [record for record in answer.records if isinstance(record, str)]

    def _ready(self, conn: XmppConnection, event: Ready) -> None:
        link = self.links.get((event.local, event.remote))
        if link is None or link.conn is not conn:
            return
        link.ready = True
        self.failed.pop((event.local, event.remote), None)
        self.observer.stream(link.partner.name, "out", event.method)
        log.info(
            "XMPP stream %s -> %s (%s:%d) ready, authenticated by %s, %s",
            event.local,
            event.remote,
            *conn.remote,
            "SASL EXTERNAL" if event.method == "sasl" else "dialback",
            _tls_words(conn),
        )
        queue, link.queue = link.queue, []
        for data, token in queue:
            conn.write(data)
            self._sent(token)
        self.pump()

    def _drop_link(self, link: OutLink, condition: str, reason: str) -> None:
        key = (link.local, link.remote)
        if self.links.get(key) is not link:
            return
        del self.links[key]
        if link.conn is not None and not link.conn.closed:
            link.conn.close()
        if link.ready and not link.queue:
            return
        self.failed[key] = (self.loop.time() + FAILED_SECONDS, condition, reason)
        log.warning(
            "XMPP stream %s -> %s failed (%s): %s; %d stanza(s) not sent",
            link.local,
            link.remote,
            condition,
            reason,
            len(link.queue),
        )
        for _, token in link.queue:
            self._unsent(token, condition, reason)
        link.queue.clear()
        self.pump()

    def _sent(self, token: int) -> None:
        if token and self.gateway is not None:
            self.gateway.sent(token, time.time())

    def _unsent(self, token: int, condition: str, reason: str) -> None:
        if token and self.gateway is not None:
            self.gateway.unsent(token, condition, reason, time.time())

    # -- dialback verification (XEP-0220 §2.1.2) ----------------------------------------------------------

    def _verify(self, inbound: XmppConnection, request: DialbackRequest) -> None:
        key = (request.originating, request.receiving, request.stream_id)
        self.verifying[key] = inbound
        self._spawn(self._ask(request))

    async def _ask(self, request: DialbackRequest) -> None:
        assert self.config is not None
        partner = self.config.partner_for(request.originating)
        key = (request.originating, request.receiving, request.stream_id)
        problems = []
        try:
            targets = await self.targets(request.originating, partner)
        except DnsFailure as exc:
            targets, problems = [], [str(exc)]
        for host, port in targets:
            stream = OutboundStream(
                max_stanza_bytes=self.config.max_stanza_bytes,
                local=request.receiving,
                remote=request.originating,
                partner=partner,
                secret=self.secret,
                tls_available=False in self._contexts,
                verify_only=True,
            )
            stream.ask(request.receiving, request.originating, request.stream_id, request.key)
            conn = XmppConnection(self, stream, "verify", partner.name if partner else "")
            try:
                await asyncio.wait_for(
                    self.loop.create_connection(functools.partial(_same, conn), host, port),
                    self.config.connect_timeout_seconds,
                )
            except (OSError, TimeoutError) as exc:
                problems.append(f"{host}:{port}: {getattr(exc, 'strerror', None) or exc or 'timed out'}")
                continue
            self.asking[key] = conn
            self.loop.call_later(self.config.connect_timeout_seconds, self._verify_timeout, key, conn)
            return
        self._verdict(
            key,
            False,
            f"cannot reach the Authoritative Server of {request.originating}: "
            + ("; ".join(problems) or "no server found"),
        )

    def _verify_timeout(self, key: tuple[str, str, str], conn: XmppConnection) -> None:
        if key in self.verifying:
            self._verdict(key, False, f"the Authoritative Server of {key[0]} did not answer in time")
        conn.close()

    def _verdict(self, key: tuple[str, str, str], valid: bool, problem: str) -> None:
        self.asking.pop(key, None)
        inbound = self.verifying.pop(key, None)
        if inbound is None or inbound.closed:
            return
        stream = inbound.stream
        assert isinstance(stream, InboundStream)
        stream.dialback_verified(key[0], key[1], valid, problem)
        inbound.process()

    def _verifies_pending(self, conn: XmppConnection) -> bool:
        stream = conn.stream
        return isinstance(stream, OutboundStream) and bool(stream.questions)

    # -- the gateway ------------------------------------------------------------------------------------------

    def pump(self) -> None:
        """Carry out the gateway's outputs; re-arm its timer (wall-clock deadlines)."""
        gateway = self.gateway
        if gateway is None:
            return
        while outputs := gateway.take_outputs():
            for output in outputs:
                try:
                    if isinstance(output, SendStanza):
                        self.send_stanza(output)
                    elif isinstance(output, SendSip):
                        link = self.sip_links.get(output.partner)
                        if link is not None:
                            self.driver.deliver(link.flow, output.data)
                except Exception:
                    log.exception("gateway: could not carry out %s", type(output).__name__)
        deadline = gateway.get_timer()
        if deadline is not None and (self._gateway_at is None or deadline < self._gateway_at):
            if self._gateway_timer is not None:
                self._gateway_timer.cancel()
            self._gateway_timer = self.loop.call_later(max(0.0, deadline - time.time()), self._on_gateway_timer)
            self._gateway_at = deadline

    def _on_gateway_timer(self) -> None:
        self._gateway_timer, self._gateway_at = None, None
        if self.gateway is not None:
            try:
                self.gateway.handle_timer(time.time())
            except Exception:
                log.exception("gateway: internal error in a timer")
            self.pump()

    # -- rule 3 -------------------------------------------------------------------------------------------

    def _on_tick(self) -> None:
        self._tick = self.loop.call_later(TICK_SECONDS, self._on_tick)
        config = self.config
        if config is None:
            return
        now = self.loop.time()
        for link in list(self.links.values()):
            if not link.ready and now > link.deadline:
                self._drop_link(
                    link,
                    "remote-server-timeout",
                    f"no authenticated stream to {link.remote} within "
                    f"{config.connect_timeout_seconds:g} s (xmpp.connect_timeout_seconds)",
                )
        for conn in list(self.conns):
            self._tend(conn, config, now)

    def _tend(self, conn: XmppConnection, config: XmppConfig, now: float) -> None:
        if conn.role == "in" and not _authenticated(conn) and now - conn.opened_at > config.connect_timeout_seconds:
            conn.stream.fail("connection-timeout", "not authenticated in time")
            conn.process()
            return
        if now - max(conn.last_rx, conn.last_tx) > config.idle_timeout_seconds:
            conn.close()
            return
        partner = conn.stream.partner
        keepalive = partner is not None and partner.keepalive and conn.role != "verify"
        if keepalive and now - conn.last_tx > config.keepalive_seconds and (conn.role == "in" or _ready(conn)):
            conn.write(b" ")  # RFC 6120 §4.6.1
            self.observer.keepalive(partner.name if partner is not None else "unknown")

    def _spawn(self, coroutine: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self.loop.create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _tls_words(conn: XmppConnection) -> str:
    return f"over {conn.tls.version()}" if conn.tls is not None and conn.tls.established else "without TLS"


def _same(conn: XmppConnection) -> XmppConnection:
    return conn


def _authenticated(conn: XmppConnection) -> bool:
    stream = conn.stream
    return isinstance(stream, InboundStream) and bool(stream.authenticated)


def _ready(conn: XmppConnection) -> bool:
    stream = conn.stream
    return isinstance(stream, OutboundStream) and stream.ready
