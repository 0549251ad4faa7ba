"""SIP requests and responses (RFC 3261 §7): parse one whole message, edit headers, serialise.

Header values are kept as written; the proxy edits only the few it must (Via,
Route, Record-Route, Max-Forwards) and everything else passes byte for byte.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from proxy.sip.errors import SipSyntaxError, UnsupportedVersion
from proxy.sip.grammar import HEADER_NAME_RE, REQUEST_LINE_RE, STATUS_LINE_RE, TOKEN_RE, digits
from proxy.sip.headers import LIST_HEADERS, NameAddr, Via, canonical, parse_name_addr, parse_via, split_commas
from proxy.sip.uri import SipUri, parse_uri

#: RFC 3261 §8.1.1: the headers a request cannot be processed without (RFC 4475 §3.3.1).
MANDATORY_REQUEST_HEADERS = ("via", "from", "to", "call-id", "cseq")
#: Headers a request carries at most once (RFC 4475 §3.3.8).
SINGLE_VALUE_HEADERS = ("call-id", "cseq", "from", "to", "max-forwards")
MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5
#: The methods sipfed knows (RFC 3261 and its extensions, and Microsoft's BENOTIFY and SERVICE, [MS-SIPRE]):
#: the one list, for the 400/501 choice below and for the bounded ``method`` label of the metrics.
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "MESSAGE",
        "INFO",
        "REFER",
        "UPDATE",
        "PRACK",
        "BENOTIFY",
        "SERVICE",
    }
)


class Headers:
    """An ordered header list of (key, name-as-written, value) with lookup by canonical key.

    Lines stay as written. Via, Route and Record-Route lines may hold several comma-separated
    values (§7.3.1); they are split only when asked for values or when one value is edited, so
    a line the proxy does not touch goes out byte for byte.
    """

    __slots__ = ("items",)

    def __init__(self, items: Iterable[tuple[str, str, str]] = ()) -> None:
        self.items: list[tuple[str, str, str]] = list(items)

    def get(self, key: str) -> str | None:
        """The first value (for list headers: the first value of the first line)."""
        for item in self.items:
            if item[0] == key:
                value = item[2]
                if "," in value and key in LIST_HEADERS:
                    return split_commas(value)[0]
                return value
        return None

    def get_all(self, key: str) -> list[str]:
        """Every value, list headers split at their commas."""
        if key in LIST_HEADERS:
            return [v for k, _, value in self.items if k == key for v in split_commas(value) if v]
        return [value for k, _, value in self.items if k == key]

    def count(self, key: str) -> int:
        n = 0
        for item in self.items:
            if item[0] == key:
                n += 1
        return n

    def __contains__(self, key: object) -> bool:
        for item in self.items:  # noqa: SIM110 - a plain loop: any() with a generator costs twice as much here
            if item[0] == key:
                return True
        return False

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        return iter(self.items)

    def prepend(self, name: str, value: str) -> None:
        """Insert ``name: value`` above the first header of that name (or at the top)."""
        key = canonical(name)
        for i, (k, _, _) in enumerate(self.items):
            if k == key:
                self.items.insert(i, (key, name, value))
                return
        self.items.insert(0, (key, name, value))

    def append(self, name: str, value: str) -> None:
        self.items.append((canonical(name), name, value))

    def set(self, name: str, value: str) -> None:
        """Replace the first header of that name in place (its first value, for list headers), or append it."""
        key = canonical(name)
        for i, (k, written, old) in enumerate(self.items):
            if k == key:
                if key in LIST_HEADERS and "," in old:
                    value = ", ".join([value, *split_commas(old)[1:]])
                self.items[i] = (key, written, value)
                return
        self.items.append((key, name, value))

    def remove_first(self, key: str) -> str | None:
        """Remove and return the first value (the rest of its line stays)."""
        for i, (k, written, value) in enumerate(self.items):
            if k == key:
                if key in LIST_HEADERS and "," in value:
                    first, *rest = split_commas(value)
                    self.items[i] = (k, written, ", ".join(rest))
                    return first
                del self.items[i]
                return value
        return None

    def remove_last(self, key: str) -> str | None:
        """Remove and return the last value (the rest of its line stays)."""
        for i in range(len(self.items) - 1, -1, -1):
            k, written, value = self.items[i]
            if k == key:
                if key in LIST_HEADERS and "," in value:
                    *rest, last = split_commas(value)
                    self.items[i] = (k, written, ", ".join(rest))
                    return last
                del self.items[i]
                return value
        return None

    def map_values(self, key: str, change: Callable[[str], str]) -> None:
        """Apply ``change`` to every value of ``key``; a line is rewritten only if a value changed."""
        for i, (k, written, value) in enumerate(self.items):
            if k != key:
                continue
            values = split_commas(value) if key in LIST_HEADERS else [value]
            changed = [change(v) for v in values]
            if changed != values:
                self.items[i] = (k, written, ", ".join(changed))

    def copy(self) -> Headers:
        return Headers(self.items)


@dataclass(slots=True)
class Message:
    """What requests and responses share: headers and body."""

    headers: Headers
    """All header fields in order."""
    body: bytes = b""
    """The message body, untouched."""
    version: str = "SIP/2.0"
    """The SIP-Version of the start line."""

    @property
    def call_id(self) -> str:
        return self.headers.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """RFC 3261 §20.16 CSeq: (sequence number, method)."""
        return parse_cseq(self.headers.get("cseq") or "")

    @property
    def vias(self) -> list[Via]:
        return [parse_via(v) for v in self.headers.get_all("via")]

    @property
    def top_via(self) -> Via:
        value = self.headers.get("via")
        if value is None:
            raise SipSyntaxError("Missing Via header")
        return parse_via(value)

    @property
    def from_(self) -> NameAddr:
        return parse_name_addr(self.headers.get("from") or "", any_scheme=True)

    @property
    def to(self) -> NameAddr:
        return parse_name_addr(self.headers.get("to") or "", any_scheme=True)

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length is added if absent (mandatory on streams, RFC 3261 §20.14)."""
        items = self.headers.items
        parts = [self.start_line(), *[f"{name}: {value}" for _, name, value in items]]
        if "content-length" not in self.headers:
            parts.append(f"Content-Length: {len(self.body)}")
        parts.append("\r\n")
        return "\r\n".join(parts).encode("utf-8", "surrogateescape") + self.body


@dataclass(slots=True)
class Request(Message):
    """A SIP request (RFC 3261 §7.1)."""

    method: str = ""
    """The method as sent (case-sensitive, §7.1)."""
    uri: str = ""
    """The Request-URI as text."""
    _parsed_uri: SipUri | None = field(default=None, repr=False)

    def __init__(
        self,
        headers: Headers,
        body: bytes = b"",
        version: str = "SIP/2.0",
        method: str = "",
        uri: str = "",
        _parsed_uri: SipUri | None = None,
    ) -> None:
        # Written out, not generated: mypyc compiles this one, and runs a generated __init__ as Python (4x slower).
        self.headers = headers
        self.body = body
        self.version = version
        self.method = method
        self.uri = uri
        self._parsed_uri = _parsed_uri

    @property
    def request_uri(self) -> SipUri:
        """The Request-URI parsed (raises UnsupportedScheme for non-SIP schemes; parses are cached)."""
        return parse_uri(self.uri)

    def set_uri(self, uri: SipUri) -> None:
        self.uri = str(uri)

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> Request:
        return Request(self.headers.copy(), self.body, self.version, self.method, self.uri, self._parsed_uri)


@dataclass(slots=True)
class Response(Message):
    """A SIP response (RFC 3261 §7.2)."""

    status: int = 0
    """The Status-Code."""
    reason: str = ""
    """The Reason-Phrase."""

    def __init__(
        self, headers: Headers, body: bytes = b"", version: str = "SIP/2.0", status: int = 0, reason: str = ""
    ) -> None:
        # Written out, not generated: mypyc compiles this one, and runs a generated __init__ as Python (4x slower).
        self.headers = headers
        self.body = body
        self.version = version
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"


@functools.lru_cache(maxsize=8192)
def parse_cseq(value: str) -> tuple[int, str]:
    """CSeq = 1*DIGIT LWS Method (§20.16); the number is below 2**31 (§8.1.1.5)."""
    number, _, method = value.strip().partition(" ")
    method = method.strip()
    if not (number.isascii() and number.isdigit()) or not TOKEN_RE.fullmatch(method or "-"):
        raise SipSyntaxError(f"malformed CSeq {value[:40]!r}")
    sequence = digits(number, 10)
    if sequence is None or sequence > MAX_CSEQ:
        raise SipSyntaxError(f"CSeq number {number[:20]} exceeds 2**31-1")
    return sequence, method


def parse_message(
    data: bytes, *, datagram: bool = False, max_headers: int = 256, max_line_bytes: int = 8192, framed: bool = False
) -> Request | Response:
    """Parse one complete message.

    On a stream the framer has already cut the body by Content-Length (``framed``: and checked
    the value). In a datagram Content-Length, when present, says where the body ends; octets after
    it are dropped (RFC 3261 §18.3, RFC 4475 §3.1.1.8), and a Content-Length past the end is an error.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise SipSyntaxError("message has no empty line after the headers")
    head = data[:end].decode("utf-8", "surrogateescape")
    body = data[end + 4 :]
    lines = head.split("\r\n")
    if "\n " in head or "\n\t" in head:
        lines = _unfold(lines)
    if len(head) > max_line_bytes and any(len(line) > max_line_bytes for line in lines):
        raise SipSyntaxError(f"a header line is longer than {max_line_bytes} bytes")
    headers = Headers(_parse_header_lines(lines[1:], max_headers))
    message = _parse_start_line(lines[0], headers)
    message.body = body if framed and not datagram else _cut_body(headers, body, datagram)
    if isinstance(message, Request):
        _check_request(message)
    return message


def _unfold(lines: list[str]) -> list[str]:
    """RFC 3261 §7.3.1: a line starting with whitespace continues the previous header."""
    out: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and len(out) > 1:
            out[-1] = out[-1] + " " + line.strip()
        else:
            out.append(line)
    return out


def _parse_header_lines(lines: list[str], max_headers: int) -> list[tuple[str, str, str]]:
    if len(lines) > max_headers:
        raise SipSyntaxError(f"too many header fields ({len(lines)} > {max_headers})")
    items: list[tuple[str, str, str]] = []
    known = _VALID_NAMES
    for line in lines:
        name, colon, value = line.partition(":")
        key = known.get(name)
        if key is None:  # a name not seen before: check it against the grammar once
            name = name.rstrip(" \t")
            if not colon or HEADER_NAME_RE.fullmatch(name) is None:
                raise SipSyntaxError(f"malformed header line {line[:60]!r}")
            key = canonical(name)
            if len(known) < 4096:
                known[name] = key
        items.append((key, name, value.strip(" \t")))
    return items


#: Header names (as written) already checked against the token grammar, with their lookup keys.
_VALID_NAMES: dict[str, str] = {}


def _parse_start_line(line: str, headers: Headers) -> Request | Response:
    if line.startswith("SIP/"):
        status = STATUS_LINE_RE.fullmatch(line)
        if status is None:
            raise SipSyntaxError(f"malformed Status-Line {line[:80]!r}")
        version, code, reason = status.groups()
        _check_version(version)
        return Response(headers, b"", version, int(code), reason or "")
    request = REQUEST_LINE_RE.fullmatch(line)
    if request is None:
        raise SipSyntaxError(f"malformed Request-Line {line[:80]!r}")
    method, uri, version = request.groups()
    _check_version(version)
    return Request(headers, b"", version, method, uri)


def _check_version(version: str) -> None:
    if version != "SIP/2.0":
        raise UnsupportedVersion(f"SIP version {version} not supported")


def _cut_body(headers: Headers, body: bytes, datagram: bool) -> bytes:
    lengths = {item[2] for item in headers.items if item[0] == "content-length"}
    if not lengths:
        return body
    if len(lengths) > 1:
        raise SipSyntaxError("conflicting Content-Length values")  # RFC 4475 §3.3.9
    text = lengths.pop()
    length = digits(text, 10)
    if length is None:
        raise SipSyntaxError(f"invalid Content-Length {text[:20]!r}")  # RFC 4475 §3.1.2.3
    if length > len(body):
        raise SipSyntaxError(f"Content-Length {length} larger than the body ({len(body)})")
    return body[:length] if datagram else body


def _check_request(request: Request) -> None:
    """RFC 3261 §8.2 / §16.3 step 1: what a request must carry to be processed (header keys listed once)."""
    keys = [item[0] for item in request.headers.items]
    for key in MANDATORY_REQUEST_HEADERS:
        if key not in keys:
            raise SipSyntaxError(f"Missing {key.title()} header")
    for key in SINGLE_VALUE_HEADERS:
        if keys.count(key) > 1:
            raise SipSyntaxError(f"multiple {key.title()} header fields")  # RFC 4475 §3.3.8
    _, cseq_method = request.cseq
    if cseq_method != request.method:
        # RFC 4475 §3.1.2.18: for a method the element does not know, 501 (particularly at proxies).
        status = 400 if request.method in KNOWN_METHODS else 501
        raise SipSyntaxError(f"CSeq method {cseq_method} does not match {request.method}", status)
    max_forwards = request.headers.get("max-forwards")
    if max_forwards is not None:
        hops = digits(max_forwards, 3)
        if hops is None or hops > 255:
            raise SipSyntaxError(f"invalid Max-Forwards {max_forwards[:20]!r}")
    request.top_via  # noqa: B018 - raises on a malformed top Via


def _has_tag(value: str) -> bool:
    try:
        return parse_name_addr(value, any_scheme=True).param("tag") is not None
    except SipSyntaxError:
        return ";tag=" in value.replace(" ", "")


def make_response(
    request: Request,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> Response:
    """RFC 3261 §8.2.6.2: a response copies Via, From, To, Call-ID and CSeq from the request."""
    items: list[tuple[str, str, str]] = []
    for key, name, value in request.headers.items:
        if key == "to" and to_tag and status > 100 and not _has_tag(value):
            value = f"{value};tag={to_tag}"
        if key in ("via", "from", "to", "call-id", "cseq"):
            items.append((key, name, value))
    headers = Headers(items)
    for name, value in extra:
        headers.append(name, value)
    headers.append("Content-Length", "0")
    return Response(headers, b"", "SIP/2.0", status, reason)
