"""What goes back on a server transaction: a next hop's response relayed, or sipfed's own answer (a refusal
with its status, 100 Trying, 200 to an OPTIONS addressed to sipfed itself, Lync's ms-diagnostics), on the
flow the request came in on (§18.2.2); and the answer to a request that did not even parse.

Functions that take the ``Proxy`` (proxy/relay/core.py) and work on its tables as its methods did. Apart from it
because every path of the core ends here (its rule 1: one final response for every server transaction),
whatever decided the answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.relay.forwarding import NoRoute
from proxy.relay.local import OPTIONS_EXTRA, log_fields, reply_to_unparsed
from proxy.relay.ms_diagnostics import ms_diagnostics_public
from proxy.relay.observe import method_label
from proxy.relay.server_timers import server_final
from proxy.relay.state import ServerTx, TxState
from proxy.relay.types import Flow, Output, SendOnFlow
from proxy.sip.errors import SipError
from proxy.sip.message import Response, make_response

if TYPE_CHECKING:
    from proxy.relay.core import Proxy

log = logging.getLogger("sipfed.relay")


def respond(
    proxy: Proxy, stx: ServerTx, status: int, reason: str, now: float, extra: tuple[tuple[str, str], ...] = ()
) -> None:
    reason = " ".join(reason.split())  # a Reason-Phrase holds no CR or LF (§25.1)
    peer = proxy.trust.peer(stx.flow.peer) if status >= 400 else None
    if peer is not None and peer.microsoft:  # Lync's Snooper shows why (proxy/relay/ms_diagnostics.py)
        extra = (*extra, *ms_diagnostics_public(status, reason))
    send_response(proxy, stx, make_response(stx.request, status, reason, to_tag=proxy._to_tag, extra=extra), now)


def send_response(proxy: Proxy, stx: ServerTx, response: Response, now: float) -> None:
    data = response.to_bytes()
    stx.last_response = data
    if response.status < 200 and stx.state is TxState.TRYING:
        stx.to(TxState.PROCEEDING)  # §17.2.2: a provisional sent
    proxy._outputs.append(SendOnFlow(stx.flow, data, reply_via(stx)))
    if response.status >= 200 and not stx.final_status:
        proxy.observer.final_response(method_label(stx.request.method), response.status, now - stx.started)
        if 200 <= response.status < 300 and stx.request.method in ("SUBSCRIBE", "NOTIFY"):
            proxy.subscriptions.track(stx.request, response, now, stx.flow.peer)
        server_final(proxy, stx, response.status, now)


def reply_via(stx: ServerTx) -> str:
    """The Via a response falls back on if its connection closed (§18.2.2); streams only."""
    return "" if stx.flow.transport == "udp" else stx.request.headers.get("via") or ""


def refuse(proxy: Proxy, stx: ServerTx, exc: SipError, now: float) -> None:
    if stx.flow.transport == "udp" and stx.flow.peer is None:
        # An unbound UDP source may be spoofed: our refusal is sent once (a retransmitted request gets it
        # again, one for one), never on Timer G, so sipfed amplifies nothing (RFC 3261 §26.3.2.4 spirit).
        stx.quiet = True
    proxy.observer.request_refused(method_label(stx.request.method), exc.status)
    if exc.status >= 400 and exc.status != 407:
        log.info(
            "%s refused: %d %s",
            stx.request.method,
            exc.status,
            exc.reason,
            extra=log_fields(stx.request.call_id, stx.flow),
        )
    if isinstance(exc, NoRoute):
        proxy.observer.route_miss()
    respond(proxy, stx, exc.status, exc.reason, now, exc.headers)


def answer_locally(proxy: Proxy, stx: ServerTx, now: float) -> None:
    """A request addressed to sipfed itself: answer OPTIONS (peers' keep-alive pings)."""
    if stx.request.method == "OPTIONS":
        respond(proxy, stx, 200, "OK", now, OPTIONS_EXTRA)
    else:
        respond(proxy, stx, 404, "Not Found (request addressed to the proxy itself)", now)


def reject_unparsed(outputs: list[Output], flow: Flow, data: bytes, exc: SipError) -> None:
    """Answer a request we could not parse with its 4xx/5xx if it can be addressed; drop the rest."""
    reply, dropped = reply_to_unparsed(data, exc)
    if reply is None:
        log.warning("dropped %s from %s:%d: %s", dropped, *flow.remote, exc.reason)
        return
    log.info("answered %d %s to %s:%d", exc.status, " ".join(exc.reason.split()), *flow.remote)
    outputs.append(SendOnFlow(flow, reply))
