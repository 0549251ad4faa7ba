"""The outbound side of the XMPP edge: our S2S streams to partners (rules 1 and 2 of proxy/net/xmpp.py: the
partner's SRV targets in RFC 2782 order, one stream per domain pair, stanzas queued until it authenticates or
failed with a reason), and the connections that ask a partner's Authoritative Server to verify a dialback key
(XEP-0220 §2.1.2).

Apart from the listener, the stream events and the gateway pump (proxy/net/xmpp.py) because this is the side that
looks up DNS and connects out. Functions of the ``XmppEdge`` they take: its ``links``, ``failed``, ``verifying``
and ``asking`` tables live on the edge, which calls them and re-exports these names.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.net.xmpp_conn import XmppConnection
from proxy.xmpp.inbound import InboundStream
from proxy.xmpp.outbound import OutboundStream
from proxy.xmpp.outbox import SendStanza
from proxy.xmpp.policy import Partner
from proxy.xmpp.stream import DialbackRequest, Ready
from proxy.xmpp.xml import to_bytes
from routes.candidates import Candidate, rfc2782_order
from routes.dns import DnsFailure, NoRecords, Query, Srv

if TYPE_CHECKING:
    from proxy.net.xmpp import XmppEdge

log = logging.getLogger("sipfed.xmpp")

FAILED_SECONDS = 5.0
"""Rule 2: how long a failed partner's stanzas fail at once, with the same reason, before a new try."""
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


# -- outbound (rules 1-3) ----------------------------------------------------------------------------


def send_stanza(edge: XmppEdge, out: SendStanza) -> None:
    assert edge.config is not None
    key = (out.local, out.remote)
    data = to_bytes(out.stanza)
    link = edge.links.get(key)
    if link is not None and link.ready and link.conn is not None and not link.conn.closed:
        link.conn.write(data)
        _sent(edge, out.token)
        return
    failed = edge.failed.get(key)
    if link is None and failed is not None and failed[0] > edge.loop.time():
        _unsent(edge, out.token, failed[1], failed[2])
        return
    if link is None:
        partner = edge.config.partner_for(out.remote)
        if partner is None:
            _unsent(edge, out.token, "remote-server-not-found", f"{out.remote} is not an XMPP partner")
            return
        deadline = edge.loop.time() + edge.config.connect_timeout_seconds
        link = OutLink(out.local, out.remote, partner, deadline=deadline)
        edge.links[key] = link
        link.task = edge._spawn(_open(edge, link))
    link.queue.append((data, out.token))


async def _open(edge: XmppEdge, link: OutLink) -> None:
    assert edge.config is not None
    try:
        targets = await srv_targets(edge, link.remote, link.partner)
    except DnsFailure as exc:
        drop_link(edge, link, "remote-server-not-found", f"cannot look up {link.remote}: {exc}")
        return
    problems = []
    for host, port in targets:
        stream = OutboundStream(
            max_stanza_bytes=edge.config.max_stanza_bytes,
            local=link.local,
            remote=link.remote,
            partner=link.partner,
            secret=edge.secret,
            tls_available=False in edge._contexts,
        )
        conn = XmppConnection(edge, stream, "out", link.partner.name)
        link.conn = conn
        try:
            await asyncio.wait_for(
                edge.loop.create_connection(functools.partial(_same, conn), host, port),
                max(0.1, link.deadline - edge.loop.time()),
            )
            return
        except (OSError, TimeoutError) as exc:
            problems.append(f"{host}:{port}: {getattr(exc, 'strerror', None) or exc or 'timed out'}")
    link.conn = None
    why = "; ".join(problems) or f"no server found for {link.remote}"
    drop_link(edge, link, "remote-server-not-found", f"cannot reach {link.remote}: {why}")


async def srv_targets(edge: XmppEdge, domain: str, partner: Partner | None) -> list[tuple[str, int]]:
    """Rule 1."""
    if partner is not None and partner.address is not None:
        return [partner.address]
    assert edge.dns is not None
    try:
        answer = await edge.dns.query(Query(f"_xmpp-server._tcp.{domain}", "SRV"))
    except NoRecords:  # RFC 6120 §3.2.2: the domain itself, on the default port
        return [(address, XMPP_PORT) for address in await _addresses(edge, domain)]
    records = [r for r in answer.records if isinstance(r, Srv) and r.target not in (".", "")]
    ordered = rfc2782_order([Candidate(r.target, r.port, "tcp", domain, r.priority, r.weight) for r in records], _RNG)
    out = []
    for candidate in ordered:
        try:
            out += [(address, candidate.port) for address in await _addresses(edge, candidate.host)]
        except DnsFailure as exc:
            log.info("XMPP: SRV target %s of %s not found: %s", candidate.host, domain, exc)
    return out


async def _addresses(edge: XmppEdge, name: str) -> list[str]:
    try:
        ipaddress.ip_address(name)
        return [name]
    except ValueError:
        pass
    assert edge.dns is not None
    try:
        answer = await edge.dns.query(Query(name, "A"))
    except NoRecords as exc:
        raise DnsFailure(Query(name, "A"), "no address (A) record") from exc
    return [record for record in answer.records if isinstance(record, str)]


def link_ready(edge: XmppEdge, conn: XmppConnection, event: Ready) -> None:
    link = edge.links.get((event.local, event.remote))
    if link is None or link.conn is not conn:
        return
    link.ready = True
    edge.failed.pop((event.local, event.remote), None)
    edge.observer.stream(link.partner.name, "out", event.method)
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
        _sent(edge, token)
    edge.pump()


def drop_link(edge: XmppEdge, link: OutLink, condition: str, reason: str) -> None:
    key = (link.local, link.remote)
    if edge.links.get(key) is not link:
        return
    del edge.links[key]
    if link.conn is not None and not link.conn.closed:
        link.conn.close()
    if link.ready and not link.queue:
        return
    edge.failed[key] = (edge.loop.time() + FAILED_SECONDS, condition, reason)
    log.warning(
        "XMPP stream %s -> %s failed (%s): %s; %d stanza(s) not sent",
        link.local,
        link.remote,
        condition,
        reason,
        len(link.queue),
    )
    for _, token in link.queue:
        _unsent(edge, token, condition, reason)
    link.queue.clear()
    edge.pump()


def _sent(edge: XmppEdge, token: int) -> None:
    if token and edge.gateway is not None:
        edge.gateway.sent(token, time.time())


def _unsent(edge: XmppEdge, token: int, condition: str, reason: str) -> None:
    if token and edge.gateway is not None:
        edge.gateway.unsent(token, condition, reason, time.time())


# -- dialback verification (XEP-0220 §2.1.2) ----------------------------------------------------------


def verify(edge: XmppEdge, inbound: XmppConnection, request: DialbackRequest) -> None:
    key = (request.originating, request.receiving, request.stream_id)
    edge.verifying[key] = inbound
    edge._spawn(_ask(edge, request))


async def _ask(edge: XmppEdge, request: DialbackRequest) -> None:
    assert edge.config is not None
    partner = edge.config.partner_for(request.originating)
    key = (request.originating, request.receiving, request.stream_id)
    problems = []
    try:
        targets = await srv_targets(edge, request.originating, partner)
    except DnsFailure as exc:
        targets, problems = [], [str(exc)]
    for host, port in targets:
        stream = OutboundStream(
            max_stanza_bytes=edge.config.max_stanza_bytes,
            local=request.receiving,
            remote=request.originating,
            partner=partner,
            secret=edge.secret,
            tls_available=False in edge._contexts,
            verify_only=True,
        )
        stream.ask(request.receiving, request.originating, request.stream_id, request.key)
        conn = XmppConnection(edge, stream, "verify", partner.name if partner else "")
        try:
            await asyncio.wait_for(
                edge.loop.create_connection(functools.partial(_same, conn), host, port),
                edge.config.connect_timeout_seconds,
            )
        except (OSError, TimeoutError) as exc:
            problems.append(f"{host}:{port}: {getattr(exc, 'strerror', None) or exc or 'timed out'}")
            continue
        edge.asking[key] = conn
        edge.loop.call_later(edge.config.connect_timeout_seconds, _verify_timeout, edge, key, conn)
        return
    verdict(
        edge,
        key,
        False,
        f"cannot reach the Authoritative Server of {request.originating}: "
        + ("; ".join(problems) or "no server found"),
    )


def _verify_timeout(edge: XmppEdge, key: tuple[str, str, str], conn: XmppConnection) -> None:
    if key in edge.verifying:
        verdict(edge, key, False, f"the Authoritative Server of {key[0]} did not answer in time")
    conn.close()


def verdict(edge: XmppEdge, key: tuple[str, str, str], valid: bool, problem: str) -> None:
    edge.asking.pop(key, None)
    inbound = edge.verifying.pop(key, None)
    if inbound is None or inbound.closed:
        return
    stream = inbound.stream
    assert isinstance(stream, InboundStream)
    stream.dialback_verified(key[0], key[1], valid, problem)
    inbound.process()


def verifies_pending(conn: XmppConnection) -> bool:
    stream = conn.stream
    return isinstance(stream, OutboundStream) and bool(stream.questions)


def _tls_words(conn: XmppConnection) -> str:
    return f"over {conn.tls.version()}" if conn.tls is not None and conn.tls.established else "without TLS"


def _same(conn: XmppConnection) -> XmppConnection:
    return conn
