"""The transaction-stateful proxy core (RFC 3261 §16, §17), with no I/O.

Driven like aioquic's connection: ``receive(flow, data, now)``, ``hop_failed(token, reason, now)``
and ``handle_timer(now)`` go in; ``take_outputs()`` and ``get_timer()`` come out.

Rules:
1. Every request that gets a server transaction ends in exactly one final response:
   the next hop's, or ours (4xx for what §16.3 refuses, 408 on timeout, 503 when the
   next hop cannot be reached). Nothing accepted is dropped silently.
2. A response is sent on the flow its request came in on (§18.2.2, RFC 5923).
3. ACK for a 2xx and responses with no transaction are never answered (§17).

``Proxy`` holds the state and the interface above, and the path of a request that is forwarded
(``_on_request``, ``_forward``, ``_start_client``). The rest of its work is done by functions that take it:
admission.py (the limits before any work, what an admitted request may do), answers.py (what goes back on a
server transaction), server_timers.py (§17.2 after the final response), responses.py (§16.7, retries on 503 and
challenges), client_timers.py (Timers A/E, B/F, C) and ack_cancel.py (ACK absorbed or relayed statelessly,
CANCEL).
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets

from acl.peers import Trust
from proxy.relay.ack_cancel import STATELESS_METHODS, on_ack, on_cancel
from proxy.relay.admission import admitted, overloaded, route_and_admit
from proxy.relay.answers import answer_locally, refuse, reject_unparsed, reply_via, respond
from proxy.relay.challenges import CSeqShifts
from proxy.relay.client_timers import client_timeout, retransmit
from proxy.relay.failover import Failover
from proxy.relay.forwarding import (
    RelayPolicy,
    hop_for_uri,
    loop_hash,
    mark_received,
    new_branch,
    prepare_forward,
)
from proxy.relay.limits import TokenBuckets, WarnLimiter
from proxy.relay.local import health_check
from proxy.relay.observe import Observer, method_label
from proxy.relay.responses import on_response
from proxy.relay.retries import next_try
from proxy.relay.server_timers import forget_completed
from proxy.relay.state import ClientTx, RelaySettings, ServerTx, TxState
from proxy.relay.subscriptions import SubscriptionBook
from proxy.relay.types import Flow, NextHop, Output, ProbeAnswer, SendOnFlow, SendToHop
from proxy.sip.errors import SipError
from proxy.sip.grammar import is_ip_literal
from proxy.sip.headers import parse_name_addr
from proxy.sip.message import Request, Response, parse_message
from proxy.sip.parser import FramingError
from proxy.sip.transaction import T1, TIMER_B, DeadlineQueue, ServerKey, TimerQueue, server_key

log = logging.getLogger("sipfed.relay")


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
                respond(
                    self,
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
                retransmit(self, ctx, now)
        for cid in self._timeouts.pop_due(now):
            ctx = by_id.get(cid)
            if ctx is not None and not ctx.final_status:
                client_timeout(self, ctx, now)
        if self._completed:
            forget_completed(self, now)

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
            reject_unparsed(self._outputs, flow, data, exc)
            return
        try:
            if isinstance(message, Response):
                on_response(self, message, flow, now)
            else:
                self._on_request(message, flow, now)
        except SipError as exc:  # a header the decisions needed did not parse
            if isinstance(message, Response):
                self.observer.malformed("response")
            reject_unparsed(self._outputs, flow, data, exc)

    def receive_framing_error(self, flow: Flow, error: FramingError) -> None:
        """The stream framer gave up on a message; answer it if its headers were read."""
        log.warning("from %s:%d: %s", *flow.remote, error.reason)
        self.observer.malformed("stream")
        if error.head:
            reject_unparsed(self._outputs, flow, error.head, error)

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
            respond(self, stx, 503, f"Service Unavailable ({reason})", now)

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

    # -- requests ---------------------------------------------------------------------------

    def _on_request(self, request: Request, flow: Flow, now: float) -> None:
        mark_received(request, flow)
        if request.method in STATELESS_METHODS:
            on_ack(self, request, flow, now)
            return
        key = server_key(request)
        existing = self.server_txs.get(key)
        if existing is not None:  # §17.2.1/§17.2.2: a retransmission gets the last response again
            if existing.last_response is not None:
                self._outputs.append(SendOnFlow(existing.flow, existing.last_response, reply_via(existing)))
            return
        if self._completed:
            forget_completed(self, now)
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
            on_cancel(self, stx, now)
            return
        if self.draining and (self.draining > 1 or "tag=" not in (request.headers.get("to") or "")):
            refuse(
                self,
                stx,
                SipError(
                    "Service Unavailable (sipfed is shutting down)",
                    503,
                    (("Retry-After", str(self.settings.limits.retry_after_seconds)),),
                ),
                now,
            )
            return
        overload = overloaded(self, flow, now)
        if overload:
            refuse(
                self,
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
            hashed = loop_hash(request)
            hop = route_and_admit(self, request, flow, now, hashed)
        except SipError as exc:
            refuse(self, stx, exc, now)
            return
        admitted(self, request, flow)
        if stx.invite:
            # §16.2: a stateful proxy answers INVITE at once; only once admitted, so that a refused INVITE
            # costs its sender one answer, not two.
            respond(self, stx, 100, "Trying", now)
        try:
            if hop is None:
                answer_locally(self, stx, now)
            else:
                self._forward(stx, hop, hashed, now)
        except SipError as exc:  # rule 1: even a late surprise ends in a final response
            if not stx.final_status:
                refuse(self, stx, exc, now)

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
            ctx.timers.set("timeout", self.timers.schedule(now + timeout, lambda t: client_timeout(self, ctx, t)))
        if hop.transport == "udp" and not self._retransmits.push(now + T1, ctx.id):  # §17.1.1.2 A / §17.1.2.2 E
            ctx.timers.set("retransmit", self.timers.schedule(now + T1, lambda t: retransmit(self, ctx, t)))

    def _end_client(self, ctx: ClientTx) -> None:
        ctx.to(TxState.TERMINATED)
        ctx.timers.cancel_all()
        if self.client_txs.get((ctx.branch, ctx.method)) is ctx:
            del self.client_txs[(ctx.branch, ctx.method)]
        self._by_id.pop(ctx.id, None)


__all__ = ["Proxy", "RelaySettings", "hop_for_uri", "parse_name_addr"]
