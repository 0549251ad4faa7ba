"""Our own side first (issue 16): what sipfed's own certificate, key and chain are worth, checked at start and on
reload, so a failure the far side reports is explained by what we already know about our side.

Rules:
1. A key that is not the private half of our certificate is a config error: nothing can work with it, and
   ``check-config`` must say so rather than ``run`` dying in the TLS library.
2. Problems that only weaken federation are warnings at start: the chain file lacks the intermediate that
   issued our certificate (peers that do not have it refuse us with ``unknown_ca``; the field notes' F5
   case), no Client Authentication EKU (TLS alert 43 from CUP and Lync), no Server Authentication EKU,
   expired or expiring within 30 days, and a listener's ``fqdn`` or ``federation_fqdn`` that is not one of
   the certificate's names (Lync's Trusted Application Pool FQDN, CUP's Federation Routing FQDN).
3. ``OwnSide`` carries the verdict to the running proxy: a handshake that fails explains itself with it
   ("our chain lacks the intermediate", not "they do not trust our CA").
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from proxy.config.model import ListenerConfig, OwnSide, TlsConfig
from proxy.x509 import (
    build_path,
    certificate_names,
    key_matches,
    key_purposes,
    load_certificates,
    load_private_key,
    name_matches,
    self_issued,
    short_name,
    validity,
)


def check_own_side(
    tls: TlsConfig, listeners: Sequence[ListenerConfig], problems: list[str], warnings: list[str], now: datetime | None
) -> OwnSide:
    """Rules 1 and 2; appends to ``problems`` and ``warnings``, returns rule 3's summary."""
    now = now or datetime.now(UTC)
    try:
        chain = load_certificates(tls.cert_chain)
        key = load_private_key(tls.key)
        bundle = load_certificates(tls.ca_bundle)
    except (OSError, ValueError, TypeError) as exc:
        problems.append(f"tls: cannot read the certificate, key or CA bundle: {exc}")
        return OwnSide()
    if not chain:
        problems.append(f"tls.cert_chain: {tls.cert_chain} holds no PEM certificate")
        return OwnSide()
    leaf = chain[0]
    subject = short_name(leaf.subject)
    if not key_matches(key, leaf):
        problems.append(
            f"tls.key: {tls.key} is not the private key of tls.cert_chain's certificate ({subject}): point "
            "tls.key at the key this certificate was issued for, or reissue the certificate for this key"
        )
    missing = _missing_intermediate(chain, bundle)
    if missing:
        warnings.append(
            f"tls.cert_chain: {tls.cert_chain} holds {subject}'s certificate without its issuer {missing}: peers "
            "that do not already have that intermediate (many SIP stacks, Lync Phone Edition) refuse us with "
            "unknown_ca; append the intermediate's PEM to the file"
        )
    client_auth = _eku_warnings(leaf, subject, warnings)
    _validity_warning(leaf, subject, now, warnings)
    _name_warnings(leaf, subject, listeners, warnings)
    return OwnSide(subject, missing, client_auth, leaf.not_valid_after_utc)


def _missing_intermediate(chain: Sequence[x509.Certificate], bundle: Sequence[x509.Certificate]) -> str:
    """The issuer a peer needs and our chain file does not send: '' when the path from the chain's last
    certificate ends at a self-signed root, or at a root the chain's last certificate is issued by."""
    path, anchor = build_path(chain, bundle)
    last = path[-1]
    if self_issued(last) or (anchor is not None and self_issued(anchor)):
        return ""
    return short_name(last.issuer) if anchor is None else short_name(anchor.subject)


def _eku_warnings(leaf: x509.Certificate, subject: str, warnings: list[str]) -> bool:
    purposes = key_purposes(leaf)
    if purposes is None:
        return True
    client = ExtendedKeyUsageOID.CLIENT_AUTH in purposes
    if not client:
        warnings.append(
            f"tls.cert_chain: {subject}'s certificate has no Client Authentication EKU: every peer that asks for "
            "our certificate (CUP, Lync) refuses our connections with TLS alert 43 unsupported_certificate; "
            "reissue it with clientAuth ('sipfed certs' leaves have it)"
        )
    if ExtendedKeyUsageOID.SERVER_AUTH not in purposes:
        warnings.append(
            f"tls.cert_chain: {subject}'s certificate has no Server Authentication EKU: peers refuse our "
            "listeners' handshakes; reissue it with serverAuth"
        )
    return client


def _validity_warning(leaf: x509.Certificate, subject: str, now: datetime, warnings: list[str]) -> None:
    state = validity(leaf, now)
    end = leaf.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    if state == "expired":
        warnings.append(f"tls.cert_chain: {subject}'s certificate expired on {end}: every peer refuses it; renew it")
    elif state == "not_yet_valid":
        warnings.append(f"tls.cert_chain: {subject}'s certificate is not valid yet: check this host's clock")
    elif state == "expiring":
        warnings.append(f"tls.cert_chain: {subject}'s certificate expires on {end}, within 30 days: renew it")


def _name_warnings(
    leaf: x509.Certificate, subject: str, listeners: Sequence[ListenerConfig], warnings: list[str]
) -> None:
    names = certificate_names(leaf)
    shown = ", ".join(sorted(names)) or "none"
    for listener in listeners:
        if listener.transport != "tls":
            continue
        for key, name in (("fqdn", listener.fqdn), ("federation_fqdn", listener.federation_fqdn)):
            if not name_matches(name, names):
                warnings.append(
                    f"listeners[{listener.name}].{key}: {name!r} is not a name of our certificate ({subject}: "
                    f"{shown}): it goes into Via/Record-Route (maddr for federation_fqdn), and a peer that "
                    "checks it against our certificate (Lync's Trusted Application Pool FQDN, CUP's "
                    "Federation Routing FQDN) refuses the dialog; add it to the certificate or change the key"
                )
