"""XMPP addresses (RFC 7622) and the SIP <-> XMPP address mapping (RFC 7247 §6), as far as a gateway needs.

Rules:
1. RFC 7622 §3.1: a JID is divided before anything is transformed: the resourcepart runs from the first '/' to
   the end, the localpart from the start to the first '@' of what is left, the rest is the domainpart.
2. RFC 7622 §3.2-§3.4: every part present is 1-1023 octets of UTF-8; the domainpart is lower-cased, loses one
   trailing dot and is an ASCII host name or IP literal; the localpart has none of ``" & ' / : < > @``, no spaces
   and no control characters (§3.3.1).
3. The PRECIS profiles (RFC 8265 UsernameCaseMapped, OpaqueString) are not applied: localpart and resourcepart are
   NFC-normalised, nothing more. Above all the localpart keeps its case: a SIP user part is case-sensitive
   (RFC 3261 §19.1.4) and the gateway must hand the SIP side back the very user it was given.
4. RFC 7247 §6, SIP to XMPP: the user part of a sip:, sips:, pres: or im: URI, percent-decoded, is the localpart;
   the host is the domainpart; port, password, URI parameters and headers are dropped. A user part that cannot be
   a localpart is refused, not rewritten with XEP-0106 escaping (``a\\20b``), which only an escaping-aware peer
   would turn back into the SIP user.
5. RFC 7247 §6, XMPP to SIP: ``sip:localpart@domainpart``, the localpart percent-encoded wherever the RFC 3261
   §25.1 ``user`` rule does not allow the character as it is.
6. RFC 7247 §6, instance-specific mapping: an XMPP resourcepart and the ``gr`` parameter of a SIP GRUU (RFC 5627)
   carry the same instance, both ways; a URI without ``gr`` is a bare JID.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from proxy.sip.errors import SipError
from proxy.sip.uri import parse_uri

MAX_PART_OCTETS = 1023
"""RFC 7622 §3.2-§3.4: the longest localpart, domainpart or resourcepart, in octets of UTF-8."""

# RFC 7622 §3.3.1: the eight characters a localpart may not hold (spaces and controls go by category below).
_LOCAL_FORBIDDEN = frozenset("\"&'/:<>@")
# Unicode categories no part may hold: controls, surrogates, unassigned; the localpart also refuses separators
# (spaces), format characters and private use, as the PRECIS IdentifierClass does (RFC 8264 §4.2).
_NEVER = frozenset({"Cc", "Cs", "Cn"})
_NOT_IN_LOCAL = _NEVER | {"Zs", "Zl", "Zp", "Cf", "Co"}

# RFC 7622 §3.2: an IP literal, an IPv4 address or a host name of LDH labels (A-labels for IDNs).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"\[[0-9a-f:.]+\]|{_LABEL}(?:\.{_LABEL})*", re.ASCII)

# RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved ); quote() keeps alphanumerics and "_.-~".
_USER_SAFE = "!*'()" + "&=+$,;?/"
# RFC 3261 §25.1: pvalue = 1*paramchar; paramchar = param-unreserved / unreserved / escaped.
_PARAM_SAFE = "!*'()" + "[]/:&+$"
_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")

_SIP_SCHEMES = ("sip", "sips")
_MAILBOX_SCHEMES = ("pres", "im")  # RFC 3859 §3.1, RFC 3860 §3.1: scheme ":" [ to ] [ headers ]


class JidError(ValueError):
    """An address that is no JID, or that has no JID (RFC 7622, RFC 7247 §6); the message says why."""


@dataclass(frozen=True, slots=True)
class Jid:
    """An XMPP address (RFC 7622 §3); built normalised and checked, so two equal addresses compare equal."""

    local: str | None
    """The localpart, NFC, case kept (rule 3); None for a server or service address."""
    domain: str
    """The domainpart: lower case, no trailing dot."""
    resource: str | None = None
    """The resourcepart, NFC; None for a bare JID."""

    def __post_init__(self) -> None:
        # Normalising in place keeps one way to build a Jid: the constructor and parse_jid agree.
        object.__setattr__(self, "domain", _domainpart(self.domain))
        if self.local is not None:
            object.__setattr__(self, "local", _localpart(self.local))
        if self.resource is not None:
            object.__setattr__(self, "resource", _resourcepart(self.resource))

    @property
    def bare(self) -> Jid:
        """The same address without its resource (RFC 7622 §3.1: the "bare JID")."""
        return Jid(self.local, self.domain) if self.resource is not None else self

    def __str__(self) -> str:
        text = f"{self.local}@{self.domain}" if self.local is not None else self.domain
        return f"{text}/{self.resource}" if self.resource is not None else text


def parse_jid(text: str) -> Jid:
    """RFC 7622 §3.1 (rule 1): the first '/' ends the bare JID, then the first '@' ends the localpart.
    Raises ``JidError`` for an empty part or one that rule 2 refuses."""
    rest, slash, resource = text.partition("/")
    local, at, domain = rest.partition("@")
    return Jid(local if at else None, domain if at else rest, resource if slash else None)


def _octets(part: str, what: str) -> None:
    size = len(part.encode("utf-8", "surrogatepass"))
    if not 0 < size <= MAX_PART_OCTETS:
        why = "is empty" if not size else f"is {size} octets long"
        raise JidError(f"the {what} {why}: RFC 7622 allows 1 to {MAX_PART_OCTETS} octets")


def _domainpart(domain: str) -> str:
    """RFC 7622 §3.2 (rule 2)."""
    if domain.endswith("."):
        domain = domain[:-1]  # §3.2: the final label separator is stripped, once
    _octets(domain, "domainpart")
    if not domain.isascii():
        raise JidError(f"domainpart {domain[:80]!r} is not ASCII: give an internationalised name as A-labels (xn--)")
    domain = domain.lower()
    if _DOMAIN_RE.fullmatch(domain) is None:
        raise JidError(f"domainpart {domain[:80]!r} is not a host name or an IP address (RFC 7622 §3.2)")
    return domain


def _localpart(local: str) -> str:
    """RFC 7622 §3.3 (rules 2 and 3)."""
    local = unicodedata.normalize("NFC", local)
    _octets(local, "localpart")
    for char in local:
        if char in _LOCAL_FORBIDDEN or unicodedata.category(char) in _NOT_IN_LOCAL:
            raise JidError(f"localpart {local[:80]!r} contains {char!r}, which RFC 7622 §3.3.1 forbids")
    return local


def _resourcepart(resource: str) -> str:
    """RFC 7622 §3.4 (rules 2 and 3): any text but controls; '@' and '/' are allowed here."""
    resource = unicodedata.normalize("NFC", resource)
    _octets(resource, "resourcepart")
    for char in resource:
        if unicodedata.category(char) in _NEVER:
            raise JidError(f"resourcepart {resource[:80]!r} contains {char!r}, a control or unassigned character")
    return resource


# -- RFC 7247 §6: SIP <-> XMPP ------------------------------------------------------------------------------------


def sip_to_jid(uri: str) -> Jid:
    """RFC 7247 §6, SIP to XMPP (rules 4 and 6): ``sip:juliet@example.com;gr=yn0c`` is
    ``juliet@example.com/yn0c``. Raises ``JidError`` for another scheme, no user part, a bad percent-escape or a
    user part that RFC 7622 does not allow in a localpart."""
    scheme = uri.partition(":")[0].lower()
    if scheme in _SIP_SCHEMES:
        try:
            parsed = parse_uri(uri)
        except SipError as exc:
            raise JidError(f"{uri[:80]!r} is not a SIP URI: {exc.reason}") from None
        if parsed.user is None:
            raise JidError(f"{uri[:80]!r} has no user part: only a user's address maps to a JID")
        user, host, gruu = parsed.user.partition(":")[0], parsed.host, parsed.param("gr")
    elif scheme in _MAILBOX_SCHEMES:
        user, host = _mailbox(uri)
        gruu = None
    else:
        raise JidError(f"{uri[:80]!r}: only sip:, sips:, pres: and im: URIs map to a JID (RFC 7247 §6)")
    local = _unescape(user, "user part")
    resource = _unescape(gruu, "gr parameter") if gruu else None
    return Jid(local, host, resource)


def _mailbox(uri: str) -> tuple[str, str]:
    """RFC 3859 §3.1 / RFC 3860 §3.1: ``pres:`` / ``im:`` then ``local@domain``, then optional ``?headers``."""
    mailbox = uri.partition(":")[2].partition("?")[0]
    user, at, host = mailbox.partition("@")
    if not at or not user or not host or "@" in host:
        raise JidError(f"{uri[:80]!r} is not of the form {uri.partition(':')[0]}:user@domain")
    return user, host


def _unescape(text: str, what: str) -> str:
    """RFC 3261 §25.1 ``escaped``: every '%' starts two hex digits, and the octets are UTF-8."""
    if _ESCAPE_RE.search(text):
        raise JidError(f"the {what} {text[:80]!r} has a '%' that does not start a %XX escape")
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise JidError(f"the {what} {text[:80]!r} percent-encodes octets that are not UTF-8") from None


def jid_to_sip(jid: Jid) -> str:
    """RFC 7247 §6, XMPP to SIP (rules 5 and 6): ``juliet@example.com/yn0c`` is
    ``sip:juliet@example.com;gr=yn0c``; a server's address is ``sip:example.com``."""
    user = f"{quote(jid.local, safe=_USER_SAFE)}@" if jid.local is not None else ""
    gruu = f";gr={quote(jid.resource, safe=_PARAM_SAFE)}" if jid.resource is not None else ""
    return f"sip:{user}{jid.domain}{gruu}"
