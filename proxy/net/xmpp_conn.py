"""One TCP connection carrying an XMPP stream: bytes to and from its state machine (``proxy.xmpp.inbound`` or
``proxy.xmpp.outbound``), in clear until STARTTLS and through ``XmppTls`` after it (RFC 6120 §5.4.3.3: the
first TLS bytes follow the ``<proceed/>`` at once)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from OpenSSL import SSL

from proxy.net.xmpp_tls import XmppTls
from proxy.xmpp.inbound import InboundStream
from proxy.xmpp.outbound import OutboundStream
from proxy.xmpp.stream import Failed, StartTls, StreamEvent

if TYPE_CHECKING:
    from proxy.net.xmpp import XmppEdge

log = logging.getLogger("sipfed.xmpp")


class XmppConnection(asyncio.Protocol):
    """``role``: ``in`` (a partner connected to us), ``out`` (our stream for stanzas), ``verify`` (our stream to
    ask a partner's Authoritative Server about a dialback key)."""

    def __init__(self, edge: XmppEdge, stream: InboundStream | OutboundStream, role: str, partner: str = "") -> None:
        self.edge = edge
        self.stream = stream
        self.role = role
        self.partner = partner
        """The partner's name once known (from the stream header, inbound)."""
        self.transport: asyncio.Transport | None = None
        self.tls: XmppTls | None = None
        self.remote: tuple[str, int] = ("?", 0)
        now = edge.loop.time()
        self.opened_at = now
        self.last_rx = now
        self.last_tx = now
        self.closed = False

    # -- asyncio --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        peer = transport.get_extra_info("peername")
        self.remote = (str(peer[0]), int(peer[1])) if peer else ("?", 0)
        if isinstance(self.stream, OutboundStream):
            self.stream.start()
        self.edge.connected(self)
        self.process()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.edge.loop.time()
        if self.tls is None:
            self.stream.receive(data)
        else:
            before = self.tls.established
            try:
                plain, out = self.tls.receive(data)
            except SSL.Error as exc:
                self._write_raw(self.tls.pending())  # the alert, so the partner's log names the cause
                self.fail(f"TLS handshake failed: {_ssl_words(exc)}")
                return
            self._write_raw(out)
            if not before and self.tls.established:
                self.stream.tls_started(self.tls.peer_cert())
            if plain:
                self.stream.receive(plain)
            if self.tls.closed:
                self.close()
                return
        self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.edge.disconnected(self, exc)

    # -- the stream's output ------------------------------------------------------------------------------

    def process(self) -> None:
        """Write what the stream produced and hand its events to the edge."""
        data = self.stream.take_data()
        if data:
            self.write(data)
        for event in self.stream.take_events():
            self._event(event)
        if self.stream.ended and not self.closed:
            self.close()

    def _event(self, event: StreamEvent) -> None:
        if isinstance(event, StartTls):
            self._start_tls()
        else:
            self.edge.on_event(self, event)

    def _start_tls(self) -> None:
        context = self.edge.tls_context(server=self.role == "in")
        if context is None:
            self.fail("no TLS certificate is configured for XMPP ([xmpp] cert_chain/key or [tls])")
            return
        server_name = None if self.role == "in" else getattr(self.stream, "remote", None)
        self.tls = XmppTls(context, server=self.role == "in", server_name=server_name)
        if self.role != "in":
            self._write_raw(self.tls.start())

    def write(self, data: bytes) -> None:
        """Stream bytes out, through TLS once it is up."""
        if self.tls is not None:
            try:
                data = self.tls.send(data)
            except SSL.Error as exc:
                self.fail(f"TLS write failed: {_ssl_words(exc)}")
                return
        self._write_raw(data)

    def _write_raw(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.last_tx = self.edge.loop.time()
            self.transport.write(data)

    def fail(self, reason: str) -> None:
        """The connection cannot go on (TLS failed...): tell the edge, close."""
        if not self.closed:
            self.edge.on_event(self, Failed("tls-failure", reason))
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.stream.close()
            data = self.stream.take_data()
            if data:
                self.write(data)
            self.transport.close()
        self.closed = True


def _ssl_words(exc: SSL.Error) -> str:
    parts = [str(item[2]) for item in exc.args[0] if isinstance(item, tuple) and len(item) == 3] if exc.args else []
    return "; ".join(parts) or str(exc) or type(exc).__name__
