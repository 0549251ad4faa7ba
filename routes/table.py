"""The static route table: MatchUri -> destination host:port:transport.

Lync's ``New-CsStaticRoute -MatchUri tomt.local -Destination cups.tomt.local -Port 5062 -TLSRoute``
becomes ``{match_uri = "tomt.local", destination = "cups.tomt.local", port = 5062, transport = "tls"}``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TRANSPORTS = ("tls", "tcp", "udp")
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
ROUTE_KEYS = {"name", "match_uri", "destination", "port", "transport", "tls_name", "listener"}


@dataclass(frozen=True, slots=True)
class StaticRoute:
    """One static route."""

    name: str
    """A short name for logs and metrics (default: the match_uri)."""
    match_uri: str
    """The Request-URI domain this route serves: ``tomt.local``, ``*.tomt.local``, or ``*`` (any)."""
    destination: str
    """The next hop's FQDN or IP address."""
    port: int
    """The next hop's port."""
    transport: str
    """``tls``, ``tcp`` or ``udp``."""
    tls_name: str
    """The name the next hop's certificate must carry (default: destination)."""
    listener: str | None = None
    """The listener whose identity (FQDN, Record-Route maddr) faces this next hop; None: the default."""

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

    __slots__ = ("_exact", "_wildcards", "routes")

    def __init__(self, routes: Iterable[StaticRoute]) -> None:
        self.routes = sorted(routes, key=lambda r: r.specificity, reverse=True)
        self._exact = {r.match_uri: r for r in reversed(self.routes) if r.specificity[0] == 2}
        self._wildcards = [r for r in self.routes if r.specificity[0] < 2]

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
        host = host.lower().rstrip(".")
        for route in self.routes:
            if route.destination == host:
                return route
        return None


def parse_routes(raw: object, where: str = "routes") -> tuple[list[StaticRoute], list[str]]:
    """Validate the ``[[routes]]`` config section; return the routes and every problem found."""
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        return [], [f"{where}: must be a list of tables ([[routes]])"]
    routes: list[StaticRoute] = []
    problems: list[str] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        path = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{path}: must be a table")
            continue
        route = _parse_route(entry, path, problems)
        if route is None:
            continue
        if route.name in names:
            problems.append(f"{path}.name: {route.name!r} is used by another route; names must be unique")
        names.add(route.name)
        routes.append(route)
    problems.extend(_duplicate_matches(routes, where))
    return routes, problems


def _parse_route(entry: Mapping[str, Any], path: str, problems: list[str]) -> StaticRoute | None:
    before = len(problems)
    for key in sorted(set(entry) - ROUTE_KEYS):
        problems.append(f"{path}.{key}: unknown key (known: {', '.join(sorted(ROUTE_KEYS))})")
    match_uri = _text(entry, "match_uri", path, problems, required=True).lower()
    if match_uri and match_uri != "*" and not DOMAIN_RE.fullmatch(match_uri.removeprefix("*.")):
        problems.append(f"{path}.match_uri: {match_uri!r} is not a domain, '*.domain' or '*'")
    destination = _text(entry, "destination", path, problems, required=True).lower().rstrip(".")
    if destination and not is_host(destination):
        problems.append(f"{path}.destination: {destination!r} is not an FQDN or IP address")
    transport = _text(entry, "transport", path, problems, default="tls").lower()
    if transport not in TRANSPORTS:
        problems.append(f"{path}.transport: {transport!r} must be one of {', '.join(TRANSPORTS)}")
    port = entry.get("port", 5061 if transport == "tls" else 5060)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        problems.append(f"{path}.port: {port!r} must be a whole number 1-65535")
    tls_name = _text(entry, "tls_name", path, problems, default=destination).lower()
    listener = entry.get("listener")
    if listener is not None and not isinstance(listener, str):
        problems.append(f"{path}.listener: must be a listener name (a string)")
    if len(problems) > before:
        return None
    name = _text(entry, "name", path, problems, default=match_uri)
    return StaticRoute(name, match_uri, destination, int(port), transport, tls_name, listener)


def _text(entry: Mapping[str, Any], key: str, path: str, problems: list[str], *, required: bool = False,
          default: str = "") -> str:
    value = entry.get(key)
    if value is None:
        if required:
            problems.append(f"{path}.{key}: missing (required)")
        return default
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{path}.{key}: must be a non-empty string, got {value!r}")
        return default
    return value.strip()


def is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return DOMAIN_RE.fullmatch(host) is not None
    return True


def _duplicate_matches(routes: list[StaticRoute], where: str) -> list[str]:
    seen: dict[str, str] = {}
    problems = []
    for route in routes:
        if route.match_uri in seen:
            problems.append(
                f"{where}: match_uri {route.match_uri!r} appears in routes {seen[route.match_uri]!r} and "
                f"{route.name!r}; only one can win — remove one"
            )
        seen.setdefault(route.match_uri, route.name)
    return problems
