"""RFC 3261 §17.2 after the final response: how long a server transaction outlives it (Timer H waiting for
the ACK of an INVITE's non-2xx, Timer L after its 2xx, RFC 6026), Timer G resending that non-2xx over UDP, and
Timer J's table of completed non-INVITE transactions over UDP, kept as what to answer a retransmission with.

Functions that take the ``Proxy`` (proxy/relay/core.py) and work on its tables as its methods did. Apart from it
because none of this decides anything about a request: it keeps a finished server transaction as long as the
RFC says, no longer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.relay.state import ServerTx, TxState
from proxy.relay.types import SendOnFlow
from proxy.sip.transaction import T1, T2, TIMER_H, TIMER_J, TIMER_L, ServerKey

if TYPE_CHECKING:
    from proxy.relay.core import Proxy


def server_final(proxy: Proxy, stx: ServerTx, status: int, now: float) -> None:
    """How long a server transaction outlives its final response (§17.2, RFC 6026)."""
    stx.final_status = status
    stx.to(TxState.ACCEPTED if stx.invite and status < 300 else TxState.COMPLETED)
    proxy._in_flight -= 1
    udp = stx.flow.transport == "udp"
    if stx.invite and status >= 300:
        linger = TIMER_H  # wait for the ACK
        if udp and not stx.quiet:
            stx.timers.set("g", proxy.timers.schedule(now + T1, lambda t: retransmit_final(proxy, stx, T1, t)))
    elif stx.invite:
        linger = TIMER_L
    else:
        linger = 0.0
        if udp and stx.last_response is not None:
            # §17.2.2: for Timer J (32 s) only the answer to retransmissions is kept, as tuples of
            # strings and bytes rather than a whole transaction: at 1,000/s that is 32,000 of them, and
            # the cyclic collector stops scanning such tuples after one pass (they cannot form cycles).
            flow = stx.flow
            proxy._completed[stx.key] = (flow.listener, flow.remote, flow.peer, stx.last_response)
            proxy._completed_expiry.append((now + TIMER_J, stx.key))
    if linger:
        stx.timers.set("end", proxy.timers.schedule(now + linger, lambda t: end_server(proxy.server_txs, stx)))
    else:
        end_server(proxy.server_txs, stx)


def retransmit_final(proxy: Proxy, stx: ServerTx, interval: float, now: float) -> None:
    """§17.2.1 Timer G: resend a non-2xx final to INVITE over UDP until the ACK comes."""
    if stx.last_response is None or stx.key not in proxy.server_txs:
        return
    proxy._outputs.append(SendOnFlow(stx.flow, stx.last_response))
    nxt = min(interval * 2, T2)
    stx.timers.set("g", proxy.timers.schedule(now + nxt, lambda t: retransmit_final(proxy, stx, nxt, t)))


def forget_completed(proxy: Proxy, now: float) -> None:
    """Timer J ran out for the oldest completed non-INVITE server transactions over UDP."""
    expiry, completed = proxy._completed_expiry, proxy._completed
    while expiry and expiry[0][0] <= now:
        completed.pop(expiry.popleft()[1], None)


def end_server(server_txs: dict[ServerKey, ServerTx], stx: ServerTx) -> None:
    stx.to(TxState.TERMINATED)
    stx.timers.cancel_all()
    # Break the server <-> client link so both are freed by reference counting when the client
    # transaction ends, not by the cyclic collector (whose passes over many transactions stall the loop).
    stx.client = None
    if server_txs.get(stx.key) is stx:
        del server_txs[stx.key]
