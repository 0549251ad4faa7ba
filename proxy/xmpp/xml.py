"""The XML of an XMPP stream, restricted as RFC 6120 §11 says, parsed incrementally with expat (stdlib).

Rules:
1. A stream is one XML document: ``<stream:stream>`` opens it, each first-level child is one stanza (or
   nonza: features, starttls, dialback...), ``</stream:stream>`` closes it (§4.2, §4.4).
2. §11.1: no comments, processing instructions, DTDs or entity declarations (``restricted-xml``); only the
   predefined entities; UTF-8 only (§11.6, ``unsupported-encoding``).
3. A stanza larger than ``max_stanza_bytes`` or deeper than ``max_depth`` is a ``policy-violation``: bounded
   memory per stream, whatever the peer sends (§13.12 item 4).
4. Malformed XML is ``not-well-formed`` (§4.9.3.13); a wrong stream namespace ``invalid-namespace``; text
   between stanzas other than white space (keep-alives, §4.6.1) ``bad-format``.
5. Each stream restart (after STARTTLS, after SASL) starts a fresh parser (§5.4.3.3, §6.4.6): ``restart()``.

Errors are ``StreamError`` with the RFC 6120 §4.9.3 condition; the caller sends it and closes the stream.
"""

from __future__ import annotations

import re
import xml.parsers.expat
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

NS_STREAM = "http://etherx.jabber.org/streams"
NS_SERVER = "jabber:server"
NS_DIALBACK = "jabber:server:dialback"
NS_DIALBACK_FEATURE = "urn:xmpp:features:dialback"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"

XML_LANG = f"{{{NS_XML}}}lang"
STREAM_TAG = f"{{{NS_STREAM}}}stream"

MAX_STANZA_BYTES = 262_144
"""Rule 3: Prosody's default ``s2s_stanza_size_limit`` is 512 KiB; presence and chat need far less."""
MAX_DEPTH = 32
"""Rule 3: nesting below the stream element."""

_SEP = "\x01"  # expat's namespace separator: a character no namespace name or local name contains


class StreamError(Exception):
    """RFC 6120 §4.9: a stream-level error; the stream is closed after it is sent."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        """The §4.9.3 defined condition (``not-well-formed``, ``policy-violation``...)."""
        self.text = text
        """Plain words for the peer's log (and ours)."""


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """Rule 1: the peer's stream header."""

    attrs: dict[str, str]
    """Its attributes (``from``, ``to``, ``id``, ``version``, ``{NS_XML}lang``)."""
    prefixes: dict[str, str] = field(default_factory=dict)
    """The namespace prefixes it declared (``db`` -> ``jabber:server:dialback`` says dialback, XEP-0220 §2.1)."""


@dataclass(frozen=True, slots=True)
class StanzaReceived:
    """Rule 1: one first-level element, complete."""

    element: Element
    """With namespaced tags (``{jabber:server}message``) and attributes."""


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """Rule 1: the peer closed its stream (``</stream:stream>``)."""


XmlEvent = StreamOpened | StanzaReceived | StreamClosed


class XmlStream:
    """One direction of one stream: bytes in, ``XmlEvent``s out (rules 1-5)."""

    def __init__(self, max_stanza_bytes: int = MAX_STANZA_BYTES, max_depth: int = MAX_DEPTH) -> None:
        self.max_stanza_bytes = max_stanza_bytes
        self.max_depth = max_depth
        self._events: list[XmlEvent] = []
        self._parser = self._new_parser()
        self._depth = 0
        self._stack: list[Element] = []
        self._stanza_start = 0
        self._fed = 0
        self._prefixes: dict[str, str] = {}
        self.opened = False
        """The peer's stream header has been read (since the last restart)."""

    def restart(self) -> None:
        """Rule 5: a fresh parser; the next bytes start a new stream header."""
        self._parser = self._new_parser()
        self._depth, self._stack, self._fed, self._stanza_start = 0, [], 0, 0
        self._prefixes = {}
        self.opened = False

    def feed(self, data: bytes) -> list[XmlEvent]:
        """Parse what arrived; raises ``StreamError`` on anything rules 2-4 refuse."""
        self._fed += len(data)
        try:
            self._parser.Parse(data, False)
        except xml.parsers.expat.ExpatError as exc:
            raise StreamError("not-well-formed", xml.parsers.expat.ErrorString(exc.code)) from None
        if self._depth > 1 and self._fed - self._stanza_start > self.max_stanza_bytes:
            raise StreamError("policy-violation", f"stanza larger than {self.max_stanza_bytes} bytes")
        events, self._events = self._events, []
        return events

    # -- expat callbacks ---------------------------------------------------------------------------

    def _new_parser(self) -> xml.parsers.expat.XMLParserType:
        parser = xml.parsers.expat.ParserCreate("UTF-8", _SEP)
        parser.buffer_text = True
        parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        parser.StartNamespaceDeclHandler = self._namespace
        parser.XmlDeclHandler = self._xml_declaration
        parser.CommentHandler = _refuse("comments")
        parser.ProcessingInstructionHandler = _refuse("processing instructions")
        parser.StartDoctypeDeclHandler = _refuse("a DTD")
        parser.EntityDeclHandler = _refuse("entity declarations")
        parser.ElementDeclHandler = _refuse("element declarations")
        parser.AttlistDeclHandler = _refuse("attribute declarations")
        parser.NotationDeclHandler = _refuse("notation declarations")
        parser.UnparsedEntityDeclHandler = _refuse("unparsed entities")
        parser.ExternalEntityRefHandler = _refuse_entity
        parser.SkippedEntityHandler = _refuse("entity references")
        return parser

    def _xml_declaration(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.upper() not in ("UTF-8", "UTF8"):
            raise StreamError("unsupported-encoding", f"encoding {encoding!r}: XMPP is UTF-8 (RFC 6120 §11.6)")

    def _namespace(self, prefix: str | None, uri: str) -> None:
        if self._depth == 0:
            self._prefixes[prefix or ""] = uri

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        tag = _qualified(name)
        attributes = {_qualified(key): value for key, value in attrs.items()}
        if self._depth == 0:
            if tag != STREAM_TAG:
                raise StreamError("invalid-namespace", f"the stream opened with {tag}, not {STREAM_TAG}")
            if self._prefixes.get("", NS_SERVER) != NS_SERVER:
                raise StreamError("invalid-namespace", f"content namespace {self._prefixes['']!r} is not jabber:server")
            self._depth = 1
            self.opened = True
            self._events.append(StreamOpened(attributes, dict(self._prefixes)))
            return
        self._depth += 1
        if self._depth - 1 > self.max_depth:
            raise StreamError("policy-violation", f"elements nested deeper than {self.max_depth}")
        element = Element(tag, attributes)
        if self._stack:
            self._stack[-1].append(element)
        else:
            self._stanza_start = self._parser.CurrentByteIndex
        self._stack.append(element)

    def _end(self, name: str) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._events.append(StreamClosed())
            return
        element = self._stack.pop()
        if not self._stack:
            if self._parser.CurrentByteIndex - self._stanza_start > self.max_stanza_bytes:
                raise StreamError("policy-violation", f"stanza larger than {self.max_stanza_bytes} bytes")
            self._events.append(StanzaReceived(element))

    def _text(self, data: str) -> None:
        if not self._stack:
            if data.strip():
                raise StreamError("bad-format", "text between stanzas")
            return  # white space keep-alives (RFC 6120 §4.6.1)
        element = self._stack[-1]
        if len(element):
            last = element[-1]
            last.tail = (last.tail or "") + data
        else:
            element.text = (element.text or "") + data


def _qualified(name: str) -> str:
    uri, _, local = name.rpartition(_SEP)
    return f"{{{uri}}}{local}" if uri else local


def _refuse(what: str) -> Callable[..., None]:
    def handler(*_: object) -> None:
        raise StreamError("restricted-xml", f"{what}: not allowed in XMPP (RFC 6120 §11.1)")

    return handler


def _refuse_entity(context: str, base: str | None, system_id: str | None, public_id: str | None) -> int:
    raise StreamError("restricted-xml", "external entities: not allowed in XMPP (RFC 6120 §11.1)")


def parse_document(data: bytes, max_bytes: int = 65_536, max_depth: int = MAX_DEPTH) -> Element:
    """One whole XML document under the same restrictions (a SIP body such as PIDF): its root element.
    Raises ``StreamError`` (``not-well-formed``, ``restricted-xml``, ``policy-violation``)."""
    if len(data) > max_bytes:
        raise StreamError("policy-violation", f"document larger than {max_bytes} bytes")
    if b"<!" in data and any(marker in data for marker in (b"<!DOCTYPE", b"<!ENTITY", b"<!--")):
        raise StreamError("restricted-xml", "DTDs, entity declarations and comments: not allowed (RFC 6120 §11.1)")
    stream = XmlStream(max_stanza_bytes=max_bytes, max_depth=max_depth)
    wrapped = b"<s:stream xmlns:s='" + NS_STREAM.encode() + b"' xmlns='" + NS_SERVER.encode() + b"'>"
    body = data
    if body.startswith(b"<?xml"):  # the declaration may only open a document: keep its encoding check
        end = body.find(b"?>")
        if end < 0:
            raise StreamError("not-well-formed", "unterminated XML declaration")
        stream.feed(body[: end + 2])
        body = body[end + 2 :]
    events = stream.feed(wrapped + body + b"</s:stream>")
    stanzas = [event.element for event in events if isinstance(event, StanzaReceived)]
    if len(stanzas) != 1:
        raise StreamError("not-well-formed", f"expected one root element, found {len(stanzas)}")
    return stanzas[0]


# -- serializing ---------------------------------------------------------------------------------------


#: XML 1.0 §2.2 Char: what a document may hold at all (controls other than tab, LF, CR may not, even escaped).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """``text`` without the characters XML cannot carry (a NUL in a SIP reason phrase must not end a stream)."""
    return _NOT_XML.sub("", text)


def _escape(text: str, attribute: bool = False) -> str:
    text = xml_text(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attribute:
        text = text.replace("'", "&apos;").replace('"', "&quot;")
    return text


def to_bytes(element: Element, default_ns: str = NS_SERVER) -> bytes:
    """An element as XMPP sends it: a namespace declared where it differs from the parent's, ``xml:lang``
    by its reserved prefix, attributes in single quotes."""
    parts: list[str] = []
    _write(element, default_ns, parts)
    return "".join(parts).encode()


#: Namespaces our stream header declares a prefix for: their elements are written with it (``<stream:features>``,
#: ``<db:result>``), as every server writes them, not with a redeclared default namespace.
PREFIXES = {NS_STREAM: "stream", NS_DIALBACK: "db"}


def _write(element: Element, inherited: str, out: list[str]) -> None:
    ns, local = _split(element.tag)
    prefix = PREFIXES.get(ns)
    name = f"{prefix}:{local}" if prefix else local
    out.append(f"<{name}")
    if prefix is None and ns != inherited:
        out.append(f" xmlns='{_escape(ns, True)}'")
    for key, value in element.attrib.items():
        key_ns, key_local = _split(key)
        attribute = f"xml:{key_local}" if key_ns == NS_XML else key_local
        out.append(f" {attribute}='{_escape(value, True)}'")
    if element.text is None and not len(element):
        out.append("/>")
    else:
        out.append(">")
        if element.text:
            out.append(_escape(element.text))
        children_ns = inherited if prefix else ns
        for child in element:
            _write(child, children_ns, out)
            if child.tail:
                out.append(_escape(child.tail))
        out.append(f"</{name}>")


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def stream_header(from_: str, to: str, stream_id: str | None = None, *, dialback: bool = True) -> bytes:
    """RFC 6120 §4.7 (and XEP-0220 §2.1: the ``db`` prefix says we do dialback)."""
    attrs = [("from", from_), ("to", to)] + ([("id", stream_id)] if stream_id else [])
    text = "".join(f" {key}='{_escape(value, True)}'" for key, value in attrs if value)
    db = f" xmlns:db='{NS_DIALBACK}'" if dialback else ""
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:stream='{NS_STREAM}'{db}{text}"
        f" version='1.0' xml:lang='en'>"
    ).encode()


STREAM_CLOSE = b"</stream:stream>"


def stream_error(condition: str, text: str = "") -> bytes:
    """RFC 6120 §4.9.2: the error, then the close (the caller closes the connection after it)."""
    words = f"<text xmlns='{NS_STREAMS}'>{_escape(text)}</text>" if text else ""
    return f"<stream:error><{condition} xmlns='{NS_STREAMS}'/>{words}</stream:error>".encode() + STREAM_CLOSE


def element(tag: str, attrs: dict[str, str] | None = None, text: str | None = None, *children: Element) -> Element:
    """A small builder: ``element(f"{{{NS_SERVER}}}message", {"to": ...}, None, body)``."""
    made = Element(tag, {k: v for k, v in (attrs or {}).items() if v is not None})
    made.text = text
    made.extend(children)
    return made
