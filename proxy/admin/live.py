"""`sipfed doctor --live`: reach each static route the way sipfed would, and say what breaks and why.

For a TLS route, in order; each failure is one ``Finding`` with its cause and its fix:

1. TCP connect to ``destination:port`` within ``connect_timeout_seconds``;
2. a handshake with verification off (``proxy.net.tls.inspection_context``: sipfed's own outbound settings
   otherwise), only to read the certificates the peer sends (on Python 3.11
   ``getpeercert`` gives the leaf alone; the list comes from ``get_unverified_chain``);
3. those certificates checked with ``cryptography``: the chain leads to tls.ca_bundle (is the
   intermediate sent?), the route's ``tls_name`` is one of its names, validity, and EKU serverAuth
   *and* clientAuth (the peer is our TLS client too: without clientAuth our listener answers alert 43);
4. the handshake sipfed itself makes (``proxy.net.tls.client_context``), which also sees what step 3
   cannot: the peer refusing *our* certificate (alert 48 unknown_ca, 43 unsupported_certificate, ...);
5. ``OPTIONS`` on that connection: any final answer (2xx-6xx) shows SIP is alive.

TCP routes skip steps 2-4; UDP routes only send OPTIONS, retransmitted as RFC 3261 §17.1.2.2 Timer E.
Routes are probed concurrently, each bounded by its timeouts. This module runs the steps; step 3 is
``proxy.admin.live_certs``, step 5 ``proxy.admin.live_sip``, and failures are put in words by
``proxy.admin.live_failures``.
"""

from __future__ import annotations

import _ssl
import contextlib
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from proxy.admin.findings import Finding, route_address, route_subject
from proxy.admin.live_certs import VERIFY_CHECKS, check_peer_certificates
from proxy.admin.live_failures import GIVE_CLIENT_AUTH, TRUST_OUR_CA, connect_failure, handshake_failure
from proxy.admin.live_revocation import probe_our_revocation
from proxy.admin.live_sip import MAX_ANSWER_BYTES, ask_options, our_fqdn, udp_options
from proxy.admin.live_xmpp import diagnose_xmpp_live
from proxy.config import Config
from proxy.net.tls import client_context, describe_failure, inspection_context
from proxy.x509 import load_certificates
from routes import StaticRoute

# A TLS 1.3 server judges our certificate after our side has finished the handshake: its refusal is
# the first thing to read. Waiting for it before sending keeps the alert from being lost to a reset
# (a server that closes with our request unread sends RST, and the alert goes with it).
ALERT_WAIT_SECONDS = 1.0
ALERT_SLICE_SECONDS = 0.05
MAX_WORKERS = 8


@dataclass(frozen=True, slots=True)
class _Probe:
    """What every route's probe shares."""

    timeout: float
    """``connect_timeout_seconds``: for the connect, each handshake, and the OPTIONS answer."""
    now: datetime
    """The time certificates are judged at."""
    bundle: tuple[x509.Certificate, ...]
    """``tls.ca_bundle``, parsed (empty when it does not parse: the offline checks say why)."""
    fetch_context: ssl.SSLContext | None
    """``proxy.net.tls.inspection_context``: sipfed's outbound context with verification off, to read what
    the peer sends."""
    verify_context: ssl.SSLContext | None
    """sipfed's own outbound context (``proxy.net.tls.client_context``)."""
    config: Config
    """For the names we show in OPTIONS."""


def diagnose_live(config: Config, now: datetime) -> list[Finding]:
    """Every route probed (concurrently); the findings in route order, then our certificate's revocation URLs
    (``proxy.admin.live_revocation``), then the XMPP probes."""
    xmpp = diagnose_xmpp_live(config)
    ours = probe_our_revocation(config, now)
    if not config.routes:
        return [Finding("ok", "live.route", "routes", "no static routes: nothing to probe"), *ours, *xmpp]
    probe, findings = _prepare(config, now)
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(config.routes))) as pool:
        for route_findings in pool.map(lambda route: check_route(route, probe), config.routes):
            findings += route_findings
    return findings + ours + xmpp


def _prepare(config: Config, now: datetime) -> tuple[_Probe, list[Finding]]:
    tls, problems = config.tls, []
    fetch = verify = None
    bundle: tuple[x509.Certificate, ...] = ()
    if tls is not None:
        try:
            fetch, verify = inspection_context(tls), client_context(tls)
        except (ssl.SSLError, OSError, ValueError) as exc:
            problems.append(
                Finding(
                    "error",
                    "live.tls",
                    "[tls]",
                    f"our certificate, key or CA bundle does not load ({exc}): TLS routes were not probed",
                    "fix the certificate findings above first",
                )
            )
        with contextlib.suppress(OSError, ValueError):
            bundle = load_certificates(tls.ca_bundle)
    return _Probe(config.connect_timeout_seconds, now, bundle, fetch, verify, config), problems


def check_route(route: StaticRoute, probe: _Probe) -> list[Finding]:
    """The live findings of one route, in the order of the steps."""
    if route.transport == "udp":
        return [udp_options(route, our_fqdn(route, probe.config), probe.timeout)]
    try:
        sock = _connect(route, probe.timeout)
    except OSError as exc:
        return [connect_failure(route, exc, probe.timeout)]
    findings = [Finding("ok", "live.connect", route_subject(route), f"TCP connect to {route_address(route)} works")]
    if route.transport == "tcp":
        with sock:
            return [*findings, ask_options(sock, route, our_fqdn(route, probe.config), probe.timeout, b"")]
    if probe.fetch_context is None or probe.verify_context is None:
        sock.close()
        return findings
    with sock:
        peer, whole = _fetch_chain(sock, route, probe.fetch_context)
    if peer:
        findings += check_peer_certificates(peer, probe.bundle if whole else (), route, probe.now)
    explained = any(f.severity == "error" and f.check in VERIFY_CHECKS for f in findings)
    return findings + _verified_exchange(route, probe, probe.verify_context, explained)


def _connect(route: StaticRoute, timeout: float) -> socket.socket:
    return socket.create_connection((route.destination.strip("[]"), route.port), timeout=timeout)


def _fetch_chain(
    sock: socket.socket,
    route: StaticRoute,
    context: ssl.SSLContext,
) -> tuple[list[x509.Certificate], bool]:
    """Step 2. A failed handshake still yields what the peer sent (TLS 1.2 refuses us after that)."""
    try:
        tls = context.wrap_socket(sock, server_hostname=route.tls_name, do_handshake_on_connect=False)
    except (ssl.SSLError, OSError):
        return [], False
    with tls:
        with contextlib.suppress(ssl.SSLError, OSError):
            tls.do_handshake()
        return peer_chain(tls)


def peer_chain(tls: ssl.SSLSocket) -> tuple[list[x509.Certificate], bool]:
    """The certificates the peer sent, its own first, and whether that is all it sent.

    ``get_unverified_chain`` is public from Python 3.13 (DER bytes) and private on 3.10-3.12
    (``_sslobj``, ``_ssl.Certificate`` objects); without either, only the leaf is known (and the
    chain cannot be judged: a missing intermediate would be a false alarm).
    """
    getter: Any = getattr(tls, "get_unverified_chain", None) or getattr(
        getattr(tls, "_sslobj", None), "get_unverified_chain", None
    )
    items: list[Any] = list(getter() or []) if getter is not None else []
    ders = [item if isinstance(item, bytes) else item.public_bytes(_ssl.ENCODING_DER) for item in items]
    whole = bool(ders)
    if not whole:
        with contextlib.suppress(ValueError, ssl.SSLError):
            leaf = tls.getpeercert(binary_form=True)
            ders = [leaf] if leaf else []
    certs = []
    for der in ders:
        with contextlib.suppress(ValueError):
            certs.append(x509.load_der_x509_certificate(der))
    return certs, whole


def _verified_exchange(
    route: StaticRoute,
    probe: _Probe,
    context: ssl.SSLContext,
    explained: bool,
) -> list[Finding]:
    """Steps 4 and 5: sipfed's own handshake, then OPTIONS on it."""
    try:
        sock = _connect(route, probe.timeout)
    except OSError as exc:
        return [connect_failure(route, exc, probe.timeout)]
    with sock:
        try:
            tls = context.wrap_socket(sock, server_hostname=route.tls_name)
        except ssl.SSLCertVerificationError as exc:
            return [] if explained else [_verify_failure(route, exc, probe)]
        except (ssl.SSLError, OSError) as exc:
            return [handshake_failure(route, exc, probe.timeout)]
        with tls:
            early, failure = _await_refusal(tls, route, probe.timeout)
            if failure is not None:
                return [failure]
            cipher = (tls.cipher() or ("?",))[0]
            done = Finding(
                "ok",
                "live.tls",
                route_subject(route),
                f"sipfed's own handshake works ({tls.version()}, {cipher}): the peer's certificate "
                f"verifies for {route.tls_name!r} and ours is accepted",
            )
            return [done, ask_options(tls, route, our_fqdn(route, probe.config), probe.timeout, early)]


def _await_refusal(tls: ssl.SSLSocket, route: StaticRoute, timeout: float) -> tuple[bytes, Finding | None]:
    """TLS 1.3 (RFC 8446 §4.4.2.4): the server judges our certificate after our side is done, so a refusal
    is the first thing on the wire; a session ticket (§4.6.1, sent once it has accepted us) ends the wait."""
    if tls.version() != "TLSv1.3":
        return b"", None
    deadline = time.monotonic() + min(ALERT_WAIT_SECONDS, timeout)
    try:
        while time.monotonic() < deadline:
            tls.settimeout(ALERT_SLICE_SECONDS)
            try:
                data = tls.recv(MAX_ANSWER_BYTES)
            except TimeoutError:
                if tls.session is not None and tls.session.has_ticket:
                    break
                continue
            if data:
                return data, None
            return b"", Finding(
                "error",
                "live.tls",
                route_subject(route),
                "the peer closed the connection right after the TLS 1.3 handshake, before any SIP "
                "and without a TLS alert: it most likely refused our certificate",
                f"{TRUST_OUR_CA}; {GIVE_CLIENT_AUTH}",
            )
    except (ssl.SSLError, OSError) as exc:
        return b"", handshake_failure(route, exc, timeout)
    finally:
        tls.settimeout(timeout)
    return b"", None


def _verify_failure(route: StaticRoute, exc: ssl.SSLCertVerificationError, probe: _Probe) -> Finding:
    """A verification failure the certificate checks did not predict: OpenSSL's words, and where to look."""
    bundle = probe.config.tls.ca_bundle if probe.config.tls else "CA-BUNDLE"
    return Finding(
        "error",
        "live.tls",
        route_subject(route),
        f"sipfed refuses the peer's certificate: {describe_failure(exc, route.tls_name)}",
        f"inspect what the peer sends: 'openssl s_client -connect {route_address(route)} -servername "
        f"{route.tls_name} -CAfile {bundle} -showcerts'",
    )
