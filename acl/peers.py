"""The trusted-peer table: CUP's *TLS Peer Subjects* + *Peer Auth Security Context*, Lync's
*Trusted Application Pool* with ``-TreatAsAuthenticated``, in one place."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from acl.allow import AclEntry, Network, first_match
from acl.digest import DigestServer
from acl.subjects import CertIdentity, SubjectPattern


@dataclass(frozen=True, slots=True)
class TrustedPeer:
    """A peer server, bound to a connection by its verified certificate."""

    name: str
    """Used in logs, metrics, ACL entries (``{peer = "lync"}``)."""
    subjects: tuple[SubjectPattern, ...]
    """Certificate subjects that identify it (any one matches)."""
    networks: tuple[Network, ...] = ()
    """Source networks it connects from; empty: anywhere. Alone (no subjects) they bind TCP/UDP peers."""
    domains: tuple[str, ...] = ()
    """SIP domains it may speak for (From header domain); empty: any."""
    treat_as_authenticated: bool = True
    """Its requests need no digest (Lync's ``-TreatAsAuthenticated $true``)."""
    answers_digest: bool = True
    """False for peers that cannot answer a digest challenge (Lync): no 401/407 ever reaches them."""
    microsoft: bool = False
    """A Lync / Skype for Business server: sipfed's own error responses to it carry ``ms-diagnostics-public``
    ([MS-OCER] §2.2.1.2, proxy/relay/ms_diagnostics.py), which its Snooper and CLS logs show."""

    def matches(self, identity: CertIdentity, source_ip: str) -> bool:
        if self.networks and not _in_networks(source_ip, self.networks):
            return False
        if not self.subjects:
            return bool(self.networks)
        return any(pattern.matches(identity) for pattern in self.subjects)

    def may_speak_for(self, domain: str) -> bool:
        domain = domain.lower()
        return not self.domains or any(domain == d or domain.endswith("." + d) for d in self.domains)


def _in_networks(source_ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


@dataclass(frozen=True, slots=True)
class Credential:
    """Credentials sipfed uses to answer a next hop's challenge on behalf of a peer that cannot."""

    route: str
    """The static route (by name) whose next hop challenges."""
    username: str
    password: str
    realm: str | None = None
    """Only answer challenges for this realm; None: any realm."""


@dataclass(frozen=True, slots=True)
class Trust:
    """Everything the trust decisions need."""

    peers: tuple[TrustedPeer, ...] = ()
    incoming: tuple[AclEntry, ...] = ()
    """Sources never challenged (CUP's Incoming ACL)."""
    outgoing: tuple[AclEntry, ...] = ()
    """Sources toward which a next hop's 401/407 is never forwarded (CUP's Outgoing ACL)."""
    digest: DigestServer | None = None
    """Our realm, when sipfed challenges; None: it never does."""
    credentials: tuple[Credential, ...] = ()

    def bind(self, identity: CertIdentity, source_ip: str) -> TrustedPeer | None:
        """The first peer whose subjects (and networks) match a connection; None if none does."""
        for peer in self.peers:
            if peer.matches(identity, source_ip):
                return peer
        return None

    def peer(self, name: str | None) -> TrustedPeer | None:
        for peer in self.peers:
            if peer.name == name:
                return peer
        return None

    def exempt(
        self, source_ip: str, identity: CertIdentity, peer: str | None, method: str, route: str | None = None
    ) -> AclEntry | None:
        return first_match(self.incoming, source_ip, identity, peer, method, route)

    def shield(
        self, source_ip: str, identity: CertIdentity, peer: str | None, method: str, route: str | None = None
    ) -> bool:
        """True when a challenge must never be forwarded to this source."""
        bound = self.peer(peer)
        if bound is not None and not bound.answers_digest:
            return True
        return first_match(self.outgoing, source_ip, identity, peer, method, route) is not None

    def credential_for(self, route: str | None, realm: str) -> Credential | None:
        for credential in self.credentials:
            if credential.route == route and credential.realm in (None, realm):
                return credential
        return None
