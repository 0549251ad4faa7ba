"""What goes into each certificate of the lab PKI: keys, the root, the intermediate, the leaves (RFC 5280 §4.2.1).

In memory only; ``proxy.admin.certs`` decides which files are written or kept.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from proxy.x509 import EKU_BY_NAME, extension

KEY_TYPES = ("rsa", "ec")
ROOT_DAYS = 3650
INTERMEDIATE_DAYS = 3650
# Lab hosts' clocks drift; a certificate valid from "now" is refused by a peer a minute behind.
BACKDATE = timedelta(hours=1)

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA certificate with its private key."""

    cert: x509.Certificate
    """The CA's certificate."""
    key: PrivateKey
    """Its private key, which signs what it issues."""


@dataclass(frozen=True, slots=True)
class LeafSpec:
    """Everything that goes into one leaf certificate."""

    names: tuple[str, ...]
    """DNS names, lower case; the first is the CN."""
    ip_addresses: tuple[str, ...]
    """iPAddress subjectAltNames."""
    eku: tuple[str, ...]
    """Names from ``EKU_BY_NAME``; empty omits the extension."""
    not_before: datetime
    """Start of validity (UTC)."""
    not_after: datetime
    """End of validity (UTC)."""


def new_key(key_type: str) -> PrivateKey:
    """RSA-2048 (what CUCM/CUP and Lync/Skype admins are issued) or ECDSA P-256."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key type {key_type!r}: must be one of {', '.join(KEY_TYPES)}")


def _key_usage(*, digital_signature: bool = False, key_encipherment: bool = False, ca: bool = False) -> x509.KeyUsage:
    """RFC 5280 §4.2.1.3 keyUsage; CA certificates get keyCertSign and cRLSign."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """RFC 5280 §4.2.1.1: the authority key identifier is the issuer's subject key identifier."""
    ski = extension(issuer, x509.SubjectKeyIdentifier)
    if ski is None:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _base_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: PrivateKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """Fields every certificate shares, with RFC 5280 §4.2.1.2 subject key identifier."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _ca_name(role: str) -> x509.Name:
    """A CA subject with a random tag: two lab roots in one CA bundle must not share a name."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sipfed lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"sipfed lab {role} {secrets.token_hex(4)}"),
        ]
    )


def make_root(key_type: str, now: datetime) -> Authority:
    """Self-signed root: RFC 5280 §4.2.1.9 basicConstraints cA TRUE, critical."""
    key = new_key(key_type)
    name = _ca_name("root CA")
    cert = (
        _base_builder(name, name, key, now - BACKDATE, now + timedelta(days=ROOT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def make_intermediate(root: Authority, key_type: str, now: datetime) -> Authority:
    """Intermediate CA: cA TRUE, pathLenConstraint 0: it issues leaves only (RFC 5280 §4.2.1.9)."""
    key = new_key(key_type)
    not_after = min(now + timedelta(days=INTERMEDIATE_DAYS), root.cert.not_valid_after_utc)
    subject = _ca_name("intermediate CA")
    cert = (
        _base_builder(subject, root.cert.subject, key, now - BACKDATE, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, ca=True), critical=True)
        .add_extension(_aki(root.cert), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    return Authority(cert, key)


def build_leaf(spec: LeafSpec, key: PrivateKey, issuer: Authority) -> x509.Certificate:
    """End-entity certificate: CN = first name, every name a dNSName, every address an iPAddress.

    keyEncipherment only for RSA: TLS 1.2 RSA key transport needs it, and RFC 8813 forbids it
    for EC keys.
    """
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in spec.names]
    sans += [x509.IPAddress(ipaddress.ip_address(address)) for address in spec.ip_addresses]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.names[0])])
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    builder = (
        _base_builder(subject, issuer.cert.subject, key, spec.not_before, spec.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=is_rsa), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(_aki(issuer.cert), critical=False)
    )
    if spec.eku:  # RFC 5280 §4.2.1.12: an empty EKU is not encodable; absent means any purpose
        usages = [EKU_BY_NAME[name] for name in spec.eku]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    """The certificate in PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """The key as unencrypted PEM PKCS#8 (sipfed starts unattended)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
