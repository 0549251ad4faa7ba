"""Requests the core sends again on its own, as new client transactions of the same server transaction:

- to the next candidate of a pool or DNS route, when ``proxy.relay.failover.Failover`` says so after a
  503 or a connection lost with the request on it (RFC 3263 §4.3), keeping the first try's deadline;
- with sipfed's credentials, after a next hop's 401/407 that the sender cannot answer (RFC 3261 §22.2),
  or a 403 naming why not (trust rule 4: a Lync peer never sees an MD5 challenge).

Plain functions: each takes what it needs and returns the new client transaction, or the decision;
``Proxy`` starts it (or answers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from acl.peers import Trust
from proxy.relay.challenges import CSeqShifts, challenge_realm, retried_request
from proxy.relay.forwarding import BRANCH_PREFIX, new_branch
from proxy.relay.local import log_fields, with_branch
from proxy.relay.observe import Observer
from proxy.relay.state import ClientTx, ServerTx
from proxy.sip.message import Response

log = logging.getLogger("sipfed.relay")


@dataclass(frozen=True, slots=True)
class Credentials:
    """Trust rule 4: sipfed answers a next hop's challenge itself, with the route's credentials."""

    status: int
    """The challenge's status: 401 (WWW-Authenticate) or 407 (Proxy-Authenticate)."""
    challenge: str
    """The challenge header field's value."""
    username: str
    """From ``[[acl.credentials]]`` for the route and realm."""
    password: str
    """Likewise."""


def next_try(ctx: ClientTx, stx: ServerTx, cid: int, attempt: int, why: str) -> ClientTx:
    """RFC 3263 §4.3: ``ctx``'s request for the route's next candidate: try ``attempt`` as client
    transaction ``cid`` with a new branch, the first try's deadline kept (so the sender still gets its
    final response before its own Timer F)."""
    branch = new_branch(ctx.branch[len(BRANCH_PREFIX) :].split(".", 1)[0], cid)
    retry = with_branch(ctx.request, ctx.branch, branch)
    log.info(
        "%s: %s; trying the next candidate of route %s (attempt %d)",
        ctx.method,
        why,
        ctx.hop.route,
        attempt,
        extra=log_fields(retry.call_id, stx.flow, ctx.hop.route),
    )
    return ClientTx(
        cid,
        branch,
        ctx.method,
        ctx.hop,
        retry.to_bytes(),
        retry,
        stx,
        original_cseq=ctx.original_cseq,
        challenged=ctx.challenged,
        attempt=attempt,
        deadline=ctx.deadline,
    )


def shield_challenge(
    ctx: ClientTx, stx: ServerTx, response: Response, trust: Trust, observer: Observer
) -> Credentials | str | None:
    """A 401/407 for a source that cannot answer digest never reaches it (trust rule 4).

    Returns None when the sender may see the challenge; the ``Credentials`` to answer it with (RFC 3261
    §22.2) when the route has some; else the reason phrase of the 403 the sender gets instead.
    """
    request = stx.request
    flow = stx.flow
    if not trust.shield(flow.remote[0], flow.identity, flow.peer, request.method, ctx.hop.route):
        return None
    header = "www-authenticate" if response.status == 401 else "proxy-authenticate"
    challenge = response.headers.get(header) or ""
    realm = challenge_realm(challenge)
    credential = trust.credential_for(ctx.hop.route, realm)
    if credential is None or ctx.challenged or not challenge:
        why = (
            "sipfed's own credentials were refused"
            if ctx.challenged
            else (f"no [[acl.credentials]] for route {ctx.hop.route or ctx.hop.host} realm {realm or '?'}")
        )
        log.warning(
            "%s: next hop %s challenged (%d) on behalf of %s, which cannot answer digest; %s",
            request.method,
            ctx.hop,
            response.status,
            flow.peer or flow.remote[0],
            why,
            extra=log_fields(request.call_id, flow, ctx.hop.route),
        )
        observer.shielded("blocked")
        return f"Forbidden (next hop demanded digest authentication the sender cannot answer: {why})"
    observer.shielded("answered")
    return Credentials(response.status, challenge, credential.username, credential.password)


def with_credentials(ctx: ClientTx, stx: ServerTx, answer: Credentials, cseq_shifts: CSeqShifts, cid: int) -> ClientTx:
    """RFC 3261 §22.2, §8.1.3.5: ``ctx``'s request again as client transaction ``cid``, with the next
    CSeq and an Authorization (or Proxy-Authorization) answering the challenge; ``cseq_shifts`` remembers
    the shift for the rest of the dialog."""
    branch = new_branch(ctx.branch[len(BRANCH_PREFIX) :].split(".", 1)[0], cid)
    retry = retried_request(
        ctx.request, ctx.branch, branch, answer.status, answer.challenge, answer.username, answer.password
    )
    cseq_shifts.shift(retry.call_id, retry.from_.param("tag") or "")
    original = ctx.original_cseq or stx.request.headers.get("cseq")
    log.info(
        "%s: answered the %d of %s as %s",
        retry.method,
        answer.status,
        ctx.hop,
        answer.username,
        extra=log_fields(retry.call_id, stx.flow, ctx.hop.route),
    )
    return ClientTx(
        cid, branch, retry.method, ctx.hop, retry.to_bytes(), retry, stx, original_cseq=original, challenged=True
    )
