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


def admit(
    request: Request,
    flow: Flow,
    trust: Trust,
    untrusted: str,
    now: float,
    route: str | None = None,
    observer: Observer | None = None,
    wall: float | None = None,
) -> None:
    """Raise SipError (403 or 407) unless the request may be relayed (toward ``route``, if known); ``wall`` is
    the wall-clock time that dates our digest nonces (RFC 7616 §3.3), so no restart revives an old one."""
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
    if trust.digest is not None and _credentials_ok(request, trust, now, observer, flow.remote[0], wall):
        return
    if untrusted == "admit":
        return
    if untrusted == "challenge" and trust.digest is not None:
        if stateless:
            raise SipError(
                f"Forbidden ({request.method} cannot be challenged, and the source is neither a "
                "trusted peer nor exempt)",
                403,
            )
        if trust.shield(flow.remote[0], flow.identity, flow.peer, request.method, route):
            raise SipError("Forbidden (source cannot answer a digest challenge and is not exempt)", 403)
        challenges = tuple(("Proxy-Authenticate", c) for c in trust.digest.challenges(now, wall=wall))
        observer.digest("challenged")
        raise SipError("Proxy Authentication Required", 407, challenges)
    raise SipError("Forbidden (not a trusted peer, not exempt, no credentials)", 403)


def _credentials_ok(
    request: Request, trust: Trust, now: float, observer: Observer, source: str | None = None, wall: float | None = None
) -> bool:
    """§22.3: check our realm's Proxy-Authorization; consume it when good, raise on bad/stale/replay/locked out.

    ``source`` (the flow's address) adds the per-source throttle to the per-user one; ``wall`` (wall-clock
    seconds) dates nonces, and must then be what the challenge's nonce was dated with (acl.digest rules)."""
    digest = trust.digest
    assert digest is not None
    for value in request.headers.get_all("proxy-authorization"):
        verdict, user = digest.verify(request.method, value, now, request.uri, source=source, wall=wall)
        if verdict is Verdict.OTHER_REALM:
            continue
        if verdict is Verdict.THROTTLED:
            _refuse_locked_out(trust, user, now, source, observer)
        observer.digest(_OUTCOMES.get(verdict, "failed"))
        if verdict is Verdict.OK:
            _check_from(request, trust, user)
            request.headers.items = [
                item for item in request.headers.items if not (item[0] == "proxy-authorization" and item[2] == value)
            ]
            return True
        if verdict is Verdict.STALE:  # RFC 7616 §3.3: expired, or issued before a restart or reload
            challenges = tuple(("Proxy-Authenticate", c) for c in digest.challenges(now, stale=True, wall=wall))
            raise SipError("Proxy Authentication Required (nonce expired)", 407, challenges)
        if verdict is Verdict.URI_MISMATCH:
            raise SipError("Bad Request (digest uri is not the Request-URI)", 400)
        if verdict is Verdict.REPLAY:
            raise SipError(f"Forbidden (nonce count replayed by {user or 'unknown user'})", 403)
        raise SipError(f"Forbidden (wrong credentials for realm {digest.realm})", 403)
    return False


_OUTCOMES = {Verdict.OK: "passed", Verdict.STALE: "stale", Verdict.REPLAY: "replayed"}


def _refuse_locked_out(trust: Trust, user: str, now: float, source: str | None, observer: Observer) -> None:
    """RFC 7616 §5.7: past the failure limit every attempt is refused, the password unchecked, until the
    lockout ends. 403 rather than 503: a 503 would send a client to another server (RFC 3263 §4.3)."""
    assert trust.digest is not None
    scope, seconds = trust.digest.lockout(user, now, source) or ("user", 0)
    observer.digest_throttled(scope)
    who = f"from {source}" if scope == "source" else f"for user {user}"
    raise SipError(f"Forbidden (too many failed digest attempts {who}; retry in {seconds} s)", 403)


def _check_from(request: Request, trust: Trust, user: str) -> None:
    """A digest user speaks only for the From identities configured for it (acl.digest rule 5): a password
    proves who sends, not whom the request claims to be from."""
    assert trust.digest is not None
    uri = request.from_.uri
    from_user = (uri.user or "").partition(":")[0]  # userinfo may carry ":password" (RFC 3261 §19.1.1)
    if not trust.digest.may_use_from(user, from_user, uri.host):
        shown = f"{uri.scheme}:{from_user}@{uri.host}" if from_user else f"{uri.scheme}:{uri.host or uri.opaque}"
        raise SipError(f"Forbidden (user {user} may not use From {shown})", 403)
