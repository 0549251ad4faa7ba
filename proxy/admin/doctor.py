"""`sipfed doctor`: find a broken federation's cause before the first message, in words an admin acts on.

The offline checks read only the config and the files it names; each returns findings, an ``ok`` one
too when it passes, so the report shows what was checked. They are the field notes' failures:

- ``cert.eku``: our certificate lacks Client Authentication -> the peer answers TLS alert 43;
- ``cert.chain`` (``proxy.admin.chain_checks``): the chain file lacks the intermediate -> 'unable to get local
  issuer certificate'; or tls.ca_bundle is another CA's than the one our chain leads to;
- ``cert.validity``: expired, not yet valid, or expiring within 30 days;
- ``cert.key``: the private key is not the certificate's;
- ``cert.names``: a listener's Via/Record-Route name or ``maddr`` is not one of the certificate's
  names -> Lync's Trusted Application Pool or CUP's TLS peer subject does not match;
- ``route.loop`` and ``listener.lync_port``: a route that points back at sipfed, and a Lync-facing
  listener off 5062 (the Lync static route should point at the peer-auth listener);
- ``ca.bundle``: the CA bundle parses and holds a CA;
- ``listener.client_cert``, ``tls.revocation``, ``cert.revocation`` (``proxy.admin.trust_checks``): a listener
  without client certificates facing a peer trusted by certificate or treated as authenticated; the
  ``[tls] revocation`` mode; where our certificate says its revocation status is published;
- ``xmpp.*`` (``proxy.admin.xmpp_checks``): XMPP partner settings as Lync's Control Panel warns of them, our
  XMPP certificate naming every XMPP domain, the listener port the SRV records must name.

``Finding`` (``proxy.admin.findings``) is the unit of every report, the live probes (``--live``,
``proxy.admin.live``) and the running sipfed's state (``proxy.admin.state``) included.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from proxy.admin.chain_checks import check_chain
from proxy.admin.findings import Finding, by_severity, render_json, render_table
from proxy.admin.live import diagnose_live
from proxy.admin.state import running_state
from proxy.admin.trust_checks import check_trust
from proxy.admin.xmpp_checks import check_xmpp
from proxy.config import Config, ConfigError, ListenerConfig, load_config
from proxy.x509 import (
    as_ip_address,
    certificate_names,
    is_ca,
    key_purposes,
    load_certificates,
    load_private_key,
    name_matches,
    short_name,
    spki,
    validity,
)
from routes import StaticRoute

# The field notes: Lync's static route points at CUP's "Peer Authentication listener", port 5062.
PEER_AUTH_PORT = 5062
WILDCARD_ADDRESSES = ("0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class _Material:
    """The TLS files, parsed; a file that did not parse is empty/None and has its own finding."""

    chain: tuple[x509.Certificate, ...]
    """``tls.cert_chain``: ours first, then the intermediates."""
    bundle: tuple[x509.Certificate, ...]
    """``tls.ca_bundle``."""
    key: PrivateKeyTypes | None
    """``tls.key``."""


def run(
    config_path: str | Path, as_json: bool, *, live: bool = False, now: datetime | None = None, width: int | None = None
) -> int:
    """`sipfed doctor`: print the findings; 0 without error findings, 1 with, 2 when the config fails to load.

    With ``live``, each static route is also probed over the network (``proxy.admin.live``), and the
    running sipfed's view of every destination is read from its metrics (``proxy.admin.state``).
    """
    try:
        config = load_config(config_path, check_own=False)  # its own findings say what is wrong
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    moment = now or datetime.now(UTC)
    findings = diagnose(config, moment)
    if live:
        findings = by_severity(findings + diagnose_live(config, moment) + running_state(config))
    print(render_json(findings) if as_json else render_table(findings, width=width))
    return 1 if any(f.severity == "error" for f in findings) else 0


def diagnose(config: Config, now: datetime) -> list[Finding]:
    """Every offline check on a loaded config, errors first, then warnings, then ok."""
    offline = _tls_findings(config, now) + check_routes(config) + check_lync_port(config)
    offline += check_trust(config, _labeler(config))
    return by_severity(offline + check_xmpp(config, now))


def _tls_findings(config: Config, now: datetime) -> list[Finding]:
    tls = config.tls
    if tls is None:
        return [Finding("ok", "tls", "[tls]", "no TLS listener or route: certificate checks do not apply")]
    findings: list[Finding] = []
    label = _labeler(config)
    material = _Material(
        _load_certs(tls.cert_chain, "tls.cert_chain", label, findings),
        _load_certs(tls.ca_bundle, "tls.ca_bundle", label, findings),
        _load_key(tls.key, label, findings),
    )
    if material.bundle:
        findings += check_bundle(material.bundle, label(tls.ca_bundle))
    if not material.chain:
        return findings
    chain_label = label(tls.cert_chain)
    findings += check_eku(material.chain[0], chain_label)
    if material.bundle:
        findings += check_chain(material.chain, material.bundle, chain_label)
    findings += check_validity(material.chain, chain_label, now)
    if material.key is not None:
        findings += check_key(material.chain, material.key, chain_label, label(tls.key))
    findings += check_names(material.chain[0], config.listeners, chain_label)
    return findings


def _labeler(config: Config) -> Callable[[Path], str]:
    """Paths as the admin wrote them: relative to the config file's directory when inside it."""
    base = config.path.resolve().parent

    def label(path: Path) -> str:
        return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)

    return label


def _load_certs(path: Path, key: str, label: Callable[[Path], str], out: list[Finding]) -> tuple[x509.Certificate, ...]:
    try:
        return load_certificates(path)
    except OSError as exc:
        out.append(
            Finding(
                "error",
                "cert.load",
                label(path),
                f"{key}: cannot read: {exc.strerror or exc}",
                "make the file readable by the user sipfed runs as",
            )
        )
    except ValueError:
        out.append(
            Finding(
                "error",
                "cert.load",
                label(path),
                f"{key}: no PEM certificate in the file",
                "use PEM ('-----BEGIN CERTIFICATE-----'); convert DER with "
                "'openssl x509 -inform der -in FILE -out FILE.pem'",
            )
        )
    return ()


def _load_key(path: Path, label: Callable[[Path], str], out: list[Finding]) -> PrivateKeyTypes | None:
    subject = label(path)
    try:
        return load_private_key(path)
    except OSError as exc:
        out.append(
            Finding(
                "error",
                "cert.key",
                subject,
                f"tls.key: cannot read: {exc.strerror or exc}",
                "make the key readable by the user sipfed runs as (and by no one else)",
            )
        )
    except TypeError:
        out.append(
            Finding(
                "error",
                "cert.key",
                subject,
                "tls.key is encrypted; sipfed starts unattended and has no passphrase",
                "store it unencrypted with mode 0600: 'openssl pkey -in KEY -out KEY.plain'",
            )
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        out.append(
            Finding(
                "error",
                "cert.key",
                subject,
                f"tls.key is not a PEM private key ({exc})",
                "point tls.key at the PEM private key of tls.cert_chain",
            )
        )
    return None


def check_eku(cert: x509.Certificate, subject: str) -> list[Finding]:
    """RFC 5280 §4.2.1.12: a federation peer is TLS server and client, so it needs both purposes."""
    eku = key_purposes(cert)
    if eku is None:
        return [
            Finding(
                "ok",
                "cert.eku",
                subject,
                "no Extended Key Usage restriction: any purpose, serverAuth and clientAuth included",
            )
        ]
    findings = []
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        findings.append(
            Finding(
                "error",
                "cert.eku",
                subject,
                "our certificate has no Client Authentication EKU (clientAuth): when sipfed connects out with "
                "it, the peer answers TLS alert 43 unsupported_certificate (the field notes' Lync/CUP failure)",
                "reissue it from a template that has Server Authentication and Client Authentication "
                "(the default WebServer template lacks Client Authentication)",
            )
        )
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        findings.append(
            Finding(
                "error",
                "cert.eku",
                subject,
                "our certificate has no Server Authentication EKU (serverAuth): peers connecting to our "
                "listeners refuse it (TLS alert 43 unsupported_certificate)",
                "reissue it from a template that has Server Authentication and Client Authentication",
            )
        )
    return findings or [Finding("ok", "cert.eku", subject, "EKU has serverAuth and clientAuth (mutual TLS)")]


def check_validity(chain: Sequence[x509.Certificate], subject: str, now: datetime) -> list[Finding]:
    """Each certificate of the chain file: valid now, and not expiring within 30 days."""
    return [_validity(cert, f"{subject} #{i} ({short_name(cert.subject)})", now) for i, cert in enumerate(chain, 1)]


def _validity(cert: x509.Certificate, subject: str, now: datetime) -> Finding:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    state = validity(cert, now)
    if state == "not_yet_valid":
        return Finding(
            "error",
            "cert.validity",
            subject,
            f"not valid before {start:%Y-%m-%d %H:%M} UTC: peers refuse it (certificate is not yet valid)",
            "check this host's clock (and the CA's); or wait, or reissue with an earlier start",
        )
    if state == "expired":
        return Finding(
            "error",
            "cert.validity",
            subject,
            f"expired on {end:%Y-%m-%d %H:%M} UTC: peers refuse it (TLS alert 45 certificate_expired)",
            "renew the certificate and replace the file, then restart sipfed",
        )
    days = round((end - now) / timedelta(days=1))
    if state == "expiring":
        return Finding(
            "warning",
            "cert.validity",
            subject,
            f"expires on {end:%Y-%m-%d} ({days} days left); after that, peers refuse it",
            "renew it now, and replace the file before it expires",
        )
    return Finding("ok", "cert.validity", subject, f"valid until {end:%Y-%m-%d} ({days} days)")


def check_key(
    chain: Sequence[x509.Certificate],
    key: PrivateKeyTypes,
    subject: str,
    key_subject: str,
) -> list[Finding]:
    """The private key's public half must be the certificate's (sipfed cannot start otherwise)."""
    mine = spki(key.public_key())
    if spki(chain[0].public_key()) == mine:
        return [Finding("ok", "cert.key", key_subject, f"the key matches the certificate in {subject}")]
    where = next((i for i, cert in enumerate(chain, 1) if spki(cert.public_key()) == mine), None)
    if where is not None:
        return [
            Finding(
                "error",
                "cert.key",
                key_subject,
                f"the key belongs to certificate #{where} of {subject}, not to the first one",
                "put our certificate first in the chain file, then its intermediates",
            )
        ]
    return [
        Finding(
            "error",
            "cert.key",
            key_subject,
            f"the key is not the private key of {short_name(chain[0].subject)!r} in {subject}: "
            "TLS cannot start with this pair",
            "point tls.key at the key the certificate was issued for (the CSR's key), or reissue",
        )
    ]


def check_names(cert: x509.Certificate, listeners: Iterable[ListenerConfig], subject: str) -> list[Finding]:
    """Each TLS listener's fqdn and federation_fqdn are among our certificate's names (RFC 6125)."""
    names = certificate_names(cert)
    shown = ", ".join(sorted(names)) or "none"
    findings = []
    for listener in (lst for lst in listeners if lst.transport == "tls"):
        for name, role in _listener_names(listener):
            if name_matches(name, names):
                findings.append(
                    Finding(
                        "ok", "cert.names", f"listener {listener.name}", f"{role} {name!r} is a name of our certificate"
                    )
                )
                continue
            findings.append(
                Finding(
                    "error",
                    "cert.names",
                    f"listener {listener.name}",
                    f"{role} {name!r} is not a name of our certificate ({subject}: {shown}); the peer that "
                    "checks it (Lync's Trusted Application Pool, CUP's TLS peer subject) refuses",
                    f"reissue the certificate with {name!r} as a DNS subjectAltName, or set this listener's "
                    "fqdn/federation_fqdn to one of its names",
                )
            )
    return findings


def _listener_names(listener: ListenerConfig) -> list[tuple[str, str]]:
    if listener.fqdn == listener.federation_fqdn:
        return [(listener.fqdn, "fqdn (Via, Record-Route and its maddr)")]
    return [
        (listener.fqdn, "fqdn (Via, Record-Route)"),
        (listener.federation_fqdn, "federation_fqdn (Record-Route maddr)"),
    ]


def check_routes(config: Config) -> list[Finding]:
    """A route whose next hop is one of our own listeners sends every request back into sipfed."""
    own = {config.fqdn, config.federation_fqdn}
    own |= {name for lst in config.listeners for name in (lst.fqdn, lst.federation_fqdn)}
    findings = []
    for route in config.routes:
        listener = next((lst for lst in config.listeners if _is_own(route, lst, own)), None)
        where = f"{route.destination}:{route.port}"
        if listener is None:
            findings.append(Finding("ok", "route.loop", f"route {route.name}", f"next hop {where} is not sipfed"))
            continue
        findings.append(
            Finding(
                "error",
                "route.loop",
                f"route {route.name}",
                f"next hop {where} ({route.transport}) is sipfed's own listener {listener.name!r} "
                f"({listener.address}:{listener.port}): requests loop until 482 Loop Detected or 483",
                "point the route's destination and port at the peer's server (e.g. CUP's 5062 peer-auth "
                "listener, Lync's 5061), not at sipfed",
            )
        )
    return findings


def _is_own(route: StaticRoute, listener: ListenerConfig, own_names: set[str]) -> bool:
    """Same transport and port, and the destination is our name, the bound address, or loopback under
    a wildcard bind (other local addresses of a wildcard bind are not known offline)."""
    if not listener.port or route.port != listener.port or route.transport != listener.transport:
        return False
    if route.destination in own_names:
        return True
    dest, bound = as_ip_address(route.destination), as_ip_address(listener.address)
    if dest is None or bound is None:
        return False
    if dest == bound:
        return True
    if listener.address in WILDCARD_ADDRESSES and dest.is_loopback:
        return listener.address == "::" or dest.version == 4
    return False


def check_lync_port(config: Config) -> list[Finding]:
    """The field notes: Lync's static route points at the peer-auth listener, 5062.

    sipfed does not know which side is Lync, so the names tell: a listener is Lync-facing when its name
    contains 'lync', or when a route bound to it (``listener = ...``) has 'lync' in its name,
    destination or tls_name (the lab's ``lync01.tomt.it``). Port 0 (tests: any free port) is skipped.
    """
    facing = [lst for lst in config.listeners if _lync_facing(lst, config.routes)]
    if not facing:
        return [
            Finding(
                "ok",
                "listener.lync_port",
                "listeners",
                "no listener looks Lync-facing (no 'lync' in "
                "a listener's name or its routes), so the 5062 rule was not checked",
            )
        ]
    findings = []
    for listener in facing:
        subject = f"listener {listener.name}"
        if listener.port in (0, PEER_AUTH_PORT):
            findings.append(
                Finding(
                    "ok", "listener.lync_port", subject, f"Lync-facing listener on port {listener.port or 'any (0)'}"
                )
            )
            continue
        findings.append(
            Finding(
                "warning",
                "listener.lync_port",
                subject,
                f"looks Lync-facing ('lync' in its name or routes) but listens on {listener.port}, not "
                f"{PEER_AUTH_PORT}: the field notes' Lync static route (New-CsStaticRoute -Port {PEER_AUTH_PORT}) "
                "points at the peer-auth listener port, so Lync would reach another listener or none",
                f"set this listener's port to {PEER_AUTH_PORT}, or give the Lync static route -Port {listener.port}",
            )
        )
    return findings


def _lync_facing(listener: ListenerConfig, routes: Iterable[StaticRoute]) -> bool:
    bound = (r for r in routes if r.listener == listener.name)
    return "lync" in listener.name.lower() or any(
        "lync" in text.lower() for r in bound for text in (r.name, r.destination, r.tls_name)
    )


def check_bundle(bundle: Sequence[x509.Certificate], subject: str) -> list[Finding]:
    """The bundle must hold a CA (basicConstraints cA TRUE, RFC 5280 §4.2.1.9) to verify peers with."""
    cas = [cert for cert in bundle if is_ca(cert)]
    if not cas:
        return [
            Finding(
                "error",
                "ca.bundle",
                subject,
                f"holds {len(bundle)} certificate(s) but no CA (basicConstraints CA:TRUE): "
                "no peer's chain can verify, every mutual-TLS handshake fails with unknown_ca",
                "point tls.ca_bundle at the CA certificates (roots) that issued the peers' and our "
                "certificates, not at a leaf",
            )
        ]
    names = ", ".join(short_name(cert.subject) for cert in cas)
    return [Finding("ok", "ca.bundle", subject, f"{len(cas)} CA certificate(s): {names}")]
