"""Revocation of peer certificates by CRL (RFC 5280 §5, §6.3), sans-IO: certificates, CRLs and ``now`` in, a
verdict in words out. Fetching CRLs is ``proxy.net.crl_fetch``; keeping them is ``proxy.relay.crl_cache``.

Rules:
1. The leaf is always checked; an intermediate only where a usable CRL from its issuer is known. The root,
   a self-issued trust anchor, never is: RFC 5280 §6.1 trusts it as configured.
2. A certificate's issuer is the next chain certificate, or a CA bundle certificate, that has its issuer name
   as subject and whose key signed it (§6.1.3 (a)(1)). Without one no CRL can be verified: ``unknown``.
3. A CRL counts for a certificate only if (§6.3.3): it is issued under the certificate's issuer name (no
   indirect CRLs), signed with that issuer's key (g), which may sign CRLs (keyUsage cRLSign, (f)); it is a
   complete CRL (no delta, §5.2.4) whose issuing distribution point covers the certificate (§5.2.5, (b)(2));
   it has no critical extension we do not know (§5.2); and it is current: thisUpdate <= now < nextUpdate
   (§5.1.2.4-5, (a)). A CRL without nextUpdate is never current; one outside its window is ``crl_stale``.
   Of the CRLs that count, the newest (latest thisUpdate) decides.
4. CRLs come from the certificate's CRL distribution points (§4.2.1.13) — http URIs only: ldap (Active
   Directory's default first point) and others are ignored, and so is a point with a cRLIssuer or a reasons
   subset — and from local CRL files.
5. The chain is ``revoked`` when any checked certificate is; otherwise it is what the leaf is.
6. Policy (``decide``): ``off`` admits everything; ``soft-fail`` refuses ``revoked`` and admits ``unknown``
   with a warning; ``hard-fail`` refuses both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Literal, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from proxy.x509 import crl_point_uris, is_ca

Mode = Literal["off", "soft-fail", "hard-fail"]
MODES: tuple[Mode, ...] = get_args(Mode)
Outcome = Literal["good", "revoked", "unknown"]
#: Why: a bounded set, fit for a metric label. Unknown reasons are listed in the order one is named first.
Reason = Literal[
    "good", "revoked", "crl_unreachable", "crl_stale", "crl_invalid", "crl_missing", "no_crl", "issuer_unknown", "off"
]
REASONS: tuple[Reason, ...] = get_args(Reason)
#: A certificate naming more distribution points than this gets only its first ones fetched.
MAX_URLS_PER_CERTIFICATE = 4
#: Longest path walked from the leaf toward a root.
MAX_PATH_LENGTH = 8
Certificate = x509.Certificate | bytes
#: How a local CRL file is named as a CRL's source: ``file /etc/sipfed/issuing.crl``.
FILE_SOURCE = "file "


@dataclass(frozen=True, slots=True)
class KnownCrl:
    """A CRL at hand, and where it came from."""

    source: str
    """Its distribution point URL, or FILE_SOURCE and the path for a local CRL file."""
    crl: x509.CertificateRevocationList
    """The CRL, parsed (its signature not yet checked: that needs the issuer, ``evaluate`` does it)."""


@dataclass(frozen=True, slots=True)
class Known:
    """Everything known about CRLs at one moment: what ``evaluate`` decides on."""

    crls: tuple[KnownCrl, ...] = ()
    """CRLs from distribution points (fresh cache entries) and local files."""
    failures: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Distribution point URL -> why its CRL could not be had, for URLs not to be tried again yet."""

    @property
    def sources(self) -> frozenset[str]:
        """The sources of ``crls``: a distribution point among them needs no fetch."""
        return frozenset(known.source for known in self.crls)


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """What the CRLs say about one certificate of the chain."""

    subject: str
    """Its subject, RFC 4514."""
    serial: int
    """Its serial number."""
    outcome: Outcome
    """``good``, ``revoked`` or ``unknown``."""
    reason: Reason
    """Why, as a metric label."""
    words: str
    """Why, in a sentence for the log and ``sipfed doctor``."""
    urls: tuple[str, ...] = ()
    """Its http CRL distribution points, in certificate order."""
    crl: str | None = None
    """The source of the CRL that decided (good or revoked)."""
    revoked_at: datetime | None = None
    """revocationDate of its CRL entry."""
    revocation_reason: str | None = None
    """The entry's reasonCode (§5.3.1), e.g. ``keyCompromise``; None when the CRL gives none."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The revocation status of a peer's chain."""

    outcome: Outcome
    """``revoked`` when any checked certificate is, else the leaf's ``good`` or ``unknown``."""
    reason: Reason
    """Why, as a metric label (``revoked``, ``crl_unreachable``, …)."""
    words: str
    """Why, in a sentence: which certificate, which CRL, which URL and what went wrong."""
    statuses: tuple[CertificateStatus, ...] = ()
    """Each certificate looked at, leaf first (an intermediate's ``unknown`` does not count, rule 1)."""
    to_fetch: tuple[str, ...] = ()
    """Distribution points of certificates still unknown, neither cached nor waiting for a retry: worth a fetch."""

    @classmethod
    def unchecked(cls) -> Verdict:
        """Revocation checking is off: nothing was looked at."""
        return cls("unknown", "off", "revocation checking is off")


@dataclass(frozen=True, slots=True)
class Decision:
    """What the ``[tls] revocation`` mode makes of a verdict."""

    admit: bool
    """Whether the connection may go on."""
    reason: Reason
    """The verdict's reason, as a metric label."""
    warning: bool
    """Admitted although the status is unknown (soft-fail): log it as a warning."""
    words: str
    """The sentence to log."""


def decide(mode: Mode, verdict: Verdict) -> Decision:
    """Rule 6: the mode's policy."""
    if mode == "off":
        return Decision(True, "off", False, "revocation checking is off")
    if verdict.outcome == "good":
        return Decision(True, "good", False, verdict.words)
    if verdict.outcome == "revoked":
        return Decision(False, "revoked", False, f"refused: {verdict.words}")
    if mode == "soft-fail":
        return Decision(True, verdict.reason, True, f"admitted with revocation unknown (soft-fail): {verdict.words}")
    return Decision(False, verdict.reason, False, f"refused with revocation unknown (hard-fail): {verdict.words}")


def evaluate(chain: Sequence[Certificate], anchors: Sequence[Certificate], known: Known, now: datetime) -> Verdict:
    """The chain's verdict (rules 1-5). ``chain``: the peer's certificates, leaf first (the leaf alone will do
    when ``anchors`` — the CA bundle, and any intermediates we know — hold its issuer); ``now``: aware UTC."""
    if not chain:
        raise ValueError("an empty chain has no leaf to check")
    if now.utcoffset() is None:
        raise ValueError("now must be an aware datetime (UTC), as CRL times are")
    certificates = [as_certificate(cert) for cert in chain]
    statuses: list[CertificateStatus] = []
    sources = known.sources
    to_fetch: list[str] = []
    for cert, issuer in certification_path(certificates, [as_certificate(a) for a in anchors]):
        status = certificate_status(cert, issuer, known, now)
        statuses.append(status)
        if status.outcome == "unknown":
            to_fetch += [url for url in status.urls if url not in sources and url not in known.failures]
    leaf = statuses[0]
    decisive = next((status for status in statuses if status.outcome == "revoked"), leaf)
    return Verdict(decisive.outcome, decisive.reason, decisive.words, tuple(statuses), tuple(dict.fromkeys(to_fetch)))


def certification_path(
    chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]
) -> list[tuple[x509.Certificate, x509.Certificate | None]]:
    """Rule 2: (certificate, its issuer or None) from the leaf up to, not including, a self-issued root."""
    pool = [*chain[1:], *anchors]
    path: list[tuple[x509.Certificate, x509.Certificate | None]] = []
    current = chain[0]
    while len(path) < MAX_PATH_LENGTH:
        issuer = find_issuer(current, pool)
        path.append((current, issuer))
        if issuer is None or issuer.subject == issuer.issuer or any(issuer is cert for cert, _ in path):
            break
        current = issuer
    return path


def find_issuer(cert: x509.Certificate, pool: Iterable[x509.Certificate]) -> x509.Certificate | None:
    """RFC 5280 §6.1.3 (a)(1), (a)(4), one step: the pool certificate named as issuer whose key signed ``cert``."""
    for candidate in pool:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def certificate_status(
    cert: x509.Certificate, issuer: x509.Certificate | None, known: Known, now: datetime
) -> CertificateStatus:
    """Rules 2-4 for one certificate: its newest usable CRL decides; without one, the first problem names why."""
    urls = distribution_points(cert)
    if issuer is None:
        why = f"its issuer {cert.issuer.rfc4514_string()} is in neither the chain nor the CA bundle"
        return _unknown(cert, urls, [("issuer_unknown", f"{why}, so no CRL can be verified")])
    usable: list[KnownCrl] = []
    problems: list[tuple[Reason, str]] = []
    for candidate in known.crls:
        if candidate.source not in urls and candidate.crl.issuer != cert.issuer:
            continue
        problem = crl_problem(candidate.crl, cert, issuer, now)
        if problem is None:
            usable.append(candidate)
        elif candidate.source in urls or candidate.source.startswith(FILE_SOURCE):
            # Another point's CRL (a partitioned CA's) is only a chance: no problem of this certificate.
            problems.append((problem[0], f"CRL {candidate.source} {problem[1]}"))
    if usable:
        return judge(cert, urls, max(usable, key=lambda candidate: candidate.crl.last_update_utc))
    sources = known.sources
    for url in urls:
        if url in known.failures:
            problems.append(("crl_unreachable", f"CRL {url} could not be fetched: {known.failures[url]}"))
        elif url not in sources:
            problems.append(("crl_missing", f"CRL {url} is not fetched yet"))
    if not problems:
        problems.append(("no_crl", "it names no http CRL distribution point, and no CRL file is from its issuer"))
    return _unknown(cert, urls, problems)


def _unknown(cert: x509.Certificate, urls: tuple[str, ...], problems: list[tuple[Reason, str]]) -> CertificateStatus:
    reason = min((reason for reason, _ in problems), key=REASONS.index)
    words = f"revocation of {describe(cert)} unknown: " + "; ".join(text for _, text in problems)
    return CertificateStatus(cert.subject.rfc4514_string(), cert.serial_number, "unknown", reason, words, urls)


def judge(cert: x509.Certificate, urls: tuple[str, ...], known: KnownCrl) -> CertificateStatus:
    """§6.3.3 (i): the certificate's serial number on the CRL, or not."""
    crl = known.crl
    about = (
        f"CRL {known.source} (thisUpdate {utc_text(crl.last_update_utc)}, nextUpdate {utc_text(crl.next_update_utc)})"
    )
    subject, serial = cert.subject.rfc4514_string(), cert.serial_number
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    reason = None if entry is None else entry_reason(entry)
    if entry is None or reason == "removeFromCRL":  # removeFromCRL belongs in delta CRLs only (§5.3.1)
        return CertificateStatus(
            subject, serial, "good", "good", f"{describe(cert)} is not on {about}", urls, known.source
        )
    revoked_at = entry.revocation_date_utc
    because = f" ({reason})" if reason else ""
    words = f"{describe(cert)} was revoked on {utc_text(revoked_at)}{because} by {about}"
    return CertificateStatus(subject, serial, "revoked", "revoked", words, urls, known.source, revoked_at, reason)


def entry_reason(entry: x509.RevokedCertificate) -> str | None:
    """§5.3.1: the entry's reasonCode in RFC terms (``keyCompromise``, ``certificateHold``, …), or None."""
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
    except (x509.ExtensionNotFound, ValueError):
        return None


def crl_problem(
    crl: x509.CertificateRevocationList, cert: x509.Certificate, issuer: x509.Certificate, now: datetime
) -> tuple[Reason, str] | None:
    """Rule 3: why ``crl`` cannot speak for ``cert`` (issued by ``issuer``) at ``now``, or None when it can."""
    if crl.issuer != cert.issuer:
        named = crl.issuer.rfc4514_string()
        return "crl_invalid", f"is issued by {named}, not the certificate's issuer (indirect CRLs are not used)"
    if not _may_sign_crls(issuer):
        return "crl_invalid", "cannot count: the issuer's keyUsage lacks cRLSign (RFC 5280 §6.3.3 (f))"
    if not _signed_by(crl, issuer):
        return "crl_invalid", "is not signed by the issuer's key (RFC 5280 §6.3.3 (g)): another CA's, or forged"
    scope = scope_problem(crl, cert)
    if scope is not None:
        return "crl_invalid", scope
    if crl.last_update_utc > now:
        return "crl_stale", f"is not valid before its thisUpdate {utc_text(crl.last_update_utc)}"
    next_update = crl.next_update_utc
    if next_update is None:
        return "crl_stale", "has no nextUpdate (RFC 5280 §5.1.2.5), so it is never current"
    if now >= next_update:
        return "crl_stale", f"is stale: its nextUpdate {utc_text(next_update)} has passed (the CA has not published)"
    return None


def scope_problem(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> str | None:
    """§5.2 (critical extensions), §5.2.4 (delta CRLs), §5.2.5 and §6.3.3 (b)(2) (issuing distribution point):
    why the CRL does not cover ``cert`` completely, or None."""
    for extension in crl.extensions:
        if isinstance(extension.value, x509.DeltaCRLIndicator):
            return "is a delta CRL (RFC 5280 §5.2.4): only complete CRLs are used"
        if extension.critical and isinstance(extension.value, x509.UnrecognizedExtension):
            return f"has a critical extension {extension.oid.dotted_string} sipfed does not know (RFC 5280 §5.2)"
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return None
    ca = is_ca(cert)
    if idp.indirect_crl or idp.only_some_reasons or idp.only_contains_attribute_certs:
        return "covers only part of its scope (indirect, some reasons, or attribute certificates: RFC 5280 §5.2.5)"
    if (idp.only_contains_ca_certs and not ca) or (idp.only_contains_user_certs and ca):
        kind = "CA" if idp.only_contains_ca_certs else "end-entity"
        return f"covers {kind} certificates only (RFC 5280 §5.2.5)"
    if idp.full_name and not set(idp.full_name) & _point_names(cert):
        return "covers another distribution point than the certificate's (RFC 5280 §6.3.3 (b)(2)(i))"
    return None


def distribution_points(cert: x509.Certificate) -> tuple[str, ...]:
    """Rule 4, RFC 5280 §4.2.1.13: the http URIs of the certificate's CRL distribution points that give a
    complete CRL from its issuer (no cRLIssuer, no reasons subset), at most MAX_URLS_PER_CERTIFICATE."""
    urls = [uri for uri in crl_point_uris(cert, complete_only=True) if uri.lower().startswith("http://")]
    return tuple(urls[:MAX_URLS_PER_CERTIFICATE])


def as_certificate(cert: Certificate) -> x509.Certificate:
    """A certificate from DER bytes (``getpeercert(binary_form=True)``) or as it is."""
    return cert if isinstance(cert, x509.Certificate) else x509.load_der_x509_certificate(cert)


def describe(cert: x509.Certificate) -> str:
    """How a certificate is named in words: subject and serial number (in hex, as ``openssl`` and Windows show it)."""
    return f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:#x})"


def utc_text(moment: datetime | None) -> str:
    """A CRL or certificate time in words: ``2026-05-01 12:00:00 UTC``."""
    return "none" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _may_sign_crls(issuer: x509.Certificate) -> bool:
    """RFC 5280 §4.2.1.3: a CA whose keyUsage is present must assert cRLSign to sign CRLs."""
    try:
        return issuer.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign
    except x509.ExtensionNotFound:
        return True


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    try:
        return crl.is_signature_valid(key)  # type: ignore[arg-type]  # X25519/X448 keys cannot sign: TypeError
    except (TypeError, ValueError, InvalidSignature):
        return False


def _point_names(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return set()
    return {name for point in points for name in point.full_name or ()}
