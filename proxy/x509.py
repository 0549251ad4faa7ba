"""Reading certificates, once for sipfed and its admin tools: PEM files, names, EKU, validity, issuers, key
match.

``sipfed certs`` uses these to decide whether files it finds can be kept, ``sipfed doctor`` to judge our
chain and the chains peers send, and the running proxy to check its own side at start (proxy/config/own.py);
all therefore mean the same thing by "issued by", "valid" or "a name of this certificate". A leaf: only
``cryptography``. Only reading lives here: building certificates is ``proxy.admin.ca``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

EKU_BY_NAME: Mapping[str, x509.ObjectIdentifier] = MappingProxyType(
    {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}
)
#: How early an expiry becomes a warning.
EXPIRY_WARNING = timedelta(days=30)
Validity = Literal["not_yet_valid", "expired", "expiring", "valid"]
_E = TypeVar("_E", bound=x509.ExtensionType)


def load_certificate(path: Path) -> x509.Certificate:
    """The first PEM certificate of ``path``; OSError or ValueError when there is none."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_certificates(path: Path) -> tuple[x509.Certificate, ...]:
    """Every PEM certificate of ``path`` in file order (a chain: ours first); OSError or ValueError."""
    return tuple(x509.load_pem_x509_certificates(path.read_bytes()))


def load_private_key(path: Path) -> PrivateKeyTypes:
    """The unencrypted PEM private key of ``path``; TypeError when it is encrypted, ValueError when unreadable."""
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    """The value of ``cert``'s extension of type ``kind``, None when absent."""
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def is_ca(cert: x509.Certificate) -> bool:
    """RFC 5280 §4.2.1.9: basicConstraints cA TRUE."""
    constraints = extension(cert, x509.BasicConstraints)
    return constraints is not None and constraints.ca


def key_purposes(cert: x509.Certificate) -> frozenset[x509.ObjectIdentifier] | None:
    """RFC 5280 §4.2.1.12: the EKU purposes; None when any purpose is allowed (no EKU, or anyExtendedKeyUsage)."""
    eku = extension(cert, x509.ExtendedKeyUsage)
    if eku is None or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku:
        return None
    return frozenset(eku)


def subject_alt_names(cert: x509.Certificate) -> set[str] | None:
    """The dNSName and iPAddress subjectAltNames as written; None when there is no SAN extension."""
    san = extension(cert, x509.SubjectAlternativeName)
    if san is None:
        return None
    addresses = (str(address) for address in san.get_values_for_type(x509.IPAddress))
    return {*san.get_values_for_type(x509.DNSName), *addresses}


def certificate_names(cert: x509.Certificate) -> set[str]:
    """RFC 6125 §6.4.4: the dNSName and iPAddress subjectAltNames; the CN only when there is no SAN."""
    sans = subject_alt_names(cert)
    return common_names(cert) if sans is None else {name.lower() for name in sans}


def common_names(cert: x509.Certificate) -> set[str]:
    """The subject's CNs, lower case."""
    return {str(attr.value).lower() for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}


def name_matches(name: str, names: set[str]) -> bool:
    """Exact, or RFC 6125 §6.4.3 wildcard in the leftmost label only (``*.tomt.it`` names ``a.tomt.it``)."""
    ip = as_ip_address(name)
    if ip is not None:
        return str(ip) in names
    name = name.lower().rstrip(".")
    _, _, rest = name.partition(".")
    return name in names or (bool(rest) and f"*.{rest}" in names)


def as_ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``text`` spells (brackets allowed), None for a host name."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def short_name(name: x509.Name) -> str:
    """The CN, or the whole RFC 4514 string without one: how a certificate is named in a report."""
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else name.rfc4514_string()


def valid_at(cert: x509.Certificate, now: datetime) -> bool:
    """RFC 5280 §4.1.2.5: ``now`` lies in notBefore..notAfter."""
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def validity(cert: x509.Certificate, now: datetime, warning: timedelta = EXPIRY_WARNING) -> Validity:
    """Where ``now`` stands in ``cert``'s validity: before it, after it, within ``warning`` of its end, or fine."""
    if now < cert.not_valid_before_utc:
        return "not_yet_valid"
    if now >= cert.not_valid_after_utc:
        return "expired"
    return "expiring" if cert.not_valid_after_utc - now <= warning else "valid"


def spki(public_key: PublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo: equal bytes, same key."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    """True when ``key`` is the private half of ``cert``'s public key."""
    return spki(key.public_key()) == spki(cert.public_key())


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """RFC 5280 §6.1.3 (a)(1) and (a)(4), one step: issuer name and signature."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def self_issued(cert: x509.Certificate) -> bool:
    """A root: its own key signed it."""
    return issued_by(cert, cert)


def build_path(
    chain: Sequence[x509.Certificate],
    bundle: Sequence[x509.Certificate],
) -> tuple[list[x509.Certificate], x509.Certificate | None]:
    """Our certificate, then chain-file certificates each issuing the one before (by issuer name and
    signature), until a self-signed CA in the bundle issues the last; returns the path and that anchor.

    The chain file's intermediates are preferred over the bundle's, so a chain that is complete is seen
    as complete even when the bundle also holds the intermediate. Without a root, the anchor is the
    bundle certificate that issued the last one, or None.
    """
    path, spare = [chain[0]], list(chain[1:])
    while True:
        current = path[-1]
        anchor = next((ca for ca in bundle if issued_by(current, ca)), None)
        if anchor is not None and self_issued(anchor):
            return path, anchor
        following = next((cert for cert in spare if issued_by(current, cert)), None)
        if following is None:
            return path, anchor
        spare.remove(following)
        path.append(following)


def up_to_root(anchor: x509.Certificate, bundle: Sequence[x509.Certificate]) -> list[x509.Certificate] | None:
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


def parse_crls(data: bytes) -> tuple[x509.CertificateRevocationList, ...]:
    """The CRLs in ``data``: one DER CRL, or any number of PEM ``X509 CRL`` blocks; ValueError otherwise."""
    marker = b"-----BEGIN X509 CRL-----"
    if marker not in data:
        try:
            return (x509.load_der_x509_crl(data),)
        except ValueError:
            raise ValueError("neither a DER CRL nor PEM with an X509 CRL block") from None
    blocks = [marker + block for block in data.split(marker)[1:]]
    return tuple(x509.load_pem_x509_crl(block) for block in blocks)


def read_crl_file(path: Path) -> tuple[x509.CertificateRevocationList, ...]:
    """The CRLs of a local file (``[tls] crl_files``), read at start and at reload; ValueError saying what an
    admin should look at when it cannot be read or holds no CRL."""
    try:
        return parse_crls(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"holds no CRL ({exc})") from None


def crl_point_uris(cert: x509.Certificate, complete_only: bool = False) -> tuple[str, ...]:
    """RFC 5280 §4.2.1.13: the URIs of the certificate's CRL distribution points, in order, once each;
    ``complete_only``: only points that give a complete CRL from its issuer (no cRLIssuer, no reasons subset)."""
    points = extension(cert, x509.CRLDistributionPoints)
    uris = [
        name.value
        for point in points or ()
        if point.full_name and not (complete_only and (point.crl_issuer is not None or point.reasons is not None))
        for name in point.full_name
        if isinstance(name, x509.UniformResourceIdentifier)
    ]
    return tuple(dict.fromkeys(uris))


def ocsp_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """RFC 5280 §4.2.2.1: the OCSP responders the certificate names (authorityInfoAccess id-ad-ocsp)."""
    access = extension(cert, x509.AuthorityInformationAccess)
    return tuple(
        description.access_location.value
        for description in access or ()
        if description.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(description.access_location, x509.UniformResourceIdentifier)
    )
