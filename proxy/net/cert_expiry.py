"""The not-after times behind ``sipfed_certificate_expiry_timestamp_seconds``: our certificates, read from their
files at start and on each reload, and the certificate each trusted peer and each route's next hop last showed.

Every series is named from configuration only (a listener, ``xmpp``, a [[peers]] or a route name), never by a
certificate subject or an address, so the label set stays as small as the config file.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from proxy.config import Config
from proxy.relay.observe import Observer
from proxy.x509 import load_certificate

log = logging.getLogger("sipfed")


def our_certificates(config: Config) -> dict[str, Path]:
    """The chain file each of our sides shows, by name: every TLS listener shows [tls] cert_chain; ``xmpp`` is
    listed only when [xmpp] cert_chain is a file of its own (else the XMPP side shows [tls]'s, listed already)."""
    files: dict[str, Path] = {}
    if config.tls is not None:
        files = {lst.name: config.tls.cert_chain for lst in config.listeners if lst.transport == "tls"}
    own = config.xmpp.cert_chain if config.xmpp is not None else None
    if own is not None and (config.tls is None or own != config.tls.cert_chain):
        files["xmpp"] = own
    return files


def file_not_after(path: Path) -> float:
    """The not-after time (Unix seconds) of a PEM chain file's first certificate: the leaf, ours."""
    return load_certificate(path).not_valid_after_utc.timestamp()


def report_ours(observer: Observer, config: Config, previous: Config) -> None:
    """At start and after each reload: our certificates' not-after times, read again (a renewed file shows at
    once), and the series of names gone since ``previous`` removed (an [xmpp] cert_chain, a peer, a route), so
    no alert stays on for a certificate sipfed no longer uses or meets."""
    files = our_certificates(config)
    for name, path in files.items():
        try:
            not_after = file_not_after(path)
        except (OSError, ValueError) as exc:  # the TLS context loaded it: a file changed since, or odd DER
            log.warning("cannot read the expiry of %s (%s) for the metrics: %s", path, name, exc)
            continue
        observer.certificate_expiry("ours", name, not_after)
    peers, routes = {peer.name for peer in config.trust.peers}, {route.name for route in config.routes}
    gone = [("ours", name) for name in our_certificates(previous) if name not in files]
    gone += [("peer", peer.name) for peer in previous.trust.peers if peer.name not in peers]
    gone += [("route", route.name) for route in previous.routes if route.name not in routes]
    for role, name in gone:
        observer.certificate_expiry(role, name, None)


def report_seen(observer: Observer, role: str, name: str, ssl_object: ssl.SSLObject | None) -> None:
    """The verified certificate the other end of a connection showed: role ``peer`` (an inbound connection bound
    to the [[peers]] entry ``name``) or ``route`` (a next hop of route ``name``). Nothing when none was verified
    (``getpeercert()`` is empty then)."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if cert and "notAfter" in cert:
        observer.certificate_expiry(role, name, float(ssl.cert_time_to_seconds(str(cert["notAfter"]))))
