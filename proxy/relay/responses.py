"""Responses from next hops (§16.7), matched to their client transaction by branch and by the flow its
request went out on (§17.1.3, issue 14): provisionals passed on but 100, a final ending the client
transaction and passed on once; a 503 from a pool or DNS route's candidate, or a challenge the sender cannot
answer, retried instead (proxy/relay/retries.py decides, ``Proxy._start_client`` sends); a non-2xx to INVITE
ACKed hop by hop (§17.1.1.3).

Functions that take the ``Proxy`` (proxy/relay/core.py) and work on its tables as its methods did. Apart from it
as the response half of the core: ``Proxy.receive`` hands every response to ``on_response``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.relay.ack_cancel import send_cancel
from proxy.relay.answers import reply_via, respond, send_response
from proxy.relay.client_timers import timer_c
from proxy.relay.local import hop_request
from proxy.relay.record_route import rewrite_maddr
from proxy.relay.retries import next_try, shield_challenge, with_credentials
from proxy.relay.state import ClientTx, ServerTx, TxState
from proxy.relay.types import Flow, HopUnavailable, Output, ProbeAnswer, SendOnFlow, SendToHop
from proxy.sip.errors import SipSyntaxError
from proxy.sip.headers import via_branch
from proxy.sip.message import Response
from proxy.sip.transaction import T4, TIMER_L

if TYPE_CHECKING:
    from proxy.relay.core import Proxy

log = logging.getLogger("sipfed.relay")


def on_response(proxy: Proxy, response: Response, flow: Flow, now: float) -> None:
    top = response.headers.get("via")
    if top is None:
        raise SipSyntaxError("Missing Via header")
    branch = via_branch(top) or ""
    _, method = response.cseq
    ctx = proxy.client_txs.get((branch, method))
    if ctx is None:
        log.debug("response %d with no transaction (branch %s) dropped", response.status, branch)
        return
    if ctx.sent_on != (flow.remote[0] if flow.transport == "udp" else flow.conn_id):
        # Issue 14: a response belongs to the flow its request went out on (RFC 3261 §18.1.2, RFC 5923);
        # a branch copied or guessed onto another connection answers nothing.
        proxy.observer.security_drop("response_off_flow")
        proxy._drop_log.warn(
            log,
            f"off-flow {flow.remote[0]}",
            now,
            "response %d from %s:%d dropped: its transaction's request went out on another flow",
            response.status,
            *flow.remote,
        )
        return
    if ctx.method == "CANCEL":
        proxy._end_client(ctx)  # the 200 to our CANCEL is for us alone
        return
    if ctx.probe:
        if response.status >= 200:
            proxy._end_client(ctx)
            proxy._outputs.append(ProbeAnswer(ctx.id, response.status, response.reason))
        return
    response.headers.remove_first("via")
    if proxy.policy.maddr_out and "record-route" in response.headers:
        response.headers.map_values("record-route", lambda value: rewrite_maddr(value, proxy.policy.maddr_out))
    if response.status < 200:
        _on_provisional(proxy, ctx, response, now)
    else:
        _on_final(proxy, ctx, response, flow, now)


def _on_provisional(proxy: Proxy, ctx: ClientTx, response: Response, now: float) -> None:
    if ctx.final_status:
        return
    if not ctx.provisional:
        ctx.provisional = True
        ctx.to(TxState.PROCEEDING)
        if ctx.method == "INVITE":
            ctx.timers.cancel("retransmit")
            ctx.timers.set(
                "timeout",
                proxy.timers.schedule(now + proxy.settings.invite_timeout_seconds, lambda t: timer_c(proxy, ctx, t)),
            )
        if ctx.cancel_pending:
            send_cancel(proxy, ctx, now)
    stx = ctx.server
    if response.status > 100 and stx is not None and not stx.final_status:
        if ctx.original_cseq:
            response.headers.set("CSeq", ctx.original_cseq)
        send_response(proxy, stx, response, now)  # §16.7 step 5: forward provisionals but 100


def _on_final(proxy: Proxy, ctx: ClientTx, response: Response, flow: Flow, now: float) -> None:
    status = response.status
    invite = ctx.method == "INVITE"
    if invite and status >= 300:
        _send_ack(proxy._outputs, ctx, response)  # §17.1.1.3: the proxy ACKs a non-2xx final hop by hop
    stx = ctx.server
    if ctx.final_status:
        # A retransmitted final: only a 2xx to INVITE travels on (RFC 6026 §8.4).
        if invite and 200 <= status < 300 and stx is not None:
            proxy._outputs.append(SendOnFlow(stx.flow, response.to_bytes(), reply_via(stx)))
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
        ctx.timers.set("end", proxy.timers.schedule(now + linger, lambda t: proxy._end_client(ctx)))
    else:  # end now, without a timer (and the loop wake-up it costs)
        proxy._end_client(ctx)
    if stx is None or (stx.final_status and not (invite and status < 300)):
        return
    if status in (401, 407) and not stx.final_status and _absorb_challenge(proxy, ctx, stx, response, now):
        return
    if status == 503 and _fail_over(proxy, ctx, stx, response, flow, now):
        return
    if ctx.original_cseq:
        response.headers.set("CSeq", ctx.original_cseq)
    if status == 503:
        # §16.7 step 6: a 503 would make the sender think sipfed itself is unavailable.
        response.status, response.reason = 500, "Next Hop Unavailable (503)"
    send_response(proxy, stx, response, now)


# -- retries: the next candidate (proxy/relay/failover.py), sipfed's credentials (retries.py) ---


def _fail_over(proxy: Proxy, ctx: ClientTx, stx: ServerTx, response: Response, flow: Flow, now: float) -> bool:
    """RFC 3263 §4.3: a 503 from a candidate of a pool or DNS route; the edge marks it down (the
    ``HopUnavailable`` first) and the request goes to the next, in the same server transaction."""
    route = proxy.policy.routes.by_name.get(ctx.hop.route or "")
    retry = proxy.failover.after_503(route, ctx.hop, ctx.attempt, response.headers.get("retry-after"))
    if retry is None:
        return False
    proxy._outputs.append(HopUnavailable(flow, ctx.hop.route or "", retry.retry_after, response.reason))
    proxy.observer.hop_failure(ctx.hop.route or "", "unavailable")
    why = f"{flow.remote[0]}:{flow.remote[1]} answered 503 {response.reason}"
    proxy._start_client(next_try(ctx, stx, next(proxy._ids), retry.attempt, why), now)
    return True


def _absorb_challenge(proxy: Proxy, ctx: ClientTx, stx: ServerTx, response: Response, now: float) -> bool:
    """Trust rule 4: a challenge the sender cannot answer is answered by sipfed, or refused with 403."""
    answer = shield_challenge(ctx, stx, response, proxy.trust, proxy.observer)
    if answer is None:
        return False
    if isinstance(answer, str):
        respond(proxy, stx, 403, answer, now)
    else:
        proxy._start_client(with_credentials(ctx, stx, answer, proxy.cseq_shifts, next(proxy._ids)), now)
    return True


def _send_ack(outputs: list[Output], ctx: ClientTx, response: Response) -> None:
    """§17.1.1.3: ACK a non-2xx final with the To of the response."""
    ack = hop_request(ctx, "ACK", to=response.headers.get("to") or "")
    outputs.append(SendToHop(ctx.hop, ack.to_bytes(), 0))
