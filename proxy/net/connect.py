"""Connecting to next hops, for the Driver: a connection opened to one hop, or the walk over a pool or DNS
route's candidates that ``Failover`` plans (RFC 3263 §4.3), with the requests queued while it opens; and a UDP
hop named by DNS, resolved before its request is sent.

Apart from the connection table and the pump (proxy/net/driver.py) because this is the slow, awaited side of
sending: each function is started as a task by ``Driver._send_to_hop``, takes the Driver, and fills its
connection table (``by_hop``, ``pending``) or fails the core's transactions when it cannot.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING

from proxy.net.connection import StreamConnection
from proxy.net.revocation_check import check_outbound
from proxy.net.tls import classify, describe_failure
from proxy.net.tls_words import CertificateRefused, silent_tls_port
from proxy.relay.failover import candidate_hop, candidate_of
from proxy.relay.types import NextHop
from routes import Candidate, StaticRoute
from routes.dns import ResolutionError

if TYPE_CHECKING:
    from proxy.net.driver import Driver

log = logging.getLogger("sipfed.net")

HopKey = tuple[str, str, int, str | None]


async def resolve_and_send(
    driver: Driver, udp: asyncio.DatagramTransport, hop: NextHop, data: bytes, token: int
) -> None:
    try:
        infos = await asyncio.wait_for(
            driver.loop.getaddrinfo(hop.host, hop.port, type=socket.SOCK_DGRAM), driver.connect_timeout
        )
    except (OSError, TimeoutError) as exc:
        reason = f"cannot resolve {hop.host}: {getattr(exc, 'strerror', None) or exc}"
        driver.warnings.warn(log, f"unresolved {hop}", driver.loop.time(), "next hop %s unreachable: %s", hop, reason)
        if token:
            driver.proxy.hop_failed(token, reason, driver.loop.time(), "other")
            driver.pump()
        return
    address = infos[0][4][:2]
    if token:
        driver.proxy.sent_on(token, address[0])
    if driver.hep is not None:
        driver._hep_udp(hop.listener, (str(address[0]), int(address[1])), data, driver.udp_out)
    udp.sendto(data, address)


async def open_connection(driver: Driver, hop: NextHop) -> StreamConnection:
    tls = hop.transport == "tls"
    _, conn = await asyncio.wait_for(
        driver.loop.create_connection(
            lambda: StreamConnection(driver, hop.transport, hop.listener, outbound=True),
            hop.host.strip("[]"),
            hop.port,
            ssl=driver.client_ssl if tls else None,
            server_hostname=hop.tls_name if tls else None,
        ),
        driver.connect_timeout,
    )
    if tls:
        await check_outbound(driver, conn, hop)  # tls.revocation: before the first request goes
    return conn


async def connect_route(driver: Driver, key: HopKey, hop: NextHop, route: StaticRoute) -> None:
    """RFC 3263 §4.3 as ``Failover`` plans it: try the route's candidates in turn; one that refuses, fails
    TLS or times out is marked down and the next is tried, in the same transaction. The requests fail
    only when every candidate has."""
    failover = driver.failover
    found: list[Candidate] = []
    dns_error = ""
    try:
        found = (
            await driver.resolver.candidates_for(route, driver.loop.time())
            if route.resolve and driver.resolver
            else list(route.static_candidates)
        )
    except ResolutionError as exc:
        dns_error = str(exc)
    else:
        driver.liveness.known[route.name] = found
    walk = failover.plan(route, found, driver.loop.time(), dns_error)
    for candidate in walk.candidates:
        attempt = candidate_hop(hop, candidate)
        open_conn = driver.by_hop.get(candidate_hop_key(candidate))  # e.g. the health checks' connection
        if open_conn is not None and open_conn.transport is not None and not open_conn.transport.is_closing():
            connected(driver, key, open_conn, attempt)
            return
        try:
            conn = await open_connection(driver, attempt)
        except (OSError, TimeoutError, ssl.SSLError, CertificateRefused) as exc:
            reason = await explain(driver, exc, attempt)
            mark = failover.connect_failed(walk, candidate, reason, driver.loop.time())
            driver.warnings.warn(
                log,
                f"candidate {candidate}",
                driver.loop.time(),
                "route %s: candidate %s failed (%s); marked down for %g s",
                route.name,
                candidate,
                mark.reason,
                mark.seconds,
            )
            driver.observer.hop_failure(route.name, _failure_kind(exc))
            continue
        failover.connected(candidate, held_down=driver.liveness.is_down(route.name, candidate))
        connected(driver, key, conn, attempt)
        candidate_key = candidate_hop_key(candidate)
        if candidate_key != key and candidate_key not in driver.by_hop:
            driver.by_hop[candidate_key] = conn
            conn.keys.append(candidate_key)
        return
    for _, token in driver.pending.pop(key, []):
        driver.proxy.hop_failed(token, walk.reason, driver.loop.time(), "other")
    driver.pump()


async def connect(driver: Driver, key: HopKey, hop: NextHop) -> None:
    try:
        conn = await open_connection(driver, hop)
    except (OSError, TimeoutError, ssl.SSLError, CertificateRefused) as exc:
        reason = await explain(driver, exc, hop)
        mark_route_down(driver, hop, reason)
        where = f" (route {hop.route})" if hop.route else ""
        # One warning per next hop per 10 s, with the count of those suppressed (issue 14 row 15).
        driver.warnings.warn(
            log,
            f"unreachable {hop}",
            driver.loop.time(),
            "next hop %s%s unreachable: %s",
            hop,
            where,
            reason,
            level=logging.DEBUG if hop.probe else logging.WARNING,
        )
        kind = _failure_kind(exc)
        if kind == "tls_failure":
            driver.observer.tls_handshake(hop.listener, "outbound", "failure", classify(exc))
        for _, token in driver.pending.pop(key, []):
            driver.proxy.hop_failed(token, reason, driver.loop.time(), kind)
        driver.pump()
        return
    mark_route_up(driver, hop)
    connected(driver, key, conn, hop)


async def explain(driver: Driver, exc: BaseException, hop: NextHop) -> str:
    """The failure in words (proxy/net/tls_words.py, with what we know of our own side); a TLS connect that timed
    out is told apart by a plain TCP connect: nothing there, or a port that never speaks TLS."""
    if not (isinstance(exc, TimeoutError) and hop.transport == "tls"):
        return describe_failure(exc, hop.tls_name, driver.own)
    where = f"{hop.host}:{hop.port}"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(hop.host.strip("[]"), hop.port), 1.0)
    except (OSError, TimeoutError):
        return f"no answer to the TCP connect to {where} within {driver.connect_timeout:g} s"
    writer.close()
    return silent_tls_port(where, driver.connect_timeout)


def mark_route_down(driver: Driver, hop: NextHop, reason: str) -> None:
    """``sipfed_destination_up`` goes to 0 for a route's destination that failed (a TLS failure as a refused
    connect), as it does for a pool's candidates; health checks decide for themselves."""
    route = driver.routes.get(hop.route or "")
    if route is None or hop.probe:
        return
    known = driver.liveness.known.get(route.name) or route.static_candidates
    driver.failover.lost(route, candidate_of(known, hop), reason, driver.loop.time())


def mark_route_up(driver: Driver, hop: NextHop) -> None:
    route = driver.routes.get(hop.route or "")
    if route is None or hop.probe:
        return
    candidate = candidate_of(driver.liveness.known.get(route.name) or route.static_candidates, hop)
    driver.failover.connected(candidate, held_down=driver.liveness.is_down(route.name, candidate))


def connected(driver: Driver, key: HopKey, conn: StreamConnection, hop: NextHop) -> None:
    driver.by_hop[key] = conn
    conn.keys.append(key)
    conn.hop = hop
    for data, token in driver.pending.pop(key, []):
        conn.send(data)
        if token:
            if conn.flow is not None:
                driver.proxy.sent_on(token, conn.flow.conn_id)
            conn.sent.append(token)
            if not conn.heard_from:
                conn.unanswered.append(token)


def candidate_hop_key(candidate: Candidate) -> HopKey:
    """The connection table's key for one candidate (the same a NextHop to it gets)."""
    tls_name = candidate.tls_name if candidate.transport == "tls" else None
    return (candidate.transport, candidate.host, candidate.port, tls_name)


def _failure_kind(exc: BaseException) -> str:
    """The next-hop failure label: connect_refused, tls_failure, timeout, other."""
    if isinstance(exc, ssl.SSLError | ssl.CertificateError | CertificateRefused):
        return "tls_failure"
    if isinstance(exc, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "other"
