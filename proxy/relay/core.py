"""The transaction-stateful proxy core (RFC 3261 §16, §17), with no I/O.

Driven like aioquic's connection: ``receive(flow, data, now)``, ``hop_failed(token, reason, now)``
and ``handle_timer(now)`` go in; ``take_outputs()`` and ``get_timer()`` come out.

Rules:
1. Every request that gets a server transaction ends in exactly one final response:
   the next hop's, or ours (4xx for what §16.3 refuses, 408 on timeout, 503 when the
   next hop cannot be reached). Nothing accepted is dropped silently.
2. A response is sent on the flow its request came in on (§18.2.2, RFC 5923).
3. ACK for a 2xx and responses with no transaction are never answered (§17).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import secrets

from acl.peers import Trust
from proxy.relay.challenges import CSeqShifts
from proxy.relay.failover import Failover
from proxy.relay.forwarding import (
    BRANCH_PREFIX,
    NoRoute,
    RelayPolicy,
    choose_next_hop,
    detect_loop,
    hop_for_uri,
    loop_hash,
    mark_received,
    new_branch,
    prepare_forward,
    process_routes,
    validate,
)
from proxy.relay.identity import screen_identities
from proxy.relay.limits import TokenBuckets, WarnLimiter
from proxy.relay.local import OPTIONS_EXTRA, health_check, hop_request, log_fields, reply_to_unparsed
from proxy.relay.ms_diagnostics import ms_diagnostics_public
from proxy.relay.observe import Observer, method_label
from proxy.relay.record_route import rewrite_maddr
from proxy.relay.retries import next_try, shield_challenge, with_credentials
from proxy.relay.state import ClientTx, RelaySettings, ServerTx, TxState
from proxy.relay.subscriptions import SubscriptionBook
from proxy.relay.trust import admit
from proxy.relay.types import (
    Flow,
    HopUnavailable,
    NextHop,
    Output,
    ProbeAnswer,
    RegisterAlias,
    SendOnFlow,
    SendToHop,
)
from proxy.sip.errors import SipError, SipSyntaxError
from proxy.sip.grammar import is_ip_literal
from proxy.sip.headers import parse_name_addr, via_branch
from proxy.sip.message import Request, Response, make_response, parse_message
from proxy.sip.parser import FramingError
from proxy.sip.transaction import (
    T1,
    T2,
    T4,
    TIMER_B,
    TIMER_H,
    TIMER_J,
    TIMER_L,
    DeadlineQueue,
    ServerKey,
    TimerQueue,
    server_key,
)

log = logging.getLogger("sipfed.relay")

#: Requests relayed without a transaction because nobody answers them: ACK for a 2xx (RFC 3261 §13.2.2.4)
#: and Lync's BENOTIFY, "a NOTIFY that does not expect a response" ([MS-SIP] §3.5).
STATELESS_METHODS = frozenset({"ACK", "BENOTIFY"})


class Proxy:
    """RFC 3261 §16 transaction-stateful proxy, one target per request (no forking)."""

    def __init__(
        self,
        policy: RelayPolicy,
        settings: RelaySettings | None = None,
        trust: Trust | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.policy = policy
        self.settings = settings or RelaySettings()
        self.trust = trust or Trust()
        self.observer = observer or Observer()
        self.cseq_shifts = CSeqShifts()
        self.failover = Failover()
        """RFC 3263 §4.3 for pool and DNS routes, shared with the edge: it connects, this decides."""
        self.timers = TimerQueue()
        self.subscriptions = SubscriptionBook(self.timers, self.observer)
        self.server_txs: dict[ServerKey, ServerTx] = {}
        self.client_txs: dict[tuple[str, str], ClientTx] = {}
        self._by_id: dict[int, ClientTx] = {}
        self._ids = itertools.count(1)
        self._outputs: list[Output] = []
        self._peer_flows: dict[tuple[str, int], Flow] = {}
        """Trusted peers' own flows by remote address: in-dialog targets they account for (forwarding rule 2)."""
        self.wall_offset = 0.0
        """Wall-clock time minus the ``now`` the edge passes in (the edge keeps it current): it dates digest
        nonces, which must outlive neither a restart nor a clock that ran on (RFC 7616 §3.3)."""
        self.draining = 0
        """0: serving; 1: draining (new out-of-dialog requests get 503); 2: every new request gets 503."""
        self._to_tag = secrets.token_hex(6)
        self._in_flight = 0
        self._timeout_log: dict[str, tuple[float, int]] = {}
        self._drop_log = WarnLimiter()
        self._completed: dict[ServerKey, tuple[str, tuple[str, int], str | None, bytes]] = {}
        """Non-INVITE server transactions over UDP in §17.2.2's Completed state: what to answer again."""
        self._completed_expiry: collections.deque[tuple[float, ServerKey]] = collections.deque()
        self._timeouts = DeadlineQueue()
        """Client transactions' timeouts (one delay for every non-INVITE request): no timer per transaction."""
        self._retransmits = DeadlineQueue()
        """First retransmissions over UDP (Timer A/E at T1); later ones, rarer, go on the heap."""
        self.configure(self.settings)

    def configure(self, settings: RelaySettings) -> None:
        """Apply (new) settings; rate-limit state is kept when the rates did not change."""
        old = getattr(self, "_buckets", None)
        limits = settings.limits
        if old is None or self.settings.limits != limits:
            self._buckets = {
                "source": TokenBuckets(limits.per_source_rate, limits.per_source_rate * limits.burst_seconds),
                "peer": TokenBuckets(limits.per_peer_rate, limits.per_peer_rate * limits.burst_seconds),
            }
        self.settings = settings
        if hasattr(self, "_peer_flows"):
            self._peer_flows.clear()  # a reload may have unbound them: learnt again from admitted requests

    # -- the driver's interface ------------------------------------------------------------

    def take_outputs(self) -> list[Output]:
        outputs, self._outputs = self._outputs, []
        return outputs

    def pending(self) -> int:
        """Server transactions still waiting for their final response (draining, the in-flight cap)."""
        return self._in_flight

    def start_drain(self, dialogs_too: bool = False) -> None:
        """SIGTERM: new out-of-dialog requests get 503 with Retry-After from now on (RFC 3261 §21.5.4);
        with ``dialogs_too``, in-dialog ones as well (the end of the drain nears). ACK and CANCEL still
        pass: they finish what is in flight."""
        self.draining = 2 if dialogs_too else 1

    def answer_pending(self, now: float) -> int:
        """The drain's deadline: every server transaction still without a final response gets 503 now
        (rule 1: nothing accepted goes unanswered, not even at exit); returns how many were answered."""
        answered = 0
        for stx in list(self.server_txs.values()):
            if not stx.final_status:
                self._respond(
                    stx,
                    503,
                    "Service Unavailable (sipfed is shutting down)",
                    now,
                    (("Retry-After", str(self.settings.limits.retry_after_seconds)),),
                )
                answered += 1
        return answered

    def get_timer(self) -> float | None:
        deadline = self.timers.next_deadline()
        for queue in (self._timeouts, self._retransmits):
            first = queue.next_deadline(self._by_id) if queue else None
            if first is not None and (deadline is None or first < deadline):
                deadline = first
        return deadline

    def handle_timer(self, now: float) -> None:
        self.timers.run_due(now)
        by_id = self._by_id
        for cid in self._retransmits.pop_due(now):
            ctx = by_id.get(cid)
            if ctx is not None:
                self._retransmit(ctx, now)
        for cid in self._timeouts.pop_due(now):
            ctx = by_id.get(cid)
            if ctx is not None and not ctx.final_status:
                self._client_timeout(ctx, now)
        if self._completed:
            self._forget_completed(now)

    def _forget_completed(self, now: float) -> None:
        """Timer J ran out for the oldest completed non-INVITE server transactions over UDP."""
        expiry, completed = self._completed_expiry, self._completed
        while expiry and expiry[0][0] <= now:
            completed.pop(expiry.popleft()[1], None)

    def receive(self, flow: Flow, data: bytes, now: float, framed: bool = False) -> None:
        """One whole message from a flow (a stream message, ``framed`` when StreamFramer cut it, or a datagram)."""
        try:
            message = parse_message(
                data,
                datagram=flow.transport == "udp",
                max_headers=self.settings.max_headers,
                max_line_bytes=self.settings.max_header_line_bytes,
                framed=framed,
            )
        except SipError as exc:
            self.observer.malformed("response" if data.startswith(b"SIP/") else "request")
            self._reject_unparsed(flow, data, exc)
            return
        try:
            if isinstance(message, Response):
                self._on_response(message, flow, now)
            else:
                self._on_request(message, flow, now)
        except SipError as exc:  # a header the decisions needed did not parse
            if isinstance(message, Response):
                self.observer.malformed("response")
            self._reject_unparsed(flow, data, exc)

    def receive_framing_error(self, flow: Flow, error: FramingError) -> None:
        """The stream framer gave up on a message; answer it if its headers were read."""
        log.warning("from %s:%d: %s", *flow.remote, error.reason)
        self.observer.malformed("stream")
        if error.head:
            self._reject_unparsed(flow, error.head, error)

    def probe(self, hop: NextHop, now: float, timeout: float) -> int:
        """Send an OPTIONS health check to ``hop`` (RFC 3261 §11); its outcome comes out as a ``ProbeAnswer``
        with the returned token. Max-Forwards 0: the destination answers it itself and never relays
        it (§16.3 step 3), so a proxy that does not know its own name cannot bounce it around."""
        cid = next(self._ids)
        branch = new_branch("hc", cid)
        request = health_check(self.policy.identities[hop.listener], hop, branch, self._to_tag, cid)
        ctx = ClientTx(
            cid, branch, "OPTIONS", hop, request.to_bytes(), request, None, deadline=now + timeout, probe=True
        )
        self._start_client(ctx, now)
        return cid

    def hop_failed(self, token: int, reason: str, now: float, kind: str = "other") -> None:
        """The edge could not deliver to a next hop; ``kind``: connect_refused, tls_failure, timeout, other."""
        ctx = self._by_id.get(token)
        if ctx is None or ctx.final_status:
            return
        self._end_client(ctx)
        if ctx.probe:
            self._outputs.append(ProbeAnswer(ctx.id, 0, reason))
            return
        self.observer.hop_failure(ctx.hop.route or "dialog", kind)
        stx = ctx.server
        if stx is not None and not stx.final_status:
            # §16.9 treats this as a 503 from the hop; §16.7 step 6 allows passing a 503 upstream when
            # every later request would fail the same way, as it will toward a down static route.
            self._respond(stx, 503, f"Service Unavailable ({reason})", now)

    def unanswered(self, tokens: list[int]) -> list[int]:
        """Those of ``tokens`` whose client transaction still waits for its final response."""
        by_id = self._by_id
        return [t for t in tokens if t in by_id and not by_id[t].final_status]

    def connection_lost(self, tokens: list[int], reason: str, now: float) -> None:
        """A connection closed with these requests sent on it and unanswered (a transport error, RFC 3261
        §8.1.3.1): each goes to the next candidate when the failover says so (RFC 3263 §4.3), else 503."""
        for token in tokens:
            ctx = self._by_id.get(token)
            if ctx is None or ctx.final_status:
                continue
            stx = ctx.server
            retry = (
                None
                if ctx.probe or stx is None or stx.final_status
                else self.failover.after_loss(
                    self.policy.routes.by_name.get(ctx.hop.route or ""), ctx.hop, ctx.attempt, ctx.provisional
                )
            )
            if stx is None or retry is None:
                self.hop_failed(token, reason, now)
                continue
            self._end_client(ctx)
            self.observer.hop_failure(ctx.hop.route or "", "other")
            self._start_client(next_try(ctx, stx, next(self._ids), retry.attempt, reason), now)

    # -- retries: the next candidate (proxy/relay/failover.py), sipfed's credentials (retries.py) ---

    def _fail_over(self, ctx: ClientTx, stx: ServerTx, response: Response, flow: Flow, now: float) -> bool:
        """RFC 3263 §4.3: a 503 from a candidate of a pool or DNS route; the edge marks it down (the
        ``HopUnavailable`` first) and the request goes to the next, in the same server transaction."""
        route = self.policy.routes.by_name.get(ctx.hop.route or "")
        retry = self.failover.after_503(route, ctx.hop, ctx.attempt, response.headers.get("retry-after"))
        if retry is None:
            return False
        self._outputs.append(HopUnavailable(flow, ctx.hop.route or "", retry.retry_after, response.reason))
        self.observer.hop_failure(ctx.hop.route or "", "unavailable")
        why = f"{flow.remote[0]}:{flow.remote[1]} answered 503 {response.reason}"
        self._start_client(next_try(ctx, stx, next(self._ids), retry.attempt, why), now)
        return True

    def _absorb_challenge(self, ctx: ClientTx, stx: ServerTx, response: Response, now: float) -> bool:
        """Trust rule 4: a challenge the sender cannot answer is answered by sipfed, or refused with 403."""
        answer = shield_challenge(ctx, stx, response, self.trust, self.observer)
        if answer is None:
            return False
        if isinstance(answer, str):
            self._respond(stx, 403, answer, now)
        else:
            self._start_client(with_credentials(ctx, stx, answer, self.cseq_shifts, next(self._ids)), now)
        return True

    # -- requests ---------------------------------------------------------------------------

    def _on_request(self, request: Request, flow: Flow, now: float) -> None:
        mark_received(request, flow)
        if request.method in STATELESS_METHODS:
            self._on_ack(request, flow, now)
            return
        key = server_key(request)
        existing = self.server_txs.get(key)
        if existing is not None:  # §17.2.1/§17.2.2: a retransmission gets the last response again
            if existing.last_response is not None:
                self._outputs.append(SendOnFlow(existing.flow, existing.last_response, self._reply_via(existing)))
            return
        if self._completed:
            self._forget_completed(now)
            done = self._completed.get(key)
            if done is not None:  # §17.2.2 "Completed" state (Timer J)
                listener, remote, peer, last = done
                self._outputs.append(SendOnFlow(Flow("udp", listener, remote, 0, peer=peer), last))
                return
        stx = ServerTx(key, request, flow, request.method == "INVITE", now)
        self.server_txs[key] = stx
        self._in_flight += 1
        self.observer.request_received(method_label(request.method), flow.peer or "none")
        if request.method == "CANCEL":
            self._on_cancel(stx, now)
            return
        if self.draining and (self.draining > 1 or "tag=" not in (request.headers.get("to") or "")):
            self._refuse(
                stx,
                SipError(
                    "Service Unavailable (sipfed is shutting down)",
                    503,
                    (("Retry-After", str(self.settings.limits.retry_after_seconds)),),
                ),
                now,
            )
            return
        overload = self._overloaded(flow, now)
        if overload:
            self._refuse(
                stx,
                SipError(
                    f"Service Unavailable ({overload})",
                    503,
                    (("Retry-After", str(self.settings.limits.retry_after_seconds)),),
                ),
                now,
            )
            return
        try:
            validate(request, self.policy)
            hashed = loop_hash(request)
            detect_loop(request, self.policy, hashed)
            popped = process_routes(request, self.policy)
            hop = choose_next_hop(request, self.policy, flow, popped, self._peer_flows)
            # §16.3 step 5, once the route is known so that route-scoped exemptions apply.
            admit(
                request,
                flow,
                self.trust,
                self.policy.identities[flow.listener].untrusted,
                now,
                hop.route if hop is not None else None,
                self.observer,
                now + self.wall_offset,
            )
        except SipError as exc:
            self._refuse(stx, exc, now)
            return
        self._admitted(request, flow)
        if stx.invite:
            # §16.2: a stateful proxy answers INVITE at once; only once admitted, so that a refused INVITE
            # costs its sender one answer, not two.
            self._respond(stx, 100, "Trying", now)
        try:
            if hop is None:
                self._answer_locally(stx, now)
            else:
                self._forward(stx, hop, hashed, now)
        except SipError as exc:  # rule 1: even a late surprise ends in a final response
            if not stx.final_status:
                self._refuse(stx, exc, now)

    def _admitted(self, request: Request, flow: Flow) -> None:
        """What only an admitted request may do: offer its connection for reuse (RFC 5923), and keep the
        identities its source may assert (RFC 3325 §5, proxy/relay/identity.py)."""
        self._maybe_alias(request, flow)
        if flow.peer is not None and flow.remote not in self._peer_flows:
            if len(self._peer_flows) >= 4096:  # bounded: the oldest is forgotten
                del self._peer_flows[next(iter(self._peer_flows))]
            self._peer_flows[flow.remote] = flow
        removed = screen_identities(request, self.trust.peer(flow.peer))
        if removed:
            self.observer.security_drop("identity_removed")
            log.info(
                "%s: removed %d asserted identit%s %s: %s may not assert them",
                request.method,
                len(removed),
                "y" if len(removed) == 1 else "ies",
                ", ".join(v[:80] for v in removed),
                flow.peer or f"{flow.remote[0]} (no trusted peer)",
                extra=log_fields(request.call_id, flow),
            )

    def _overloaded(self, flow: Flow, now: float, rates_only: bool = False) -> str | None:
        """Which limit a new request hits, if any (checked before any work is done for it)."""
        limits = self.settings.limits
        if not rates_only and self._in_flight > limits.max_in_flight:
            self.observer.overload("in_flight")
            return f"overloaded: {limits.max_in_flight} transactions in flight"
        if flow.peer is not None:
            if limits.per_peer_rate and not self._buckets["peer"].allow(flow.peer, now):
                self.observer.overload("peer_rate")
                return f"rate limit for peer {flow.peer}"
        elif limits.per_source_rate and not self._buckets["source"].allow(flow.remote[0], now):
            self.observer.overload("source_rate")
            return f"rate limit for source {flow.remote[0]}"
        return None

    def _forward(self, stx: ServerTx, hop: NextHop, hashed: str, now: float) -> None:
        """§16.6: forward a copy over a new client transaction and arm its timers."""
        cid = next(self._ids)
        branch = new_branch(hashed, cid)
        inbound = self.policy.identities[stx.flow.listener]
        forwarded = prepare_forward(stx.request, hop, self.policy, inbound, branch)
        original_cseq = self.cseq_shifts.renumber(forwarded)
        data = forwarded.to_bytes()
        ctx = ClientTx(cid, branch, stx.request.method, hop, data, forwarded, stx, original_cseq=original_cseq)
        self.observer.request_relayed(method_label(ctx.method), stx.flow.peer or "none", hop.route or "dialog")
        self._start_client(ctx, now)

    def sent_on(self, token: int, where: int | str) -> None:
        """The edge wrote the request of client transaction ``token`` on a connection (its id) or, over UDP,
        to an address (its IP): its responses are taken from there alone."""
        ctx = self._by_id.get(token)
        if ctx is not None:
            ctx.sent_on = where

    def _start_client(self, ctx: ClientTx, now: float) -> None:
        self.client_txs[(ctx.branch, ctx.method)] = ctx
        self._by_id[ctx.id] = ctx
        if ctx.server is not None:
            ctx.server.client = ctx
        hop = ctx.hop
        if hop.transport == "udp" and is_ip_literal(hop.host):
            ctx.sent_on = hop.host.strip("[]")
        self._outputs.append(SendToHop(hop, ctx.data, ctx.id))
        timeout: float | None
        if ctx.method == "INVITE":
            timeout = TIMER_B
        elif ctx.deadline:  # a retry on the next candidate, or a health check: the first deadline holds
            timeout = max(ctx.deadline - now, 0.0)
        else:
            ctx.deadline = now + self.settings.transaction_timeout_seconds
            # In order unless a reload shortened the setting: then this one waits on the heap.
            timeout = None if self._timeouts.push(ctx.deadline, ctx.id) else ctx.deadline - now
        if timeout is not None:
            ctx.timers.set("timeout", self.timers.schedule(now + timeout, lambda t: self._client_timeout(ctx, t)))
        if hop.transport == "udp" and not self._retransmits.push(now + T1, ctx.id):  # §17.1.1.2 A / §17.1.2.2 E
            ctx.timers.set("retransmit", self.timers.schedule(now + T1, lambda t: self._retransmit(ctx, t)))

    def _answer_locally(self, stx: ServerTx, now: float) -> None:
        """A request addressed to sipfed itself: answer OPTIONS (peers' keep-alive pings)."""
        if stx.request.method == "OPTIONS":
            self._respond(stx, 200, "OK", now, OPTIONS_EXTRA)
        else:
            self._respond(stx, 404, "Not Found (request addressed to the proxy itself)", now)

    def _on_ack(self, request: Request, flow: Flow, now: float) -> None:
        """ACK (and BENOTIFY): absorbed by our INVITE server transaction, or relayed statelessly (§16.11)."""
        stx = self.server_txs.get(server_key(request)) if request.method == "ACK" else None
        if stx is not None and stx.final_status >= 300:
            # §17.2.1: the ACK for our non-2xx final ends the INVITE server transaction.
            stx.to(TxState.CONFIRMED)
            stx.timers.cancel_all()
            if flow.transport == "udp":  # Timer I: absorb retransmitted ACKs
                stx.timers.set("end", self.timers.schedule(now + T4, lambda t: self._end_server(stx)))
            else:
                self._end_server(stx)
            return
        # An ACK for a 2xx is end-to-end (§13.2.2.4): route it statelessly (§16.11), after the same admission
        # as every other request (issue 14: one admission path), though nobody can be told of a refusal.
        try:
            overload = self._overloaded(flow, now, rates_only=True)
            if overload:
                raise SipError(f"Service Unavailable ({overload})", 503)
            validate(request, self.policy)
            popped = process_routes(request, self.policy)
            hop = choose_next_hop(request, self.policy, flow, popped, self._peer_flows)
            admit(
                request,
                flow,
                self.trust,
                self.policy.identities[flow.listener].untrusted,
                now,
                hop.route if hop is not None else None,
                self.observer,
                now + self.wall_offset,
            )
        except SipError as exc:
            self.observer.security_drop("stateless_refused")
            self.observer.request_refused(method_label(request.method), exc.status)
            self._drop_log.warn(
                log,
                f"stateless {request.method} {flow.remote[0]}",
                now,
                "%s from %s:%d dropped (%d %s): it has no response to carry the refusal",
                request.method,
                *flow.remote,
                exc.status,
                exc.reason,
                extra=log_fields(request.call_id, flow),
            )
            return
        if hop is None:
            return
        self._admitted(request, flow)
        incoming = (request.top_via.branch or "").encode()
        branch = f"{BRANCH_PREFIX}{hashlib.blake2s(incoming, digest_size=6).hexdigest()}.a"
        forwarded = prepare_forward(request, hop, self.policy, self.policy.identities[flow.listener], branch)
        self.cseq_shifts.renumber(forwarded)
        self._outputs.append(SendToHop(hop, forwarded.to_bytes(), 0))

    def _on_cancel(self, cancel: ServerTx, now: float) -> None:
        """§16.10: answer the CANCEL, then cancel the pending INVITE's client transaction."""
        invite = self.server_txs.get((*cancel.key[:-1], "INVITE"))
        if invite is not None and not _same_sender(invite.flow, cancel.flow):
            invite = None  # §9.2 matches on the branch, which a third party could copy: only its sender cancels
        if invite is None:
            self._respond(cancel, 481, "Call/Transaction Does Not Exist", now)
            return
        self._respond(cancel, 200, "OK", now)
        if invite.final_status:
            return
        ctx = invite.client
        if ctx is None or ctx.final_status:
            self._respond(invite, 487, "Request Terminated", now)
        elif ctx.provisional:
            self._send_cancel(ctx, now)
        else:
            ctx.cancel_pending = True  # §9.1: no CANCEL before a provisional response

    def _maybe_alias(self, request: Request, flow: Flow) -> None:
        """RFC 5923 §5: honour ``alias`` over TLS only, if the certificate names sent-by, and only for an
        admitted request (a refused sender must never be handed requests meant for someone else)."""
        if flow.transport != "tls" or ";alias" not in (request.headers.get("via") or ""):
            return
        via = request.top_via
        if via.param("alias") is None:
            return
        if flow.transport == "tls" and via.host.lower() not in flow.peer_names:
            log.info("alias from %s:%d ignored: sent-by %s is not in its certificate", *flow.remote, via.host)
            return
        port = via.port or (5061 if flow.transport == "tls" else 5060)
        self._outputs.append(RegisterAlias(flow, via.host.lower(), port))

    # -- responses --------------------------------------------------------------------------

    def _on_response(self, response: Response, flow: Flow, now: float) -> None:
        top = response.headers.get("via")
        if top is None:
            raise SipSyntaxError("Missing Via header")
        branch = via_branch(top) or ""
        _, method = response.cseq
        ctx = self.client_txs.get((branch, method))
        if ctx is None:
            log.debug("response %d with no transaction (branch %s) dropped", response.status, branch)
            return
        if ctx.sent_on != (flow.remote[0] if flow.transport == "udp" else flow.conn_id):
            # Issue 14: a response belongs to the flow its request went out on (RFC 3261 §18.1.2, RFC 5923);
            # a branch copied or guessed onto another connection answers nothing.
            self.observer.security_drop("response_off_flow")
            self._drop_log.warn(
                log,
                f"off-flow {flow.remote[0]}",
                now,
                "response %d from %s:%d dropped: its transaction's request went out on another flow",
                response.status,
                *flow.remote,
            )
            return
        if ctx.method == "CANCEL":
            self._end_client(ctx)  # the 200 to our CANCEL is for us alone
            return
        if ctx.probe:
            if response.status >= 200:
                self._end_client(ctx)
                self._outputs.append(ProbeAnswer(ctx.id, response.status, response.reason))
            return
        response.headers.remove_first("via")
        if self.policy.maddr_out and "record-route" in response.headers:
            response.headers.map_values("record-route", lambda value: rewrite_maddr(value, self.policy.maddr_out))
        if response.status < 200:
            self._on_provisional(ctx, response, now)
        else:
            self._on_final(ctx, response, flow, now)

    def _on_provisional(self, ctx: ClientTx, response: Response, now: float) -> None:
        if ctx.final_status:
            return
        if not ctx.provisional:
            ctx.provisional = True
            ctx.to(TxState.PROCEEDING)
            if ctx.method == "INVITE":
                ctx.timers.cancel("retransmit")
                ctx.timers.set(
                    "timeout",
                    self.timers.schedule(now + self.settings.invite_timeout_seconds, lambda t: self._timer_c(ctx, t)),
                )
            if ctx.cancel_pending:
                self._send_cancel(ctx, now)
        stx = ctx.server
        if response.status > 100 and stx is not None and not stx.final_status:
            if ctx.original_cseq:
                response.headers.set("CSeq", ctx.original_cseq)
            self._send_response(stx, response, now)  # §16.7 step 5: forward provisionals but 100

    def _on_final(self, ctx: ClientTx, response: Response, flow: Flow, now: float) -> None:
        status = response.status
        invite = ctx.method == "INVITE"
        if invite and status >= 300:
            self._send_ack(ctx, response)  # §17.1.1.3: the proxy ACKs a non-2xx final hop by hop
        stx = ctx.server
        if ctx.final_status:
            # A retransmitted final: only a 2xx to INVITE travels on (RFC 6026 §8.4).
            if invite and 200 <= status < 300 and stx is not None:
                self._outputs.append(SendOnFlow(stx.flow, response.to_bytes(), self._reply_via(stx)))
            return
        ctx.final_status = status
        ctx.to(TxState.ACCEPTED if invite and status < 300 else TxState.COMPLETED)
        ctx.timers.cancel_all()
        if not invite:
            ctx.data = b""  # nothing will be retransmitted any more
        # Only INVITE's client transaction lingers: Timer D (UDP, to ACK a retransmitted non-2xx again) and
        # RFC 6026's Timer M (2xx retransmissions travel on). A non-INVITE's Timer K would only absorb
        # retransmitted finals, which a finished transaction drops all the same.
        linger = (TIMER_L if status < 300 else (T4 if ctx.hop.transport == "udp" else 0.0)) if invite else 0.0
        if linger:
            ctx.timers.set("end", self.timers.schedule(now + linger, lambda t: self._end_client(ctx)))
        else:  # end now, without a timer (and the loop wake-up it costs)
            self._end_client(ctx)
        if stx is None or (stx.final_status and not (invite and status < 300)):
            return
        if status in (401, 407) and not stx.final_status and self._absorb_challenge(ctx, stx, response, now):
            return
        if status == 503 and self._fail_over(ctx, stx, response, flow, now):
            return
        if ctx.original_cseq:
            response.headers.set("CSeq", ctx.original_cseq)
        if status == 503:
            # §16.7 step 6: a 503 would make the sender think sipfed itself is unavailable.
            response.status, response.reason = 500, "Next Hop Unavailable (503)"
        self._send_response(stx, response, now)

    # -- timers -----------------------------------------------------------------------------

    def _client_timeout(self, ctx: ClientTx, now: float) -> None:
        """Timer F (our shorter non-INVITE limit, RFC 4320) or Timer B: answer 408 upstream."""
        self._end_client(ctx)
        if ctx.probe:
            self._outputs.append(ProbeAnswer(ctx.id, 0, "no answer in time"))
            return
        stx = ctx.server
        waited = self.settings.transaction_timeout_seconds if ctx.method != "INVITE" else TIMER_B
        self._warn_timeout(ctx, stx, waited, now)
        self.observer.hop_failure(ctx.hop.route or "dialog", "timeout")
        if stx is not None and not stx.final_status:
            self._respond(stx, 408, f"Request Timeout (no answer from {ctx.hop.host} in {waited:g} s)", now)

    def _warn_timeout(self, ctx: ClientTx, stx: ServerTx | None, waited: float, now: float) -> None:
        """One warning per route per 10 s at most: an overloaded proxy must not also drown in its log."""
        route = ctx.hop.route or str(ctx.hop)
        last, quiet = self._timeout_log.get(route, (-1e9, 0))
        if now - last < 10.0:
            self._timeout_log[route] = (last, quiet + 1)
            return
        more = f" ({quiet} more since the last warning)" if quiet else ""
        log.warning(
            "%s to %s: no final response in %g s%s",
            ctx.method,
            ctx.hop,
            waited,
            more,
            extra=log_fields(ctx.request.call_id, stx.flow if stx else None, ctx.hop.route),
        )
        self._timeout_log[route] = (now, 0)

    def _timer_c(self, ctx: ClientTx, now: float) -> None:
        """§16.6 step 11 / §16.8: Timer C fired on a ringing INVITE: CANCEL it, wait for its 487."""
        self._send_cancel(ctx, now)
        ctx.timers.set("timeout", self.timers.schedule(now + TIMER_B, lambda t: self._client_timeout(ctx, t)))

    def _retransmit(self, ctx: ClientTx, now: float) -> None:
        """§17.1.1.2 Timer A / §17.1.2.2 Timer E over UDP."""
        if ctx.final_status or (ctx.method == "INVITE" and ctx.provisional):
            return
        self._outputs.append(SendToHop(ctx.hop, ctx.data, ctx.id))
        ctx.interval = T2 if ctx.provisional else min(ctx.interval * 2, T2 if ctx.method != "INVITE" else 64 * T1)
        ctx.timers.set("retransmit", self.timers.schedule(now + ctx.interval, lambda t: self._retransmit(ctx, t)))

    def _retransmit_final(self, stx: ServerTx, interval: float, now: float) -> None:
        """§17.2.1 Timer G: resend a non-2xx final to INVITE over UDP until the ACK comes."""
        if stx.last_response is None or stx.key not in self.server_txs:
            return
        self._outputs.append(SendOnFlow(stx.flow, stx.last_response))
        nxt = min(interval * 2, T2)
        stx.timers.set("g", self.timers.schedule(now + nxt, lambda t: self._retransmit_final(stx, nxt, t)))

    # -- building and sending ---------------------------------------------------------------

    def _respond(
        self, stx: ServerTx, status: int, reason: str, now: float, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        reason = " ".join(reason.split())  # a Reason-Phrase holds no CR or LF (§25.1)
        peer = self.trust.peer(stx.flow.peer) if status >= 400 else None
        if peer is not None and peer.microsoft:  # Lync's Snooper shows why (proxy/relay/ms_diagnostics.py)
            extra = (*extra, *ms_diagnostics_public(status, reason))
        self._send_response(stx, make_response(stx.request, status, reason, to_tag=self._to_tag, extra=extra), now)

    def _send_response(self, stx: ServerTx, response: Response, now: float) -> None:
        data = response.to_bytes()
        stx.last_response = data
        if response.status < 200 and stx.state is TxState.TRYING:
            stx.to(TxState.PROCEEDING)  # §17.2.2: a provisional sent
        self._outputs.append(SendOnFlow(stx.flow, data, self._reply_via(stx)))
        if response.status >= 200 and not stx.final_status:
            self.observer.final_response(method_label(stx.request.method), response.status, now - stx.started)
            if 200 <= response.status < 300 and stx.request.method in ("SUBSCRIBE", "NOTIFY"):
                self.subscriptions.track(stx.request, response, now, stx.flow.peer)
            self._server_final(stx, response.status, now)

    @staticmethod
    def _reply_via(stx: ServerTx) -> str:
        """The Via a response falls back on if its connection closed (§18.2.2); streams only."""
        return "" if stx.flow.transport == "udp" else stx.request.headers.get("via") or ""

    def _refuse(self, stx: ServerTx, exc: SipError, now: float) -> None:
        if stx.flow.transport == "udp" and stx.flow.peer is None:
            # An unbound UDP source may be spoofed: our refusal is sent once (a retransmitted request gets it
            # again, one for one), never on Timer G, so sipfed amplifies nothing (RFC 3261 §26.3.2.4 spirit).
            stx.quiet = True
        self.observer.request_refused(method_label(stx.request.method), exc.status)
        if exc.status >= 400 and exc.status != 407:
            log.info(
                "%s refused: %d %s",
                stx.request.method,
                exc.status,
                exc.reason,
                extra=log_fields(stx.request.call_id, stx.flow),
            )
        if isinstance(exc, NoRoute):
            self.observer.route_miss()
        self._respond(stx, exc.status, exc.reason, now, exc.headers)

    def _server_final(self, stx: ServerTx, status: int, now: float) -> None:
        """How long a server transaction outlives its final response (§17.2, RFC 6026)."""
        stx.final_status = status
        stx.to(TxState.ACCEPTED if stx.invite and status < 300 else TxState.COMPLETED)
        self._in_flight -= 1
        udp = stx.flow.transport == "udp"
        if stx.invite and status >= 300:
            linger = TIMER_H  # wait for the ACK
            if udp and not stx.quiet:
                stx.timers.set("g", self.timers.schedule(now + T1, lambda t: self._retransmit_final(stx, T1, t)))
        elif stx.invite:
            linger = TIMER_L
        else:
            linger = 0.0
            if udp and stx.last_response is not None:
                # §17.2.2: for Timer J (32 s) only the answer to retransmissions is kept, as tuples of
                # strings and bytes rather than a whole transaction: at 1,000/s that is 32,000 of them, and
                # the cyclic collector stops scanning such tuples after one pass (they cannot form cycles).
                flow = stx.flow
                self._completed[stx.key] = (flow.listener, flow.remote, flow.peer, stx.last_response)
                self._completed_expiry.append((now + TIMER_J, stx.key))
        if linger:
            stx.timers.set("end", self.timers.schedule(now + linger, lambda t: self._end_server(stx)))
        else:
            self._end_server(stx)

    def _send_cancel(self, ctx: ClientTx, now: float) -> None:
        """§9.1: CANCEL with the INVITE's Request-URI, Call-ID, From, To, CSeq number, top Via and Route."""
        ctx.cancel_pending = False
        request = hop_request(ctx, "CANCEL", to=ctx.request.headers.get("to") or "")
        cid = next(self._ids)
        cancel = ClientTx(cid, ctx.branch, "CANCEL", ctx.hop, request.to_bytes(), request, None)
        cancel.sent_on = ctx.sent_on  # the CANCEL follows its INVITE's flow (§9.1)
        self.client_txs[(ctx.branch, "CANCEL")] = cancel
        self._by_id[cid] = cancel
        cancel.timers.set("end", self.timers.schedule(now + TIMER_B, lambda t: self._end_client(cancel)))
        self._outputs.append(SendToHop(ctx.hop, cancel.data, 0))

    def _send_ack(self, ctx: ClientTx, response: Response) -> None:
        """§17.1.1.3: ACK a non-2xx final with the To of the response."""
        ack = hop_request(ctx, "ACK", to=response.headers.get("to") or "")
        self._outputs.append(SendToHop(ctx.hop, ack.to_bytes(), 0))

    def _end_client(self, ctx: ClientTx) -> None:
        ctx.to(TxState.TERMINATED)
        ctx.timers.cancel_all()
        if self.client_txs.get((ctx.branch, ctx.method)) is ctx:
            del self.client_txs[(ctx.branch, ctx.method)]
        self._by_id.pop(ctx.id, None)

    def _reject_unparsed(self, flow: Flow, data: bytes, exc: SipError) -> None:
        """Answer a request we could not parse with its 4xx/5xx if it can be addressed; drop the rest."""
        reply, dropped = reply_to_unparsed(data, exc)
        if reply is None:
            log.warning("dropped %s from %s:%d: %s", dropped, *flow.remote, exc.reason)
            return
        log.info("answered %d %s to %s:%d", exc.status, " ".join(exc.reason.split()), *flow.remote)
        self._outputs.append(SendOnFlow(flow, reply))

    def _end_server(self, stx: ServerTx) -> None:
        stx.to(TxState.TERMINATED)
        stx.timers.cancel_all()
        # Break the server <-> client link so both are freed by reference counting when the client
        # transaction ends, not by the cyclic collector (whose passes over many transactions stall the loop).
        stx.client = None
        if self.server_txs.get(stx.key) is stx:
            del self.server_txs[stx.key]


def _same_sender(first: Flow, second: Flow) -> bool:
    """Two requests from one sender: the same trusted peer, or the same transport and source address."""
    if first.peer is not None or second.peer is not None:
        return first.peer == second.peer
    return first.transport == second.transport and first.remote == second.remote


__all__ = ["Proxy", "RelaySettings", "hop_for_uri", "parse_name_addr"]
