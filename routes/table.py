"""The route table: MatchUri -> where to send (one destination, several, or a domain to resolve).

Lync's ``New-CsStaticRoute -MatchUri tomt.local -Destination cups.tomt.local -Port 5062 -TLSRoute``
becomes ``{match_uri = "tomt.local", destination = "cups.tomt.local", port = 5062, transport = "tls"}``.
A route may instead list ``destinations`` with RFC 2782 priority and weight, or name a domain to
``resolve`` per RFC 3263; ``routes.config`` parses the ``[[routes]]`` section.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from routes.candidates import Candidate
from routes.probe import HealthCheck

TRANSPORTS = ("tls", "tcp", "udp")
DEFAULT_PORTS = {"tls": 5061, "tcp": 5060, "udp": 5060}
"""RFC 3263 §4.2: the port when DNS gives none (5061 for TLS, RFC 3261 §19.1.2)."""
DEFAULT_SRV_SERVICES = ("_sips._tcp", "_sip._tls", "_sipfederationtls._tcp")
"""RFC 3263 §4.1 SIPS over TCP, the older ``_sip._tls``, then Lync/Skype federation's own name."""
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
SRV_SERVICE_RE = re.compile(r"_[A-Za-z0-9-]{1,62}\._(tcp|udp|tls)")
"""``_service._proto`` as RFC 2782 writes it; the domain is appended."""
TLS_NAME_FROM = ("domain", "target")


@dataclass(frozen=True, slots=True)
class StaticRoute:
    """One route. ``destination``, ``port``, ``transport`` and ``tls_name`` always describe one next hop:
    the only one, the first of ``destinations`` with the lowest priority, or the ``resolve`` domain on
    its transport's default port; ``static_candidates`` and ``routes.resolver.Resolver`` give them all."""

    name: str
    """A short name for logs and metrics (default: the match_uri)."""
    match_uri: str
    """The Request-URI domain this route serves: ``tomt.local``, ``*.tomt.local``, or ``*`` (any)."""
    destination: str
    """The next hop's FQDN or IP address (with ``resolve``: the domain)."""
    port: int
    """The next hop's port."""
    transport: str
    """``tls``, ``tcp`` or ``udp`` (with ``resolve``: the most preferred of ``transports``)."""
    tls_name: str
    """The name the next hop's certificate must carry (default: destination; with ``resolve``: the domain)."""
    listener: str | None = None
    """The listener whose identity (FQDN, Record-Route maddr) faces this next hop; None: the default."""
    destinations: tuple[Candidate, ...] = ()
    """Several next hops with RFC 2782 priority and weight, as written; () for a single destination."""
    resolve: str | None = None
    """A domain to resolve per RFC 3263 §4 (NAPTR, SRV, A/AAAA) instead of fixed destinations."""
    transports: tuple[str, ...] = ()
    """With ``resolve``: the transports accepted, most preferred first; () means ``(transport,)``."""
    srv_services: tuple[str, ...] = DEFAULT_SRV_SERVICES
    """With ``resolve``: the SRV services queried, in order, when NAPTR gives nothing usable."""
    naptr: bool = True
    """With ``resolve``: query NAPTR first (RFC 3263 §4.1)."""
    tls_name_from: str = "domain"
    """With ``resolve``: the certificate must carry the ``domain`` resolved (RFC 5922 §4.1; or the fixed
    ``tls_name`` if one is set) or each SRV ``target``'s name."""
    down_seconds: float = 30.0
    """How long a candidate that failed stays marked down (RFC 3263 §4.3 failover)."""
    health: HealthCheck | None = None
    """OPTIONS health checks of every destination (``routes.probe``); None: none."""

    @property
    def accepted_transports(self) -> tuple[str, ...]:
        return self.transports or (self.transport,)

    @property
    def fails_over(self) -> bool:
        """More than one place to try: a pool, or a domain DNS may resolve to several."""
        return self.resolve is not None or len(self.destinations) > 1

    @property
    def static_candidates(self) -> tuple[Candidate, ...]:
        """The configured next hops (none for a ``resolve`` route: DNS gives those)."""
        if self.resolve is not None:
            return ()
        if self.destinations:
            return self.destinations
        return (Candidate(self.destination, self.port, self.transport, self.tls_name),)

    def matches(self, domain: str) -> bool:
        pattern = self.match_uri
        if pattern == "*":
            return True
        if pattern.startswith("*."):
            return domain.endswith(pattern[1:])
        return domain == pattern

    @property
    def specificity(self) -> tuple[int, int]:
        """Exact domains beat wildcards; longer wildcards beat shorter ones; ``*`` is last."""
        if self.match_uri == "*":
            return (0, 0)
        if self.match_uri.startswith("*."):
            return (1, len(self.match_uri))
        return (2, len(self.match_uri))


class RouteTable:
    """Routes ordered most specific first; lookup is the first that matches."""

    __slots__ = ("_at_host", "_destinations", "_exact", "_wildcards", "by_name", "routes")

    def __init__(self, routes: Iterable[StaticRoute]) -> None:
        self.routes = sorted(routes, key=lambda r: r.specificity, reverse=True)
        self._exact = {r.match_uri: r for r in reversed(self.routes) if r.specificity[0] == 2}
        self._wildcards = [r for r in self.routes if r.specificity[0] < 2]
        self.by_name = {r.name: r for r in self.routes}
        # Made once: every in-dialog request with a Route or Contact host asks these (issue 19's SUBSCRIBE
        # profile: building each route's candidates per request was 2% of the process).
        self._at_host: dict[str, list[tuple[StaticRoute, Candidate]]] = {}
        for route in self.routes:
            for candidate in route.static_candidates:
                self._at_host.setdefault(candidate.host, []).append((route, candidate))
        self._destinations: dict[str, tuple[StaticRoute, Candidate]] = {}
        for route in self.routes:
            own = Candidate(route.destination, route.port, route.transport, route.tls_name)
            self._destinations.setdefault(route.destination, (route, own))

    def lookup(self, domain: str) -> StaticRoute | None:
        """The most specific route for a Request-URI host (compared case-insensitively)."""
        domain = domain.lower().rstrip(".")
        route = self._exact.get(domain)
        if route is not None:
            return route
        for candidate in self._wildcards:
            if candidate.matches(domain):
                return candidate
        return None

    def by_destination(self, host: str) -> StaticRoute | None:
        """The first route whose destination is ``host`` (used for Route-header next hops)."""
        found = self._destinations.get(host.lower().rstrip("."))
        return found[0] if found is not None else None

    def destination_candidate(self, host: str) -> tuple[StaticRoute, Candidate] | None:
        """``by_destination``'s route with its own destination as a Candidate (made once, not per request)."""
        return self._destinations.get(host.lower().rstrip("."))

    def candidate_for_host(self, host: str, port: int | None = None) -> tuple[StaticRoute, Candidate] | None:
        """The configured next hop named ``host`` (and on ``port``, if given) among every route's
        destinations: a request to one pool member keeps that member's port, transport and
        certificate name, where ``by_destination`` knows only each route's first destination."""
        for route, candidate in self._at_host.get(host.lower().rstrip("."), ()):
            if port is None or port == candidate.port:
                return route, candidate
        return None


def is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return DOMAIN_RE.fullmatch(host) is not None
    return True


def service_transport(service: str) -> str:
    """The transport an SRV service name stands for: ``_sips._tcp``, ``_x._tls`` and names with
    "tls" in the service label (``_sipfederationtls._tcp``) mean TLS; otherwise the protocol label."""
    label, proto = service.lower().split(".", 1)
    if label == "_sips" or proto == "_tls" or "tls" in label:
        return "tls"
    return proto.removeprefix("_")
