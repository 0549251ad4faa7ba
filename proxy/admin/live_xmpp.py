"""`sipfed doctor --live` for XMPP federation (issue 15): what partners find in DNS and on the wire.

1. Our domains: RFC 6120 §3.2.1 ``_xmpp-server._tcp.<domain>`` SRV records exist, name the port sipfed listens
   on, and lead to an address sipfed listens on; a missing record is reported as the line to publish.
2. Each partner: its SRV records (or the ``address`` of its ``[[xmpp.partners]]`` entry), looked up as sipfed
   looks them up (``[dns]``, A records); TCP to its servers in order until one answers; sipfed's own stream
   header; the ``<stream:features>`` it offers; STARTTLS through sipfed's own XMPP TLS code
   (``proxy.net.xmpp_tls``) when sipfed would use it, the partner's certificate judged as sipfed judges it, and
   the features after TLS. Each offer is weighed against the partner's settings as ``proxy.xmpp.outbound``
   would act on it. Then ``</stream:stream>``: nothing authenticates and no stanza is sent. Additional domains
   get the DNS check; the stream goes to the primary domain.
3. Our listener: a stream header as the first partner would send it; any stream answer, a stream error
   included, proves that XMPP listens there.

Everything is bounded (DNS by ``[dns] timeout_seconds``, each connect and each stream by
``xmpp.connect_timeout_seconds``) and runs concurrently. Offers are judged by ``proxy.admin.live_xmpp_offers``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from dns.exception import DNSException
from OpenSSL import SSL

from proxy.admin.findings import Finding, bracketed
from proxy.admin.live_xmpp_dns import our_records, partner_targets
from proxy.admin.live_xmpp_offers import Negotiation, Offer, judge_negotiation, read_offer, stream_refused
from proxy.admin.xmpp_checks import partner_subject, xmpp_files
from proxy.config import Config
from proxy.net.xmpp_tls import XmppTls, tls_context
from proxy.xmpp.policy import Partner, XmppConfig
from proxy.xmpp.stream import remote_stream_error
from proxy.xmpp.xml import (
    NS_STREAM,
    NS_TLS,
    STREAM_CLOSE,
    StanzaReceived,
    StreamClosed,
    StreamError,
    XmlStream,
    element,
    stream_header,
    to_bytes,
)
from routes.dns import Answer, DnsFailure, Query
from routes.resolver import DnspythonSource, DnsSource

MAX_TARGETS = 8
"""Servers tried per partner (SRV targets' addresses), in order."""
READ_BYTES = 65_536
MAX_PROBE_BYTES = 262_144
"""A peer that sends more than this before its features is not the XMPP server we look for."""
STRANGER = "sipfed-doctor.invalid"
"""The ``from`` of a probe of our own listener when no partner is configured (RFC 6761: never a real domain)."""
_FEATURES = f"{{{NS_STREAM}}}features"
_ERROR = f"{{{NS_STREAM}}}error"


class Ended(Exception):
    """The peer ended the stream (a ``<stream:error>``, its close, or the connection) before what we waited for."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        """The RFC 6120 §4.9.3 condition, or ``closed`` / ``connection closed``."""
        self.text = text
        """The error's text, or what ended."""


@dataclass(frozen=True, slots=True)
class Probe:
    """What every XMPP probe shares."""

    xmpp: XmppConfig
    """``[xmpp]``."""
    dns: DnsSource
    """Asks the ``[dns]`` servers, as sipfed does."""
    timeout: float
    """``xmpp.connect_timeout_seconds``: each connect, and each stream negotiation."""
    context: SSL.Context | None
    """sipfed's outbound XMPP TLS context (our certificate as client certificate), None without TLS material."""


def diagnose_xmpp_live(config: Config) -> list[Finding]:
    """Every XMPP probe; nothing without ``[xmpp]``."""
    if config.xmpp is None:
        return []
    return asyncio.run(_diagnose(config, config.xmpp))


async def _diagnose(config: Config, xmpp: XmppConfig) -> list[Finding]:
    dns: DnsSource
    try:
        dns = DnspythonSource(
            config.dns_nameservers,
            config.dns_port,
            timeout_seconds=min(2.0, config.dns_timeout_seconds),
            lifetime_seconds=config.dns_timeout_seconds,
        )
    except DNSException as exc:  # no /etc/resolv.conf and no [dns] nameservers
        dns = NoDns(f"no DNS resolver: {exc}; set [dns] nameservers")
    context, findings = _client_context(config, xmpp)
    probe = Probe(xmpp, dns, xmpp.connect_timeout_seconds, context)
    results = await asyncio.gather(
        our_records(xmpp, config.fqdn, dns),
        probe_listener(probe),
        *(probe_partner(partner, probe) for partner in xmpp.partners),
    )
    return findings + [finding for result in results for finding in result]


class NoDns:
    """A ``DnsSource`` when no resolver can be set up: every question fails with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def query(self, query: Query) -> Answer:
        raise DnsFailure(query, self.reason)


def _client_context(config: Config, xmpp: XmppConfig) -> tuple[SSL.Context | None, list[Finding]]:
    files = xmpp_files(config, xmpp)
    if files.cert_chain is None or files.key is None:
        return None, []
    try:
        return tls_context(files.cert_chain, files.key, files.ca_bundle, server=False), []
    except (SSL.Error, OSError) as exc:
        return None, [
            Finding(
                "error",
                "live.xmpp.tls",
                "[xmpp]",
                f"our XMPP certificate, key or CA bundle does not load ({exc}): STARTTLS was not tried",
                "fix the xmpp.cert and cert findings first",
            )
        ]


# -- streams -----------------------------------------------------------------------------------------------------


class Wire:
    """One probe connection: bytes in clear until STARTTLS, through ``XmppTls`` (sipfed's own TLS) after."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.tls: XmppTls | None = None
        self.received = 0
        self._plain = b""

    async def send(self, data: bytes) -> None:
        self.writer.write(self.tls.send(data) if self.tls is not None else data)
        await self.writer.drain()

    async def _read(self) -> bytes:
        data = await self.reader.read(READ_BYTES)
        if not data:
            raise Ended("connection closed", "the peer closed the connection")
        self.received += len(data)
        if self.received > MAX_PROBE_BYTES:
            raise StreamError("policy-violation", f"more than {MAX_PROBE_BYTES} bytes before its features")
        return data

    async def receive(self) -> bytes:
        """The next plaintext (the TLS records decrypted, TLS's own answers written back)."""
        while True:
            if self._plain:
                plain, self._plain = self._plain, b""
                return plain
            data = await self._read()
            if self.tls is None:
                return data
            plain, out = self.tls.receive(data)
            if out:
                self.writer.write(out)
            if self.tls.closed:
                raise Ended("connection closed", "the peer closed TLS")
            if plain:
                return plain

    async def start_tls(self, context: SSL.Context, server_name: str) -> None:
        """RFC 6120 §5.4.3.3: the handshake right after ``<proceed/>``; ``SSL.Error`` when it fails."""
        self.tls = XmppTls(context, server=False, server_name=server_name)
        self.writer.write(self.tls.start())
        while not self.tls.established:
            plain, out = self.tls.receive(await self._read())
            self._plain += plain
            if out:
                self.writer.write(out)
        await self.writer.drain()

    async def close(self) -> None:
        """Our ``</stream:stream>`` (RFC 6120 §4.4), then the connection."""
        with contextlib.suppress(OSError, SSL.Error, ConnectionError):
            await self.send(STREAM_CLOSE)
        self.writer.close()
        with contextlib.suppress(OSError, SSL.Error, ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


async def next_element(wire: Wire, xml: XmlStream) -> Element:
    """The next first-level element after the peer's stream header; ``Ended`` for a stream error or a close,
    ``StreamError`` for what is not an XMPP stream."""
    while True:
        for event in xml.feed(await wire.receive()):
            if isinstance(event, StreamClosed):
                raise Ended("closed", "the peer closed its stream")
            if isinstance(event, StanzaReceived):
                if event.element.tag == _ERROR:
                    raise Ended(*remote_stream_error(event.element))
                return event.element


async def features(wire: Wire, xml: XmlStream, local: str, remote: str, dialback: bool) -> Offer:
    """Our stream header (as sipfed sends it), and the ``<stream:features>`` that answer it."""
    await wire.send(stream_header(local, remote, dialback=dialback))
    while True:
        item = await next_element(wire, xml)
        if item.tag == _FEATURES:
            return read_offer(item)


async def negotiate(wire: Wire, partner: Partner, local: str, context: SSL.Context | None) -> Negotiation:
    """Step 2 on an open connection, as ``proxy.xmpp.outbound`` starts it; it never authenticates."""
    xml = XmlStream()
    before = await features(wire, xml, local, partner.primary_domain, partner.dialback)
    if not (before.starttls and partner.tls != "not_supported" and context is not None):
        return Negotiation(before)
    await wire.send(to_bytes(element(f"{{{NS_TLS}}}starttls")))
    answer = await next_element(wire, xml)
    if answer.tag != f"{{{NS_TLS}}}proceed":
        return Negotiation(before, refused=answer.tag.rpartition("}")[2])
    try:
        await wire.start_tls(context, partner.primary_domain)
        xml.restart()
        after = await features(wire, xml, local, partner.primary_domain, partner.dialback)
    except SSL.Error as exc:  # a TLS 1.3 server refuses our certificate after the handshake: here
        return Negotiation(before, tls_failure=ssl_words(exc))
    assert wire.tls is not None
    return Negotiation(before, after, wire.tls.peer_cert(), wire.tls.version())


def ssl_words(exc: SSL.Error) -> str:
    """pyOpenSSL's error list in OpenSSL's words."""
    parts = [str(item[2]) for item in exc.args[0] if isinstance(item, tuple) and len(item) == 3] if exc.args else []
    return "; ".join(parts) or str(exc) or type(exc).__name__


async def _connect(host: str, port: int) -> Wire:
    reader, writer = await asyncio.open_connection(host, port)
    return Wire(reader, writer)


def connect_words(exc: OSError, timeout: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, TimeoutError):
        return f"no answer to the TCP connect within {timeout:g} s (a firewall drops it, or nothing is there)"
    return str(exc.strerror or exc)


async def probe_partner(partner: Partner, probe: Probe) -> list[Finding]:
    """Step 2: DNS, then the first server that accepts TCP, its offers judged against the partner's settings."""
    subject = partner_subject(partner)
    targets, findings = await partner_targets(partner, probe.dns)
    if not targets:
        return findings
    local = probe.xmpp.domains[0]
    problems = []
    for host, port in targets[:MAX_TARGETS]:
        where = f"{bracketed(host)}:{port}"
        try:
            wire = await asyncio.wait_for(_connect(host, port), probe.timeout)
        except OSError as exc:
            problems.append(f"{where}: {connect_words(exc, probe.timeout)}")
            continue
        try:
            done = await asyncio.wait_for(negotiate(wire, partner, local, probe.context), probe.timeout)
        except TimeoutError:
            return [*findings, _silent(subject, where, probe.timeout)]
        except Ended as exc:
            return [*findings, stream_refused(partner, where, local, exc.condition, exc.text)]
        except StreamError as exc:
            return [*findings, _not_xmpp(subject, where, exc)]
        except OSError as exc:
            return [*findings, _dropped(subject, where, exc)]
        finally:
            await wire.close()
        return findings + judge_negotiation(partner, local, where, done)
    return [
        *findings,
        Finding(
            "error",
            "live.xmpp.connect",
            subject,
            f"{partner.primary_domain} is not reachable: {'; '.join(problems)}",
            "check the partner's address (SRV records or address in [[xmpp.partners]]), that its XMPP server "
            f"runs, and that firewalls let TCP {targets[0][1]} through from this host",
        ),
    ]


def _silent(subject: str, where: str, timeout: float) -> Finding:
    return Finding(
        "error",
        "live.xmpp.connect",
        subject,
        f"{where} accepts TCP, but the stream does not get through its negotiation (stream header, "
        f"<stream:features>, STARTTLS) within {timeout:g} s: not an XMPP server, or one that holds streams back",
        "check that this is the partner's server-to-server port (5269), not its client port (5222)",
    )


def _not_xmpp(subject: str, where: str, exc: StreamError) -> Finding:
    return Finding(
        "error",
        "live.xmpp.connect",
        subject,
        f"{where} answers, but not with an XMPP stream ({exc})",
        "point the SRV record or address at the partner's XMPP server-to-server port (5269)",
    )


def _dropped(subject: str, where: str, exc: OSError) -> Finding:
    return Finding(
        "error",
        "live.xmpp.connect",
        subject,
        f"{where} dropped the connection during the stream negotiation: {exc.strerror or exc}",
        "read the partner's server log for why it dropped us",
    )


# -- our listener -------------------------------------------------------------------------------------------------


async def probe_listener(probe: Probe) -> list[Finding]:
    """Step 3: a stream header to our listener as the first partner would send it."""
    host, port = probe.xmpp.listen
    subject = "xmpp listener"
    if port == 0:
        return [Finding("ok", "live.xmpp.listener", subject, "[xmpp] listen port 0 (any free port): not probed")]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    where = f"{bracketed(host)}:{port}"
    remote = probe.xmpp.partners[0].primary_domain if probe.xmpp.partners else STRANGER
    local = probe.xmpp.domains[0]
    try:
        wire = await asyncio.wait_for(_connect(host, port), probe.timeout)
    except OSError as exc:
        return [
            Finding(
                "warning",
                "live.xmpp.listener",
                subject,
                f"sipfed's XMPP listener {where} does not answer: {connect_words(exc, probe.timeout)}; partners "
                "cannot reach us until it does",
                "start sipfed (or reload it, so that it reads [xmpp]); if it runs, check [xmpp] listen",
            )
        ]
    xml = XmlStream()
    try:
        offer = await asyncio.wait_for(features(wire, xml, remote, local, True), probe.timeout)
        said = f"offers {offer.describe()}"
    except Ended as exc:
        said = f"answers with stream error {exc.condition}" + (f" ({exc.text})" if exc.text else "")
        if not xml.opened:
            said = f"closed the connection without a stream header ({exc})"
    except TimeoutError:
        said = f"nothing {'more ' if xml.opened else ''}within {probe.timeout:g} s"
    except (StreamError, OSError) as exc:
        said = str(exc)
    finally:
        await wire.close()
    if not xml.opened:
        return [
            Finding(
                "error",
                "live.xmpp.listener",
                subject,
                f"something listens on {where}, but it does not answer an XMPP stream header: {said}",
                "another program holds the port: stop it, or move [xmpp] listen",
            )
        ]
    return [
        Finding(
            "ok",
            "live.xmpp.listener",
            subject,
            f"sipfed's XMPP listener {where} answers a stream from {remote} to {local}: {said}",
        )
    ]
