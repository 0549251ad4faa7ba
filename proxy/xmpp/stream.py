"""What the S2S stream state machines (``inbound``, ``outbound``) share: their events, the peer certificate
as the edge reports it, and the RFC 6125 identity check of RFC 6120 §13.7.1.2.

A stream machine is fed bytes (``receive``) and the outcome of what it asked the edge to do (``tls_started``,
``dialback_verified``); it hands back bytes (``take_data``) and events (``take_events``). It never touches a
socket, TLS or a clock.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from proxy.xmpp.xml import (
    NS_SERVER,
    STREAM_CLOSE,
    StanzaReceived,
    StreamClosed,
    StreamError,
    StreamOpened,
    XmlEvent,
    XmlStream,
    stream_error,
    to_bytes,
)

STANZA_TAGS = frozenset({f"{{{NS_SERVER}}}message", f"{{{NS_SERVER}}}presence", f"{{{NS_SERVER}}}iq"})


@dataclass(frozen=True, slots=True)
class PeerCert:
    """The certificate the other server presented in the TLS handshake, as the edge checked it."""

    present: bool = False
    """It presented one at all."""
    chain_valid: bool = False
    """It chains to our ``ca_bundle`` and every certificate of the chain is in date."""
    names: tuple[str, ...] = ()
    """Its reference identifiers (RFC 6125 §6.2): dNSName SANs (the CN only when there are none), SRV-ID
    domains (``_xmpp-server.`` removed) and XmppAddr values, lower case."""
    problem: str = ""
    """Why ``chain_valid`` is False, in words (``unable to get local issuer certificate``...)."""

    def valid_for(self, domain: str) -> bool:
        """RFC 6120 §13.7.1.2: the chain verifies and the certificate names ``domain``."""
        return self.present and self.chain_valid and names_domain(self.names, domain)

    def why_not(self, domain: str) -> str:
        """Why ``valid_for(domain)`` is False, in words for the log and the partner."""
        if not self.present:
            return "it presented no certificate"
        if not self.chain_valid:
            return f"its certificate does not verify against our ca_bundle ({self.problem or 'untrusted'})"
        if not names_domain(self.names, domain):
            return f"its certificate names {', '.join(self.names) or 'nothing'}, not {domain}"
        return ""


def names_domain(names: tuple[str, ...], domain: str) -> bool:
    """RFC 6125 §6.4.3: an exact match, or a ``*`` standing for the whole leftmost label only."""
    domain = domain.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if name == domain:
            return True
        if name.startswith("*.") and "." in domain and domain.split(".", 1)[1] == name[2:]:
            return True
    return False


# -- events ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTls:
    """Upgrade the connection now (after writing ``take_data()``), then call ``tls_started``."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """RFC 6120 §6 / XEP-0220: the ``remote`` domain is proven on this stream, toward our ``local`` domain."""

    local: str
    """Our domain (the stream's ``to``, or ``from`` for an outbound stream)."""
    remote: str
    """The partner's domain."""
    method: str
    """``sasl`` (EXTERNAL, XEP-0178) or ``dialback`` (XEP-0220)."""


@dataclass(frozen=True, slots=True)
class DialbackRequest:
    """XEP-0220 §2.1.2: an Originating Server sent a key; ask its Authoritative Server (``db:verify``) and
    answer with ``dialback_verified``."""

    originating: str
    """The domain the key claims to come from (theirs)."""
    receiving: str
    """Our domain it wants to talk to."""
    stream_id: str
    """The id we gave this stream (part of the key)."""
    key: str
    """The key to verify."""


@dataclass(frozen=True, slots=True)
class DialbackAnswer:
    """XEP-0220 §2.1.3: the Authoritative Server's verdict on a key we asked it to verify."""

    receiving: str
    """Our domain (the Receiving Server)."""
    originating: str
    """Their domain."""
    stream_id: str
    """The inbound stream's id the key was for."""
    valid: bool
    """``type='valid'``."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """A stanza (message, presence, iq) from an authenticated remote domain to one of our domains."""

    stanza: Element
    """As parsed, with namespaced tags."""
    local: str
    """Our domain it is addressed to."""
    remote: str
    """The authenticated domain it comes from."""


@dataclass(frozen=True, slots=True)
class Ready:
    """An outbound stream is authenticated: stanzas from ``local`` to ``remote`` may be sent on it."""

    local: str
    """Our domain."""
    remote: str
    """The partner's domain."""
    method: str
    """``sasl`` or ``dialback``."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The stream ended with an error (ours or theirs); close the connection after ``take_data()``."""

    condition: str
    """The RFC 6120 §4.9.3 condition (or ``tls-failure``, ``auth-failure``, ``policy``)."""
    reason: str
    """Plain words: what happened, which setting decided it, and the fix."""
    ours: bool = True
    """True when sipfed refused; False when the other server sent the error."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The other server closed its stream; we answered with our close."""


StreamEvent = StartTls | Authenticated | DialbackRequest | DialbackAnswer | Incoming | Ready | Failed | Closed


@dataclass(slots=True)
class StreamBase:
    """Bytes and events out; one ``XmlStream`` in, restarted after TLS and SASL (RFC 6120 §11)."""

    max_stanza_bytes: int = 262_144
    xml: XmlStream = field(init=False)
    data: list[bytes] = field(default_factory=list, init=False)
    events: list[StreamEvent] = field(default_factory=list, init=False)
    secure: bool = field(default=False, init=False)
    """TLS is up on this connection."""
    cert: PeerCert = field(default_factory=PeerCert, init=False)
    """What the other server presented in the TLS handshake."""
    ended: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.xml = XmlStream(self.max_stanza_bytes)

    def take_data(self) -> bytes:
        out, self.data = b"".join(self.data), []
        return out

    def take_events(self) -> list[StreamEvent]:
        out, self.events = self.events, []
        return out

    def receive(self, data: bytes) -> None:
        """Bytes from the connection (plaintext: the edge decrypts)."""
        if self.ended:
            return
        try:
            for event in self.xml.feed(data):
                self._on_xml(event)
                if self.ended:
                    return
        except StreamError as exc:
            self.fail(exc.condition, exc.text or exc.condition)

    def _on_xml(self, event: XmlEvent) -> None:
        if isinstance(event, StreamOpened):
            self._on_header(event)
        elif isinstance(event, StanzaReceived):
            self._on_element(event.element)
        elif isinstance(event, StreamClosed):
            self.send(STREAM_CLOSE)
            self.ended = True
            self.events.append(Closed())

    def _on_header(self, event: StreamOpened) -> None:
        raise NotImplementedError

    def _on_element(self, element: Element) -> None:
        raise NotImplementedError

    def tls_started(self, cert: PeerCert) -> None:
        """The edge finished the TLS handshake (RFC 6120 §5.4.3.3): a fresh stream follows."""
        self.secure = True
        self.cert = cert
        self.xml.restart()

    def send(self, data: bytes) -> None:
        self.data.append(data)

    def send_element(self, element: Element) -> None:
        self.data.append(to_bytes(element))

    def fail(self, condition: str, reason: str, header: bytes = b"") -> None:
        """RFC 6120 §4.9.1.1: send the stream error (after our header if none was sent yet) and close."""
        if self.ended:
            return
        self.send(header + stream_error(condition, reason))
        self.ended = True
        self.events.append(Failed(condition, reason))

    def close(self) -> None:
        """Our orderly close (RFC 6120 §4.4)."""
        if not self.ended:
            self.send(STREAM_CLOSE)
            self.ended = True


def sasl_external_authzid(text: str | None) -> str | None:
    """RFC 6120 §6.4.2 / XEP-0178 §4: the base64 authorization identity; ``=`` (or nothing) is empty.
    None when the encoding is wrong."""
    value = (text or "").strip()
    if value in ("", "="):
        return ""
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def remote_stream_error(element: Element) -> tuple[str, str]:
    """The condition and text of a ``<stream:error>`` the other server sent."""
    condition, text = "undefined-condition", ""
    for child in element:
        local = child.tag.rpartition("}")[2]
        if local == "text":
            text = (child.text or "")[:300]
        else:
            condition = local
    return condition, text
