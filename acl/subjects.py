"""Certificate identities and the subject patterns that match them (CUP's *TLS Peer Subjects*).

A pattern is one of:
- ``cups.tomt.local``: a bare name, matching a SAN dNSName, or the CN when the certificate has no
  DNS SAN (RFC 5922 §7.1: SANs first);
- ``DNS:cups.tomt.local``: SAN dNSName only;  ``CN=cups.tomt.local``: the subject CN only;
- ``CN=cups.tomt.local,O=TOMT,C=IT``: the whole subject DN (RFC 4514), compared attribute by attribute.
Wildcards are refused in patterns, and a wildcard SAN in a certificate never matches (RFC 5922 §7.2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NAME_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?")
_IP_RE = re.compile(r"[0-9.]+|[0-9a-f:]+")
#: RFC 4514 short names, and the long names Python's ssl module reports.
_ATTRIBUTE_NAMES = {
    "commonname": "cn",
    "cn": "cn",
    "organizationname": "o",
    "o": "o",
    "organizationalunitname": "ou",
    "ou": "ou",
    "countryname": "c",
    "c": "c",
    "localityname": "l",
    "l": "l",
    "stateorprovincename": "st",
    "st": "st",
    "domaincomponent": "dc",
    "dc": "dc",
    "emailaddress": "emailaddress",
    "serialnumber": "serialnumber",
}


@dataclass(frozen=True, slots=True)
class CertIdentity:
    """What a verified peer certificate says about its holder, lower case."""

    subject: tuple[tuple[str, str], ...] = ()
    """The subject DN as (attribute short name, value) pairs, in order."""
    dns_names: tuple[str, ...] = ()
    """subjectAltName dNSName entries."""
    ip_addresses: tuple[str, ...] = ()
    """subjectAltName iPAddress entries."""

    @property
    def common_names(self) -> tuple[str, ...]:
        return tuple(value for key, value in self.subject if key == "cn")

    @property
    def names(self) -> tuple[str, ...]:
        """The names that identify the holder: DNS SANs, else CNs (RFC 5922 §7.1), plus IP SANs."""
        return (self.dns_names or self.common_names) + self.ip_addresses

    @classmethod
    def from_ssl_dict(cls, cert: Mapping[str, Any] | None) -> CertIdentity:
        """Build from ``SSLObject.getpeercert()`` (the parsed, verified certificate)."""
        if not cert:
            return cls()
        subject: list[tuple[str, str]] = []
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                subject.append((_ATTRIBUTE_NAMES.get(key.lower(), key.lower()), str(value).lower()))
        sans = cert.get("subjectAltName", ())
        dns = tuple(str(v).lower() for k, v in sans if k == "DNS")
        ips = tuple(str(v).lower() for k, v in sans if k == "IP Address")
        return cls(tuple(subject), dns, ips)

    def describe(self) -> str:
        dn = ",".join(f"{k.upper()}={v}" for k, v in self.subject) or "(empty subject)"
        sans = ", ".join([f"DNS:{n}" for n in self.dns_names] + [f"IP:{n}" for n in self.ip_addresses])
        return f"{dn}" + (f" [{sans}]" if sans else "")


class SubjectError(ValueError):
    """A subject pattern that cannot match anything as written."""


@dataclass(frozen=True, slots=True)
class SubjectPattern:
    """One configured subject: ``kind`` is 'name', 'dns', 'cn' or 'dn'."""

    kind: str
    """How to match: a bare name, SAN dNSName, CN, or a whole DN."""
    value: str
    """The name (lower case), or for 'dn' the normalised DN text."""
    dn: tuple[tuple[str, str], ...] = ()
    """For 'dn': the attribute pairs."""

    def matches(self, identity: CertIdentity) -> bool:
        if self.kind == "dns":
            return self.value in identity.dns_names
        if self.kind == "cn":
            return self.value in identity.common_names
        if self.kind == "dn":
            return tuple(sorted(self.dn)) == tuple(sorted(identity.subject))
        return self.value in identity.names

    def __str__(self) -> str:
        return {"dns": f"DNS:{self.value}", "cn": f"CN={self.value}", "dn": self.value}.get(self.kind, self.value)


def parse_subject(text: str) -> SubjectPattern:
    """Parse one pattern; raise SubjectError saying what is wrong."""
    text = text.strip()
    if not text:
        raise SubjectError("is empty")
    if "*" in text:
        raise SubjectError(f"{text!r} has a wildcard; name each peer (RFC 5922 §7.2 refuses wildcard identities)")
    lower = text.lower()
    if lower.startswith("dns:"):
        return SubjectPattern("dns", _name(text[4:], text))
    if "=" not in text:
        return SubjectPattern("name", _name(text, text))
    pairs = _parse_dn(text)
    if len(pairs) == 1 and pairs[0][0] == "cn":
        return SubjectPattern("cn", _name(pairs[0][1], text))
    return SubjectPattern("dn", ",".join(f"{k.upper()}={v}" for k, v in pairs), tuple(pairs))


def _name(value: str, text: str) -> str:
    name = value.strip().lower().rstrip(".")
    if not name:
        raise SubjectError(f"{text!r} has no value")
    if not (_NAME_RE.fullmatch(name) or _IP_RE.fullmatch(name)):
        raise SubjectError(f"{text!r}: {name!r} is not a host name")
    return name


def _parse_dn(text: str) -> list[tuple[str, str]]:
    """RFC 4514 ``type=value`` pairs separated by ',' (escaped commas kept); '+' multi-valued RDNs split."""
    pairs: list[tuple[str, str]] = []
    for part in re.split(r"(?<!\\)[,+]", text):
        key, eq, value = part.partition("=")
        key = _ATTRIBUTE_NAMES.get(key.strip().lower(), key.strip().lower())
        value = value.strip().replace("\\,", ",").replace("\\+", "+").lower()
        if not eq or not key:
            raise SubjectError(f"{text!r}: {part.strip()!r} is not type=value")
        if not value:
            raise SubjectError(f"{text!r}: {key.upper()}= has no value")
        pairs.append((key, value))
    return pairs
