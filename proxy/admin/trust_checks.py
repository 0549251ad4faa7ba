"""``sipfed doctor``, offline: how peers are trusted and how their certificates' revocation is checked.

- ``listener.client_cert``: a TLS listener with ``require_client_cert = false`` that faces (``proxy.config.topology``;
  the only TLS listener faces every peer named by certificate) a peer trusted by certificate subject or treated
  as authenticated. The listener asks for a client certificate but admits a client that sends none: such a peer
  is not bound, and its requests get the untrusted policy (Lync sees a bare 403), or, for a peer bound by its
  network alone, are treated as authenticated with no certificate proving anything;
- ``tls.revocation``: the ``[tls] revocation`` mode, a warning when it is ``off`` (revoked peer certificates are
  admitted) and when ``hard-fail`` has no local CRL files to fall back on;
- ``cert.revocation``: where our certificate says its revocation status is published (RFC 5280 §4.2.1.13 CRL
  distribution points, §4.2.2.1 OCSP): the far side fetches it (Lync checks revocation of federation certificates
  by default); ``sipfed doctor --live`` fetches each URL (``proxy.admin.live_revocation``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509

from acl.peers import TrustedPeer
from proxy.admin.findings import Finding, bracketed
from proxy.config import Config, ListenerConfig
from proxy.config.topology import Topology, topology
from proxy.x509 import crl_point_uris, load_certificates, ocsp_urls

REVOCATION_FIX = 'set revocation = "soft-fail" (the default) or "hard-fail" in [tls]'
#: What a listener's ``untrusted`` policy does to a peer that was not bound, as the peer sees it.
UNTRUSTED_WORDS = {
    "refuse": "refuse (a bare 403, where Lync would otherwise see a handshake refused for want of a certificate)",
    "challenge": "challenge (a 407 that Lync cannot answer)",
    "admit": "admit (as from a stranger: none of the peer's own trust applies)",
}
NO_POINTER_FIX = (
    "reissue our certificate from a CA whose CRL distribution point is an http URL the partners can reach "
    "(AD CS: the CA's Extensions tab, 'Include in the CDP extension of issued certificates'), or give the "
    "partners our CA's CRL to install"
)


def check_trust(config: Config, label: Callable[[Path], str]) -> list[Finding]:
    """Every check of this module; ``label`` names a file as the admin wrote it."""
    return check_client_certs(config) + check_revocation_mode(config) + check_our_revocation(config, label)


def check_client_certs(config: Config) -> list[Finding]:
    """Each TLS listener that does not require client certificates, against the peers it faces."""
    listeners = [lst for lst in config.listeners if lst.transport == "tls"]
    if not listeners:
        return [Finding("ok", "listener.client_cert", "listeners", "no TLS listener: client certificates do not apply")]
    faces = topology(config)
    findings = []
    for listener in listeners:
        subject = f"listener {listener.name}"
        if listener.require_client_cert:
            findings.append(
                Finding("ok", "listener.client_cert", subject, "requires a client certificate tls.ca_bundle verifies")
            )
            continue
        exposed = [
            peer
            for peer in _faced(config, listener, faces, alone=len(listeners) == 1)
            if peer.subjects or peer.treat_as_authenticated
        ]
        findings += [_unproven(listener, peer, faces, listeners) for peer in exposed] or [
            Finding(
                "ok",
                "listener.client_cert",
                subject,
                "does not require client certificates (require_client_cert = false), and faces no peer trusted "
                "by certificate or treated as authenticated (as far as the routes' listener settings tell)",
            )
        ]
    return findings


def _faced(config: Config, listener: ListenerConfig, faces: Topology, *, alone: bool) -> list[TrustedPeer]:
    """The peers ``listener`` faces: by the routes leaving by it; the only TLS listener also faces every peer
    named by certificate (a certificate is only seen over TLS)."""
    names = faces.faces.get(listener.name, frozenset())
    return [peer for peer in config.trust.peers if peer.name in names or (alone and peer.subjects)]


def _unproven(
    listener: ListenerConfig, peer: TrustedPeer, faces: Topology, listeners: Sequence[ListenerConfig]
) -> Finding:
    where = f"listener {listener.name} ({bracketed(listener.address)}:{listener.port})"
    if peer.subjects:
        trusted = "trusted by its certificate subject (" + ", ".join(str(s) for s in peer.subjects) + ")"
        if peer.treat_as_authenticated:
            trusted += " and treated as authenticated"
        harm = (
            f"{peer.name}'s certificate is asked for but not required there, so a connection that brings none "
            f"is never bound to {peer.name}: its requests get the listener's untrusted policy, "
            f"{UNTRUSTED_WORDS.get(listener.untrusted, listener.untrusted)}"
        )
    else:
        networks = ", ".join(str(n) for n in peer.networks)
        trusted = f"treated as authenticated on its source address alone ({networks})"
        harm = (
            f"no certificate is required there, so any TLS client from those networks is taken for {peer.name} "
            "and its requests are never challenged, with no certificate proving anything"
        )
    return Finding(
        "warning",
        "listener.client_cert",
        f"listener {listener.name}",
        f"{where} does not require client certificates (require_client_cert = false) but faces peer "
        f"{peer.name}, {trusted}: {harm}",
        _client_cert_fix(listener, peer, faces, listeners),
    )


def _client_cert_fix(
    listener: ListenerConfig, peer: TrustedPeer, faces: Topology, listeners: Sequence[ListenerConfig]
) -> str:
    """Require the certificate here, or send the peer to a listener that requires it and faces no other side."""
    fix = f"set require_client_cert = true on listener {listener.name}"
    asking = [
        lst
        for lst in listeners
        if lst.require_client_cert and (lst.name not in faces.faces or peer.name in faces.faces[lst.name])
    ]
    if asking:
        other = asking[0]
        port = other.port or "(its port)"
        fix += (
            f", or point {peer.name}'s static route toward sipfed at listener {other.name} "
            f"({bracketed(other.address)}:{other.port}), which requires them (Lync: the static route's -Port {port}; "
            f"CUP: the TLS peer subject's port {port})"
        )
    if not peer.subjects:
        fix += f"; and name {peer.name}'s certificate in its [[peers]] subjects"
    return fix


def check_revocation_mode(config: Config) -> list[Finding]:
    """``[tls] revocation``: what sipfed does with a peer certificate's revocation status."""
    tls = config.tls
    if tls is None:
        return []
    subject = "[tls] revocation"
    files = f"{len(tls.crl_files)} local CRL file(s) (tls.crl_files) and " if tls.crl_files else ""
    fetched = f"{files}the CRLs peers' certificates name, fetched over http within {tls.crl_timeout_seconds:g} s"
    if tls.revocation == "off":
        return [
            Finding(
                "warning",
                "tls.revocation",
                subject,
                "off: sipfed checks no CRL, so a peer certificate its CA has revoked (a stolen key, a "
                "decommissioned server) is admitted as long as it verifies",
                REVOCATION_FIX,
            )
        ]
    if tls.revocation == "hard-fail" and not tls.crl_files:
        return [
            Finding(
                "warning",
                "tls.revocation",
                subject,
                "hard-fail with no tls.crl_files: every peer certificate must name an http CRL distribution point "
                "that sipfed can reach, else it is refused: a CRL server down, or a certificate whose only "
                "distribution point is ldap (sipfed fetches http only), refuses that peer",
                "make sure the peers' CAs publish their CRLs over http reachable from sipfed, or list the CAs' "
                'CRLs in tls.crl_files (kept current), or use revocation = "soft-fail"',
            )
        ]
    if tls.revocation == "hard-fail":
        return [
            Finding(
                "ok",
                "tls.revocation",
                subject,
                f"hard-fail: a revoked peer certificate, and one whose status cannot be had, are refused; from "
                f"{fetched}",
            )
        ]
    return [
        Finding(
            "ok",
            "tls.revocation",
            subject,
            f"soft-fail: a revoked peer certificate is refused, one whose CRL cannot be had is admitted with "
            f"a warning; from {fetched}",
        )
    ]


def check_our_revocation(config: Config, label: Callable[[Path], str]) -> list[Finding]:
    """Our certificate tells the far side where to check it; a peer that requires the check and finds nothing
    to fetch may refuse it."""
    tls = config.tls
    if tls is None:
        return []
    try:
        ours = load_certificates(tls.cert_chain)[0]
    except (OSError, ValueError, IndexError):
        return []  # cert.load says why
    subject = label(tls.cert_chain)
    http, other, ocsp = revocation_pointers(ours)
    if http or ocsp:
        named = ", ".join([*(f"CRL {url}" for url in http), *(f"OCSP {url}" for url in ocsp)])
        return [
            Finding(
                "ok",
                "cert.revocation",
                subject,
                f"our certificate names its revocation status at {named}; 'sipfed doctor --live' fetches each "
                "as the far side will",
            )
        ]
    lync = [peer.name for peer in config.trust.peers if peer.microsoft]
    only = f" (only {', '.join(other)}, which partners outside our network cannot reach)" if other else ""
    return [
        Finding(
            "warning" if lync else "ok",
            "cert.revocation",
            subject,
            f"our certificate names no http CRL distribution point{only} and no OCSP responder: peers that "
            f"require revocation checking (Lync does by default{': ' + ', '.join(lync) if lync else ''}) may "
            "refuse it, unless they hold our CA's CRL locally",
            NO_POINTER_FIX if lync else "",
        )
    ]


def revocation_pointers(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    """RFC 5280 §4.2.1.13 and §4.2.2.1: the certificate's http CRL distribution points, its other ones
    (ldap, file), and its OCSP responders."""
    uris = crl_point_uris(cert)
    http = [uri for uri in uris if uri.lower().startswith("http://")]
    return http, [uri for uri in uris if uri not in http], list(ocsp_urls(cert))
