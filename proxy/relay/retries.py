"""Requests the core sends again on its own, as new client transactions of the same server transaction:

- to the next candidate of a pool or DNS route, after a 503 or a connection lost with the request on
  it (RFC 3263 §4.3), keeping the first try's deadline;
- with sipfed's credentials, after a next hop's 401/407 that the sender cannot answer (RFC 3261 §22.2),
  or a 403 naming why not (trust rule 4: a Lync peer never sees an MD5 challenge).

A mixin of ``proxy.relay.core.Proxy``: the attributes and methods declared below are the Proxy's.
"""

from __future__ import annotations

import itertools
import logging
import re

from acl.peers import Trust
from proxy.relay.challenges import CSeqShifts, challenge_realm, retried_request
from proxy.relay.forwarding import BRANCH_PREFIX, RelayPolicy, new_branch
from proxy.relay.local import log_fields, with_branch
from proxy.relay.observe import Observer
from proxy.relay.state import ClientTx, ServerTx
from proxy.relay.types import Flow, HopUnavailable, Output
from proxy.sip.message import Response

log = logging.getLogger("sipfed.relay")

#: RFC 3263 §4.3: how many candidates of a pool or DNS route one request tries, at most.
MAX_ATTEMPTS = 4
_RETRY_AFTER_RE = re.compile(r"\s*(\d{1,6})")


class Retries:
    """Failover and digest answers for ``Proxy``."""

    policy: RelayPolicy
    trust: Trust
    observer: Observer
    cseq_shifts: CSeqShifts
    _outputs: list[Output]
    _ids: itertools.count[int]
    _by_id: dict[int, ClientTx]

    def _start_client(self, ctx: ClientTx, now: float) -> None:
        raise NotImplementedError

    def _end_client(self, ctx: ClientTx) -> None:
        raise NotImplementedError

    def _respond(self, stx: ServerTx, status: int, reason: str, now: float,
                 extra: tuple[tuple[str, str], ...] = ()) -> None:
        raise NotImplementedError

    def hop_failed(self, token: int, reason: str, now: float, kind: str = "other") -> None:
        raise NotImplementedError

    # -- RFC 3263 §4.3 failover -----------------------------------------------------------------

    def _fail_over(self, ctx: ClientTx, stx: ServerTx, response: Response, flow: Flow, now: float) -> bool:
        """RFC 3263 §4.3: a 503 from one candidate of a pool or DNS route sends the request to the next
        candidate, in the same server transaction, with the first try's deadline (so the sender still
        gets its final response before its own Timer F); the edge marks the candidate down."""
        if not self._may_retry(ctx):
            return False
        match = _RETRY_AFTER_RE.match(response.headers.get("retry-after") or "")
        retry_after = int(match.group(1)) if match else None
        self._outputs.append(HopUnavailable(flow, ctx.hop.route or "", retry_after, response.reason))
        self.observer.hop_failure(ctx.hop.route or "", "unavailable")
        self._retry_next(ctx, stx, f"{flow.remote[0]}:{flow.remote[1]} answered 503 {response.reason}", now)
        return True

    def unanswered(self, tokens: list[int]) -> list[int]:
        """Those of ``tokens`` whose client transaction still waits for its final response."""
        by_id = self._by_id
        return [t for t in tokens if t in by_id and not by_id[t].final_status]

    def connection_lost(self, tokens: list[int], reason: str, now: float) -> None:
        """A connection closed with these requests sent on it and unanswered (a transport error, RFC 3261
        §8.1.3.1): pool and DNS routes retry them on the next candidate (RFC 3263 §4.3), others get 503."""
        for token in tokens:
            ctx = self._by_id.get(token)
            if ctx is None or ctx.final_status:
                continue
            stx = ctx.server
            if ctx.probe or stx is None or stx.final_status or not self._may_retry(ctx) or ctx.provisional:
                self.hop_failed(token, reason, now)
                continue
            self._end_client(ctx)
            self.observer.hop_failure(ctx.hop.route or "", "other")
            self._retry_next(ctx, stx, reason, now)

    def _may_retry(self, ctx: ClientTx) -> bool:
        route = self.policy.routes.by_name.get(ctx.hop.route or "")
        if route is None or not ctx.hop.failover or ctx.attempt >= MAX_ATTEMPTS:
            return False
        return not route.destinations or ctx.attempt < len(route.destinations)  # each destination once

    def _retry_next(self, ctx: ClientTx, stx: ServerTx, why: str, now: float) -> None:
        route = ctx.hop.route
        cid = next(self._ids)
        branch = new_branch(ctx.branch[len(BRANCH_PREFIX):].split(".", 1)[0], cid)
        retry = with_branch(ctx.request, ctx.branch, branch)
        log.info("%s: %s; trying the next candidate of route %s (attempt %d)", ctx.method, why, route,
                 ctx.attempt + 1, extra=log_fields(retry.call_id, stx.flow, route))
        self._start_client(ClientTx(cid, branch, ctx.method, ctx.hop, retry.to_bytes(), retry, stx,
                                    original_cseq=ctx.original_cseq, challenged=ctx.challenged,
                                    attempt=ctx.attempt + 1, deadline=ctx.deadline), now)

    # -- challenges from next hops ------------------------------------------------------------

    def _absorb_challenge(self, ctx: ClientTx, stx: ServerTx, response: Response, now: float) -> bool:
        """A 401/407 for a source that cannot answer digest never reaches it (trust rule 4).

        With credentials for the route, sipfed answers and re-sends the request with the next CSeq
        (RFC 3261 §22.2, §8.1.3.5), remembering the shift for the rest of the dialog; without, 403.
        """
        request = stx.request
        flow = stx.flow
        if not self.trust.shield(flow.remote[0], flow.identity, flow.peer, request.method, ctx.hop.route):
            return False
        header = "www-authenticate" if response.status == 401 else "proxy-authenticate"
        challenge = response.headers.get(header) or ""
        realm = challenge_realm(challenge)
        credential = self.trust.credential_for(ctx.hop.route, realm)
        if credential is None or ctx.challenged or not challenge:
            why = "sipfed's own credentials were refused" if ctx.challenged else (
                f"no [[acl.credentials]] for route {ctx.hop.route or ctx.hop.host} realm {realm or '?'}")
            log.warning("%s: next hop %s challenged (%d) on behalf of %s, which cannot answer digest; %s",
                        request.method, ctx.hop, response.status, flow.peer or flow.remote[0], why,
                        extra=log_fields(request.call_id, flow, ctx.hop.route))
            self._respond(stx, 403, f"Forbidden (next hop demanded digest authentication the sender cannot "
                                    f"answer: {why})", now)
            self.observer.shielded("blocked")
            return True
        self.observer.shielded("answered")
        self._retry_with_credentials(ctx, stx, response.status, challenge, credential.username,
                                     credential.password, now)
        return True

    def _retry_with_credentials(self, ctx: ClientTx, stx: ServerTx, status: int, challenge: str, username: str,
                                password: str, now: float) -> None:
        cid = next(self._ids)
        branch = new_branch(ctx.branch[len(BRANCH_PREFIX):].split(".", 1)[0], cid)
        retry = retried_request(ctx.request, ctx.branch, branch, status, challenge, username, password)
        self.cseq_shifts.shift(retry.call_id, retry.from_.param("tag") or "")
        original = ctx.original_cseq or stx.request.headers.get("cseq")
        retry_ctx = ClientTx(cid, branch, retry.method, ctx.hop, retry.to_bytes(), retry, stx,
                             original_cseq=original, challenged=True)
        log.info("%s: answered the %d of %s as %s", retry.method, status, ctx.hop, username,
                 extra=log_fields(retry.call_id, stx.flow, ctx.hop.route))
        self._start_client(retry_ctx, now)
