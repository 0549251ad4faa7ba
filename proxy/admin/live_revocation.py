"""``sipfed doctor --live``: our own certificate's revocation URLs fetched, as the far side will fetch them.

Lync checks the revocation of federation certificates by default (its Edge and CUP fetch CRLs over HTTP): a CRL
distribution point of ours it cannot fetch, or a CRL gone stale, gets our certificate refused there while
everything on our side looks fine. Each http CRL distribution point and OCSP responder of our certificate and of
the intermediates in our chain file (``proxy.net.crl_fetch.probe_revocation_urls``, all at once, each within
``tls.crl_timeout_seconds``) becomes one ``live.revocation`` finding. A certificate that names no URL is the
offline ``cert.revocation`` finding (``proxy.admin.trust_checks``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509

from proxy.admin.findings import Finding
from proxy.config import Config
from proxy.net.crl_fetch import Probe, probe_revocation_urls
from proxy.x509 import load_certificates, self_issued, short_name

UNREACHABLE = "could not be fetched"


def probe_our_revocation(config: Config, now: datetime) -> list[Finding]:
    """A finding per revocation URL of our certificate and its intermediates (roots are not checked)."""
    tls = config.tls
    if tls is None:
        return []
    try:
        chain = [cert for cert in load_certificates(tls.cert_chain) if not self_issued(cert)]
    except (OSError, ValueError):
        return []  # the offline cert.load finding says why
    results = asyncio.run(_probe_all(chain, now, tls.crl_timeout_seconds))
    findings: list[Finding] = []
    for i, (cert, probes) in enumerate(zip(chain, results, strict=True)):
        subject = "our certificate" if i == 0 else f"our intermediate {short_name(cert.subject)}"
        fallback = any(probe.ok for probe in probes)
        findings += [judge(probe, subject, fallback) for probe in probes]
    return findings


async def _probe_all(
    chain: Sequence[x509.Certificate], now: datetime, timeout_seconds: float
) -> list[tuple[Probe, ...]]:
    return list(await asyncio.gather(*(probe_revocation_urls(cert, now, timeout_seconds) for cert in chain)))


def judge(probe: Probe, subject: str, fallback: bool) -> Finding:
    """One URL's finding; ``fallback``: another URL of the same certificate answered (matters for OCSP only)."""
    if probe.kind == "ocsp":
        return _ocsp(probe, subject, fallback)
    if probe.ok:
        return Finding(
            "ok",
            "live.revocation",
            subject,
            f"the CRL it names, {probe.url}, can be fetched from here: {probe.words} (the partners fetch it "
            "from their own networks)",
        )
    if probe.words.startswith(UNREACHABLE):
        return Finding(
            "error",
            "live.revocation",
            subject,
            f"the CRL distribution point {probe.url} {probe.words}: a peer that checks revocation (Lync does by "
            "default) cannot fetch it either, and refuses our certificate (revocation status unknown)",
            f"publish the CA's CRL at {probe.url} and make it reachable over HTTP from the partners' networks "
            "(Lync's Edge and CUP fetch it over HTTP; AD CS: the CDP's HTTP location, 'certutil -CRL' to publish)",
        )
    return Finding(
        "error",
        "live.revocation",
        subject,
        f"the CRL at {probe.url} is no longer current: {probe.words}",
        f"have the CA publish a new CRL at {probe.url} before the current one's nextUpdate (AD CS: 'certutil "
        "-CRL' and the CRL publication interval; OpenSSL: 'openssl ca -gencrl')",
    )


def _ocsp(probe: Probe, subject: str, fallback: bool) -> Finding:
    if probe.ok:
        return Finding("ok", "live.revocation", subject, f"the OCSP responder it names, {probe.url}, is {probe.words}")
    then = "try the other URLs it names, slower" if fallback else "find no revocation status and refuse our certificate"
    return Finding(
        "warning" if fallback else "error",
        "live.revocation",
        subject,
        f"the OCSP responder it names, {probe.url}, is {probe.words}: peers that ask it (Windows and Lync prefer "
        f"OCSP when a certificate names a responder) {then}",
        "make the OCSP responder reachable over HTTP from the partners' networks, or reissue our certificate "
        "without it",
    )
