"""Why a TLS connection failed, in the words an admin acts on: one place for the log, the metric's reason and
``sipfed doctor --live`` (issue 16: the same words everywhere).

Rules:
1. Direction first. A failure of *our* check of the peer's certificate (``SSLCertVerificationError``) is
   ``unknown_ca``, ``bad_certificate``...; a TLS alert the peer sent (RFC 8446 §6.2: it refused *our*
   certificate) is ``peer_unknown_ca``, ``peer_unsupported_certificate``... Each has its own fix.
2. What we already know of our own side (``OwnSide``, proxy/config/own.py) decides the words: a peer's
   ``unknown_ca`` while our chain file lacks the intermediate is our chain's fault, not the peer's trust store.
3. What answered at all: nothing (refused), nothing in time, a TCP port that never speaks TLS, a service that
   answers with something else than TLS.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass

from proxy.config import OwnSide

#: The fixed set of handshake failure reasons used in metric labels (rule 1).
REASONS = (
    "unknown_ca",
    "bad_certificate",
    "unsupported_certificate",
    "certificate_expired",
    "name_mismatch",
    "no_client_certificate",
    "revoked",
    "crl_unreachable",
    "revocation_unknown",
    "peer_unknown_ca",
    "peer_bad_certificate",
    "peer_unsupported_certificate",
    "peer_certificate_expired",
    "peer_certificate_revoked",
    "peer_certificate_required",
    "not_tls",
    "protocol",
    "other",
)
_ALERT = re.compile(r"ALERT_([A-Z_]+)")  # OpenSSL's reason for an alert received, e.g. TLSV1_ALERT_UNKNOWN_CA
TRUST_OUR_CA = (
    "have the peer trust our CA: import the root of tls.ca_bundle into its trust store (CUP: "
    "cup-trust; Lync: Trusted Root Certification Authorities), and keep our intermediate in "
    "tls.cert_chain"
)
GIVE_CLIENT_AUTH = (
    "give our certificate the Client Authentication EKU (clientAuth): reissue it ('sipfed certs' leaves have it)"
)
NOT_TLS_FIX = (
    "point the route at the peer's TLS port (CUP's peer-auth listener 5062, Lync's 5061), "
    'or set transport = "tcp" if the peer really speaks plain TCP'
)


@dataclass(frozen=True, slots=True)
class Alert:
    """A TLS alert (RFC 8446 §6.2) by which a peer refuses our certificate."""

    code: int
    """The alert number, as Wireshark shows it."""
    name: str
    """The RFC's name for it."""
    reason: str
    """The metric reason (rule 1)."""
    fix: str
    """What to do about it."""


PEER_ALERTS = {
    "UNKNOWN_CA": Alert(48, "unknown_ca", "peer_unknown_ca", TRUST_OUR_CA),
    "UNSUPPORTED_CERTIFICATE": Alert(43, "unsupported_certificate", "peer_unsupported_certificate", GIVE_CLIENT_AUTH),
    "BAD_CERTIFICATE": Alert(42, "bad_certificate", "peer_bad_certificate", f"{TRUST_OUR_CA}; {GIVE_CLIENT_AUTH}"),
    "CERTIFICATE_UNKNOWN": Alert(
        46, "certificate_unknown", "peer_bad_certificate", f"{TRUST_OUR_CA}; {GIVE_CLIENT_AUTH}"
    ),
    "CERTIFICATE_EXPIRED": Alert(
        45, "certificate_expired", "peer_certificate_expired", "renew our certificate (tls.cert_chain), reload sipfed"
    ),
    "CERTIFICATE_REVOKED": Alert(
        44,
        "certificate_revoked",
        "peer_certificate_revoked",
        "our certificate is revoked: have the CA issue a new one, put it in tls.cert_chain, reload sipfed",
    ),
    "CERTIFICATE_REQUIRED": Alert(
        116,
        "certificate_required",
        "peer_certificate_required",
        "the peer got no certificate from us: check tls.cert_chain and tls.key",
    ),
    "ACCESS_DENIED": Alert(
        49,
        "access_denied",
        "peer_bad_certificate",
        "the peer's policy refuses our certificate: add our certificate's "
        "name to its TLS peer subjects (CUP) or trusted application pool (Lync)",
    ),
    "PROTOCOL_VERSION": Alert(
        70,
        "protocol_version",
        "protocol",
        "no TLS version in common: sipfed speaks TLS 1.2 or newer (tls.min_version); "
        "enable TLS 1.2 on the peer (Lync: TLS 1.2 registry settings; CUP: TLS minimum version)",
    ),
}


def peer_alert(exc: BaseException) -> Alert | None:
    """Rule 1: the alert when ``exc`` is the peer refusing us; None for any other failure."""
    if not isinstance(exc, ssl.SSLError) or isinstance(exc, ssl.SSLCertVerificationError):
        return None
    found = _ALERT.search(str(getattr(exc, "reason", None) or exc).upper())
    return PEER_ALERTS.get(found[1]) if found else None


class CertificateRefused(Exception):
    """A peer's chain that ``tls.revocation`` refused after the handshake (proxy/net/revocation_check.py):
    ``reason`` for the metric (revoked, crl_unreachable, revocation_unknown), ``words`` for the log."""

    def __init__(self, reason: str, words: str) -> None:
        super().__init__(words)
        self.reason = reason
        self.words = words


def classify(exc: BaseException) -> str:
    """Rule 1: the metric reason for a TLS failure."""
    if isinstance(exc, CertificateRefused):
        return exc.reason
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", 0)
        message = str(getattr(exc, "verify_message", "")).lower()
        if code == 62 or code == 64 or "mismatch" in message:
            return "name_mismatch"
        return {
            10: "certificate_expired",
            2: "unknown_ca",
            19: "unknown_ca",
            20: "unknown_ca",
            21: "unknown_ca",
            26: "unsupported_certificate",
            23: "revoked",
        }.get(code, "bad_certificate")
    alert = peer_alert(exc)
    if alert is not None:
        return alert.reason
    reason = (getattr(exc, "reason", None) or str(exc)).upper()
    for needles, label in (
        (("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"), "no_client_certificate"),
        (("CERTIFICATE_VERIFY_FAILED",), "bad_certificate"),
        (("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"), "not_tls"),
        (("UNSUPPORTED_PROTOCOL", "NO_SHARED_CIPHER", "VERSION_TOO_LOW", "NO_PROTOCOLS_AVAILABLE"), "protocol"),
    ):
        if any(needle in reason for needle in needles):
            return label
    return "other"


def refused_words(alert: Alert, own: OwnSide | None) -> tuple[str, str]:
    """Rule 2: (what happened, the fix) for a peer that refused our certificate with ``alert``."""
    what = f"the peer refused our certificate (TLS alert {alert.code} {alert.name})"
    if own is not None and alert.reason in ("peer_unknown_ca", "peer_bad_certificate") and own.missing_intermediate:
        return (
            f"{what}: our chain file sends {own.subject or 'our certificate'} without its issuer "
            f"{own.missing_intermediate}",
            "append the intermediate's PEM to tls.cert_chain and reload sipfed",
        )
    if own is not None and alert.reason == "peer_unsupported_certificate" and not own.client_auth:
        return f"{what}: our certificate has no Client Authentication EKU", GIVE_CLIENT_AUTH
    if alert.reason == "peer_unknown_ca":
        return what, f"{alert.fix} (a peer that checks revocation and cannot fetch our CRL says the same: "
        "sipfed doctor --live tries our CRL and OCSP URLs)"
    return what, alert.fix


def describe_inbound(exc: BaseException, listener: str, own: OwnSide | None = None) -> str:
    """One line for a client that failed our listener's handshake: the cause and the fix (rules 1, 2)."""
    if isinstance(exc, CertificateRefused):
        return f"TLS from a client on listener {listener} refused ({exc.reason}): {exc.words}"
    label = classify(exc)
    detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    alert = peer_alert(exc)
    if alert is not None:
        what, fix = refused_words(alert, own)
        return f"TLS from a client on listener {listener} failed ({label}): {what.replace('peer', 'client', 1)} — {fix}"
    words = {
        "no_client_certificate": "the client sent no certificate; listener requires mutual TLS — configure the "
        "peer to present its certificate (Lync: the default certificate; CUP: 'cup')",
        "unknown_ca": "the client's certificate does not chain to tls.ca_bundle — add its CA, or have the peer "
        "send its intermediate certificate",
        "unsupported_certificate": "the client's certificate has no Client Authentication EKU — reissue it with "
        "clientAuth",
        "certificate_expired": "the client's certificate has expired — renew it",
        "revoked": "the client's certificate is revoked — it needs a new one",
        "bad_certificate": "the client's certificate was rejected",
        "not_tls": "not a TLS client (plain SIP sent to a TLS port?) — point it at a TCP listener or have it use TLS",
        "protocol": "no TLS version or cipher in common — compare tls.min_version/ciphers with the client's",
    }.get(label, "handshake failed")
    return f"TLS from a client on listener {listener} refused ({label}): {words} [{detail}]"


def describe_failure(exc: BaseException, expected_name: str | None, own: OwnSide | None = None) -> str:
    """One line an admin can act on, for a failed outbound connection or handshake (rules 1-3)."""
    if isinstance(exc, CertificateRefused):
        return exc.words
    if isinstance(exc, ssl.SSLCertVerificationError):
        label = classify(exc)
        message = getattr(exc, "verify_message", str(exc))
        return {
            "name_mismatch": f"certificate name mismatch: the route expects {expected_name!r} but the peer's "
            f"certificate does not carry that name ({message})",
            "certificate_expired": f"the peer's certificate has expired ({message})",
            "unknown_ca": f"the peer's certificate chain does not lead to our CA bundle ({message}); add its CA to "
            "tls.ca_bundle, or have the peer send its intermediate certificate",
            "revoked": f"the peer's certificate is revoked ({message})",
        }.get(label, f"the peer's certificate was rejected: {message}")
    alert = peer_alert(exc)
    if alert is not None:
        what, fix = refused_words(alert, own)
        return f"{what} — {fix}"
    if isinstance(exc, ssl.SSLError):
        if classify(exc) == "not_tls":
            return f"the peer does not speak TLS there (plain SIP or another service answers) — {NOT_TLS_FIX}"
        if "ALERT" in (exc.reason or "").upper():
            return f"the peer refused our TLS handshake: {exc.reason}"
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ssl.SSLEOFError | ConnectionResetError):
        return "the peer closed the connection during the TLS handshake without an alert (it refused us?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or exc}"
    return f"cannot connect: {exc}"


def silent_tls_port(where: str, timeout: float) -> str:
    """Rule 3: TCP connects but no TLS handshake comes back (the words ``sipfed doctor --live`` uses too)."""
    return (
        f"{where} accepts TCP but no TLS handshake within {timeout:g} s: not a TLS listener (a plain "
        "TCP SIP port waits silently for SIP), or something in between holds TLS back"
    )
