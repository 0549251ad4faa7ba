"""The ``[[routes]]`` config section: every problem reported at once, each under its key path.

Three ways to say where a route goes, exactly one per route:

- ``destination`` (with ``port``, ``transport``, ``tls_name``): one next hop, as Lync's static route;
- ``destinations = [{host, port, transport, priority, weight, tls_name}, …]``: SRV records written by
  hand (RFC 2782); the route's own ``port``, ``transport`` and ``tls_name`` are defaults for the entries;
- ``resolve = "tomt.it"``: RFC 3263 §4 resolution (``naptr``, ``srv_services``, ``transports``,
  ``tls_name_from`` apply only here).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from routes.candidates import Candidate
from routes.probe import HealthCheck
from routes.table import (
    DEFAULT_PORTS,
    DEFAULT_SRV_SERVICES,
    DOMAIN_RE,
    SRV_SERVICE_RE,
    TLS_NAME_FROM,
    TRANSPORTS,
    StaticRoute,
    is_host,
    service_transport,
)

WHERE_KEYS = ("destination", "destinations", "resolve")
DNS_KEYS = ("transports", "srv_services", "naptr", "tls_name_from")
ROUTE_KEYS = {
    "name",
    "match_uri",
    "port",
    "transport",
    "tls_name",
    "listener",
    "down_seconds",
    "health",
    *WHERE_KEYS,
    *DNS_KEYS,
}
HEALTH_KEYS = {"interval_seconds": (0.5, 3600.0), "timeout_seconds": (0.1, 60.0)}
HEALTH_COUNTS = ("failures_to_down", "successes_to_up")
DESTINATION_KEYS = {"host", "port", "transport", "priority", "weight", "tls_name"}
MAX_DOWN_SECONDS = 86400
EXTRA_SRV_SERVICES = {"tcp": "_sip._tcp", "udp": "_sip._udp"}


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
    kind = _where_kind(entry, path, problems)
    if kind == "destinations":
        target = _parse_destinations(entry, path, problems)
    elif kind == "resolve":
        target = _parse_resolve(entry, path, problems)
    else:
        target = _parse_destination(entry, path, problems, required=kind is not None)
    down_seconds = entry.get("down_seconds", 30)
    if not _is_number(down_seconds) or not 0 < down_seconds <= MAX_DOWN_SECONDS:
        problems.append(
            f"{path}.down_seconds: {down_seconds!r} must be a number of seconds, "
            f"more than 0 and at most {MAX_DOWN_SECONDS}"
        )
    listener = entry.get("listener")
    if listener is not None and not isinstance(listener, str):
        problems.append(f"{path}.listener: must be a listener name (a string)")
    health = _parse_health(entry.get("health"), f"{path}.health", problems)
    if len(problems) > before:
        return None
    name = _text(entry, "name", path, problems, default=match_uri)
    return StaticRoute(name, match_uri, listener=listener, down_seconds=float(down_seconds), health=health, **target)


def _parse_health(raw: object, path: str, problems: list[str]) -> HealthCheck | None:
    """``health = true`` (the defaults), ``false``/absent (no checks), or a table of the four settings."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return HealthCheck()
    if not isinstance(raw, Mapping):
        problems.append(
            f"{path}: must be true, false or a table {{interval_seconds = …, timeout_seconds = …, "
            "failures_to_down = …, successes_to_up = …}"
        )
        return None
    known = [*HEALTH_KEYS, *HEALTH_COUNTS]
    for key in sorted(set(raw) - set(known)):
        problems.append(f"{path}.{key}: unknown key (known: {', '.join(known)})")
    default = HealthCheck()
    values: dict[str, Any] = {}
    for key, (low, high) in HEALTH_KEYS.items():
        value = raw.get(key, getattr(default, key))
        if not _is_number(value) or not low <= value <= high:
            problems.append(f"{path}.{key}: {value!r} must be a number of seconds from {low:g} to {high:g}")
        values[key] = float(value) if _is_number(value) else getattr(default, key)
    for key in HEALTH_COUNTS:
        value = raw.get(key, getattr(default, key))
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
            problems.append(f"{path}.{key}: {value!r} must be a whole number from 1 to 100")
            value = getattr(default, key)
        values[key] = value
    if values["timeout_seconds"] > values["interval_seconds"]:
        problems.append(
            f"{path}.timeout_seconds: {values['timeout_seconds']:g} is longer than interval_seconds "
            f"({values['interval_seconds']:g}); a check must end before the next one is due"
        )
    return HealthCheck(**values)


def _where_kind(entry: Mapping[str, Any], path: str, problems: list[str]) -> str | None:
    """Exactly one of destination, destinations, resolve; DNS-only keys only with resolve."""
    given = [key for key in WHERE_KEYS if key in entry]
    if len(given) > 1:
        problems.append(
            f"{path}: {' and '.join(given)} cannot be combined — give one destination, a "
            "destinations list, or a domain to resolve"
        )
        return None
    kind = given[0] if given else "destination"
    if kind != "resolve":
        problems.extend(f"{path}.{key}: applies only to a route with resolve" for key in DNS_KEYS if key in entry)
    return kind


def _parse_destination(entry: Mapping[str, Any], path: str, problems: list[str], *, required: bool) -> dict[str, Any]:
    """One next hop: ``destination``, ``port``, ``transport``, ``tls_name``."""
    if "destination" not in entry and required:
        problems.append(f"{path}.destination: missing (required: one of destination, destinations or resolve)")
    destination = _text(entry, "destination", path, problems).lower().rstrip(".")
    if destination and not is_host(destination):
        problems.append(f"{path}.destination: {destination!r} is not an FQDN or IP address")
    transport = _transport(entry, path, problems)
    port = _port(entry, path, problems, DEFAULT_PORTS.get(transport, 5060))
    tls_name = _text(entry, "tls_name", path, problems, default=destination).lower()
    return {"destination": destination, "port": port, "transport": transport, "tls_name": tls_name}


def _parse_destinations(entry: Mapping[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    """Several next hops, like hand-written SRV records (RFC 2782 priority and weight)."""
    raw = entry["destinations"]
    if not isinstance(raw, list) or not raw:
        problems.append(
            f"{path}.destinations: must be a non-empty list of tables "
            "({host = …, port = …, priority = …, weight = …})"
        )
        return {}
    transport = _transport(entry, path, problems)
    port = _port(entry, path, problems, None)
    tls_name = _text(entry, "tls_name", path, problems).lower()
    pool: list[Candidate] = []
    for i, item in enumerate(raw):
        candidate = _parse_candidate(item, f"{path}.destinations[{i}]", problems, transport, port, tls_name)
        if candidate is None:
            continue
        if any(c.key[:3] == candidate.key[:3] for c in pool):
            problems.append(f"{path}.destinations[{i}]: {candidate} is listed twice")
        pool.append(candidate)
    if not pool:
        return {}
    first = min(pool, key=lambda c: c.priority)  # min() keeps the first written of the lowest priority
    return {
        "destination": first.host,
        "port": first.port,
        "transport": first.transport,
        "tls_name": first.tls_name,
        "destinations": tuple(pool),
    }


def _parse_candidate(
    item: object, path: str, problems: list[str], transport: str, port: int | None, tls_name: str
) -> Candidate | None:
    if not isinstance(item, Mapping):
        problems.append(f"{path}: must be a table ({{host = …, port = …, priority = …, weight = …}})")
        return None
    before = len(problems)
    for key in sorted(set(item) - DESTINATION_KEYS):
        problems.append(f"{path}.{key}: unknown key (known: {', '.join(sorted(DESTINATION_KEYS))})")
    host = _text(item, "host", path, problems, required=True).lower().rstrip(".")
    if host and not is_host(host):
        problems.append(f"{path}.host: {host!r} is not an FQDN or IP address")
    transport = _transport(item, path, problems, transport)
    port = _port(item, path, problems, port or DEFAULT_PORTS.get(transport, 5060)) or 0
    priority = _uint16(item, "priority", path, problems)
    weight = _uint16(item, "weight", path, problems)
    name = _text(item, "tls_name", path, problems, default=tls_name or host).lower()
    if len(problems) > before:
        return None
    return Candidate(host, port, transport, name, priority, weight, "static")


def _parse_resolve(entry: Mapping[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    """RFC 3263 §4: a domain to resolve, the transports accepted, SRV service names and NAPTR."""
    domain = _text(entry, "resolve", path, problems, required=True).lower().rstrip(".")
    if domain and (not DOMAIN_RE.fullmatch(domain) or is_ip(domain)):
        problems.append(f"{path}.resolve: {domain!r} is not a domain name (an address goes in destination)")
    if "port" in entry:
        problems.append(
            f"{path}.port: does not apply with resolve — SRV records give ports, and without them "
            "the transport's default port is used (RFC 3263 §4.2)"
        )
    transports = _transports(entry, path, problems)
    services = _srv_services(entry, path, problems, transports)
    naptr = entry.get("naptr", True)
    if not isinstance(naptr, bool):
        problems.append(f"{path}.naptr: {naptr!r} must be true or false")
    tls_name_from = _text(entry, "tls_name_from", path, problems, default="domain").lower()
    if tls_name_from not in TLS_NAME_FROM:
        problems.append(f"{path}.tls_name_from: {tls_name_from!r} must be one of {', '.join(TLS_NAME_FROM)}")
    elif tls_name_from == "target" and "tls_name" in entry:
        problems.append(f"{path}.tls_name: a fixed certificate name contradicts tls_name_from = 'target'; remove one")
    tls_name = _text(entry, "tls_name", path, problems, default=domain).lower()
    transport = transports[0] if transports else "tls"
    return {
        "destination": domain,
        "port": DEFAULT_PORTS.get(transport, 5060),
        "transport": transport,
        "tls_name": tls_name,
        "resolve": domain,
        "transports": transports,
        "srv_services": services,
        "naptr": naptr is True,
        "tls_name_from": tls_name_from,
    }


def _transports(entry: Mapping[str, Any], path: str, problems: list[str]) -> tuple[str, ...]:
    """``transports = ["tls", "tcp"]`` (preference order) or the single ``transport``; default TLS only."""
    if "transports" not in entry:
        return (_transport(entry, path, problems),)
    if "transport" in entry:
        problems.append(f"{path}.transport: give transport or transports, not both")
    raw = entry["transports"]
    if not isinstance(raw, list) or not raw:
        problems.append(
            f"{path}.transports: must be a non-empty list, most preferred first, of {', '.join(TRANSPORTS)}"
        )
        return ()
    found: list[str] = []
    for i, value in enumerate(raw):
        name = value.lower() if isinstance(value, str) else value
        if name not in TRANSPORTS:
            problems.append(f"{path}.transports[{i}]: {value!r} must be one of {', '.join(TRANSPORTS)}")
        elif name in found:
            problems.append(f"{path}.transports[{i}]: {value!r} is listed twice")
        else:
            found.append(name)
    return tuple(found)


def _srv_services(
    entry: Mapping[str, Any], path: str, problems: list[str], transports: tuple[str, ...]
) -> tuple[str, ...]:
    """SRV service names (``_sips._tcp``…); by default the TLS ones, plus ``_sip._tcp``/``_sip._udp``
    when those transports are accepted."""
    if "srv_services" not in entry:
        extra = tuple(EXTRA_SRV_SERVICES[t] for t in transports if t in EXTRA_SRV_SERVICES)
        return (DEFAULT_SRV_SERVICES if "tls" in transports else ()) + extra
    raw = entry["srv_services"]
    if not isinstance(raw, list):
        problems.append(f"{path}.srv_services: must be a list such as {list(DEFAULT_SRV_SERVICES)!r}")
        return ()
    found: list[str] = []
    for i, value in enumerate(raw):
        key = f"{path}.srv_services[{i}]"
        if not isinstance(value, str) or not SRV_SERVICE_RE.fullmatch(value):
            problems.append(f"{key}: {value!r} is not an SRV service name like '_sips._tcp' (_service._tcp|udp|tls)")
        elif value.lower() in found:
            problems.append(f"{key}: {value!r} is listed twice")
        elif transports and service_transport(value) not in transports:
            problems.append(
                f"{key}: {value!r} is a {service_transport(value)} service, but this route accepts "
                f"only {', '.join(transports)} (transports)"
            )
        else:
            found.append(value.lower())
    return tuple(found)


def _transport(entry: Mapping[str, Any], path: str, problems: list[str], default: str = "tls") -> str:
    transport = _text(entry, "transport", path, problems, default=default).lower()
    if transport not in TRANSPORTS:
        problems.append(f"{path}.transport: {transport!r} must be one of {', '.join(TRANSPORTS)}")
    return transport


def _port(entry: Mapping[str, Any], path: str, problems: list[str], default: int | None) -> int | None:
    port = entry.get("port", default)
    if port is None:
        return None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        problems.append(f"{path}.port: {port!r} must be a whole number 1-65535")
        return default
    return port


def _uint16(entry: Mapping[str, Any], key: str, path: str, problems: list[str]) -> int:
    value = entry.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 65536:
        problems.append(f"{path}.{key}: {value!r} must be a whole number 0-65535 (RFC 2782)")
        return 0
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _text(
    entry: Mapping[str, Any], key: str, path: str, problems: list[str], *, required: bool = False, default: str = ""
) -> str:
    value = entry.get(key)
    if value is None:
        if required:
            problems.append(f"{path}.{key}: missing (required)")
        return default
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{path}.{key}: must be a non-empty string, got {value!r}")
        return default
    return value.strip()


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
