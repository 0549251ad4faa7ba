"""``[xmpp]`` and ``[[xmpp.partners]]``: XMPP federation in Lync 2013's vocabulary, typed and checked.

Lync's ``New-CsXmppAllowedPartner`` (and the Control Panel's *XMPP Federated Partners* page) maps key by key:

==========================  ============================  ============================================
Lync setting                sipfed key                    values
==========================  ============================  ============================================
Primary domain              ``primary_domain``            the partner's XMPP domain
Additional domains          ``additional_domains``        more domains of the same partner
Partner type                ``partner_type``              federated, public_verified, public_unverified
TLS negotiation             ``tls``                       required, optional, not_supported
SASL negotiation            ``sasl``                      required, optional, not_supported
Dialback negotiation        ``dialback``                  true / false
EnableKeepAlive             ``keepalive``                 true / false
==========================  ============================  ============================================

Lync's own spellings are accepted too (``Required``, ``NotSupported``, ``PublicUnverified``). As the Control Panel
refuses it, SASL without TLS is a configuration error (SASL EXTERNAL authenticates with the TLS certificate,
XEP-0178), and so is a partner with no way to authenticate at all (no SASL and no dialback).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Negotiation = Literal["required", "optional", "not_supported"]
PartnerType = Literal["federated", "public_verified", "public_unverified"]

NEGOTIATIONS: tuple[Negotiation, ...] = ("required", "optional", "not_supported")
PARTNER_TYPES: tuple[PartnerType, ...] = ("federated", "public_verified", "public_unverified")
XMPP_KEYS = {
    "listen",
    "domains",
    "dialback_secret",
    "cert_chain",
    "key",
    "ca_bundle",
    "store",
    "subscription_expires_seconds",
    "connect_timeout_seconds",
    "keepalive_seconds",
    "idle_timeout_seconds",
    "max_stanza_bytes",
    "partners",
}
PARTNER_KEYS = {
    "name",
    "primary_domain",
    "additional_domains",
    "description",
    "partner_type",
    "tls",
    "sasl",
    "dialback",
    "keepalive",
    "address",
}
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")


@dataclass(frozen=True, slots=True)
class Partner:
    """One XMPP allowed partner (``[[xmpp.partners]]``)."""

    name: str
    """For logs and metrics labels (default: the primary domain)."""
    primary_domain: str
    """Lync's Primary domain."""
    additional_domains: tuple[str, ...] = ()
    """Lync's Additional domains."""
    partner_type: PartnerType = "federated"
    """Who may subscribe to whom (``public_unverified``: only after our user invited the contact)."""
    tls: Negotiation = "required"
    """STARTTLS (RFC 6120 §5): required, offered/used when the other side wants it, or never."""
    sasl: Negotiation = "optional"
    """SASL EXTERNAL with certificates (XEP-0178): required, used when possible, or never."""
    dialback: bool = True
    """Server Dialback (XEP-0220) allowed."""
    keepalive: bool = True
    """Whitespace keep-alives on idle streams (RFC 6120 §4.6.1)."""
    address: tuple[str, int] | None = None
    """Where to connect instead of the ``_xmpp-server._tcp`` SRV records (a lab, a fixed gateway)."""
    description: str = ""
    """Lync's Description: notes."""

    @property
    def domains(self) -> tuple[str, ...]:
        return (self.primary_domain, *self.additional_domains)

    def describe(self) -> str:
        """The settings in Lync's words, for logs and ``sipfed doctor``."""
        return (
            f"partner {self.name} ({self.partner_type}; TLS {self.tls}, SASL {self.sasl}, "
            f"dialback {'on' if self.dialback else 'off'})"
        )


@dataclass(frozen=True, slots=True)
class XmppConfig:
    """``[xmpp]``: sipfed as the XMPP server of its SIP domains."""

    listen: tuple[str, int]
    """Where partners connect (what ``_xmpp-server._tcp.<domain>`` SRV records point at; default port 5269)."""
    domains: tuple[str, ...]
    """Our SIP domains, offered as XMPP domains (one SRV record each)."""
    partners: tuple[Partner, ...]
    """The XMPP allowed partners; streams from any other domain are refused."""
    dialback_secret: str | None = None
    """XEP-0185's secret; None: a random one per start (instances serving one domain must share one)."""
    cert_chain: Path | None = None
    """Our certificate for the XMPP domains (default: ``[tls] cert_chain``); must name every domain."""
    key: Path | None = None
    """Its key (default: ``[tls] key``)."""
    ca_bundle: Path | None = None
    """The CAs partners' certificates must chain to (default: ``[tls] ca_bundle``)."""
    store: Path | None = None
    """The SQLite file of subscriptions (relative to the config file); None: ``xmpp-subscriptions.sqlite3``
    beside the config file."""
    subscription_expires_seconds: int = 3600
    """The Expires of the SIP SUBSCRIBEs sipfed sends for XMPP contacts (refreshed before they run out)."""
    connect_timeout_seconds: float = 10.0
    """TCP connect plus stream negotiation toward a partner."""
    keepalive_seconds: float = 60.0
    """A whitespace keep-alive on a stream idle this long (partners with ``keepalive = true``)."""
    idle_timeout_seconds: float = 600.0
    """A stream that carried nothing, not even a keep-alive, this long is closed."""
    max_stanza_bytes: int = 262_144
    """RFC 6120 §13.12: the largest stanza accepted (``policy-violation`` beyond)."""
    by_domain: dict[str, Partner] = field(default_factory=dict, compare=False, repr=False)
    """Every partner domain -> its partner (filled by ``parse_xmpp``)."""

    def partner_for(self, domain: str) -> Partner | None:
        return self.by_domain.get(domain.lower().rstrip("."))


def parse_xmpp(raw: object, base: Path, problems: list[str]) -> XmppConfig | None:
    """``[xmpp]`` or None when absent; every problem appended as ``key: what is wrong (the fix)``."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.append("xmpp: must be a table ([xmpp])")
        return None
    for key in sorted(set(raw) - XMPP_KEYS):
        problems.append(f"xmpp.{key}: unknown key (known: {', '.join(sorted(XMPP_KEYS))})")
    listen = _address(raw.get("listen", "0.0.0.0:5269"), "xmpp.listen", problems, 5269, lowest=0) or ("0.0.0.0", 5269)
    domains = _domains(raw.get("domains"), "xmpp.domains", problems, required=True)
    partners = _partners(raw.get("partners"), problems)
    by_domain: dict[str, Partner] = {}
    for i, partner in enumerate(partners):
        for domain in partner.domains:
            if domain in by_domain:
                problems.append(
                    f"xmpp.partners[{i}]: domain {domain} is already partner {by_domain[domain].name}'s; "
                    "each domain belongs to one partner"
                )
            if domain in domains:
                problems.append(f"xmpp.partners[{i}]: {domain} is one of our own xmpp.domains")
            by_domain[domain] = partner
    return XmppConfig(
        listen,
        domains,
        tuple(partners),
        _text(raw, "dialback_secret", problems) or None,
        _path(raw, "cert_chain", base, problems),
        _path(raw, "key", base, problems),
        _path(raw, "ca_bundle", base, problems),
        _path(raw, "store", base, problems),
        int(_number(raw, "subscription_expires_seconds", 3600, 60, 86_400, problems, whole=True)),
        _number(raw, "connect_timeout_seconds", 10.0, 0.5, 120.0, problems),
        _number(raw, "keepalive_seconds", 60.0, 1.0, 3600.0, problems),
        _number(raw, "idle_timeout_seconds", 600.0, 5.0, 86_400.0, problems),
        int(_number(raw, "max_stanza_bytes", 262_144, 4096, 16_777_216, problems, whole=True)),
        by_domain,
    )


def _partners(raw: object, problems: list[str]) -> list[Partner]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(item, Mapping) for item in raw):
        problems.append("xmpp.partners: must be an array of tables ([[xmpp.partners]])")
        return []
    partners = []
    for i, entry in enumerate(raw):
        partner = _partner(entry, f"xmpp.partners[{i}]", problems)
        if partner is not None:
            partners.append(partner)
    return partners


def _partner(entry: Mapping[str, Any], where: str, problems: list[str]) -> Partner | None:
    for key in sorted(set(entry) - PARTNER_KEYS):
        problems.append(f"{where}.{key}: unknown key (known: {', '.join(sorted(PARTNER_KEYS))})")
    primary = _domains([entry.get("primary_domain")], f"{where}.primary_domain", problems, required=True)
    if not primary:
        return None
    tls = _choice(entry, "tls", NEGOTIATIONS, "required", where, problems)
    sasl = _choice(entry, "sasl", NEGOTIATIONS, "optional", where, problems)
    dialback = _flag(entry, "dialback", True, where, problems)
    if sasl != "not_supported" and tls == "not_supported":
        problems.append(
            f'{where}: sasl = "{sasl}" with tls = "not_supported": SASL requires TLS (its EXTERNAL mechanism '
            'authenticates with the TLS certificate, XEP-0178); set tls to "required" or "optional", or sasl to '
            '"not_supported"'
        )
    if sasl == "not_supported" and not dialback:
        problems.append(
            f'{where}: sasl = "not_supported" and dialback = false leave no way to authenticate the partner; '
            "enable dialback or SASL"
        )
    address = entry.get("address")
    return Partner(
        _text(entry, "name", problems, where) or primary[0],
        primary[0],
        tuple(
            d
            for d in _domains(entry.get("additional_domains", []), f"{where}.additional_domains", problems)
            if d != primary[0]
        ),
        _choice(entry, "partner_type", PARTNER_TYPES, "federated", where, problems),  # type: ignore[arg-type]
        tls,  # type: ignore[arg-type]
        sasl,  # type: ignore[arg-type]
        dialback,
        _flag(entry, "keepalive", True, where, problems),
        None if address is None else _address(address, f"{where}.address", problems, 5269),
        _text(entry, "description", problems, where),
    )


def _choice(
    entry: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str, where: str, problems: list[str]
) -> str:
    value = entry.get(key, default)
    wanted = {choice.replace("_", ""): choice for choice in allowed}
    normal = value.lower().replace("_", "").replace(" ", "") if isinstance(value, str) else None
    if normal not in wanted:
        problems.append(f"{where}.{key}: {value!r} must be one of {', '.join(allowed)}")
        return default
    return wanted[normal]


def _flag(entry: Mapping[str, Any], key: str, default: bool, where: str, problems: list[str]) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"{where}.{key}: {value!r} must be true or false")
        return default
    return value


def _number_words(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _domains(raw: object, where: str, problems: list[str], *, required: bool = False) -> tuple[str, ...]:
    if raw is None and required:
        problems.append(f"{where}: required (the domain names)")
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, str) or item is None for item in raw):
        problems.append(f"{where}: must be a list of domain names")
        return ()
    out = []
    for item in raw:
        if item is None:
            continue
        domain = item.lower().rstrip(".")
        if not _DOMAIN.fullmatch(domain):
            problems.append(f"{where}: {item!r} is not a domain name")
            continue
        out.append(domain)
    if required and not out:
        problems.append(f"{where}: required (the domain names)")
    return tuple(dict.fromkeys(out))


def _address(
    raw: object, where: str, problems: list[str], default_port: int, lowest: int = 1
) -> tuple[str, int] | None:
    """``host:port`` (or ``host``); ``lowest`` 0 lets a listener take any free port (tests)."""
    if not isinstance(raw, str) or not raw:
        problems.append(f'{where}: {raw!r} must be "host:port" (or "host")')
        return None
    if raw.startswith("[") and raw.endswith("]"):  # an IPv6 address without a port
        host, sep, port = raw, "", ""
    else:
        host, sep, port = raw.rpartition(":") if raw.count(":") == 1 or raw.startswith("[") else ("", "", "")
    if not sep:
        host, port = raw, str(default_port)
    host = host.strip("[]")
    if not host.strip("[]"):
        problems.append(f"{where}: {raw!r} names no host")
        return None
    if not port.isdigit() or not lowest <= int(port) <= 65535:
        problems.append(f"{where}: {raw!r} port must be {lowest}-65535")
        return None
    return host, int(port)


def _text(entry: Mapping[str, Any], key: str, problems: list[str], where: str = "xmpp") -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        problems.append(f"{where}.{key}: {value!r} must be a string")
        return ""
    return value


def _path(entry: Mapping[str, Any], key: str, base: Path, problems: list[str]) -> Path | None:
    text = _text(entry, key, problems)
    return (base / text).resolve() if text else None


def _number(
    entry: Mapping[str, Any],
    key: str,
    default: float,
    low: float,
    high: float,
    problems: list[str],
    *,
    whole: bool = False,
) -> float:
    value = entry.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        problems.append(f"xmpp.{key}: {value!r} must be a number from {_number_words(low)} to {_number_words(high)}")
        return default
    if whole and value != int(value):
        problems.append(f"xmpp.{key}: {value!r} must be a whole number")
        return default
    return float(value)
