"""Who may relay (RFC 3261 §16.3 step 5, §22.3), and what happens to a next hop's challenge.

Rules:
1. A trusted peer (bound by its verified certificate) may only speak for its own domains: 403 otherwise.
2. A trusted peer with ``treat_as_authenticated``, or a source the incoming ACL exempts, is never challenged.
3. Anyone else proves itself with digest credentials (407 to ask), or gets the listener's policy.
4. A challenge is never sent to a source that cannot answer one (``answers_digest = false`` or the
   outgoing ACL): sipfed answers it with configured credentials, or turns it into 403 with the cause.
CANCEL is never challenged (§22.1); ACK and BENOTIFY pass the same rules but are refused where a challenge
would be due (nobody answers them).
"""

from __future__ import annotations

from acl.digest import Verdict
from acl.peers import Trust
from proxy.relay.observe import Observer
from proxy.relay.types import Flow
from proxy.sip.errors import SipError
from proxy.sip.message import Request


def admit(request: Request, flow: Flow, trust: Trust, untrusted: str, now: float, route: str | None = None,
          observer: Observer | None = None) -> None:
    """Raise SipError (403 or 407) unless the request may be relayed (toward ``route``, if known)."""
    observer = observer or Observer()
    if request.method == "CANCEL":
        return  # §22.1: never challenged; the core lets only the INVITE's own sender cancel it
    # ACK and BENOTIFY travel statelessly: they pass every rule below, but cannot be challenged (§22.1;
    # nobody would answer a 407): where a challenge would be due, they are refused.
    stateless = request.method in ("ACK", "BENOTIFY")
    peer = trust.peer(flow.peer)
    if peer is not None:
        domain = request.from_.uri.host.lower()
        if not peer.may_speak_for(domain):
            raise SipError(f"Forbidden (peer {peer.name} may not speak for domain {domain})", 403)
        if peer.treat_as_authenticated:
            return
    if trust.exempt(flow.remote[0], flow.identity, flow.peer, request.method, route) is not None:
        return
    if trust.digest is not None and _credentials_ok(request, trust, now, observer):
        return
    if untrusted == "admit":
        return
    if untrusted == "challenge" and trust.digest is not None:
        if stateless:
            raise SipError(f"Forbidden ({request.method} cannot be challenged, and the source is neither a "
                           "trusted peer nor exempt)", 403)
        if trust.shield(flow.remote[0], flow.identity, flow.peer, request.method, route):
            raise SipError("Forbidden (source cannot answer a digest challenge and is not exempt)", 403)
        challenges = tuple(("Proxy-Authenticate", c) for c in trust.digest.challenges(now))
        observer.digest("challenged")
        raise SipError("Proxy Authentication Required", 407, challenges)
    raise SipError("Forbidden (not a trusted peer, not exempt, no credentials)", 403)


def _credentials_ok(request: Request, trust: Trust, now: float, observer: Observer) -> bool:
    """§22.3: check our realm's Proxy-Authorization; consume it when good, raise on bad/stale/replay."""
    digest = trust.digest
    assert digest is not None
    for value in request.headers.get_all("proxy-authorization"):
        verdict, user = digest.verify(request.method, value, now, request.uri)
        if verdict is Verdict.OTHER_REALM:
            continue
        observer.digest({Verdict.OK: "passed", Verdict.STALE: "stale", Verdict.REPLAY: "replayed"}.get(
            verdict, "failed"))
        if verdict is Verdict.OK:
            request.headers.items = [item for item in request.headers.items
                                     if not (item[0] == "proxy-authorization" and item[2] == value)]
            return True
        if verdict is Verdict.STALE:
            challenges = tuple(("Proxy-Authenticate", c) for c in digest.challenges(now, stale=True))
            raise SipError("Proxy Authentication Required (nonce expired)", 407, challenges)
        if verdict is Verdict.URI_MISMATCH:
            raise SipError("Bad Request (digest uri is not the Request-URI)", 400)
        if verdict is Verdict.REPLAY:
            raise SipError(f"Forbidden (nonce count replayed by {user or 'unknown user'})", 403)
        raise SipError(f"Forbidden (wrong credentials for realm {digest.realm})", 403)
    return False
