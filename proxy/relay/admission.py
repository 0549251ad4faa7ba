"""What a new request must pass before any work is done for it, and what it may do once admitted: the
in-flight cap and the per-source and per-peer rate limits (``overloaded``, proxy/relay/limits.py token buckets),
then, after trust.py's ``admit``, offering its connection for reuse (RFC 5923 ``alias``), keeping the identities
its source may assert (RFC 3325 §5, proxy/relay/identity.py) and remembering a trusted peer's own flow.

Functions that take the ``Proxy`` (proxy/relay/core.py) and work on its tables as its methods did. Apart from it
because they are shared: requests with a transaction (``Proxy._on_request``) and the stateless ones
(proxy/relay/ack_cancel.py) are checked alike (issue 14: one admission path).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.relay.forwarding import choose_next_hop, detect_loop, process_routes, validate
from proxy.relay.identity import screen_identities
from proxy.relay.local import log_fields
from proxy.relay.trust import admit
from proxy.relay.types import Flow, NextHop, RegisterAlias
from proxy.sip.message import Request

if TYPE_CHECKING:
    from proxy.relay.core import Proxy

log = logging.getLogger("sipfed.relay")


def route_and_admit(proxy: Proxy, request: Request, flow: Flow, now: float, hashed: str | None) -> NextHop | None:
    """The one path every request takes, with a transaction or stateless (issue 14): §16.3 checks (loops too,
    given the request's ``hashed`` loop value), §16.4 Route processing, the next hop (None: for us), then §16.3
    step 5 admission once the route is known, so that route-scoped exemptions apply. SipError: the refusal."""
    validate(request, proxy.policy)
    if hashed is not None:
        detect_loop(request, proxy.policy, hashed)
    popped = process_routes(request, proxy.policy)
    hop = choose_next_hop(request, proxy.policy, flow, popped, proxy._peer_flows)
    admit(
        request,
        flow,
        proxy.trust,
        proxy.policy.identities[flow.listener].untrusted,
        now,
        hop.route if hop is not None else None,
        proxy.observer,
        now + proxy.wall_offset,
    )
    return hop


def overloaded(proxy: Proxy, flow: Flow, now: float, rates_only: bool = False) -> str | None:
    """Which limit a new request hits, if any (checked before any work is done for it)."""
    limits = proxy.settings.limits
    if not rates_only and proxy._in_flight > limits.max_in_flight:
        proxy.observer.overload("in_flight")
        return f"overloaded: {limits.max_in_flight} transactions in flight"
    if flow.peer is not None:
        if limits.per_peer_rate and not proxy._buckets["peer"].allow(flow.peer, now):
            proxy.observer.overload("peer_rate")
            return f"rate limit for peer {flow.peer}"
    elif limits.per_source_rate and not proxy._buckets["source"].allow(flow.remote[0], now):
        proxy.observer.overload("source_rate")
        return f"rate limit for source {flow.remote[0]}"
    return None


def admitted(proxy: Proxy, request: Request, flow: Flow) -> None:
    """What only an admitted request may do: offer its connection for reuse (RFC 5923), and keep the
    identities its source may assert (RFC 3325 §5, proxy/relay/identity.py)."""
    _maybe_alias(proxy, request, flow)
    if flow.peer is not None and flow.remote not in proxy._peer_flows:
        if len(proxy._peer_flows) >= 4096:  # bounded: the oldest is forgotten
            del proxy._peer_flows[next(iter(proxy._peer_flows))]
        proxy._peer_flows[flow.remote] = flow
    removed = screen_identities(request, proxy.trust.peer(flow.peer))
    if removed:
        proxy.observer.security_drop("identity_removed")
        log.info(
            "%s: removed %d asserted identit%s %s: %s may not assert them",
            request.method,
            len(removed),
            "y" if len(removed) == 1 else "ies",
            ", ".join(v[:80] for v in removed),
            flow.peer or f"{flow.remote[0]} (no trusted peer)",
            extra=log_fields(request.call_id, flow),
        )


def _maybe_alias(proxy: Proxy, request: Request, flow: Flow) -> None:
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
    proxy._outputs.append(RegisterAlias(flow, via.host.lower(), port))
