"""``sipfed doctor --live``: why a connect or a TLS handshake failed, in words an admin acts on.

A peer that refuses *our* certificate says so with a TLS alert (RFC 8446 §6.2); OpenSSL names it in its
reason (``TLSV1_ALERT_UNKNOWN_CA``), and each alert has its own fix.
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass

from proxy.admin.findings import Finding, route_address, route_subject
from proxy.net.tls import describe_failure
from routes import StaticRoute

_ALERT = re.compile(r"ALERT_([A-Z_]+)")  # OpenSSL's reason, e.g. TLSV1_ALERT_UNKNOWN_CA
TRUST_OUR_CA = (
    "make the peer trust our CA: import the root of tls.ca_bundle into its trust store (CUP: "
    "cup-trust; Lync: Trusted Root Certification Authorities), and keep our intermediate in "
    "tls.cert_chain"
)
GIVE_CLIENT_AUTH = (
    "give our certificate the Client Authentication EKU (clientAuth): reissue it ('sipfed certs' leaves have it)"
)


@dataclass(frozen=True, slots=True)
class Alert:
    """A TLS alert (RFC 8446 §6.2) by which a peer refuses our certificate."""

    code: int
    """The alert number, as Wireshark shows it."""
    name: str
    """The RFC's name for it."""
    fix: str
    """What to do about it."""


_REFUSALS = {
    "UNKNOWN_CA": Alert(48, "unknown_ca", TRUST_OUR_CA),
    "UNSUPPORTED_CERTIFICATE": Alert(43, "unsupported_certificate", GIVE_CLIENT_AUTH),
    "BAD_CERTIFICATE": Alert(42, "bad_certificate", f"{TRUST_OUR_CA}; {GIVE_CLIENT_AUTH}"),
    "CERTIFICATE_UNKNOWN": Alert(46, "certificate_unknown", f"{TRUST_OUR_CA}; {GIVE_CLIENT_AUTH}"),
    "CERTIFICATE_EXPIRED": Alert(45, "certificate_expired", "renew our certificate (tls.cert_chain), restart sipfed"),
    "CERTIFICATE_REVOKED": Alert(44, "certificate_revoked", "our certificate is revoked: issue a new one"),
    "CERTIFICATE_REQUIRED": Alert(
        116, "certificate_required", "the peer got no certificate from us: check tls.cert_chain and tls.key"
    ),
    "ACCESS_DENIED": Alert(
        49,
        "access_denied",
        "the peer's policy refuses our certificate: add our certificate's "
        "name to its TLS peer subjects (CUP) or trusted application pool (Lync)",
    ),
}


def refusal(exc: BaseException) -> Alert | None:
    """The alert when ``exc`` is the peer refusing our certificate; None for any other failure."""
    if not isinstance(exc, ssl.SSLError) or isinstance(exc, ssl.SSLCertVerificationError):
        return None
    found = _ALERT.search(str(getattr(exc, "reason", None) or exc).upper())
    return _REFUSALS.get(found[1]) if found else None


def refused(route: StaticRoute, alert: Alert) -> Finding:
    """The peer refused our certificate with ``alert``."""
    return Finding(
        "error",
        "live.tls",
        route_subject(route),
        f"the peer refused our certificate: TLS alert {alert.code} {alert.name}",
        alert.fix,
    )


def handshake_failure(route: StaticRoute, exc: BaseException, timeout: float) -> Finding:
    """A TLS handshake to the route that failed, by what the failure looks like."""
    subject, where = route_subject(route), route_address(route)
    alert = refusal(exc)
    if alert is not None:
        return refused(route, alert)
    reason = str(getattr(exc, "reason", None) or exc).upper()
    if any(word in reason for word in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG")):
        return Finding(
            "error",
            "live.tls",
            subject,
            f"{where} does not speak TLS (plain SIP or another service answers there)",
            "point the route at the peer's TLS port (CUP's peer-auth listener 5062, Lync's 5061), "
            'or set transport = "tcp" if the peer really speaks plain TCP',
        )
    if isinstance(exc, TimeoutError):
        return Finding(
            "error",
            "live.tls",
            subject,
            f"{where} accepts TCP but no TLS handshake within {timeout:g} s: not a TLS listener (a plain "
            "TCP SIP port waits silently for SIP), or something in between holds TLS back",
            "point the route at the peer's TLS port (CUP's peer-auth listener 5062, Lync's 5061), or set "
            'transport = "tcp" for a plain TCP peer',
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionResetError):
        return Finding(
            "error",
            "live.tls",
            subject,
            f"{where} closed the connection during the TLS handshake without a TLS alert: it refused "
            "us (our certificate, an untrusted source) or found no common TLS version or cipher",
            f"read the peer's TLS log; check tls.min_version/ciphers; {TRUST_OUR_CA}",
        )
    return Finding(
        "error",
        "live.tls",
        subject,
        f"TLS to {where} fails: {describe_failure(exc, route.tls_name)}",
        "compare our [tls] settings with the peer's (TLS versions, ciphers, trusted CAs)",
    )


def connect_failure(route: StaticRoute, exc: OSError, timeout: float) -> Finding:
    """A TCP connect (or UDP socket) to the route that failed: DNS, refused, timed out, other."""
    subject, where = route_subject(route), route_address(route)
    if isinstance(exc, socket.gaierror):
        return Finding(
            "error",
            "live.connect",
            subject,
            f"cannot resolve {route.destination!r} ({exc.strerror})",
            "fix its DNS record, or put the peer's IP address in the route's destination and keep "
            "tls_name as the name its certificate carries",
        )
    if isinstance(exc, ConnectionRefusedError):
        return Finding(
            "error",
            "live.connect",
            subject,
            f"nothing listens on {where} (connection refused)",
            "is the static route pointing at the right listener? (CUP's peer-auth listener is 5062, "
            "Lync's is 5061) — check destination and port, and that the peer's SIP service runs",
        )
    if isinstance(exc, TimeoutError):
        return Finding(
            "error",
            "live.connect",
            subject,
            f"no answer to the TCP connect to {where} within {timeout:g} s: a firewall drops it, or "
            "nothing is at that address",
            f"check the destination, and that firewalls let TCP {route.port} through from this host",
        )
    return Finding(
        "error",
        "live.connect",
        subject,
        f"cannot connect to {where}: {exc.strerror or exc}",
        "check the destination address and this host's routing",
    )
