"""TLS contexts for listeners and next hops, peer certificate names, and failures in plain words."""

from __future__ import annotations

import ssl
from typing import Any

from acl.subjects import CertIdentity
from proxy.config import ListenerConfig, TlsConfig

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _base_context(purpose: ssl.Purpose, tls: TlsConfig) -> ssl.SSLContext:
    """Every setting [tls] makes, for either side; the one place a context is built (sipfed doctor too)."""
    context = ssl.create_default_context(purpose, cafile=str(tls.ca_bundle))
    context.minimum_version = _VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_RENEGOTIATION
    if tls.ciphers:
        context.set_ciphers(tls.ciphers)
    # Our certificate goes out with its intermediates: the chain file holds them (field notes).
    context.load_cert_chain(str(tls.cert_chain), str(tls.key))
    return context


def server_context(tls: TlsConfig, listener: ListenerConfig) -> ssl.SSLContext:
    """A listener's context: mutual TLS when the listener requires a client certificate."""
    context = _base_context(ssl.Purpose.CLIENT_AUTH, tls)
    context.verify_mode = ssl.CERT_REQUIRED if listener.require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """Outbound: present our chain as client certificate, verify the next hop's chain and name.

    Kamailio and OpenSIPS skip the name check on outbound TLS; we do not (RFC 5922 §7.3).
    """
    context = _base_context(ssl.Purpose.SERVER_AUTH, tls)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def inspection_context(tls: TlsConfig) -> ssl.SSLContext:
    """``client_context`` with verification off: ``sipfed doctor --live`` reads the chain a peer sends even
    when sipfed would refuse it, with every other setting (versions, ciphers, our chain) as the proxy has it."""
    context = _base_context(ssl.Purpose.SERVER_AUTH, tls)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def peer_identity(ssl_object: Any) -> CertIdentity:
    """The verified peer certificate, parsed (the match uses it, never a SIP header)."""
    return CertIdentity.from_ssl_dict(ssl_object.getpeercert() if ssl_object is not None else None)


#: The fixed set of handshake failure reasons used in metric labels.
REASONS = (
    "unknown_ca",
    "bad_certificate",
    "unsupported_certificate",
    "certificate_expired",
    "name_mismatch",
    "no_client_certificate",
    "protocol",
    "other",
)


def classify(exc: BaseException) -> str:
    """The metric reason for a TLS failure, from the verify code or the OpenSSL reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", 0)
        message = str(getattr(exc, "verify_message", "")).lower()
        if code == 62 or code == 64 or "mismatch" in message:
            return "name_mismatch"
        if code == 10:
            return "certificate_expired"
        if code in (2, 19, 20, 21):
            return "unknown_ca"
        if code == 26:
            return "unsupported_certificate"
        return "bad_certificate"
    reason = (getattr(exc, "reason", None) or str(exc)).upper()
    for needle, label in (
        ("UNKNOWN_CA", "unknown_ca"),
        ("UNSUPPORTED_CERTIFICATE", "unsupported_certificate"),
        ("CERTIFICATE_EXPIRED", "certificate_expired"),
        ("BAD_CERTIFICATE", "bad_certificate"),
        ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_client_certificate"),
        ("CERTIFICATE_REQUIRED", "no_client_certificate"),
        ("CERTIFICATE_VERIFY_FAILED", "bad_certificate"),
        ("WRONG_VERSION", "protocol"),
        ("UNSUPPORTED_PROTOCOL", "protocol"),
        ("HTTP_REQUEST", "protocol"),
        ("NO_SHARED_CIPHER", "protocol"),
        ("VERSION_TOO_LOW", "protocol"),
    ):
        if needle in reason:
            return label
    return "other"


def describe_inbound(exc: BaseException, listener: str) -> str:
    """One line for a client that failed our listener's handshake: the cause and the fix."""
    label = classify(exc)
    detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    words = {
        "no_client_certificate": "the client sent no certificate; listener requires mutual TLS — configure the "
        "peer to present its certificate (Lync: the default certificate; CUP: 'cup')",
        "unknown_ca": "the client's certificate does not chain to tls.ca_bundle — add its CA, or make the peer "
        "send its intermediate certificate",
        "unsupported_certificate": "the client's certificate has no Client Authentication EKU — reissue it with "
        "clientAuth",
        "certificate_expired": "the client's certificate has expired — renew it",
        "bad_certificate": "the client's certificate was rejected",
        "protocol": "not a TLS client we can talk to (plain SIP on a TLS port, or no common TLS version/cipher)",
        "other": "handshake failed",
    }.get(label, "handshake failed")
    return f"TLS from a client on listener {listener} refused ({label}): {words} [{detail}]"


def describe_failure(exc: BaseException, expected_name: str | None) -> str:
    """One line an admin can act on, for a failed outbound connection or handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", 0)
        message = getattr(exc, "verify_message", str(exc))
        if code == 62 or "hostname mismatch" in str(message).lower() or "IP address mismatch" in str(message):
            return (
                f"certificate name mismatch: the route expects {expected_name!r} but the peer's "
                f"certificate does not carry that name ({message})"
            )
        if code == 10:
            return f"the peer's certificate has expired ({message})"
        if code in (2, 20, 21):
            return (
                f"the peer's certificate chain does not lead to our CA bundle ({message}); "
                "add its CA to tls.ca_bundle, or make the peer send its intermediate certificate"
            )
        return f"the peer's certificate was rejected: {message}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).upper()
        if "UNSUPPORTED_CERTIFICATE" in reason:
            return (
                "the peer refused our certificate (TLS alert 43 unsupported_certificate): our certificate "
                "has no Client Authentication EKU — reissue it with clientAuth"
            )
        if "UNKNOWN_CA" in reason:
            return (
                "the peer refused our certificate (TLS alert 48 unknown_ca): it does not trust our CA — add "
                "our CA to its trusted roots (Lync: Trusted Root store; CUP: cup-trust)"
            )
        if "CERTIFICATE_EXPIRED" in reason:
            return "the peer refused our certificate (TLS alert 45 certificate_expired): renew it"
        if "CERTIFICATE_REQUIRED" in reason:
            return "the peer requires a client certificate and did not accept ours"
        if "ALERT" in reason:
            return f"the peer refused our TLS handshake: {exc.reason}"
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or exc}"
    return f"cannot connect: {exc}"
