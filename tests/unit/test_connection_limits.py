"""Issue 14, rows 7 and 8 without sockets: the ConnectionGate's rules with hand-made time, the connection cap
under the open-files limit, the [limits] keys, and a StreamConnection's idle rule and re-binding on reload
(driven through a stand-in transport and loop)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from acl.peers import Trust, TrustedPeer
from acl.subjects import CertIdentity, parse_subject
from proxy.config import ConfigError, load_config
from proxy.net.connection import ConnectionGate, StreamConnection, connection_cap
from proxy.net.driver import Driver
from proxy.relay.core import Proxy
from proxy.relay.forwarding import RelayPolicy
from proxy.relay.observe import Observer
from routes import RouteTable

# -- the gate's rules --------------------------------------------------------------------------------------


def test_total_cap_refuses_the_connection_over_it_and_frees_a_place_on_close() -> None:
    gate = ConnectionGate(max_connections=2, per_source=0, handshakes_per_second=0)
    assert gate.admit("192.0.2.1", False, 0.0) is None
    assert gate.admit("192.0.2.2", False, 0.0) is None
    assert gate.admit("192.0.2.3", False, 0.0) == "max_connections"
    gate.proven("192.0.2.1", False)
    assert gate.admit("192.0.2.3", False, 0.0) == "max_connections"  # proven ones count toward the total too
    gate.closed("192.0.2.1", proven=True)
    assert gate.admit("192.0.2.3", False, 0.0) is None
    assert gate.inbound == 2


def test_per_source_cap_counts_only_unproven_connections() -> None:
    gate = ConnectionGate(max_connections=100, per_source=2, handshakes_per_second=0)
    assert [gate.admit("192.0.2.1", False, 0.0) for _ in range(3)] == [None, None, "per_source"]
    assert gate.admit("192.0.2.2", False, 0.0) is None  # another address has its own count
    gate.proven("192.0.2.1", False)
    assert gate.admit("192.0.2.1", False, 0.0) is None  # the proven one no longer counts
    assert gate.admit("192.0.2.1", False, 0.0) == "per_source"
    gate.closed("192.0.2.1", proven=False)
    assert gate.unproven == {"192.0.2.1": 1, "192.0.2.2": 1}
    gate.closed("192.0.2.1", proven=False)
    gate.closed("192.0.2.2", proven=False)
    assert gate.unproven == {}  # nothing kept for addresses with nothing open


def test_handshakes_per_source_are_a_token_bucket_that_gives_back_proven_handshakes() -> None:
    gate = ConnectionGate(max_connections=100, per_source=0, handshakes_per_second=2, burst_seconds=1)
    assert [gate.admit("192.0.2.1", True, 0.0) for _ in range(3)] == [None, None, "handshake_rate"]
    assert gate.admit("192.0.2.1", False, 0.0) is None  # plain TCP: no handshake to limit
    assert gate.admit("192.0.2.9", True, 0.0) is None  # per address
    assert gate.admit("192.0.2.1", True, 0.5) is None  # refilled at 2/s
    assert gate.admit("192.0.2.1", True, 0.5) == "handshake_rate"
    gate.proven("192.0.2.1", True)  # that handshake bought a proven connection: given back
    assert gate.admit("192.0.2.1", True, 0.5) is None
    assert gate.admit("192.0.2.1", True, 0.5) == "handshake_rate"


def test_handshake_buckets_are_bounded_in_number() -> None:
    gate = ConnectionGate(max_connections=10_000, per_source=0, handshakes_per_second=1, burst_seconds=1, max_sources=3)
    for n in range(10):
        assert gate.admit(f"192.0.2.{n}", True, 0.0) is None
    assert len(gate._handshakes) == 3


def test_connection_cap_leaves_room_under_the_open_files_limit() -> None:
    assert connection_cap(4096, None) == 4096
    assert connection_cap(4096, 65536) == 4096
    assert connection_cap(4096, 1024) == 1024 - 128  # an eighth kept for outbound connections and the rest
    assert connection_cap(4096, 400) == 400 - 64  # at least 64
    assert connection_cap(100, 400) == 100
    assert connection_cap(4096, 10) == 1


# -- [limits] ------------------------------------------------------------------------------------------------


def config_with(tmp_path: Path, limits: str) -> Path:
    path = tmp_path / "sipfed.toml"
    path.write_text(f"""
[proxy]
fqdn = "sipfed.tomt.local"

[[listeners]]
name = "lab"
transport = "tcp"
address = "127.0.0.1"
port = 5060

[limits]
{limits}
""")
    return path


def test_connection_limits_have_defaults(tmp_path: Path) -> None:
    limits = load_config(config_with(tmp_path, "")).limits
    assert limits.max_connections == 4096
    assert limits.max_connections_per_source == 64
    assert limits.handshakes_per_source_per_second == 20
    assert limits.unauthenticated_idle_seconds == 60


def test_connection_limits_are_checked_all_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            config_with(
                tmp_path,
                "max_connections = 10\nmax_connections_per_source = 20\n"
                "handshakes_per_source_per_second = -1\nunauthenticated_idle_seconds = 0\n"
                "max_headers = 100.5\n",
            )
        )
    assert info.value.problems == [
        "limits.max_headers: 100.5 must be a whole number",
        "limits.handshakes_per_source_per_second: -1 must be a number from 0 to 1e+06",
        "limits.unauthenticated_idle_seconds: 0 must be a number from 1 to 86400",
        "limits.max_connections_per_source: 20 is above limits.max_connections (10); lower it (0: no per-source cap)",
    ]


# -- a connection's idle rule and re-binding -------------------------------------------------------------------


class Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """The loop methods a StreamConnection uses, with hand-made time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[Handle] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle:
        handle = Handle(self.now + delay, callback)
        self.timers.append(handle)
        return handle

    def call_soon(self, callback: Callable[[], None]) -> Handle:
        return self.call_later(0, callback)

    def run_until(self, when: float) -> None:
        for _ in range(100):  # bounded
            due = sorted((t for t in self.timers if not t.cancelled and t.when <= when), key=lambda t: t.when)
            if not due:
                break
            handle = due[0]
            self.timers.remove(handle)
            self.now = handle.when
            handle.callback()
        self.now = when


class SslObject:
    """What ``peer_identity`` reads from a connection whose handshake completed (as ssl.SSLObject has it)."""

    def getpeercert(self) -> dict[str, Any]:
        return {"subject": ((("commonName", "lync01.tomt.it"),),), "subjectAltName": (("DNS", "lync01.tomt.it"),)}


class Transport:
    def __init__(self, peer: tuple[str, int], certificate: bool = False) -> None:
        self.peer = peer
        self.ssl_object = SslObject() if certificate else None
        self.closed = False
        self.written: list[bytes] = []

    def get_extra_info(self, name: str) -> Any:
        return {"peername": self.peer, "ssl_object": self.ssl_object}.get(name)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Recorder(Observer):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def connection(self, listener: str, peer: str, delta: int) -> None:
        self.calls.append(("connection", listener, peer, delta))

    def connection_refused(self, listener: str, reason: str) -> None:
        self.calls.append(("refused", listener, reason))

    def connection_closed(self, listener: str, reason: str) -> None:
        self.calls.append(("closed", listener, reason))


LYNC = CertIdentity(subject=(("cn", "lync01.tomt.it"),), dns_names=("lync01.tomt.it",))


def peer(name: str, subject: str) -> TrustedPeer:
    return TrustedPeer(name, (parse_subject(subject),))


def driver(trust: Trust, loop: Loop) -> tuple[Driver, Recorder]:
    recorder = Recorder()
    proxy = Proxy(RelayPolicy.build([], RouteTable(()), {}, frozenset()))
    drv = Driver(
        proxy,
        loop,
        client_ssl=None,
        connect_timeout=1,
        max_message_bytes=65535,  # type: ignore[arg-type]
        trust=trust,
        observer=recorder,
    )
    drv.gate.configure(10, 2, 0, 1, idle_seconds=5)
    return drv, recorder


def accepted(
    drv: Driver, remote: tuple[str, int] = ("192.0.2.7", 5555), certificate: bool = False
) -> tuple[StreamConnection, Transport]:
    """An accepted connection; with ``certificate``, one whose TLS (asyncio's, in the transport) showed LYNC."""
    conn = StreamConnection(drv, "tcp", "lab", outbound=False)
    transport = Transport(remote, certificate)
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


OPTIONS = (
    b"OPTIONS sip:sipfed.tomt.local SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.7:5555;branch=z9hG4bK1\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:sipfed.tomt.local>\r\n"
    b"Call-ID: idle-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def test_unbound_connection_is_closed_after_the_idle_time_without_a_valid_message() -> None:
    loop = Loop()
    drv, recorder = driver(Trust(), loop)
    conn, transport = accepted(drv)
    conn.data_received(b"\r\n\r\nnot sip at all\r\n\r\n")  # a keep-alive and garbage: not valid SIP
    loop.run_until(104.9)
    assert not transport.closed
    loop.run_until(105.1)
    assert transport.closed
    assert ("closed", "lab", "unauthenticated_idle") in recorder.calls
    conn.connection_lost(None)
    assert drv.gate.inbound == 0
    assert drv.gate.unproven == {}


def test_a_valid_request_proves_the_connection_and_restarts_its_idle_time() -> None:
    loop = Loop()
    drv, _ = driver(Trust(), loop)
    conn, transport = accepted(drv)
    loop.run_until(103.0)
    conn.data_received(OPTIONS)
    assert conn.proven
    assert drv.gate.unproven == {}  # no longer held against its address's per-source cap
    loop.run_until(107.9)
    assert not transport.closed
    loop.run_until(108.1)
    assert transport.closed
    conn.connection_lost(None)
    assert drv.gate.inbound == 0


def test_over_the_per_source_cap_a_new_connection_is_closed_at_once() -> None:
    loop = Loop()
    drv, recorder = driver(Trust(), loop)
    first, second, third = (accepted(drv, ("192.0.2.7", port)) for port in (1, 2, 3))
    assert not first[1].closed
    assert not second[1].closed
    assert third[1].closed
    assert recorder.calls[-1] == ("refused", "lab", "per_source")
    third[0].connection_lost(None)
    assert drv.gate.inbound == 2  # the refused one was never counted


def test_a_connection_bound_to_a_trusted_peer_is_never_reaped() -> None:
    loop = Loop()
    drv, _ = driver(Trust(peers=(TrustedPeer("lab", (), networks=(ipaddress.ip_network("192.0.2.0/24"),)),)), loop)
    conn, transport = accepted(drv)
    assert conn.flow is not None
    assert conn.flow.peer == "lab"
    assert conn.proven
    loop.run_until(1000.0)
    assert not transport.closed


def test_reload_rebinds_a_connection_by_its_certificate() -> None:
    loop = Loop()
    drv, recorder = driver(Trust(peers=(peer("lync", "lync01.tomt.it"),)), loop)
    conn, transport = accepted(drv, ("192.0.2.3", 5061), certificate=True)
    assert conn.flow is not None
    assert conn.flow.peer == "lync"
    conn_id = conn.flow.conn_id

    assert conn.rebind(Trust(peers=(peer("lync", "lync01.tomt.it"),))) == "kept"
    assert conn.rebind(Trust(peers=(peer("pool", "lync01.tomt.it"),))) == "rebound"
    assert (conn.flow.peer, conn.flow.conn_id, conn.flow.identity) == ("pool", conn_id, LYNC)
    assert recorder.calls[-2:] == [("connection", "lab", "lync", -1), ("connection", "lab", "pool", 1)]
    assert not transport.closed

    # Closed, not demoted: its certificate no longer binds it to the peer it was bound to.
    assert conn.rebind(Trust(peers=(peer("pool", "lync02.tomt.it"),))) == "closed"
    assert transport.closed
    assert recorder.calls[-1] == ("closed", "lab", "trust_reload")
    assert conn.flow.peer == "pool"  # what connection_lost reports it closed as


def test_reload_binds_an_unbound_connection_that_now_matches_a_peer() -> None:
    loop = Loop()
    drv, _ = driver(Trust(), loop)
    conn, transport = accepted(drv, ("192.0.2.3", 5061), certificate=True)
    assert conn.flow is not None
    assert conn.flow.peer is None
    assert drv.gate.unproven == {"192.0.2.3": 1}
    assert conn.rebind(Trust(peers=(peer("lync", "lync01.tomt.it"),))) == "rebound"
    assert conn.flow.peer == "lync"
    assert drv.gate.unproven == {}
    loop.run_until(1000.0)
    assert not transport.closed  # bound now: the idle rule no longer applies
