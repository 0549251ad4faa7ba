"""Topology sense (issue 16): which side each listener faces, so a peer on the wrong listener is named.

The field notes' topology has one listener per side: CUP's static route for tomt.it points at sipfed's
Cisco-facing listener, the Lync pool's static route for tomt.local at the Lync-facing one. A listener *faces*
the trusted peers whose domains the routes leaving by that listener serve: the route ``lync`` (match
``tomt.it``, listener ``lync``) makes listener ``lync`` face peer ``lync`` (domains ``tomt.it``). A peer that
connects to a listener facing other peers has its static route pointed at the wrong listener: sipfed relays
(the peer is still trusted) but shows it the wrong side's identity (Via, Record-Route, ``maddr``).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config.model import Config


@dataclass(frozen=True, slots=True)
class Topology:
    """Which listener faces which trusted peers."""

    faces: dict[str, frozenset[str]]
    """Listener name -> the names of the peers it faces; a listener no route leaves by is absent (unknown)."""
    addresses: dict[str, str]
    """Listener name -> ``address:port`` as configured, for the words."""

    def expected_listeners(self, peer: str) -> list[str]:
        """The listeners that face ``peer`` (where its static route should point)."""
        return sorted(name for name, peers in self.faces.items() if peer in peers)

    def misplaced(self, listener: str, peer: str) -> str:
        """Words for ``peer`` arriving on ``listener`` when that listener faces others; '' when it is fine or
        unknown (the listener faces nobody known, or no listener faces this peer)."""
        facing = self.faces.get(listener)
        expected = self.expected_listeners(peer)
        if not facing or peer in facing or not expected:
            return ""
        others = ", ".join(sorted(facing))
        where = " or ".join(f"{name} ({self.addresses.get(name, '?')})" for name in expected)
        return (
            f"peer {peer} connected to listener {listener} ({self.addresses.get(listener, '?')}), which faces "
            f"{others}: its static route toward sipfed should name listener {where}; until then it sees "
            f"{listener}'s identity in Via, Record-Route and maddr"
        )


def topology(config: Config) -> Topology:
    """The faces of every listener, from the routes and the peers' domains."""
    domains_by_listener: dict[str, set[str]] = {}
    for route in config.routes:
        if route.listener is not None:
            domains_by_listener.setdefault(route.listener, set()).add(route.match_uri.lower().lstrip("*."))
    faces: dict[str, frozenset[str]] = {}
    for listener, domains in domains_by_listener.items():
        peers = {
            peer.name
            for peer in config.trust.peers
            if peer.subjects or peer.networks
            if any(peer.may_speak_for(domain) for domain in domains) and peer.domains
        }
        if peers:
            faces[listener] = frozenset(peers)
    addresses = {lst.name: f"{lst.address}:{lst.port}" for lst in config.listeners}
    return Topology(faces, addresses)
