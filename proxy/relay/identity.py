"""Asserted identity across the trust boundary (RFC 3325).

Rules:
1. sipfed's Trust Domain (RFC 3325 §2.3) is the trusted peers: connections bound to a ``[[peers]]`` entry by
   their verified certificate. Anyone else (anonymous, digest-authenticated, exempt by ACL) is outside it.
2. A ``P-Asserted-Identity`` or ``P-Preferred-Identity`` value is relayed only from a trusted peer, and only
   for a domain that peer may speak for (its ``domains``). Every other value is removed before the request
   is forwarded (§5: a proxy removes an asserted identity received from an element outside the Trust
   Domain), counted, and logged; the request itself goes on, as a request without an assertion would.
"""

from __future__ import annotations

from acl.peers import TrustedPeer
from proxy.sip.errors import SipError
from proxy.sip.headers import parse_name_addr, split_commas
from proxy.sip.message import Request

IDENTITY_HEADERS = frozenset({"p-asserted-identity", "p-preferred-identity"})


def screen_identities(request: Request, peer: TrustedPeer | None) -> list[str]:
    """Remove the identity values the source may not assert (rule 2); return what was removed."""
    items = request.headers.items
    for item in items:  # a plain loop: on the hot path, any() over a generator costs twice as much
        if item[0] in IDENTITY_HEADERS:
            break
    else:
        return []
    removed: list[str] = []
    kept: list[tuple[str, str, str]] = []
    for item in items:
        if item[0] not in IDENTITY_HEADERS:
            kept.append(item)
            continue
        allowed: list[str] = []
        for value in split_commas(item[2]):
            (allowed if _may_assert(peer, value) else removed).append(value)
        if allowed:
            kept.append((item[0], item[1], ", ".join(allowed)))
    request.headers.items = kept
    return removed


def _may_assert(peer: TrustedPeer | None, value: str) -> bool:
    if peer is None:
        return False
    if not peer.domains:
        return True  # a peer trusted for every domain
    try:
        uri = parse_name_addr(value).uri
    except SipError:
        return False  # a tel: URI or a malformed value: no domain to hold it to
    return peer.may_speak_for(uri.host)
