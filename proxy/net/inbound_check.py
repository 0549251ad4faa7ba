"""What an inbound TLS connection tells about the federation's setup, said once per connection (issue 16):

- a trusted peer on the listener that faces the other side (its static route names the wrong listener);
- a certificate that verifies but no ``[[peers]]`` entry names: its names, the source, and the entry that
  would admit it;
- no certificate at all on a listener that does not require one, where trusted peers are expected: the peer
  cannot be bound, and its requests get the untrusted policy (``require_client_cert = true`` is the fix).

Each is a warning (rate-limited per kind and listener) and ``sipfed_topology_problems_total{listener,kind}``.
"""

from __future__ import annotations

import logging

from acl.peers import TrustedPeer
from acl.subjects import CertIdentity
from proxy.config.topology import Topology
from proxy.relay.limits import WarnLimiter
from proxy.relay.observe import Observer

log = logging.getLogger("sipfed.net")


def check_inbound(
    topology: Topology,
    listener: str,
    client_cert_required: bool,
    identity: CertIdentity,
    bound: TrustedPeer | None,
    source: tuple[str, int],
    warnings: WarnLimiter,
    observer: Observer,
    now: float,
) -> None:
    """The three cases of the module docstring, for one connection that just completed its handshake."""
    kind, words = _finding(topology, listener, client_cert_required, identity, bound)
    if not kind:
        return
    observer.topology_problem(listener, kind)
    warnings.warn(log, f"{kind} {listener} {bound.name if bound else ''}", now, "%s (from %s:%d)", words, *source)


def _finding(
    topology: Topology, listener: str, required: bool, identity: CertIdentity, bound: TrustedPeer | None
) -> tuple[str, str]:
    if bound is not None:
        words = topology.misplaced(listener, bound.name)
        return ("wrong_listener", words) if words else ("", "")
    if identity.names:
        name = next((n for n in identity.names if not n.replace(".", "").isdigit()), identity.names[0])
        return "unlisted_certificate", (
            f"TLS client on listener {listener} presented a verified certificate {identity.describe()} that no "
            f"[[peers]] entry names: it is no trusted peer (its requests get the listener's untrusted policy); "
            f'to trust it, add [[peers]] name = "{name.split(".")[0]}", subjects = ["{name}"], '
            'domains = ["<the SIP domains it speaks for>"]'
        )
    if not required and topology.faces.get(listener):
        peers = ", ".join(sorted(topology.faces[listener]))
        return "no_certificate", (
            f"TLS client on listener {listener}, which faces {peers}, presented no certificate: the listener "
            "does not require one (require_client_cert = false), so the peer cannot be bound and gets the "
            "untrusted policy (Lync then sees 403); set require_client_cert = true on that listener"
        )
    return "", ""
