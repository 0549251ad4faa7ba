"""`sipfed doctor` for XMPP federation (issue 15), offline: the ``[xmpp]`` settings as Lync's Control Panel
would warn about them, and our XMPP certificate as partners will judge it.

The checks (``check`` ids), each finding with its fix:

- ``xmpp.partner.tls``: TLS negotiation Optional or Not supported lets stanzas cross the network in clear;
- ``xmpp.partner.auth``: dialback without TLS (identity from DNS only, in clear); Public unverified with SASL
  Required (unusual: such services rarely have a certificate we trust);
- ``xmpp.dialback_secret``: none set (a random one per start: instances serving one domain must share one),
  or one short enough to guess;
- ``xmpp.listen``: the port the ``_xmpp-server._tcp`` SRV records must name (5269, or say so in the records);
- ``xmpp.cert.names``: RFC 6120 §13.7.1.2: our certificate names every ``xmpp.domains``, read as the proxy reads
  it (``proxy.net.xmpp_tls.reference_names``: dNSName, SRV-ID, XmppAddr) and matched as the proxy matches
  (``proxy.xmpp.stream.names_domain``: a wildcard stands for one leftmost label);
- ``xmpp.cert.validity``, ``xmpp.cert.eku``, ``xmpp.cert.key``, ``xmpp.cert.load``: for a certificate of
  XMPP's own (``xmpp.cert_chain``); the ``[tls]`` one it otherwise shares has the ``cert.*`` findings already;
- ``xmpp.ca.bundle``: the CAs partners' certificates must chain to exist and are CAs.

Keep-alives are not judged: whether a partner drops idle streams cannot be known offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from proxy.admin.findings import Finding
from proxy.config import Config
from proxy.net.xmpp_tls import reference_names
from proxy.x509 import (
    is_ca,
    key_matches,
    key_purposes,
    load_certificates,
    load_private_key,
    short_name,
    spki,
    validity,
)
from proxy.xmpp.policy import Partner, XmppConfig
from proxy.xmpp.stream import names_domain

XMPP_PORT = 5269
"""RFC 6120 §14.7: the port partners fall back to without SRV records (RFC 6120 §3.2.2)."""
SRV_TTL = 3600
SHORT_SECRET = 16
"""XEP-0185 §4: a dialback secret must not be guessable; fewer characters than this is a warning."""
REISSUE = "sipfed certs --name"


@dataclass(frozen=True, slots=True)
class XmppFiles:
    """The TLS files XMPP uses: ``[xmpp]``'s own, else ``[tls]``'s (as ``proxy.server`` picks them)."""

    cert_chain: Path | None
    """Our certificate, then its intermediates."""
    key: Path | None
    """Its private key."""
    ca_bundle: Path | None
    """The CAs partners' certificates must chain to."""
    own_chain: bool
    """``xmpp.cert_chain`` (or ``xmpp.key``) is set and is not ``[tls]``'s: the cert.* findings do not cover it."""
    own_bundle: bool
    """``xmpp.ca_bundle`` is set and is not ``[tls]``'s."""


def xmpp_files(config: Config, xmpp: XmppConfig) -> XmppFiles:
    tls = config.tls
    chain = xmpp.cert_chain or (tls.cert_chain if tls else None)
    key = xmpp.key or (tls.key if tls else None)
    bundle = xmpp.ca_bundle or (tls.ca_bundle if tls else None)
    own_chain = tls is None or chain != tls.cert_chain or key != tls.key
    return XmppFiles(chain, key, bundle, own_chain, tls is None or bundle != tls.ca_bundle)


def check_xmpp(config: Config, now: datetime) -> list[Finding]:
    """Every offline XMPP check; nothing without an ``[xmpp]`` section."""
    xmpp = config.xmpp
    if xmpp is None:
        return []
    findings = [f for partner in xmpp.partners for f in check_partner(partner)]
    findings += check_dialback_secret(xmpp)
    findings += check_listen(xmpp, config.fqdn)
    files = xmpp_files(config, xmpp)
    base = config.path.resolve().parent
    findings += _certificate_findings(xmpp, files, base, now)
    findings += check_xmpp_bundle(xmpp, files, base)
    return findings


# -- setting combinations -------------------------------------------------------------------------------------


def partner_subject(partner: Partner) -> str:
    """A partner as the SUBJECT column names it (its configured name: bounded)."""
    return f"xmpp partner {partner.name}"


def check_partner(partner: Partner) -> list[Finding]:
    """The partner's TLS and authentication settings, as Lync's Control Panel words them."""
    return [_tls_setting(partner), _auth_setting(partner)]


def _tls_setting(partner: Partner) -> Finding:
    subject, domains = partner_subject(partner), ", ".join(partner.domains)
    if partner.tls == "required":
        return Finding(
            "ok", "xmpp.partner.tls", subject, f"TLS negotiation Required: streams with {domains} are encrypted"
        )
    if partner.tls == "optional":
        return Finding(
            "warning",
            "xmpp.partner.tls",
            subject,
            f'TLS negotiation Optional (tls = "optional"): sipfed uses STARTTLS when {partner.primary_domain} '
            "offers it, but with a server that does not (or when someone on the path strips the offer) messages "
            "and presence go in clear",
            'set tls = "required" (Lync: TLS negotiation Required) once the partner supports STARTTLS; '
            "'sipfed doctor --live' shows whether it offers it",
        )
    return Finding(
        "warning",
        "xmpp.partner.tls",
        subject,
        f'TLS negotiation Not supported (tls = "not_supported"): every message and presence to and from '
        f"{domains} crosses the network in clear",
        'set tls = "required" (Lync: TLS negotiation Required) and give sipfed a certificate naming our XMPP domains',
    )


def _auth_setting(partner: Partner) -> Finding:
    subject, name = partner_subject(partner), partner.primary_domain
    if partner.tls == "not_supported":  # the loader then requires dialback and no SASL
        return Finding(
            "warning",
            "xmpp.partner.auth",
            subject,
            f"dialback with no TLS: {name} is known from DNS only, in clear (XEP-0220 §1): whoever can answer "
            f"DNS for {name} or sits on the path can pose as it and read its traffic",
            'set tls = "required" and sasl = "optional": certificates when they verify, dialback over TLS otherwise',
        )
    if partner.partner_type == "public_unverified" and partner.sasl == "required":
        return Finding(
            "warning",
            "xmpp.partner.auth",
            subject,
            "unusual: Partner type Public unverified with SASL negotiation Required: public unverified services "
            "rarely present a certificate from a CA we trust, and without one every stream with them is refused",
            'if the partner has such a certificate, make it partner_type = "federated" (or "public_verified"); '
            'otherwise set sasl = "optional" with dialback = true',
        )
    if partner.sasl == "required":
        how = "certificates only: SASL EXTERNAL (XEP-0178), no dialback"
    else:
        dialback = "dialback" + (" over TLS" if partner.tls == "required" else " (over TLS when offered)")
        how = dialback if partner.sasl == "not_supported" else "SASL EXTERNAL when certificates verify"
        if partner.sasl == "optional" and partner.dialback:
            how += f", else {dialback}"
    return Finding("ok", "xmpp.partner.auth", subject, f"{partner.describe()}: authenticates by {how}")


def check_dialback_secret(xmpp: XmppConfig) -> list[Finding]:
    """XEP-0185: the secret dialback keys are made with; only partners with dialback use it."""
    subject = "[xmpp] dialback_secret"
    if not any(partner.dialback for partner in xmpp.partners):
        return []
    if xmpp.dialback_secret is None:
        return [
            Finding(
                "warning",
                "xmpp.dialback_secret",
                subject,
                "not set: sipfed makes a random one at each start. That is fine for one sipfed, but two or more "
                "serving the same domains (behind one SRV record) must share one, or a partner's dialback check "
                "that reaches another instance fails (XEP-0185)",
                "set dialback_secret to one long random string, the same on every instance (e.g. the output of "
                "'openssl rand -hex 32'), and keep the config file private",
            )
        ]
    if len(xmpp.dialback_secret) < SHORT_SECRET:
        return [
            Finding(
                "warning",
                "xmpp.dialback_secret",
                subject,
                f"only {len(xmpp.dialback_secret)} characters: whoever guesses it can forge dialback keys for our "
                "domains (XEP-0185 §4)",
                "use a long random string, e.g. the output of 'openssl rand -hex 32'",
            )
        ]
    return [Finding("ok", "xmpp.dialback_secret", subject, "set: every instance that shares it can answer dialback")]


def check_listen(xmpp: XmppConfig, fqdn: str) -> list[Finding]:
    """Partners find us by ``_xmpp-server._tcp.<domain>`` SRV records (RFC 6120 §3.2.1); they must name our port."""
    subject, port = "[xmpp] listen", xmpp.listen[1]
    if port == XMPP_PORT:
        return [
            Finding(
                "ok",
                "xmpp.listen",
                subject,
                f"port {XMPP_PORT}: publish an SRV record per domain with it, e.g. {srv_record(xmpp.domains[0], fqdn)}",
            )
        ]
    if port == 0:
        return [
            Finding(
                "warning",
                "xmpp.listen",
                subject,
                "port 0: sipfed takes any free port at each start, so no SRV record can name it",
                f'set listen = "{xmpp.listen[0]}:{XMPP_PORT}" (or another fixed port)',
            )
        ]
    return [
        Finding(
            "warning",
            "xmpp.listen",
            subject,
            f"port {port}, not {XMPP_PORT}: partners reach it only through SRV records naming {port}; a partner "
            f"that finds none falls back to port {XMPP_PORT} (RFC 6120 §3.2.2) and fails",
            f"publish an SRV record per domain with port {port}, e.g. {srv_record(xmpp.domains[0], fqdn, port)}; "
            f"or listen on {XMPP_PORT}",
        )
    ]


def srv_record(domain: str, target: str, port: int = XMPP_PORT) -> str:
    """RFC 2782 / RFC 6120 §3.2.1: the record partners look up, in zone-file form."""
    return f"_xmpp-server._tcp.{domain}. {SRV_TTL} IN SRV 0 5 {port} {target.rstrip('.')}."


# -- our certificate -------------------------------------------------------------------------------------------


def _label(path: Path, base: Path) -> str:
    """A path as the admin wrote it: relative to the config file's directory when inside it."""
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def _certificate_findings(xmpp: XmppConfig, files: XmppFiles, base: Path, now: datetime) -> list[Finding]:
    if files.cert_chain is None:
        return [
            Finding(
                "ok",
                "xmpp.cert.names",
                "[xmpp]",
                'no XMPP certificate: every partner has tls = "not_supported", so certificate checks do not apply',
            )
        ]
    label = _label(files.cert_chain, base)
    try:
        chain = load_certificates(files.cert_chain)
    except (OSError, ValueError) as exc:
        if not files.own_chain:
            return []  # [tls]'s cert.load finding says why
        return [
            Finding(
                "error",
                "xmpp.cert.load",
                label,
                f"xmpp.cert_chain does not load ({getattr(exc, 'strerror', None) or exc})",
                "point xmpp.cert_chain at the PEM chain (our certificate first, then its intermediates), "
                "readable by the user sipfed runs as",
            )
        ]
    findings = check_xmpp_names(chain[0], xmpp.domains, label)
    if not files.own_chain:
        return [
            *findings,
            Finding(
                "ok",
                "xmpp.cert.shared",
                label,
                "XMPP uses [tls] cert_chain and key: their validity, EKU and key are the cert.* findings",
            ),
        ]
    findings += check_xmpp_validity(chain, label, now)
    findings += check_xmpp_eku(chain[0], label)
    if files.key is not None:
        findings.append(check_xmpp_key(chain, files.key, _label(files.key, base)))
    return findings


def check_xmpp_names(cert: x509.Certificate, domains: Sequence[str], subject: str) -> list[Finding]:
    """RFC 6120 §13.7.1.2: partners check our certificate against the domain of each stream (ours)."""
    names = reference_names(cert)
    shown = ", ".join(names) or "nothing"
    missing = [domain for domain in domains if not names_domain(names, domain)]
    if not missing:
        return [
            Finding(
                "ok", "xmpp.cert.names", subject, f"names every XMPP domain ({', '.join(domains)}); it names {shown}"
            )
        ]
    wanted = ",".join(dict.fromkeys([*(n for n in names if not n.startswith("*")), *missing]))
    return [
        Finding(
            "error",
            "xmpp.cert.names",
            subject,
            f"our XMPP certificate names {shown}, not the XMPP domain(s) {', '.join(missing)}: partners check it "
            "against the domain each stream is for (RFC 6120 §13.7.1.2), so they refuse SASL EXTERNAL, and "
            "those that require a valid certificate (Lync with SASL Required, Prosody's s2s_secure_auth) refuse "
            "the stream",
            f"reissue it with {', '.join(missing)} as DNS subjectAltNames (add them as SANs to the request to "
            f"your CA; lab: '{REISSUE} {wanted}'), or set xmpp.cert_chain and xmpp.key to a certificate naming them",
        )
    ]


def check_xmpp_validity(chain: Sequence[x509.Certificate], subject: str, now: datetime) -> list[Finding]:
    """Each certificate of xmpp.cert_chain: valid now, and not expiring within 30 days."""
    findings = []
    for i, cert in enumerate(chain, 1):
        where, state = f"{subject} #{i} ({short_name(cert.subject)})", validity(cert, now)
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if state == "not_yet_valid":
            findings.append(
                Finding(
                    "error",
                    "xmpp.cert.validity",
                    where,
                    f"not valid before {start:%Y-%m-%d %H:%M} UTC: partners refuse it",
                    "check this host's clock (and the CA's); or reissue with an earlier start",
                )
            )
        elif state == "expired":
            findings.append(
                Finding(
                    "error",
                    "xmpp.cert.validity",
                    where,
                    f"expired on {end:%Y-%m-%d %H:%M} UTC: partners refuse it (TLS alert 45 certificate_expired)",
                    "renew the certificate, replace xmpp.cert_chain, then reload sipfed",
                )
            )
        elif state == "expiring":
            findings.append(
                Finding(
                    "warning",
                    "xmpp.cert.validity",
                    where,
                    f"expires on {end:%Y-%m-%d}; after that, partners refuse it",
                    "renew it now, and replace xmpp.cert_chain before it expires",
                )
            )
    until = min(cert.not_valid_after_utc for cert in chain)
    return findings or [Finding("ok", "xmpp.cert.validity", subject, f"valid until {until:%Y-%m-%d}")]


def check_xmpp_eku(cert: x509.Certificate, subject: str) -> list[Finding]:
    """RFC 5280 §4.2.1.12: a partner verifies us as a TLS server (it connects to us) and as a TLS client (we
    connect to it and authenticate with SASL EXTERNAL, XEP-0178)."""
    eku = key_purposes(cert)
    if eku is None:
        return [Finding("ok", "xmpp.cert.eku", subject, "no Extended Key Usage restriction: serverAuth and clientAuth")]
    reissue = "reissue it from a template with Server Authentication and Client Authentication"
    findings = []
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        findings.append(
            Finding(
                "error",
                "xmpp.cert.eku",
                subject,
                "our XMPP certificate has no Client Authentication EKU (clientAuth): partners verify it as a client "
                "certificate when sipfed connects and authenticates with SASL EXTERNAL (XEP-0178), and refuse it "
                "(TLS alert 43 unsupported_certificate, or no EXTERNAL offered)",
                f"{reissue} (Windows' WebServer template lacks Client Authentication)",
            )
        )
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        findings.append(
            Finding(
                "error",
                "xmpp.cert.eku",
                subject,
                "our XMPP certificate has no Server Authentication EKU (serverAuth): partners that connect to us "
                "refuse it after STARTTLS",
                reissue,
            )
        )
    return findings or [Finding("ok", "xmpp.cert.eku", subject, "EKU has serverAuth and clientAuth")]


def check_xmpp_key(chain: Sequence[x509.Certificate], path: Path, subject: str) -> Finding:
    """The key's public half must be our certificate's: TLS cannot start otherwise."""
    try:
        key: PrivateKeyTypes = load_private_key(path)
    except (OSError, TypeError, ValueError, UnsupportedAlgorithm) as exc:
        why = "it is encrypted (sipfed has no passphrase)" if isinstance(exc, TypeError) else str(exc)
        return Finding(
            "error",
            "xmpp.cert.key",
            subject,
            f"xmpp.key does not load: {why}",
            "point xmpp.key at the unencrypted PEM key of xmpp.cert_chain, mode 0600",
        )
    if key_matches(key, chain[0]):
        return Finding("ok", "xmpp.cert.key", subject, "the key matches our XMPP certificate")
    where = next((i for i, cert in enumerate(chain, 1) if spki(cert.public_key()) == spki(key.public_key())), None)
    return Finding(
        "error",
        "xmpp.cert.key",
        subject,
        f"the key is not the private key of {short_name(chain[0].subject)!r}"
        + (f" but of certificate #{where} of the chain" if where else "")
        + ": STARTTLS cannot start with this pair",
        "put our certificate first in xmpp.cert_chain" if where else "point xmpp.key at the key of xmpp.cert_chain",
    )


def check_xmpp_bundle(xmpp: XmppConfig, files: XmppFiles, base: Path) -> list[Finding]:
    """The CAs partners' certificates must chain to (SASL EXTERNAL needs one, XEP-0178)."""
    uses_certificates = [p for p in xmpp.partners if p.tls != "not_supported" and p.sasl != "not_supported"]
    if files.ca_bundle is None:
        if not uses_certificates:
            return []
        required = [p.name for p in uses_certificates if p.sasl == "required"]
        return [
            Finding(
                "error" if required else "warning",
                "xmpp.ca.bundle",
                "[xmpp] ca_bundle",
                "no CA bundle: no partner's certificate can verify, so SASL EXTERNAL is never used"
                + (f", and partner(s) {', '.join(required)} (sasl = required) are always refused" if required else ""),
                "set xmpp.ca_bundle (or [tls] ca_bundle) to the root CAs of the partners' certificates",
            )
        ]
    label = _label(files.ca_bundle, base)
    if not files.own_bundle:
        return [Finding("ok", "xmpp.ca.bundle", label, "XMPP uses [tls] ca_bundle: see the ca.bundle finding")]
    try:
        bundle = load_certificates(files.ca_bundle)
    except (OSError, ValueError) as exc:
        return [
            Finding(
                "error",
                "xmpp.ca.bundle",
                label,
                f"xmpp.ca_bundle does not load ({getattr(exc, 'strerror', None) or exc})",
                "point xmpp.ca_bundle at a PEM file of the partners' root CAs",
            )
        ]
    cas = [cert for cert in bundle if is_ca(cert)]
    if not cas:
        return [
            Finding(
                "error",
                "xmpp.ca.bundle",
                label,
                f"holds {len(bundle)} certificate(s) but no CA (basicConstraints CA:TRUE): no partner's "
                "certificate can verify",
                "point xmpp.ca_bundle at the root CAs that issued the partners' certificates, not at a leaf",
            )
        ]
    names = ", ".join(short_name(cert.subject) for cert in cas)
    return [Finding("ok", "xmpp.ca.bundle", label, f"{len(cas)} CA certificate(s): {names}")]
