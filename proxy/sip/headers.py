"""Header names (RFC 3261 §7.3.3 compact forms), comma lists, name-addr and Via values (§20)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from proxy.sip.errors import SipSyntaxError
from proxy.sip.grammar import TOKEN, VIA_RE
from proxy.sip.uri import Param, SipUri, parse_uri

#: RFC 3261 §7.3.3 and later RFCs' compact forms -> canonical lower-case name.
COMPACT_FORMS = {
    "a": "accept-contact",  # RFC 3841
    "b": "referred-by",  # RFC 3892
    "c": "content-type",
    "d": "request-disposition",  # RFC 3841
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",  # RFC 3841
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "o": "event",  # RFC 6665
    "r": "refer-to",  # RFC 3515
    "s": "subject",
    "t": "to",
    "u": "allow-events",  # RFC 6665
    "v": "via",
    "x": "session-expires",  # RFC 4028
    "y": "identity",  # RFC 8224
}

# display-name = *(token LWS) / quoted-string   (RFC 3261 §25.1)
DISPLAY_TOKENS_RE = re.compile(rf"{TOKEN}(?:\s+{TOKEN})*", re.ASCII)

#: Headers the proxy edits value by value; a line holding several is split on parse (§7.3.1).
LIST_HEADERS = frozenset({"via", "route", "record-route"})


_CANONICAL: dict[str, str] = {}


def canonical(name: str) -> str:
    """The lookup key of a header name: lower case, compact form expanded (memoised: names are few)."""
    key = _CANONICAL.get(name)
    if key is None:
        key = COMPACT_FORMS.get(name.lower(), name.lower())
        if len(_CANONICAL) < 4096:
            _CANONICAL[name] = key
    return key


def split_commas(value: str) -> list[str]:
    """Split a header value at the commas that separate values, not those in quotes or <>."""
    if "," not in value:
        return [value]
    if '"' not in value and "<" not in value:  # the common case (Via): no quotes, no <>, a plain split
        return [part.strip() for part in value.split(",")]
    parts: list[str] = []
    depth_angle = 0
    in_quotes = False
    start = 0
    i = 0
    while i < len(value):
        c = value[i]
        if in_quotes:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == "<":
            depth_angle += 1
        elif c == ">":
            depth_angle -= 1
        elif c == "," and depth_angle == 0:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    if in_quotes:
        raise SipSyntaxError(f"unterminated quoted string in {value!r}")
    parts.append(value[start:].strip())
    return parts


def parse_params(text: str) -> tuple[Param, ...]:
    """generic-param list after a value: ``;name=value;flag`` (quoted values kept whole)."""
    if not text:
        return ()
    if text[0] == ";" and '"' not in text and " " not in text and "\t" not in text:
        # The common spelling: no white space, no quotes (one split, no stripping).
        plain: list[Param] = []
        for raw in text[1:].split(";"):
            key, eq, value = raw.partition("=")
            if not key:
                raise SipSyntaxError(f"empty parameter in {text!r}")
            plain.append((key, value if eq else None))
        return tuple(plain)
    params: list[Param] = []
    text = text.strip()
    if not text:
        return ()
    if not text.startswith(";"):
        raise SipSyntaxError(f"expected ';' before parameters in {text!r}")
    for raw in _split_semis(text[1:]):
        key, eq, value = raw.partition("=")
        key = key.strip()
        if not key:
            raise SipSyntaxError(f"empty parameter in {text!r}")
        params.append((key, value.strip() if eq else None))
    return tuple(params)


def _split_semis(text: str) -> list[str]:
    if '"' not in text:
        return text.split(";")
    out: list[str] = []
    in_quotes = False
    start = 0
    for i, c in enumerate(text):
        if c == '"' and (i == 0 or text[i - 1] != "\\"):
            in_quotes = not in_quotes
        elif c == ";" and not in_quotes:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def find_param(params: tuple[Param, ...], name: str) -> str | None:
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return "" if value is None else value
    return None


@dataclass(frozen=True, slots=True)
class NameAddr:
    """RFC 3261 §20.10 name-addr / addr-spec with header parameters."""

    display: str
    """The display-name as written (with its quotes), or ''."""
    uri: SipUri
    """The URI inside <> (or the bare addr-spec)."""
    params: tuple[Param, ...]
    """Header parameters after the URI (e.g. tag)."""
    angle: bool = True
    """Whether the URI was enclosed in <>."""

    def __init__(self, display: str, uri: SipUri, params: tuple[Param, ...], angle: bool = True) -> None:
        # Written out, not generated: mypyc compiles this one, and runs a generated __init__ as Python (10x slower).
        object.__setattr__(self, "display", display)
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "angle", angle)

    def param(self, name: str) -> str | None:
        return find_param(self.params, name)

    def __str__(self) -> str:
        head = f"{self.display} <{self.uri}>" if self.display else f"<{self.uri}>"
        if not self.angle:
            head = str(self.uri)
        tail = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        return head + tail


@functools.lru_cache(maxsize=1024)
def parse_name_addr(value: str, *, any_scheme: bool = False) -> NameAddr:
    """Parse ``"Name" <sip:...>;p=v`` or ``sip:...;p=v`` (§20.10: then the params are the header's).

    The display name is tokens or a quoted-string (with quoted-pairs and '<' inside, §25.1);
    anything else (``Bell, Alexander <…>``, RFC 4475 §3.1.2.15) is refused.
    """
    value = value.strip()
    lt = _unquoted_index(value, "<")
    if lt < 0:
        uri_text, _, rest = value.partition(";")
        return NameAddr(
            "", parse_uri(uri_text.strip(), any_scheme=any_scheme), parse_params(";" + rest if rest else ""), False
        )
    gt = value.find(">", lt)
    if gt < 0:
        raise SipSyntaxError(f"unclosed '<' in {value!r}")
    display = value[:lt].strip()
    if display and not display.startswith('"') and DISPLAY_TOKENS_RE.fullmatch(display) is None:
        raise SipSyntaxError(f"display name {display!r} must be tokens or a quoted string")
    return NameAddr(display, parse_uri(value[lt + 1 : gt], any_scheme=any_scheme), parse_params(value[gt + 1 :]))


def _unquoted_index(value: str, char: str) -> int:
    """Index of the first ``char`` outside a quoted-string; -1 if none; raises on an open quote."""
    if '"' not in value:
        return value.find(char)
    in_quotes = False
    i = 0
    while i < len(value):
        c = value[i]
        if in_quotes and c == "\\":
            i += 2
            continue
        if c == '"':
            in_quotes = not in_quotes
        elif c == char and not in_quotes:
            return i
        i += 1
    if in_quotes:
        raise SipSyntaxError(f"unterminated quoted display name in {value!r}")
    return -1


@dataclass(frozen=True, slots=True)
class Via:
    """RFC 3261 §20.42 one Via header field value."""

    transport: str
    """The transport of sent-protocol, upper case as sent (TLS, TCP, UDP, ...)."""
    host: str
    """sent-by host."""
    port: int | None
    """sent-by port, None if absent."""
    params: tuple[Param, ...]
    """via-params in order."""

    def __init__(self, transport: str, host: str, port: int | None, params: tuple[Param, ...]) -> None:
        # Written out, not generated: mypyc compiles this one, and runs a generated __init__ as Python (10x slower).
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", params)

    @property
    def branch(self) -> str | None:
        return find_param(self.params, "branch")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def param(self, name: str) -> str | None:
        return find_param(self.params, name)


@functools.lru_cache(maxsize=512)
def parse_via(value: str) -> Via:
    """Parse one Via value: ``SIP/2.0/TLS host:port;branch=...``."""
    match = VIA_RE.fullmatch(value)
    if match is None:
        raise SipSyntaxError(f"malformed Via {value!r}")
    name, version, transport, host, port, rest = match.groups()
    if name.upper() != "SIP" or version != "2.0":
        raise SipSyntaxError(f"Via with unknown protocol {name}/{version}")
    if port is not None and not 0 < int(port) < 65536:  # VIA_RE allows at most 5 significant digits
        raise SipSyntaxError(f"Via port out of range in {value[:80]!r}")
    return Via(transport.upper(), host, int(port) if port else None, parse_params(rest))


def via_branch(value: str) -> str | None:
    """The branch of one Via value, found without parsing the value when it is written plainly.

    A response's top Via is the one its transaction's element wrote (RFC 3261 §17.1.3 matches on its
    branch alone), so a proxy reads only the branch there; any unusual spelling (spaces around '=',
    another case, quoted parameters) takes the full parse.
    """
    start = value.find(";branch=")
    if start < 0 or '"' in value:
        return parse_via(value).branch
    start += 8
    end = len(value)
    for stop in (";", " ", "\t"):
        at = value.find(stop, start)
        if 0 <= at < end:
            end = at
    return value[start:end]
