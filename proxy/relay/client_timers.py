"""A client transaction's timers once its request is sent (§17.1): Timer A/E retransmitting it over UDP, Timer
B/F (or sipfed's shorter non-INVITE limit, RFC 4320) ending it with 408 upstream, and Timer C on a ringing INVITE
(§16.6 step 11, §16.8), which CANCELs it.

Functions that take the ``Proxy`` (proxy/relay/core.py) and work on its tables as its methods did;
``Proxy._start_client`` arms them and ``Proxy.handle_timer`` fires the ones kept in its deadline queues. Apart
from the core because they run off timers, never for a message received.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.relay.ack_cancel import send_cancel
from proxy.relay.answers import respond
from proxy.relay.local import log_fields
from proxy.relay.state import ClientTx, ServerTx
from proxy.relay.types import ProbeAnswer, SendToHop
from proxy.sip.transaction import T1, T2, TIMER_B

if TYPE_CHECKING:
    from proxy.relay.core import Proxy

log = logging.getLogger("sipfed.relay")


def client_timeout(proxy: Proxy, ctx: ClientTx, now: float) -> None:
    """Timer F (our shorter non-INVITE limit, RFC 4320) or Timer B: answer 408 upstream."""
    proxy._end_client(ctx)
    if ctx.probe:
        proxy._outputs.append(ProbeAnswer(ctx.id, 0, "no answer in time"))
        return
    stx = ctx.server
    waited = proxy.settings.transaction_timeout_seconds if ctx.method != "INVITE" else TIMER_B
    warn_timeout(proxy._timeout_log, ctx, stx, waited, now)
    proxy.observer.hop_failure(ctx.hop.route or "dialog", "timeout")
    if stx is not None and not stx.final_status:
        respond(proxy, stx, 408, f"Request Timeout (no answer from {ctx.hop.host} in {waited:g} s)", now)


def warn_timeout(
    timeout_log: dict[str, tuple[float, int]], ctx: ClientTx, stx: ServerTx | None, waited: float, now: float
) -> None:
    """One warning per route per 10 s at most: an overloaded proxy must not also drown in its log."""
    route = ctx.hop.route or str(ctx.hop)
    last, quiet = timeout_log.get(route, (-1e9, 0))
    if now - last < 10.0:
        timeout_log[route] = (last, quiet + 1)
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
    timeout_log[route] = (now, 0)


def timer_c(proxy: Proxy, ctx: ClientTx, now: float) -> None:
    """§16.6 step 11 / §16.8: Timer C fired on a ringing INVITE: CANCEL it, wait for its 487."""
    send_cancel(proxy, ctx, now)
    ctx.timers.set("timeout", proxy.timers.schedule(now + TIMER_B, lambda t: client_timeout(proxy, ctx, t)))


def retransmit(proxy: Proxy, ctx: ClientTx, now: float) -> None:
    """§17.1.1.2 Timer A / §17.1.2.2 Timer E over UDP."""
    if ctx.final_status or (ctx.method == "INVITE" and ctx.provisional):
        return
    proxy._outputs.append(SendToHop(ctx.hop, ctx.data, ctx.id))
    ctx.interval = T2 if ctx.provisional else min(ctx.interval * 2, T2 if ctx.method != "INVITE" else 64 * T1)
    ctx.timers.set("retransmit", proxy.timers.schedule(now + ctx.interval, lambda t: retransmit(proxy, ctx, t)))
