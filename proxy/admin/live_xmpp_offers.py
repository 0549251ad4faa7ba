"""`sipfed doctor --live` for XMPP federation: what a partner's ``<stream:features>`` offer, weighed against its
``[[xmpp.partners]]`` settings the way ``proxy.xmpp.outbound`` acts on them (its rules 1-4), in plain words.

No I/O here: ``proxy.admin.live_xmpp`` reads the features off the wire into a ``Negotiation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element

from proxy.admin.findings import Finding
from proxy.admin.xmpp_checks import partner_subject
from proxy.xmpp.policy import Partner
from proxy.xmpp.stream import PeerCert
from proxy.xmpp.xml import NS_DIALBACK_FEATURE, NS_SASL, NS_TLS

TRUST_OUR_CA = "the partner must trust our CA: import our root CA into its server-to-server trust store"
_NOT_OFFERED_HINTS = {
    "host-unknown": "the server there does not serve {domain}: check primary_domain, and the partner's SRV "
    "records (or address in its [[xmpp.partners]] entry)",
    "policy-violation": "the partner refuses streams from {local}: ask its admin to allow our domain (its list "
    "of federated domains)",
    "not-authorized": "the partner refuses streams from {local}: ask its admin to allow our domain",
}


@dataclass(frozen=True, slots=True)
class Offer:
    """What one ``<stream:features>`` offers (RFC 6120 §4.3.2)."""

    starttls: bool = False
    """STARTTLS (RFC 6120 §5)."""
    tls_required: bool = False
    """``<required/>`` in it: nothing but STARTTLS until TLS is up."""
    mechanisms: tuple[str, ...] = ()
    """SASL mechanisms (RFC 6120 §6), e.g. ``EXTERNAL`` (XEP-0178)."""
    dialback: bool = False
    """Server Dialback (XEP-0220 §2.1, ``urn:xmpp:features:dialback``)."""

    def describe(self) -> str:
        parts = []
        if self.starttls:
            parts.append("STARTTLS" + (" (required)" if self.tls_required else " (optional)"))
        if self.mechanisms:
            parts.append(f"SASL {'/'.join(self.mechanisms)}")
        if self.dialback:
            parts.append("dialback")
        return ", ".join(parts) or "nothing"


def read_offer(features: Element) -> Offer:
    """A ``<stream:features>`` element, read."""
    starttls = features.find(f"{{{NS_TLS}}}starttls")
    mechanisms = features.find(f"{{{NS_SASL}}}mechanisms")
    names = [] if mechanisms is None else [(m.text or "").strip()[:40] for m in mechanisms]
    return Offer(
        starttls is not None,
        starttls is not None and starttls.find(f"{{{NS_TLS}}}required") is not None,
        tuple(name for name in names if name)[:8],
        features.find(f"{{{NS_DIALBACK_FEATURE}}}dialback") is not None,
    )


@dataclass(frozen=True, slots=True)
class Negotiation:
    """What one probe stream to a partner found."""

    before: Offer
    """The features of the first stream."""
    after: Offer | None = None
    """The features after STARTTLS; None when TLS was not started."""
    cert: PeerCert | None = None
    """The partner's certificate as sipfed's XMPP TLS checked it (chain to our CA bundle, names)."""
    version: str = ""
    """The TLS version negotiated."""
    refused: str = ""
    """STARTTLS was answered with this element (``failure``) instead of ``proceed``."""
    tls_failure: str = ""
    """The TLS handshake failed: OpenSSL's words."""


def judge_negotiation(partner: Partner, local: str, where: str, done: Negotiation) -> list[Finding]:
    """The partner reached at ``where``: what it offers, then TLS, its certificate and how sipfed would
    authenticate, each as far as sipfed's own stream would get."""
    subject = partner_subject(partner)
    reached = f"{partner.primary_domain} is reachable at {where} and offers {done.before.describe()}"
    if done.after is not None:
        reached += f"; after STARTTLS ({done.version}): {done.after.describe()}"
    findings = [Finding("ok", "live.xmpp.connect", subject, reached)]
    tls, go_on = _tls(partner, done, subject)
    findings += tls
    if go_on and done.cert is not None:
        cert, go_on = _certificate(partner, done.cert, subject)
        findings.append(cert)
    if go_on:
        findings.append(_auth(partner, local, done, subject))
    return findings


def _tls(partner: Partner, done: Negotiation, subject: str) -> tuple[list[Finding], bool]:
    """Rule 1: STARTTLS when offered unless ``not_supported``; ``required`` without an offer gives up."""
    domain, before = partner.primary_domain, done.before
    if done.tls_failure:
        return [
            Finding(
                "error",
                "live.xmpp.tls",
                subject,
                f"the TLS handshake with {domain} after STARTTLS fails: {done.tls_failure}",
                f"{TRUST_OUR_CA}; compare TLS versions and ciphers with the partner's",
            )
        ], False
    if done.refused:
        return [
            Finding(
                "error",
                "live.xmpp.tls",
                subject,
                f"{domain} offers STARTTLS but answers it with <{done.refused}/>",
                "read the partner's server log: its own certificate or TLS settings are broken",
            )
        ], False
    if done.after is not None:
        return [Finding("ok", "live.xmpp.tls", subject, f"STARTTLS works ({done.version})")], True
    if before.starttls and partner.tls == "not_supported":
        if before.tls_required:
            return [
                Finding(
                    "error",
                    "live.xmpp.tls",
                    subject,
                    f"{domain} requires TLS (<starttls><required/>), and sipfed's setting for it is "
                    'tls = "not_supported": sipfed gives up every stream to it',
                    'set tls = "required" (Lync: TLS negotiation Required) in its [[xmpp.partners]] entry, '
                    "with a certificate that names our XMPP domains",
                )
            ], False
        return [
            Finding(
                "warning",
                "live.xmpp.tls",
                subject,
                f'{domain} offers STARTTLS, but tls = "not_supported": sipfed does not use it, and the stream goes '
                "in clear",
                'set tls = "required" (Lync: TLS negotiation Required)',
            )
        ], True
    if before.starttls:  # offered, but our TLS material did not load: that finding says why
        return [], False
    return _no_starttls(partner, subject)


def _no_starttls(partner: Partner, subject: str) -> tuple[list[Finding], bool]:
    domain = partner.primary_domain
    if partner.tls == "required":
        return [
            Finding(
                "error",
                "live.xmpp.tls",
                subject,
                f'{domain} does not offer STARTTLS, and tls = "required": sipfed gives up every stream to it',
                "ask the partner to enable TLS for server-to-server streams; only if it cannot, set "
                'tls = "optional" (stanzas then go in clear)',
            )
        ], False
    if partner.tls == "optional":
        return [
            Finding(
                "warning",
                "live.xmpp.tls",
                subject,
                f'{domain} does not offer STARTTLS: with tls = "optional" messages and presence go in clear',
                'ask the partner to enable TLS for server-to-server streams, then set tls = "required"',
            )
        ], True
    return [
        Finding("ok", "live.xmpp.tls", subject, 'no STARTTLS offered, and tls = "not_supported": as configured')
    ], True


def _certificate(partner: Partner, cert: PeerCert, subject: str) -> tuple[Finding, bool]:
    """Rule 2: the partner's certificate, judged against its domain (RFC 6120 §13.7.1.2)."""
    domain = partner.primary_domain
    if cert.valid_for(domain):
        return Finding(
            "ok", "live.xmpp.cert", subject, f"its certificate verifies against our CA bundle and names {domain}"
        ), True
    why = cert.why_not(domain)
    fix = (
        f"add the root CA of {domain}'s certificate to xmpp.ca_bundle (or [tls] ca_bundle); or have the "
        f"partner reissue its certificate naming {domain}"
    )
    if partner.sasl == "required":
        return Finding(
            "error",
            "live.xmpp.cert",
            subject,
            f'sipfed does not accept {domain}\'s certificate ({why}), and sasl = "required": sipfed gives up '
            "every stream to it and refuses its streams",
            fix,
        ), False
    if not partner.dialback:
        return Finding(
            "error",
            "live.xmpp.cert",
            subject,
            f"sipfed does not accept {domain}'s certificate ({why}): when it connects to us it cannot use "
            "SASL EXTERNAL, and with dialback = false its streams are refused",
            f"{fix}; or set dialback = true",
        ), True
    return Finding(
        "warning",
        "live.xmpp.cert",
        subject,
        f"sipfed does not accept {domain}'s certificate ({why}): when it connects to us it is known by "
        "dialback only (identity from DNS, XEP-0220 §1), not by its certificate",
        fix,
    ), True


def _auth(partner: Partner, local: str, done: Negotiation, subject: str) -> Finding:
    """Rules 3 and 4: SASL EXTERNAL when offered (unless ``not_supported``), else dialback."""
    domain = partner.primary_domain
    offer, secure = done.after or done.before, done.after is not None
    if secure and partner.sasl != "not_supported" and "EXTERNAL" in offer.mechanisms:
        return Finding(
            "ok",
            "live.xmpp.auth",
            subject,
            f"{domain} offers SASL EXTERNAL to {local}: it accepts our certificate, and sipfed authenticates "
            "with it (XEP-0178)",
        )
    if partner.sasl == "required":
        why = (
            f"after TLS: it does not accept our certificate for {local}" if secure else "(the stream is not encrypted)"
        )
        return Finding(
            "error",
            "live.xmpp.auth",
            subject,
            f'{domain} does not offer SASL EXTERNAL {why}, and sasl = "required": sipfed gives up every stream to it',
            f"{TRUST_OUR_CA}, and our certificate must name {local} (see xmpp.cert.names); or set "
            'sasl = "optional" with dialback = true',
        )
    if partner.dialback and offer.dialback:
        note = ""
        if secure and partner.sasl != "not_supported":
            note = f" (no SASL EXTERNAL for {local}: {domain} does not accept our certificate, or does not do XEP-0178)"
        return Finding("ok", "live.xmpp.auth", subject, f"sipfed will authenticate by dialback (XEP-0220){note}")
    why = "dialback = false" if not partner.dialback else f"{domain} does not offer dialback"
    return Finding(
        "error",
        "live.xmpp.auth",
        subject,
        f"no way to authenticate to {domain}: no SASL EXTERNAL offered and {why}",
        f"{TRUST_OUR_CA} (for SASL EXTERNAL), or enable dialback on both sides",
    )


def stream_refused(partner: Partner, where: str, local: str, condition: str, text: str) -> Finding:
    """The partner ended our probe stream (a stream error, or a close) before its features."""
    domain = partner.primary_domain
    words = f" ({text})" if text else ""
    if condition in ("closed", "connection closed"):
        cause = f"{where} closed the stream (from {local} to {domain}) before offering its features{words}"
    else:
        cause = f"{where} answered our stream header (from {local} to {domain}) with stream error {condition}{words}"
    hint = _NOT_OFFERED_HINTS.get(condition, "read the partner's server log for why it ended the stream")
    return Finding(
        "error", "live.xmpp.stream", partner_subject(partner), cause, hint.format(domain=domain, local=local)
    )
