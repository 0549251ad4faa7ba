"""``sipfed doctor --live``, step 3: the certificates a peer sent, judged as sipfed (and the peer's other
partners) will judge them: the chain up to tls.ca_bundle, the route's tls_name, validity, EKU."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from proxy.admin.findings import Finding, route_address, route_subject
from proxy.x509 import (
    build_path,
    certificate_names,
    common_names,
    key_purposes,
    name_matches,
    self_issued,
    short_name,
    up_to_root,
    validity,
)
from routes import StaticRoute

# Findings that explain why sipfed's own verification of the peer fails (so it is not repeated).
VERIFY_CHECKS = frozenset({"live.peer_chain", "live.peer_name", "live.peer_validity"})
SEND_INTERMEDIATE = (
    "have the peer send its intermediate after its own certificate (CUP: upload the intermediate "
    "as cup-trust and regenerate; Windows/Lync: install it in the computer's Intermediate "
    "Certification Authorities store)"
)
RENEW_PEER = (
    "the peer's admin must renew it and install the new one (CUP: regenerate the 'cup' certificate; "
    "Lync: the Certificate Wizard or Request-CsCertificate)"
)


def check_peer_certificates(
    peer: Sequence[x509.Certificate], bundle: Sequence[x509.Certificate], route: StaticRoute, now: datetime
) -> list[Finding]:
    """Step 3: what the peer sent, judged as sipfed (and the peer's other partners) will judge it."""
    subject = route_subject(route)
    chain = [check_peer_chain(peer, bundle, subject)] if bundle else []
    path, _ = build_path(peer, bundle)
    return [
        *chain,
        check_peer_name(peer[0], route),
        *check_peer_validity(path, subject, now),
        *check_peer_eku(peer[0], subject),
    ]


def check_peer_chain(peer: Sequence[x509.Certificate], bundle: Sequence[x509.Certificate], subject: str) -> Finding:
    """RFC 5246 §7.4.2 / RFC 8446 §4.4.2: the peer sends its certificate and the intermediates."""
    path, anchor = build_path(peer, bundle)
    sent = " -> ".join(short_name(cert.subject) for cert in peer)
    last = path[-1]
    if anchor is None:
        return Finding("error", "live.peer_chain", subject, *_unanchored(path, sent))
    ups = up_to_root(anchor, bundle)
    if ups is None:
        return Finding(
            "error",
            "live.peer_chain",
            subject,
            f"the peer's chain ({sent}) reaches {short_name(anchor.subject)!r} in tls.ca_bundle, but "
            "no root above it: sipfed cannot verify it ('unable to get issuer certificate')",
            f"add the root CA of {short_name(anchor.subject)!r} to tls.ca_bundle",
        )
    if len(ups) > 1 and len(path) == 1:
        return Finding(
            "warning",
            "live.peer_chain",
            subject,
            f"the peer does not send its intermediate certificate (it sends only {sent!r}); sipfed "
            f"copes because tls.ca_bundle holds {short_name(last.issuer)!r}, but servers that trust "
            "only the root fail with 'unable to get local issuer certificate'",
            SEND_INTERMEDIATE,
        )
    steps = " -> ".join(short_name(cert.subject) for cert in [*path, *ups])
    return Finding("ok", "live.peer_chain", subject, f"the peer's chain verifies to tls.ca_bundle: {steps}")


def _unanchored(path: Sequence[x509.Certificate], sent: str) -> tuple[str, str]:
    """Cause and fix for a chain no CA of the bundle issues."""
    last = path[-1]
    if self_issued(last):
        return (
            f"the peer's chain ({sent}) ends at the root {short_name(last.subject)!r}, which is not in "
            "tls.ca_bundle: sipfed refuses it (unknown CA)",
            "if this peer is to be trusted, add its root CA to tls.ca_bundle (and make it trust ours)",
        )
    issuer = short_name(last.issuer)
    if len(path) == 1:
        return (
            f"the peer does not send its intermediate certificate: it sends only {sent!r}, whose issuer "
            f"{issuer!r} is not in tls.ca_bundle either, so sipfed fails with 'unable to get local issuer "
            "certificate'",
            f"{SEND_INTERMEDIATE}; or add {issuer!r} to tls.ca_bundle",
        )
    return (
        f"the peer's chain ({sent}) does not lead to our CA bundle: {short_name(last.subject)!r} is issued "
        f"by {issuer!r}, which is not in tls.ca_bundle (unknown CA)",
        f"if this peer is to be trusted, add its root CA {issuer!r} to tls.ca_bundle (and make it trust ours)",
    )


def check_peer_name(leaf: x509.Certificate, route: StaticRoute) -> Finding:
    """RFC 5922 §7.3 / RFC 6125: the route's tls_name is a SAN dNSName/iPAddress (CN only without SAN)."""
    names = certificate_names(leaf)
    subject = route_subject(route)
    if name_matches(route.tls_name, names):
        return Finding(
            "ok", "live.peer_name", subject, f"the peer's certificate carries the route's tls_name {route.tls_name!r}"
        )
    common = common_names(leaf)
    note = (
        f" (its CN is {route.tls_name!r}, but a certificate with subjectAltNames is matched by those alone, "
        "RFC 6125 §6.4.4)"
        if name_matches(route.tls_name, common)
        else ""
    )
    shown = ", ".join(sorted(names)) or "none"
    return Finding(
        "error",
        "live.peer_name",
        subject,
        f"the peer's certificate does not carry the route's tls_name {route.tls_name!r} (it names: "
        f"{shown}){note}: sipfed refuses it (certificate name mismatch)",
        f"if {route_address(route)} is the right server, set the route's tls_name to one of its "
        f"certificate's names; otherwise have the peer's certificate reissued with {route.tls_name!r} "
        "as a DNS subjectAltName",
    )


def check_peer_validity(path: Sequence[x509.Certificate], subject: str, now: datetime) -> list[Finding]:
    """Each certificate the peer's chain uses: valid now, and not expiring within 30 days."""
    findings = []
    for cert in path:
        name, start, end = short_name(cert.subject), cert.not_valid_before_utc, cert.not_valid_after_utc
        state = validity(cert, now)
        if state == "not_yet_valid":
            findings.append(
                Finding(
                    "error",
                    "live.peer_validity",
                    subject,
                    f"the peer's certificate {name!r} is not valid before {start:%Y-%m-%d %H:%M} "
                    "UTC: sipfed refuses it (certificate is not yet valid)",
                    "check the clocks of this host and of the peer (and of its CA)",
                )
            )
        elif state == "expired":
            findings.append(
                Finding(
                    "error",
                    "live.peer_validity",
                    subject,
                    f"the peer's certificate {name!r} expired on {end:%Y-%m-%d %H:%M} UTC: sipfed "
                    "refuses it (certificate has expired), as every other partner will",
                    RENEW_PEER,
                )
            )
        elif state == "expiring":
            findings.append(
                Finding(
                    "warning",
                    "live.peer_validity",
                    subject,
                    f"the peer's certificate {name!r} expires on {end:%Y-%m-%d}; after that, sipfed refuses it",
                    RENEW_PEER,
                )
            )
    if findings:
        return findings
    until = min(cert.not_valid_after_utc for cert in path)
    return [Finding("ok", "live.peer_validity", subject, f"the peer's chain is valid until {until:%Y-%m-%d}")]


def check_peer_eku(leaf: x509.Certificate, subject: str) -> list[Finding]:
    """RFC 5280 §4.2.1.12: the peer is our TLS server and, when it sends to us, our TLS client."""
    eku = key_purposes(leaf)
    if eku is None:
        return [Finding("ok", "live.peer_eku", subject, "the peer's certificate has no EKU restriction")]
    reissue = (
        "the peer's admin must reissue it from a template with Server Authentication and Client "
        "Authentication (Windows' WebServer template lacks Client Authentication)"
    )
    findings = []
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        findings.append(
            Finding(
                "error",
                "live.peer_eku",
                subject,
                "the peer's certificate has no Server Authentication EKU (serverAuth): sipfed "
                "refuses it as a server (unsuitable certificate purpose)",
                reissue,
            )
        )
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        findings.append(
            Finding(
                "error",
                "live.peer_eku",
                subject,
                "the peer's certificate has no Client Authentication EKU (clientAuth): when the "
                "peer connects to sipfed, our listener refuses it with TLS alert 43 "
                "unsupported_certificate (the field notes' failure)",
                reissue,
            )
        )
    return findings or [Finding("ok", "live.peer_eku", subject, "the peer's certificate has serverAuth and clientAuth")]
