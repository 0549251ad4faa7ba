"""Character classes and regexes of RFC 3261 §25.1, each under the ABNF rule it implements."""

from __future__ import annotations

import functools
import re

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
TOKEN_RE = re.compile(TOKEN, re.ASCII)

# Method = INVITEm / ACKm / ... / extension-method ; extension-method = token
METHOD_RE = re.compile(TOKEN, re.ASCII)

# Request-Line = Method SP Request-URI SP SIP-Version CRLF  (exactly one SP each, §7.1)
REQUEST_LINE_RE = re.compile(r"(" + TOKEN + r") (\S+) (SIP/[0-9]+\.[0-9]+)", re.ASCII)

# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF ; Status-Code = 3DIGIT, 100-699 (§21)
# (leniency: a missing SP before an empty Reason-Phrase is accepted, RFC 4475 §3.1.1.13 spirit)
STATUS_LINE_RE = re.compile(r"(SIP/[0-9]+\.[0-9]+) ([1-6][0-9]{2})(?: (.*))?")

# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )   (RFC 3986 §3.1, RFC 3261 §25.1)
SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*", re.ASCII)

# hostname = *( domainlabel "." ) toplabel [ "." ]  /  IPv4address  /  IPv6reference
HOST_RE = re.compile(r"[A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\]")
IPV4_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")

# header-name = token ; HCOLON = *( SP / HTAB ) ":" SWS
HEADER_NAME_RE = re.compile(TOKEN, re.ASCII)

# Via: sent-protocol LWS sent-by *( SEMI via-params ) ; sent-protocol = name SLASH version SLASH transport
VIA_RE = re.compile(
    r"\s*(" + TOKEN + r")\s*/\s*(" + TOKEN + r")\s*/\s*(" + TOKEN + r")\s+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:\s*:\s*0*([0-9]{1,5}))?\s*(.*)",
    re.DOTALL | re.ASCII,
)

# The magic cookie that marks an RFC 3261 branch (§8.1.1.7).
MAGIC_COOKIE = "z9hG4bK"


def is_ip_literal(host: str) -> bool:
    """True for an IPv4address or IPv6reference host."""
    return host.startswith("[") or IPV4_RE.fullmatch(host) is not None


@functools.lru_cache(maxsize=4096)
def digits(text: str | bytes, max_digits: int) -> int | None:
    """1*DIGIT (ASCII only, RFC 5234 B.1) with at most ``max_digits`` significant digits, else None.

    Leading zeros are allowed and stripped before conversion, so no input reaches int()'s
    4,300-digit limit.
    """
    if not text or not text.isascii() or not text.isdigit():
        return None
    as_str = text.decode("ascii") if isinstance(text, bytes) else text
    significant = as_str.lstrip("0")
    if len(significant) > max_digits:
        return None
    return int(significant or "0")
