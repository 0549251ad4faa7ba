"""TLS contexts for listeners and next hops, and peer certificate names."""

from __future__ import annotations

import ssl
from typing import Any

from acl.subjects import CertIdentity
from proxy.config import ListenerConfig, TlsConfig

# Failures in words live in proxy/net/tls_words.py (the log, the metric and sipfed doctor --live share them).
from proxy.net.tls_words import REASONS, classify, describe_failure, describe_inbound

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


__all__ = [
    "REASONS",
    "classify",
    "client_context",
    "describe_failure",
    "describe_inbound",
    "inspection_context",
    "peer_identity",
    "server_context",
]
