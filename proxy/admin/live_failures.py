"""``sipfed doctor --live``: why a connect or a TLS handshake failed, in words an admin acts on.

A peer that refuses *our* certificate says so with a TLS alert (RFC 8446 §6.2); OpenSSL names it in its
reason (``TLSV1_ALERT_UNKNOWN_CA``), and each alert has its own fix. The alerts and their words are
``proxy.net.tls_words``'s, which the running proxy's log uses too (issue 16: the same words everywhere).
"""

from __future__ import annotations

import socket
import ssl

from proxy.admin.findings import Finding, route_address, route_subject
from proxy.net.tls import describe_failure
from proxy.net.tls_words import (
    GIVE_CLIENT_AUTH,
    NOT_TLS_FIX,
    TRUST_OUR_CA,
    Alert,
    peer_alert,
    refused_words,
    silent_tls_port,
)

__all__ = ["GIVE_CLIENT_AUTH", "TRUST_OUR_CA", "Alert", "connect_failure", "handshake_failure", "refusal", "refused"]
from routes import StaticRoute


def refusal(exc: BaseException) -> Alert | None:
    """The alert when ``exc`` is the peer refusing our certificate; None for any other failure."""
    return peer_alert(exc)


def refused(route: StaticRoute, alert: Alert) -> Finding:
    """The peer refused our certificate with ``alert``."""
    what, fix = refused_words(alert, None)
    return Finding("error", "live.tls", route_subject(route), what, fix)


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
            NOT_TLS_FIX,
        )
    if isinstance(exc, TimeoutError):
        return Finding(
            "error",
            "live.tls",
            subject,
            silent_tls_port(where, timeout),
            NOT_TLS_FIX,
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
