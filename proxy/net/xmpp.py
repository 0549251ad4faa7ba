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
import logging
import secrets
import time
from collections import Counter

from OpenSSL import SSL

from acl.subjects import CertIdentity
from proxy.net import xmpp_out
from proxy.net.xmpp_conn import XmppConnection
from proxy.net.xmpp_out import FAILED_SECONDS, XMPP_PORT, OutLink, _tls_words
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
from routes.resolver import DnspythonSource

log = logging.getLogger("sipfed.xmpp")

__all__ = [
    "FAILED_SECONDS",
    "MAX_CONNECTIONS",
    "MAX_UNAUTHENTICATED_PER_SOURCE",
    "TICK_SECONDS",
    "XMPP_PORT",
    "GatewayLink",
    "OutLink",
    "XmppEdge",
]

MAX_CONNECTIONS = 1024
MAX_UNAUTHENTICATED_PER_SOURCE = 32
TICK_SECONDS = 1.0


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
                xmpp_out.drop_link(self, link, "remote-server-timeout", f"the connection to {link.remote} closed")
        elif conn.role == "verify":
            for key, asking in list(self.asking.items()):
                if asking is conn:
                    xmpp_out.verdict(
                        self, key, False, f"the Authoritative Server of {key[0]} closed the connection unanswered"
                    )
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
            xmpp_out.link_ready(self, conn, event)
        elif isinstance(event, DialbackRequest):
            xmpp_out.verify(self, conn, event)
        elif isinstance(event, DialbackAnswer):
            xmpp_out.verdict(self, (event.originating, event.receiving, event.stream_id), event.valid, "")
            if conn.role == "verify" and not xmpp_out.verifies_pending(conn):
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
            xmpp_out.drop_link(self, link, condition, event.reason)

    # -- outbound (rules 1-3) and dialback verification: proxy/net/xmpp_out.py --------------------------

    def send_stanza(self, out: SendStanza) -> None:
        """Rule 2: ``out`` on our stream to its domain, opened (rule 1) if need be."""
        xmpp_out.send_stanza(self, out)

    async def targets(self, domain: str, partner: Partner | None) -> list[tuple[str, int]]:
        """Rule 1."""
        return await xmpp_out.srv_targets(self, domain, partner)

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
                xmpp_out.drop_link(
                    self,
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


def _authenticated(conn: XmppConnection) -> bool:
    stream = conn.stream
    return isinstance(stream, InboundStream) and bool(stream.authenticated)


def _ready(conn: XmppConnection) -> bool:
    stream = conn.stream
    return isinstance(stream, OutboundStream) and stream.ready
