"""ACK and CANCEL, the requests a proxy does not simply forward in a transaction of their own: an ACK is
absorbed by the INVITE server transaction whose non-2xx it acknowledges (§17.2.1), or relayed statelessly
(§16.11, as is Lync's BENOTIFY); a CANCEL is answered here and carried to the next hop by a CANCEL of
sipfed's own once the INVITE has had a provisional response (§16.10, §9.1).

Functions that take the ``Proxy`` (proxy/relay/core.py) and work on its tables as its methods did. Apart from it
because neither follows the path of every other request (one server transaction, one client transaction).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from proxy.relay.admission import admitted, overloaded, route_and_admit
from proxy.relay.answers import respond
from proxy.relay.forwarding import BRANCH_PREFIX, prepare_forward
from proxy.relay.local import hop_request, log_fields
from proxy.relay.observe import method_label
from proxy.relay.server_timers import end_server
from proxy.relay.state import ClientTx, ServerTx, TxState
from proxy.relay.types import Flow, SendToHop
from proxy.sip.errors import SipError
from proxy.sip.message import Request
from proxy.sip.transaction import T4, TIMER_B, server_key

if TYPE_CHECKING:
    from proxy.relay.core import Proxy

log = logging.getLogger("sipfed.relay")

#: Requests relayed without a transaction because nobody answers them: ACK for a 2xx (RFC 3261 §13.2.2.4)
#: and Lync's BENOTIFY, "a NOTIFY that does not expect a response" ([MS-SIP] §3.5).
STATELESS_METHODS = frozenset({"ACK", "BENOTIFY"})


def on_ack(proxy: Proxy, request: Request, flow: Flow, now: float) -> None:
    """ACK (and BENOTIFY): absorbed by our INVITE server transaction, or relayed statelessly (§16.11)."""
    stx = proxy.server_txs.get(server_key(request)) if request.method == "ACK" else None
    if stx is not None and stx.final_status >= 300:
        # §17.2.1: the ACK for our non-2xx final ends the INVITE server transaction.
        stx.to(TxState.CONFIRMED)
        stx.timers.cancel_all()
        if flow.transport == "udp":  # Timer I: absorb retransmitted ACKs
            stx.timers.set("end", proxy.timers.schedule(now + T4, lambda t: end_server(proxy.server_txs, stx)))
        else:
            end_server(proxy.server_txs, stx)
        return
    # An ACK for a 2xx is end-to-end (§13.2.2.4): route it statelessly (§16.11), after the same admission
    # as every other request (issue 14: one admission path), though nobody can be told of a refusal.
    try:
        overload = overloaded(proxy, flow, now, rates_only=True)
        if overload:
            raise SipError(f"Service Unavailable ({overload})", 503)
        hop = route_and_admit(proxy, request, flow, now, None)  # loops: Max-Forwards alone (§16.3 step 4 is optional)
    except SipError as exc:
        proxy.observer.security_drop("stateless_refused")
        proxy.observer.request_refused(method_label(request.method), exc.status)
        proxy._drop_log.warn(
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
    admitted(proxy, request, flow)
    incoming = (request.top_via.branch or "").encode()
    branch = f"{BRANCH_PREFIX}{hashlib.blake2s(incoming, digest_size=6).hexdigest()}.a"
    forwarded = prepare_forward(request, hop, proxy.policy, proxy.policy.identities[flow.listener], branch)
    proxy.cseq_shifts.renumber(forwarded)
    proxy._outputs.append(SendToHop(hop, forwarded.to_bytes(), 0))


def on_cancel(proxy: Proxy, cancel: ServerTx, now: float) -> None:
    """§16.10: answer the CANCEL, then cancel the pending INVITE's client transaction."""
    invite = proxy.server_txs.get((*cancel.key[:-1], "INVITE"))
    if invite is not None and not _same_sender(invite.flow, cancel.flow):
        invite = None  # §9.2 matches on the branch, which a third party could copy: only its sender cancels
    if invite is None:
        respond(proxy, cancel, 481, "Call/Transaction Does Not Exist", now)
        return
    respond(proxy, cancel, 200, "OK", now)
    if invite.final_status:
        return
    ctx = invite.client
    if ctx is None or ctx.final_status:
        respond(proxy, invite, 487, "Request Terminated", now)
    elif ctx.provisional:
        send_cancel(proxy, ctx, now)
    else:
        ctx.cancel_pending = True  # §9.1: no CANCEL before a provisional response


def send_cancel(proxy: Proxy, ctx: ClientTx, now: float) -> None:
    """§9.1: CANCEL with the INVITE's Request-URI, Call-ID, From, To, CSeq number, top Via and Route."""
    ctx.cancel_pending = False
    request = hop_request(ctx, "CANCEL", to=ctx.request.headers.get("to") or "")
    cid = next(proxy._ids)
    cancel = ClientTx(cid, ctx.branch, "CANCEL", ctx.hop, request.to_bytes(), request, None)
    cancel.sent_on = ctx.sent_on  # the CANCEL follows its INVITE's flow (§9.1)
    proxy.client_txs[(ctx.branch, "CANCEL")] = cancel
    proxy._by_id[cid] = cancel
    cancel.timers.set("end", proxy.timers.schedule(now + TIMER_B, lambda t: proxy._end_client(cancel)))
    proxy._outputs.append(SendToHop(ctx.hop, cancel.data, 0))


def _same_sender(first: Flow, second: Flow) -> bool:
    """Two requests from one sender: the same trusted peer, or the same transport and source address."""
    if first.peer is not None or second.peer is not None:
        return first.peer == second.peer
    return first.transport == second.transport and first.remote == second.remote
