"""`sipfed doctor --live`: reach each static route the way sipfed would, and say what breaks and why.

For a TLS route, in order; each failure is one ``Finding`` with its cause and its fix:

1. TCP connect to ``destination:port`` within ``connect_timeout_seconds``;
2. a handshake with verification off, only to read the certificates the peer sends (on Python 3.11
   ``getpeercert`` gives the leaf alone; the list comes from ``get_unverified_chain``);
3. those certificates checked with ``cryptography``: the chain leads to tls.ca_bundle (is the
   intermediate sent?), the route's ``tls_name`` is one of its names, validity, and EKU serverAuth
   *and* clientAuth (the peer is our TLS client too: without clientAuth our listener answers alert 43);
4. the handshake sipfed itself makes (``proxy.net.tls.client_context``), which also sees what step 3
   cannot: the peer refusing *our* certificate (alert 48 unknown_ca, 43 unsupported_certificate, ...);
5. ``OPTIONS`` on that connection: any final answer (2xx-6xx) shows SIP is alive.

TCP routes skip steps 2-4; UDP routes only send OPTIONS, retransmitted as RFC 3261 §17.1.2.2 Timer E.
Routes are probed concurrently, each bounded by its timeouts.
"""

from __future__ import annotations

import _ssl
import contextlib
import re
import secrets
import socket
import ssl
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy import __version__
from proxy.admin.doctor import (
    EXPIRY_WARNING,
    Finding,
    build_path,
    certificate_names,
    extension,
    issued_by,
    name_matches,
    self_issued,
    short_name,
)
from proxy.config import Config, TlsConfig
from proxy.net.tls import client_context, describe_failure
from proxy.sip.errors import SipError
from proxy.sip.message import Response, parse_message
from proxy.sip.parser import FramingError, StreamFramer
from routes import StaticRoute

# A TLS 1.3 server judges our certificate after our side has finished the handshake: its refusal is
# the first thing to read. Waiting for it before sending keeps the alert from being lost to a reset
# (a server that closes with our request unread sends RST, and the alert goes with it).
ALERT_WAIT_SECONDS = 1.0
ALERT_SLICE_SECONDS = 0.05
MAX_ANSWER_BYTES = 65535
MAX_READS = 1000
MAX_WORKERS = 8
T1_SECONDS, T2_SECONDS = 0.5, 4.0
# Findings that explain why sipfed's own verification of the peer fails (so it is not repeated).
VERIFY_CHECKS = frozenset({"live.peer_chain", "live.peer_name", "live.peer_validity"})
_ALERT = re.compile(r"ALERT_([A-Z_]+)")  # OpenSSL's reason, e.g. TLSV1_ALERT_UNKNOWN_CA
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

TRUST_OUR_CA = ("make the peer trust our CA: import the root of tls.ca_bundle into its trust store (CUP: "
                "cup-trust; Lync: Trusted Root Certification Authorities), and keep our intermediate in "
                "tls.cert_chain")
GIVE_CLIENT_AUTH = ("give our certificate the Client Authentication EKU (clientAuth): reissue it ('sipfed certs' "
                    "leaves have it)")
SEND_INTERMEDIATE = ("make the peer send its intermediate after its own certificate (CUP: upload the intermediate "
                     "as cup-trust and regenerate; Windows/Lync: install it in the computer's Intermediate "
                     "Certification Authorities store)")
RENEW_PEER = ("the peer's admin must renew it and install the new one (CUP: regenerate the 'cup' certificate; "
              "Lync: the Certificate Wizard or Request-CsCertificate)")


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
    "CERTIFICATE_REQUIRED": Alert(116, "certificate_required",
                                  "the peer got no certificate from us: check tls.cert_chain and tls.key"),
    "ACCESS_DENIED": Alert(49, "access_denied", "the peer's policy refuses our certificate: add our certificate's "
                           "name to its TLS peer subjects (CUP) or trusted application pool (Lync)"),
}


def refusal(exc: BaseException) -> Alert | None:
    """The alert when ``exc`` is the peer refusing our certificate; None for any other failure."""
    if not isinstance(exc, ssl.SSLError) or isinstance(exc, ssl.SSLCertVerificationError):
        return None
    found = _ALERT.search(str(getattr(exc, "reason", None) or exc).upper())
    return _REFUSALS.get(found[1]) if found else None


class NotSip(Exception):
    """The peer answered with something that is not a SIP message."""


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
    """Verification off, our certificate as client certificate: reads what the peer sends."""
    verify_context: ssl.SSLContext | None
    """sipfed's own outbound context."""
    config: Config
    """For the names we show in OPTIONS."""


def diagnose_live(config: Config, now: datetime) -> list[Finding]:
    """Every route probed (concurrently); the findings in route order."""
    if not config.routes:
        return [Finding("ok", "live.route", "routes", "no static routes: nothing to probe")]
    probe, findings = _prepare(config, now)
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(config.routes))) as pool:
        for route_findings in pool.map(lambda route: check_route(route, probe), config.routes):
            findings += route_findings
    return findings


def _prepare(config: Config, now: datetime) -> tuple[_Probe, list[Finding]]:
    tls, problems = config.tls, []
    fetch = verify = None
    bundle: tuple[x509.Certificate, ...] = ()
    if tls is not None:
        try:
            fetch, verify = _fetch_context(tls), client_context(tls)
        except (ssl.SSLError, OSError, ValueError) as exc:
            problems.append(Finding("error", "live.tls", "[tls]",
                                    f"our certificate, key or CA bundle does not load ({exc}): TLS routes were "
                                    "not probed", "fix the certificate findings above first"))
        with contextlib.suppress(OSError, ValueError):
            bundle = tuple(x509.load_pem_x509_certificates(tls.ca_bundle.read_bytes()))
    return _Probe(config.connect_timeout_seconds, now, bundle, fetch, verify, config), problems


def _fetch_context(tls: TlsConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only to read the peer's certificates; step 4 verifies
    context.minimum_version = _VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_RENEGOTIATION
    if tls.ciphers:
        context.set_ciphers(tls.ciphers)
    context.load_cert_chain(str(tls.cert_chain), str(tls.key))
    return context


def check_route(route: StaticRoute, probe: _Probe) -> list[Finding]:
    """The live findings of one route, in the order of the steps."""
    if route.transport == "udp":
        return [_udp_options(route, probe)]
    try:
        sock = _connect(route, probe.timeout)
    except OSError as exc:
        return [_connect_failure(route, exc, probe.timeout)]
    findings = [Finding("ok", "live.connect", _subject(route), f"TCP connect to {_where(route)} works")]
    if route.transport == "tcp":
        with sock:
            return [*findings, _ask_options(sock, route, probe, b"")]
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


def _fetch_chain(sock: socket.socket, route: StaticRoute, context: ssl.SSLContext,
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
        getattr(tls, "_sslobj", None), "get_unverified_chain", None)
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


def check_peer_certificates(peer: Sequence[x509.Certificate], bundle: Sequence[x509.Certificate],
                            route: StaticRoute, now: datetime) -> list[Finding]:
    """Step 3: what the peer sent, judged as sipfed (and the peer's other partners) will judge it."""
    subject = _subject(route)
    chain = [check_peer_chain(peer, bundle, subject)] if bundle else []
    path, _ = build_path(peer, bundle)
    return [*chain, check_peer_name(peer[0], route), *check_peer_validity(path, subject, now),
            *check_peer_eku(peer[0], subject)]


def check_peer_chain(peer: Sequence[x509.Certificate], bundle: Sequence[x509.Certificate], subject: str) -> Finding:
    """RFC 5246 §7.4.2 / RFC 8446 §4.4.2: the peer sends its certificate and the intermediates."""
    path, anchor = build_path(peer, bundle)
    sent = " -> ".join(short_name(cert.subject) for cert in peer)
    last = path[-1]
    if anchor is None:
        return Finding("error", "live.peer_chain", subject, *_unanchored(path, sent))
    ups = _up_to_root(anchor, bundle)
    if ups is None:
        return Finding("error", "live.peer_chain", subject,
                       f"the peer's chain ({sent}) reaches {short_name(anchor.subject)!r} in tls.ca_bundle, but "
                       "no root above it: sipfed cannot verify it ('unable to get issuer certificate')",
                       f"add the root CA of {short_name(anchor.subject)!r} to tls.ca_bundle")
    if len(ups) > 1 and len(path) == 1:
        return Finding("warning", "live.peer_chain", subject,
                       f"the peer does not send its intermediate certificate (it sends only {sent!r}); sipfed "
                       f"copes because tls.ca_bundle holds {short_name(last.issuer)!r}, but servers that trust "
                       "only the root fail with 'unable to get local issuer certificate'", SEND_INTERMEDIATE)
    steps = " -> ".join(short_name(cert.subject) for cert in [*path, *ups])
    return Finding("ok", "live.peer_chain", subject, f"the peer's chain verifies to tls.ca_bundle: {steps}")


def _unanchored(path: Sequence[x509.Certificate], sent: str) -> tuple[str, str]:
    """Cause and fix for a chain no CA of the bundle issues."""
    last = path[-1]
    if self_issued(last):
        return (f"the peer's chain ({sent}) ends at the root {short_name(last.subject)!r}, which is not in "
                "tls.ca_bundle: sipfed refuses it (unknown CA)",
                "if this peer is to be trusted, add its root CA to tls.ca_bundle (and make it trust ours)")
    issuer = short_name(last.issuer)
    if len(path) == 1:
        return (f"the peer does not send its intermediate certificate: it sends only {sent!r}, whose issuer "
                f"{issuer!r} is not in tls.ca_bundle either, so sipfed fails with 'unable to get local issuer "
                "certificate'", f"{SEND_INTERMEDIATE}; or add {issuer!r} to tls.ca_bundle")
    return (f"the peer's chain ({sent}) does not lead to our CA bundle: {short_name(last.subject)!r} is issued "
            f"by {issuer!r}, which is not in tls.ca_bundle (unknown CA)",
            f"if this peer is to be trusted, add its root CA {issuer!r} to tls.ca_bundle (and make it trust ours)")


def _up_to_root(anchor: x509.Certificate, bundle: Sequence[x509.Certificate]) -> list[x509.Certificate] | None:
    """The bundle's certificates from ``anchor`` up to a self-signed root; None without a root."""
    ups = [anchor]
    for _ in range(len(bundle)):
        if self_issued(ups[-1]):
            return ups
        above = next((ca for ca in bundle if ca not in ups and issued_by(ups[-1], ca)), None)
        if above is None:
            return None
        ups.append(above)
    return None


def check_peer_name(leaf: x509.Certificate, route: StaticRoute) -> Finding:
    """RFC 5922 §7.3 / RFC 6125: the route's tls_name is a SAN dNSName/iPAddress (CN only without SAN)."""
    names = certificate_names(leaf)
    subject = _subject(route)
    if name_matches(route.tls_name, names):
        return Finding("ok", "live.peer_name", subject,
                       f"the peer's certificate carries the route's tls_name {route.tls_name!r}")
    common = {str(a.value).lower() for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    note = (f" (its CN is {route.tls_name!r}, but a certificate with subjectAltNames is matched by those alone, "
            "RFC 6125 §6.4.4)" if name_matches(route.tls_name, common) else "")
    shown = ", ".join(sorted(names)) or "none"
    return Finding("error", "live.peer_name", subject,
                   f"the peer's certificate does not carry the route's tls_name {route.tls_name!r} (it names: "
                   f"{shown}){note}: sipfed refuses it (certificate name mismatch)",
                   f"if {_where(route)} is the right server, set the route's tls_name to one of its certificate's "
                   f"names; otherwise have the peer's certificate reissued with {route.tls_name!r} as a DNS "
                   "subjectAltName")


def check_peer_validity(path: Sequence[x509.Certificate], subject: str, now: datetime) -> list[Finding]:
    """Each certificate the peer's chain uses: valid now, and not expiring within 30 days."""
    findings = []
    for cert in path:
        name, start, end = short_name(cert.subject), cert.not_valid_before_utc, cert.not_valid_after_utc
        if now < start:
            findings.append(Finding("error", "live.peer_validity", subject,
                                    f"the peer's certificate {name!r} is not valid before {start:%Y-%m-%d %H:%M} "
                                    "UTC: sipfed refuses it (certificate is not yet valid)",
                                    "check the clocks of this host and of the peer (and of its CA)"))
        elif now >= end:
            findings.append(Finding("error", "live.peer_validity", subject,
                                    f"the peer's certificate {name!r} expired on {end:%Y-%m-%d %H:%M} UTC: sipfed "
                                    "refuses it (certificate has expired), as every other partner will",
                                    RENEW_PEER))
        elif end - now <= EXPIRY_WARNING:
            findings.append(Finding("warning", "live.peer_validity", subject,
                                    f"the peer's certificate {name!r} expires on {end:%Y-%m-%d}; after that, "
                                    "sipfed refuses it", RENEW_PEER))
    if findings:
        return findings
    until = min(cert.not_valid_after_utc for cert in path)
    return [Finding("ok", "live.peer_validity", subject, f"the peer's chain is valid until {until:%Y-%m-%d}")]


def check_peer_eku(leaf: x509.Certificate, subject: str) -> list[Finding]:
    """RFC 5280 §4.2.1.12: the peer is our TLS server and, when it sends to us, our TLS client."""
    eku = extension(leaf, x509.ExtendedKeyUsage)
    if eku is None or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku:
        return [Finding("ok", "live.peer_eku", subject, "the peer's certificate has no EKU restriction")]
    reissue = ("the peer's admin must reissue it from a template with Server Authentication and Client "
               "Authentication (Windows' WebServer template lacks Client Authentication)")
    findings = []
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        findings.append(Finding("error", "live.peer_eku", subject,
                                "the peer's certificate has no Server Authentication EKU (serverAuth): sipfed "
                                "refuses it as a server (unsuitable certificate purpose)", reissue))
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        findings.append(Finding("error", "live.peer_eku", subject,
                                "the peer's certificate has no Client Authentication EKU (clientAuth): when the "
                                "peer connects to sipfed, our listener refuses it with TLS alert 43 "
                                "unsupported_certificate (the field notes' failure)", reissue))
    return findings or [Finding("ok", "live.peer_eku", subject, "the peer's certificate has serverAuth and clientAuth")]


def _verified_exchange(route: StaticRoute, probe: _Probe, context: ssl.SSLContext, explained: bool,
                       ) -> list[Finding]:
    """Steps 4 and 5: sipfed's own handshake, then OPTIONS on it."""
    try:
        sock = _connect(route, probe.timeout)
    except OSError as exc:
        return [_connect_failure(route, exc, probe.timeout)]
    with sock:
        try:
            tls = context.wrap_socket(sock, server_hostname=route.tls_name)
        except ssl.SSLCertVerificationError as exc:
            return [] if explained else [_verify_failure(route, exc, probe)]
        except (ssl.SSLError, OSError) as exc:
            return [_handshake_failure(route, exc, probe.timeout)]
        with tls:
            early, failure = _await_refusal(tls, route, probe.timeout)
            if failure is not None:
                return [failure]
            cipher = (tls.cipher() or ("?",))[0]
            done = Finding("ok", "live.tls", _subject(route),
                           f"sipfed's own handshake works ({tls.version()}, {cipher}): the peer's certificate "
                           f"verifies for {route.tls_name!r} and ours is accepted")
            return [done, _ask_options(tls, route, probe, early)]


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
            return b"", Finding("error", "live.tls", _subject(route),
                                "the peer closed the connection right after the TLS 1.3 handshake, before any SIP "
                                "and without a TLS alert: it most likely refused our certificate",
                                f"{TRUST_OUR_CA}; {GIVE_CLIENT_AUTH}")
    except (ssl.SSLError, OSError) as exc:
        return b"", _handshake_failure(route, exc, timeout)
    finally:
        tls.settimeout(timeout)
    return b"", None


def _handshake_failure(route: StaticRoute, exc: BaseException, timeout: float) -> Finding:
    subject, where = _subject(route), _where(route)
    alert = refusal(exc)
    if alert is not None:
        return _refused(route, alert)
    reason = str(getattr(exc, "reason", None) or exc).upper()
    if any(word in reason for word in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG")):
        return Finding("error", "live.tls", subject,
                       f"{where} does not speak TLS (plain SIP or another service answers there)",
                       "point the route at the peer's TLS port (CUP's peer-auth listener 5062, Lync's 5061), "
                       "or set transport = \"tcp\" if the peer really speaks plain TCP")
    if isinstance(exc, TimeoutError):
        return Finding("error", "live.tls", subject,
                       f"{where} accepts TCP but no TLS handshake within {timeout:g} s: not a TLS listener (a plain "
                       "TCP SIP port waits silently for SIP), or something in between holds TLS back",
                       "point the route at the peer's TLS port (CUP's peer-auth listener 5062, Lync's 5061), or set "
                       "transport = \"tcp\" for a plain TCP peer")
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionResetError):
        return Finding("error", "live.tls", subject,
                       f"{where} closed the connection during the TLS handshake without a TLS alert: it refused "
                       "us (our certificate, an untrusted source) or found no common TLS version or cipher",
                       f"read the peer's TLS log; check tls.min_version/ciphers; {TRUST_OUR_CA}")
    return Finding("error", "live.tls", subject, f"TLS to {where} fails: {describe_failure(exc, route.tls_name)}",
                   "compare our [tls] settings with the peer's (TLS versions, ciphers, trusted CAs)")


def _refused(route: StaticRoute, alert: Alert) -> Finding:
    return Finding("error", "live.tls", _subject(route),
                   f"the peer refused our certificate: TLS alert {alert.code} {alert.name}", alert.fix)


def _verify_failure(route: StaticRoute, exc: ssl.SSLCertVerificationError, probe: _Probe) -> Finding:
    """A verification failure the certificate checks did not predict: OpenSSL's words, and where to look."""
    bundle = probe.config.tls.ca_bundle if probe.config.tls else "CA-BUNDLE"
    return Finding("error", "live.tls", _subject(route),
                   f"sipfed refuses the peer's certificate: {describe_failure(exc, route.tls_name)}",
                   f"inspect what the peer sends: 'openssl s_client -connect {_where(route)} -servername "
                   f"{route.tls_name} -CAfile {bundle} -showcerts'")


def _ask_options(sock: socket.socket, route: StaticRoute, probe: _Probe, early: bytes) -> Finding:
    """Step 5 on a stream: send OPTIONS, wait for its final answer until the timeout."""
    fqdn = _our_fqdn(route, probe.config)
    call_id = f"{secrets.token_hex(8)}@{fqdn}"
    started = time.monotonic()
    try:
        sock.sendall(options_request(route, fqdn, sock.getsockname()[:2], call_id))
        answer = read_final(sock, call_id, early, started + probe.timeout)
    except TimeoutError:
        return _no_answer(route, probe.timeout)
    except NotSip as exc:
        return _not_sip(route, exc)
    except (ssl.SSLError, OSError) as exc:
        alert = refusal(exc)
        if alert is not None:
            return _refused(route, alert)
        return Finding("warning", "live.sip", _subject(route),
                       f"the connection failed before an answer to OPTIONS: {describe_failure(exc, route.tls_name)}",
                       "read the peer's log for why it dropped sipfed")
    if answer is None:
        return Finding("warning", "live.sip", _subject(route),
                       "the peer closed the connection without answering OPTIONS",
                       "read the peer's SIP log: it may refuse requests from sipfed (CUP: incoming ACL, TLS peer "
                       "subjects; Lync: trusted application pool)")
    return _answer_finding(route, answer, time.monotonic() - started)


def read_final(sock: socket.socket, call_id: str, early: bytes, deadline: float) -> tuple[int, str] | None:
    """The final response to our OPTIONS (provisionals and strangers skipped); None when the peer closes.

    sipfed's own framer and parser read it: an answer sipfed could not parse is reported as such.
    """
    framer, data = StreamFramer(), early
    for _ in range(MAX_READS):
        for frame in framer.feed(data):
            if isinstance(frame, FramingError):
                raise NotSip(str(frame.error))
            answer = answer_to(frame, call_id) if isinstance(frame, bytes) else None
            if answer is not None and answer[0] >= 200:
                return answer
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        data = sock.recv(MAX_ANSWER_BYTES)
        if not data:
            return None
    raise TimeoutError


def _udp_options(route: StaticRoute, probe: _Probe) -> Finding:
    """Step 5 alone over UDP, retransmitted (Timer E: T1 doubling up to T2) until the timeout."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            route.destination.strip("[]"), route.port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        return _connect_failure(route, exc, probe.timeout)
    with sock:
        try:
            sock.connect(address)
            return _udp_exchange(sock, route, probe)
        except NotSip as exc:
            return _not_sip(route, exc)
        except ConnectionRefusedError:
            return Finding("error", "live.sip", _subject(route),
                           f"nothing listens on {_where(route)} (udp): ICMP port unreachable",
                           "is the static route pointing at the right listener and transport? (CUP's peer-auth "
                           "listener is TLS 5062, Lync's TLS 5061)")
        except OSError as exc:
            return _connect_failure(route, exc, probe.timeout)


def _udp_exchange(sock: socket.socket, route: StaticRoute, probe: _Probe) -> Finding:
    fqdn = _our_fqdn(route, probe.config)
    call_id = f"{secrets.token_hex(8)}@{fqdn}"
    request = options_request(route, fqdn, sock.getsockname()[:2], call_id)
    started = time.monotonic()
    deadline, next_send, interval = started + probe.timeout, started, T1_SECONDS
    for _ in range(MAX_READS):
        now = time.monotonic()
        if now >= deadline:
            break
        if now >= next_send:
            sock.send(request)
            next_send, interval = now + interval, min(interval * 2, T2_SECONDS)
        sock.settimeout(max(0.01, min(next_send, deadline) - now))
        try:
            answer = answer_to(sock.recv(MAX_ANSWER_BYTES), call_id, datagram=True)
        except TimeoutError:
            continue
        if answer is not None and answer[0] >= 200:
            return _answer_finding(route, answer, time.monotonic() - started)
    return Finding("warning", "live.sip", _subject(route),
                   f"no SIP answer to OPTIONS over UDP from {_where(route)} within {probe.timeout:g} s: nothing "
                   "listens, or a firewall drops it (UDP gives no other sign)",
                   "check the destination and port, and that the peer accepts SIP over UDP from this host")


def _answer_finding(route: StaticRoute, answer: tuple[int, str], seconds: float) -> Finding:
    status, reason = answer
    line = f"SIP/2.0 {status} {reason}".rstrip()
    if status in (401, 407):
        return Finding("warning", "live.sip", _subject(route),
                       f"the peer answers OPTIONS with {line}: it challenges sipfed, so relayed requests will be "
                       "challenged too", "make the peer trust sipfed (CUP: TLS peer subject and incoming ACL; Lync: "
                       "trusted application pool), or give sipfed credentials for this route ([[acl.credentials]])")
    return Finding("ok", "live.sip", _subject(route),
                   f"SIP answers OPTIONS: {line} ({seconds * 1000:.0f} ms)")


def _not_sip(route: StaticRoute, exc: NotSip) -> Finding:
    return Finding("error", "live.sip", _subject(route), f"{_where(route)} answers, but not in SIP sipfed can "
                   f"parse: {exc}", "point the route at the peer's SIP port (CUP's peer-auth listener 5062, "
                   "Lync's 5061); if it is the SIP port, report the answer as a sipfed interop bug")


def _no_answer(route: StaticRoute, timeout: float) -> Finding:
    return Finding("warning", "live.sip", _subject(route),
                   f"no SIP answer to OPTIONS within {timeout:g} s: the connection works but nothing answered",
                   "read the peer's SIP log: some servers stay silent to sources they do not trust (CUP: "
                   "incoming ACL, TLS peer subjects; Lync: trusted application pool)")


def _connect_failure(route: StaticRoute, exc: OSError, timeout: float) -> Finding:
    subject, where = _subject(route), _where(route)
    if isinstance(exc, socket.gaierror):
        return Finding("error", "live.connect", subject,
                       f"cannot resolve {route.destination!r} ({exc.strerror})",
                       "fix its DNS record, or put the peer's IP address in the route's destination and keep "
                       "tls_name as the name its certificate carries")
    if isinstance(exc, ConnectionRefusedError):
        return Finding("error", "live.connect", subject, f"nothing listens on {where} (connection refused)",
                       "is the static route pointing at the right listener? (CUP's peer-auth listener is 5062, "
                       "Lync's is 5061) — check destination and port, and that the peer's SIP service runs")
    if isinstance(exc, TimeoutError):
        return Finding("error", "live.connect", subject,
                       f"no answer to the TCP connect to {where} within {timeout:g} s: a firewall drops it, or "
                       "nothing is at that address", f"check the destination, and that firewalls let TCP "
                       f"{route.port} through from this host")
    return Finding("error", "live.connect", subject, f"cannot connect to {where}: {exc.strerror or exc}",
                   "check the destination address and this host's routing")


def options_request(route: StaticRoute, fqdn: str, local: tuple[str, int], call_id: str) -> bytes:
    """RFC 3261 §11.1: an OPTIONS to the route's next hop, with every mandatory header (§8.1.1)."""
    sent_by = f"{_host(local[0])}:{local[1]}"
    target = _host(route.tls_name)
    lines = [
        f"OPTIONS sip:{target}:{route.port};transport={route.transport} SIP/2.0",
        f"Via: SIP/2.0/{route.transport.upper()} {sent_by};branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70",
        f"From: <sip:sipfed-doctor@{fqdn}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{target}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 OPTIONS",
        "Accept: application/sdp",
        f"User-Agent: sipfed-doctor/{__version__}",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def answer_to(message: bytes, call_id: str, *, datagram: bool = False) -> tuple[int, str] | None:
    """(status, reason) when ``message`` answers our OPTIONS; None for a request or another transaction's
    response; NotSip when sipfed's parser refuses it."""
    try:
        parsed = parse_message(message, datagram=datagram)
    except SipError as exc:
        first = message.split(b"\r\n", 1)[0].decode("utf-8", "replace")[:80]
        raise NotSip(f"{first!r} ({exc})") from None
    if not isinstance(parsed, Response) or parsed.call_id != call_id:
        return None
    return parsed.status, parsed.reason


def _our_fqdn(route: StaticRoute, config: Config) -> str:
    listener = next((lst for lst in config.listeners if lst.name == route.listener), None)
    return listener.fqdn if listener is not None else config.fqdn


def _subject(route: StaticRoute) -> str:
    return f"route {route.name}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _where(route: StaticRoute) -> str:
    return f"{_host(route.destination)}:{route.port}"
