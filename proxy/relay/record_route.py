"""Record-Route for a federation proxy: our entries (RFC 3261 §16.6 step 4, RFC 5658 double
Record-Route) and the maddr rewrite map applied to peers' entries."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.relay.types import Identity
from proxy.sip.headers import parse_name_addr

#: Methods whose forwarded copy carries our Record-Route: those that create dialogs
#: (INVITE, SUBSCRIBE, REFER; RFC 3261 §16.6, RFC 6665 §4.1.3) and NOTIFY, which may
#: create the subscription dialog when it beats the 200 to SUBSCRIBE (RFC 6665 §4.1.2.4).
RECORD_ROUTE_METHODS = frozenset({"INVITE", "SUBSCRIBE", "NOTIFY", "REFER"})


def record_route_value(identity: Identity) -> str:
    """``<sip:FQDN:port;transport=tls;lr;maddr=FEDERATION_FQDN>`` for one side.

    The port is always written, even 5061: without it a peer would look up SRV records for
    the maddr name first (RFC 3263 §4.2) and could land on another listener than this one.
    """
    return f"<sip:{identity.fqdn}:{identity.port};transport={identity.transport};lr;maddr={identity.federation_fqdn}>"


def our_record_routes(inbound: Identity, outbound: Identity) -> list[str]:
    """The entries to add, top first.

    RFC 5658 §3.2: when the request leaves on another side than it came in on, add two
    entries; the top one (what the next hop sees first) names the outbound side, the
    lower one (what the sender's side reaches first) names the inbound side.
    """
    inner = record_route_value(inbound)
    outer = record_route_value(outbound)
    return [outer] if outer == inner else [outer, inner]


def rewrite_maddr(value: str, mapping: Mapping[str, str]) -> str:
    """Map a Record-Route/Route entry's maddr through ``mapping``; anything else stays as written."""
    if not mapping or "maddr=" not in value.lower():
        return value
    entry = parse_name_addr(value)
    maddr = entry.uri.param("maddr")
    if maddr is None or maddr.lower() not in mapping:
        return value
    uri = entry.uri.with_param("maddr", mapping[maddr.lower()])
    head = f"{entry.display} <{uri}>" if entry.display else f"<{uri}>"
    tail = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in entry.params)
    return head + tail
