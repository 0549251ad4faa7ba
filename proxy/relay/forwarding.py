"""RFC 3261 §16.3-§16.6 as plain functions: validate, process Route, choose the next hop, forward.

Every function takes the request and a ``RelayPolicy`` and either returns a decision or
raises a ``SipError`` carrying the status to answer with.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.relay.record_route import RECORD_ROUTE_METHODS, our_record_routes, rewrite_maddr
from proxy.relay.types import Flow, Identity, NextHop
from proxy.sip.errors import SipError
from proxy.sip.grammar import MAGIC_COOKIE, digits, is_ip_literal
from proxy.sip.headers import parse_name_addr, parse_via, split_commas
from proxy.sip.message import Request
from proxy.sip.uri import DEFAULT_PORTS, SipUri
from routes import Candidate, RouteTable, StaticRoute

#: Our branches: the magic cookie, our mark, the loop-detection hash, a dot, 64 random bits and the
#: transaction id.
BRANCH_PREFIX = MAGIC_COOKIE + "sf"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NoRoute(SipError):
    """404: an out-of-dialog request for a domain no route serves (counted as a route miss, by its type)."""

    STATUS = 404


class _Entropy:
    """Random hex digits from the OS's CSPRNG, drawn 4 KiB at a time: one system call per 512 branches
    instead of one per branch (a sixtieth of the cost), the bits as unpredictable as ``secrets``'."""

    __slots__ = ("_at", "_hex")

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def hex16(self) -> str:
        at = self._at
        if at + 16 > len(self._hex):
            self._hex, at = secrets.token_hex(4096), 0
        self._at = at + 16
        return self._hex[at : at + 16]


_ENTROPY = _Entropy()


def new_branch(hashed: str, cid: int) -> str:
    """RFC 3261 §8.1.1.7: a branch unique across space and time. 64 random bits make it unguessable, so
    a response cannot be forged for a request someone else sent (the flow check is the other half)."""
    return f"{BRANCH_PREFIX}{hashed}.{_ENTROPY.hex16()}{cid:x}"


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    """What the forwarding decisions need to know about this proxy."""

    identities: dict[str, Identity]
    """Our identity on each listener, by listener name."""
    routes: RouteTable
    """Static routes by MatchUri."""
    maddr_out: dict[str, str] = field(default_factory=dict)
    """maddr rewrite for Record-Route: internal -> external."""
    maddr_in: dict[str, str] = field(default_factory=dict)
    """The reverse, for Route on in-dialog requests: external -> internal."""
    tolerated_option_tags: frozenset[str] = frozenset()
    """Proxy-Require option tags passed on instead of refused."""
    own_names: frozenset[str] = frozenset()
    """Our FQDNs and federation FQDNs, lower case."""
    own_addresses: frozenset[tuple[str, int]] = frozenset()
    """(IP, port) pairs we listen on."""
    own_ports: frozenset[int] = frozenset()
    """Ports we listen on."""
    dialog_networks: tuple[Network, ...] = ()
    """Opt-in (``[proxy] in_dialog_networks``): addresses outside the configured routes that a Route header or
    an in-dialog Request-URI may send a request to. Empty: only what a configured route accounts for."""
    route_hops: dict[tuple[str, str], NextHop] = field(default_factory=dict, init=False, compare=False, repr=False)
    """The NextHop of each (route name, listener), made once: NextHop is immutable and the same every time."""
    in_dialog_hosts: dict[str, bool] = field(default_factory=dict, init=False, compare=False, repr=False)
    """Whether a host is inside ``dialog_networks``, per host seen (at most 4096): parsing the address per
    in-dialog request was 2-3% of the process in the SUBSCRIBE profiles (issue 19)."""

    @classmethod
    def build(
        cls,
        identities: list[Identity],
        routes: RouteTable,
        maddr_out: dict[str, str],
        tolerated: frozenset[str],
        dialog_networks: tuple[Network, ...] = (),
    ) -> RelayPolicy:
        names = {i.fqdn.lower() for i in identities} | {i.federation_fqdn.lower() for i in identities}
        addresses: set[tuple[str, int]] = set()
        for ident in identities:
            bound = ["127.0.0.1"] if ident.address in ("0.0.0.0", "::") else [ident.address]
            addresses.update((addr, port) for addr in bound for port in {ident.port, ident.via_port or ident.port})
        return cls(
            {i.listener: i for i in identities},
            routes,
            dict(maddr_out),
            {v: k for k, v in maddr_out.items()},
            tolerated,
            frozenset(names),
            frozenset(addresses),
            frozenset(i.port for i in identities),
            tuple(dialog_networks),
        )

    def is_own_uri(self, uri: SipUri) -> bool:
        """§16.4: a URI that names this proxy, by FQDN, by address, or by maddr."""
        maddr = uri.param("maddr")
        if maddr and maddr.lower() in self.own_names:
            return True
        host = uri.host.lower()
        if host in self.own_names:
            return uri.port is None or uri.port in self.own_ports
        if is_ip_literal(host):
            port = uri.port or DEFAULT_PORTS.get(uri.transport, 5060)
            return (host, port) in self.own_addresses
        return False


def validate(request: Request, policy: RelayPolicy) -> None:
    """§16.3 steps 1-3 and 6: reasonable syntax, URI scheme, Max-Forwards, Proxy-Require."""
    if request.request_uri.headers is not None:  # 416 for a non-SIP scheme (RFC 4475 §3.3.2), 400 if malformed
        # RFC 3261 §19.1.1 Table 1: headers are not allowed in a Request-URI (RFC 4475 §3.1.2.11).
        raise SipError("Bad Request (headers are not allowed in the Request-URI)", 400)
    request.from_  # noqa: B018 - From and To must parse (RFC 4475 §3.1.2.6, §3.1.2.13)
    request.to  # noqa: B018
    max_forwards = request.headers.get("max-forwards")
    if max_forwards is not None and digits(max_forwards, 3) == 0:
        raise SipError("Too Many Hops", 483)  # §16.3 step 3
    unsupported = [
        tag
        for item in request.headers.items
        if item[0] == "proxy-require"
        for tag in (t.strip() for t in item[2].split(","))
        if tag and tag.lower() not in policy.tolerated_option_tags
    ]
    if unsupported:  # §16.3 step 6
        raise SipError("Bad Extension", 420, (("Unsupported", ", ".join(unsupported)),))


#: §16.3 step 4's fields; To and From whole (their tags are what the rule names; the rest of each value does
#: not change along a loop either, and hashing the values as written spares parsing them again).
_LOOP_FIELDS = frozenset({"to", "from", "call-id", "cseq", "proxy-require", "proxy-authorization", "route"})


def loop_hash(request: Request) -> str:
    """§16.6 step 8: a hash of the fields loop detection compares (§16.3 step 4)."""
    parts = [request.uri]
    parts.extend([item[2] for item in request.headers.items if item[0] in _LOOP_FIELDS])
    return hashlib.blake2s("\0".join(parts).encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()


def detect_loop(request: Request, policy: RelayPolicy, hashed: str) -> None:
    """§16.3 step 4: our Via with the same loop hash means the request came back unchanged: 482."""
    for item in request.headers.items:
        if item[0] != "via" or BRANCH_PREFIX not in item[2]:
            continue
        for value in split_commas(item[2]):
            via = parse_via(value)
            branch = via.branch or ""
            ours = via.host.lower() in policy.own_names or any(via.host == a for a, _ in policy.own_addresses)
            if ours and branch.startswith(BRANCH_PREFIX) and branch[len(BRANCH_PREFIX) :].split(".")[0] == hashed:
                raise SipError("Loop Detected", 482)


def process_routes(request: Request, policy: RelayPolicy) -> bool:
    """§16.4: undo a strict router's rewrite, pop our own Route entries; True if we popped any."""
    headers = request.headers
    popped = False
    if "route" in headers and policy.is_own_uri(request.request_uri):
        # §16.4: the previous hop was a strict router; the real target is the last Route.
        last = headers.remove_last("route")
        assert last is not None
        request.set_uri(parse_name_addr(last).uri)
        popped = True
    while (first := headers.get("route")) is not None and policy.is_own_uri(parse_name_addr(first).uri):
        headers.remove_first("route")  # several in a row after an RFC 5658 double Record-Route
        popped = True
    if policy.maddr_in and "route" in headers:
        headers.map_values("route", lambda value: rewrite_maddr(value, policy.maddr_in))
    return popped


def choose_next_hop(
    request: Request,
    policy: RelayPolicy,
    flow: Flow,
    popped_own: bool,
    peer_flows: Mapping[tuple[str, int], Flow] | None = None,
) -> NextHop | None:
    """§16.5/§16.6 steps 6-7: the next hop; None when the request is for this proxy itself. Whatever the
    request says, the hop is one the configuration accounts for (``hop_for_uri``): no open relay."""
    first_route = request.headers.get("route")
    if first_route is not None:
        return hop_for_uri(parse_name_addr(first_route).uri, policy, flow.listener, flow.transport, peer_flows)
    uri = request.request_uri
    if policy.is_own_uri(uri):
        return None  # §16.4: a Request-URI naming this proxy is for the proxy itself, whatever the routes
    route = policy.routes.lookup(uri.host)
    if route is not None and not (popped_own and (uri.port is not None or uri.host_is_ip)):
        listener = route.listener or flow.listener
        hop = policy.route_hops.get((route.name, listener))
        if hop is None:
            hop = NextHop(
                route.transport,
                route.destination,
                route.port,
                route.tls_name,
                listener,
                route.name,
                failover=route.fails_over,
            )
            if len(policy.route_hops) < 4096:
                policy.route_hops[(route.name, listener)] = hop
        return hop
    if popped_own or request.to.param("tag") is not None or request.method == "ACK":
        # In a dialog we are on: go where it points, if the configuration accounts for that place.
        return hop_for_uri(uri, policy, flow.listener, flow.transport, peer_flows)
    raise NoRoute(f"Not Found (no route for domain {uri.host})")


def hop_for_uri(
    uri: SipUri,
    policy: RelayPolicy,
    default_listener: str,
    inbound: str = "tls",
    peer_flows: Mapping[tuple[str, int], Flow] | None = None,
) -> NextHop:
    """RFC 3263 §4 for a URI with an explicit host (maddr first), held to the configuration.

    Rules (issue 14: no open relay, no downgrade):
    1. A configured destination at that host (and the URI's port, if it gives one) lends its transport,
       port, certificate name and listener; the URI's ``transport`` parameter cannot take it off TLS.
    2. Else the address and port of a trusted peer's own connection (``peer_flows``: a subscriber whose
       Contact is the connection it subscribed on) go back over that connection's transport, its
       certificate checked against the name the peer proved.
    3. Else a host name inside a route's MatchUri domain goes over that route's transport and listener,
       its certificate checked against the name itself (RFC 5922 §4.1).
    4. Else only an address inside ``dialog_networks`` (opt-in), on TLS when the request came over TLS.
    5. Anything else is refused: 403, naming the host."""
    host = uri.target_host.lower()
    found = _configured(policy.routes, host, uri.port)
    if found is None and uri.host.lower() != host:
        found = _configured(policy.routes, uri.host.lower(), uri.port)
    if found is not None:
        route, candidate = found
        listener = route.listener or default_listener
        tls_name = candidate.tls_name if candidate.transport == "tls" else None
        return NextHop(candidate.transport, host, candidate.port, tls_name, listener, route.name)
    peer = peer_flows.get((host.strip("[]"), uri.port)) if peer_flows and uri.port else None
    if peer is not None:
        names = [name for name in peer.peer_names if not is_ip_literal(name)] or list(peer.peer_names)
        tls_name = (names[0] if names else host) if peer.transport == "tls" else None
        return NextHop(peer.transport, host, uri.port or 0, tls_name, peer.listener, None)
    named = None if is_ip_literal(host) else _route_for_name(policy.routes, host)
    if named is not None:
        transport = named.transport
        port = uri.port or DEFAULT_PORTS.get(transport, 5060)
        return NextHop(
            transport, host, port, host if transport == "tls" else None, named.listener or default_listener, named.name
        )
    port = uri.port or DEFAULT_PORTS.get(uri.explicit_transport or "udp", 5060)
    inside = policy.in_dialog_hosts.get(host)
    if inside is None:
        inside = _in_dialog_networks(host, policy.dialog_networks)
        if len(policy.in_dialog_hosts) < 4096:
            policy.in_dialog_hosts[host] = inside
    if not inside:
        raise SipError(f"Forbidden (next hop {host}:{port} is not a configured destination)", 403)
    transport = "tls" if inbound == "tls" or uri.scheme == "sips" else (uri.explicit_transport or inbound)
    if transport == "tls" and uri.port is None:
        port = DEFAULT_PORTS["tls"]
    # The listener facing it: a route's to the same host (another server there), else the inbound one.
    beside = policy.routes.by_destination(host)
    listener = beside.listener if beside is not None and beside.listener else default_listener
    return NextHop(transport, host, port, uri.host.lower() if transport == "tls" else None, listener, None)


def _route_for_name(routes: RouteTable, host: str) -> StaticRoute | None:
    """The route whose MatchUri covers a host name: the name itself, or a domain it is under
    (``lyncpool.tomt.it`` is under the route for ``tomt.it``)."""
    labels = host.rstrip(".").split(".")
    for i in range(len(labels) - 1):
        route = routes.lookup(".".join(labels[i:]))
        if route is not None:
            return route
    return None


def _in_dialog_networks(host: str, networks: tuple[Network, ...]) -> bool:
    if not networks or not is_ip_literal(host):
        return False
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(address in network for network in networks)


def reply_hop(flow: Flow, via_value: str) -> NextHop | None:
    """RFC 3261 §18.2.2: where a response goes when the connection its request came on has closed: a new
    connection to the address the request really came from (``flow.remote``, never a ``received`` the
    sender wrote) on the sent-by port (else the transport's default), on the closed connection's own
    transport (a TLS flow's answer never goes out in clear, whatever the Via says). Over TLS the certificate
    must name the sent-by host, or, when sent-by is an address, the name the sender's certificate proved on
    the closed connection. None over UDP or for a Via that does not parse."""
    try:
        via = parse_via(via_value)
    except SipError:
        return None
    transport = flow.transport
    if transport not in ("tcp", "tls"):
        return None
    host = flow.remote[0]
    port = via.port or DEFAULT_PORTS[transport]
    tls_name = None
    if transport == "tls":
        names = [name for name in flow.peer_names if not is_ip_literal(name)]
        tls_name = via.host.lower() if not is_ip_literal(via.host) else (names[0] if names else via.host)
    return NextHop(transport, host, port, tls_name, flow.listener, None)


def _configured(routes: RouteTable, host: str, port: int | None) -> tuple[StaticRoute, Candidate] | None:
    """The route destination (a pool member, or a route's own destination) at ``host`` and ``port``."""
    hit = routes.candidate_for_host(host, port)
    if hit is not None:
        return hit
    found = routes.destination_candidate(host)
    if found is not None and port in (None, found[0].port):
        return found
    return None


def prepare_forward(request: Request, hop: NextHop, policy: RelayPolicy, inbound: Identity, branch: str) -> Request:
    """§16.6 steps 1-8 on a copy: Max-Forwards, Record-Route, maddr rewrite, our Via."""
    out = request.copy()
    headers = out.headers
    max_forwards = headers.get("max-forwards")
    hops = digits(max_forwards, 3) if max_forwards is not None else None
    headers.set("Max-Forwards", str(hops - 1) if hops else "70")
    outbound = policy.identities[hop.listener]
    if policy.maddr_out and "record-route" in headers:
        headers.map_values("record-route", lambda value: rewrite_maddr(value, policy.maddr_out))
    if out.method in RECORD_ROUTE_METHODS:
        for value in reversed(our_record_routes(inbound, outbound)):
            headers.prepend("Record-Route", value)
    headers.prepend("Via", via_value(outbound, hop.transport, branch))
    return out


def via_value(identity: Identity, transport: str, branch: str) -> str:
    """§16.6 step 8 / §18.1.1: our Via; UDP asks for rport (RFC 3581) so answers come back to us (§18.2.2: to
    the sent-by port; in worker mode that is the sending worker's own socket, ``via_port``)."""
    if transport == "udp":
        host = identity.address if identity.address not in ("0.0.0.0", "::") else identity.fqdn
        return f"SIP/2.0/UDP {host}:{identity.via_port or identity.port};branch={branch};rport"
    return f"SIP/2.0/{transport.upper()} {identity.fqdn}:{identity.port};branch={branch}"


def mark_received(request: Request, flow: Flow) -> None:
    """§18.2.1: ``received`` is the real source address, always set by us: one the sender wrote is replaced
    (or removed when sent-by is the source), so nobody can aim our answers at a host of its choosing;
    fill rport (RFC 3581 §4)."""
    value = request.headers.get("via")  # the top value alone
    if value is None:
        return
    via = parse_via(value)
    source_ip, source_port = flow.remote
    changed = value
    if "received" in value.lower() and via.param("received") is not None:
        kept = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in via.params if k.lower() != "received")
        changed = value[: value.index(";")] + kept
    if via.host != source_ip and (via.param("received") is None or changed is not value):
        changed += f";received={source_ip}"
    if via.param("rport") == "":
        changed = changed.replace(";rport", f";rport={source_port}", 1)
    if changed is not value:
        request.headers.set("Via", changed)
