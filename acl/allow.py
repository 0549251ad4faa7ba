"""The digest exemption ACL in CUP's *Allow from* grammar, plus structured entries.

    Allow from all                    every source
    Allow from company.com            a TLS peer whose certificate names a host in company.com
    Allow from 10.1.2.3               that address
    Allow from 10.1                   the octet prefix: 10.1.0.0/16
    Allow from 10.1.0.0/16            a CIDR block
    Allow from 10.1.0.0/255.255.0.0   a block with a netmask
    {peer = "lync", methods = [...]}  a configured trusted peer by name, optionally for some methods

A domain entry matches certificate names only: a source's identity is never taken from
From, Via or Contact, which the sender writes itself.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from acl.subjects import CertIdentity

_DOMAIN_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))+")
_PARTIAL_IPV4_RE = re.compile(r"\d{1,3}(?:\.\d{1,3}){0,3}\.?")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AclError(ValueError):
    """An ACL entry that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class AclEntry:
    """One exemption: who (kind and value) and for which methods."""

    kind: str
    """'all', 'domain', 'network' or 'peer'."""
    value: str
    """As written after 'Allow from' (or the peer name)."""
    network: Network | None = None
    """For 'network': the block."""
    methods: frozenset[str] = frozenset()
    """Methods it applies to; empty: all methods."""
    routes: frozenset[str] = frozenset()
    """Static routes (by name) whose requests it applies to; empty: all."""

    def matches(
        self, source_ip: str, identity: CertIdentity, peer: str | None, method: str, route: str | None = None
    ) -> bool:
        if self.methods and method.upper() not in self.methods:
            return False
        if self.routes and route not in self.routes:
            return False
        if self.kind == "all":
            return True
        if self.kind == "peer":
            return peer == self.value
        if self.kind == "network":
            assert self.network is not None
            try:
                return ipaddress.ip_address(source_ip) in self.network
            except ValueError:
                return False
        # A wildcard certificate name never stands for a host (RFC 5922 §7.2).
        return any(
            (name == self.value or name.endswith("." + self.value)) and "*" not in name for name in identity.names
        )

    def describe(self) -> str:
        who = {
            "all": "every source",
            "peer": f"connections bound to trusted peer {self.value!r}",
            "network": f"sources in {self.network}",
            "domain": f"TLS peers whose certificate names a host in {self.value}",
        }[self.kind]
        scope = f", for {', '.join(sorted(self.methods))}" if self.methods else ", for all methods"
        return who + scope + (f" toward route(s) {', '.join(sorted(self.routes))}" if self.routes else "")

    def covers(self, other: AclEntry) -> bool:
        """True when this entry already matches everything ``other`` would (``other`` after it is unreachable)."""
        if self.methods and not (other.methods and other.methods <= self.methods):
            return False
        if self.routes and not (other.routes and other.routes <= self.routes):
            return False
        if self.kind == "all":
            return True
        if self.kind == other.kind == "network":
            mine, theirs = self.network, other.network
            assert mine is not None
            assert theirs is not None
            return theirs.version == mine.version and theirs.subnet_of(mine)  # type: ignore[arg-type]
        if self.kind == other.kind == "domain":
            return other.value == self.value or other.value.endswith("." + self.value)
        return self.kind == other.kind and self.value == other.value


def parse_allow(text: str, methods: frozenset[str] = frozenset()) -> AclEntry:
    """Parse ``Allow from X`` (the 'Allow from' words are optional)."""
    value = re.sub(r"^\s*allow\s+from\s+", "", text, flags=re.IGNORECASE).strip().lower()
    if not value:
        raise AclError(f"{text!r} names no source")
    if value == "all":
        return AclEntry("all", value, methods=methods)
    network = _network(value)
    if network is not None:
        return AclEntry("network", value, network, methods)
    domain = value.rstrip(".")
    # An all-numeric last label is a mistyped address, not a domain (RFC 1123 §2.1).
    if _DOMAIN_RE.fullmatch(domain) and not domain.rsplit(".", 1)[-1].isdigit():
        return AclEntry("domain", domain, methods=methods)
    raise AclError(f"{text!r}: {value!r} is not 'all', a domain, an address, a prefix, CIDR or address/netmask")


def _network(value: str) -> Network | None:
    try:
        if "/" in value:
            return ipaddress.ip_network(value, strict=False)
        return ipaddress.ip_network(ipaddress.ip_address(value))
    except ValueError:
        pass
    if _PARTIAL_IPV4_RE.fullmatch(value):
        octets = value.rstrip(".").split(".")
        if all(0 <= int(o) <= 255 for o in octets):
            padded = octets + ["0"] * (4 - len(octets))
            return ipaddress.ip_network(f"{'.'.join(padded)}/{8 * len(octets)}")
    return None


def first_match(
    entries: tuple[AclEntry, ...],
    source_ip: str,
    identity: CertIdentity,
    peer: str | None,
    method: str,
    route: str | None = None,
) -> AclEntry | None:
    for entry in entries:
        if entry.matches(source_ip, identity, peer, method, route):
            return entry
    return None
