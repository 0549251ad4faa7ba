"""``sipfed_certificate_expiry_timestamp_seconds``: our certificates read from their files at start and reload,
a trusted peer's and a route's next hop's from the TLS handshake a real StreamConnection completes in memory
(a stdlib client or server on the other end, a stand-in transport and loop, hand-made time)."""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from acl.peers import Trust, TrustedPeer
from acl.subjects import parse_subject
from proxy.admin.certs import LabPki, issue_leaf, make_lab_pki
from proxy.config import Config, ListenerConfig, TlsConfig
from proxy.metrics import Metrics
from proxy.net.cert_expiry import report_ours
from proxy.net.connection import StreamConnection
from proxy.net.driver import Driver
from proxy.relay.core import Proxy
from proxy.relay.forwarding import RelayPolicy
from proxy.relay.types import NextHop
from proxy.xmpp.policy import XmppConfig
from routes import RouteTable, StaticRoute

SIPFED, LYNC, CUPS = "sipfed.a.example", "lync.b.example", "cups.c.example"
SERIES = "sipfed_certificate_expiry_timestamp_seconds"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    out = tmp_path_factory.mktemp("pki")
    pki = make_lab_pki(out, [[SIPFED], [LYNC], [CUPS]], key_type="ec")
    issue_leaf(out, [SIPFED], days=10, key_type="ec", file_stem="soon")
    return pki


def not_after(pem: Path) -> float:
    return x509.load_pem_x509_certificate(pem.read_bytes()).not_valid_after_utc.timestamp()


def expiry(metrics: Metrics, role: str, name: str) -> float | None:
    return metrics.registry.get_sample_value(SERIES, {"role": role, "name": name})


def config(pki: LabPki, *, xmpp_chain: Path | None = None, peers: bool = True, routes: bool = True) -> Config:
    out = pki.ca_cert.parent
    return Config(
        path=out / "sipfed.toml",
        fqdn=SIPFED,
        federation_fqdn=SIPFED,
        listeners=(
            ListenerConfig("cisco", "tls", "127.0.0.1", 0, SIPFED, SIPFED),
            ListenerConfig("lab", "tcp", "127.0.0.1", 0, SIPFED, SIPFED),
        ),
        tls=TlsConfig(out / "soon.pem", out / "soon.key", pki.ca_cert),
        routes=(StaticRoute("cisco", "c.example", "127.0.0.2", 5061, "tls", CUPS),) if routes else (),
        trust=Trust(peers=(TrustedPeer("lync", (parse_subject(LYNC),)),) if peers else ()),
        xmpp=XmppConfig(("127.0.0.1", 0), ("a.example",), (), cert_chain=xmpp_chain) if xmpp_chain else None,
    )


def test_the_gauge_is_set_and_removed_by_role_and_name() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.certificate_expiry("peer", "lync", 1_900_000_000.0)
    assert expiry(metrics, "peer", "lync") == 1_900_000_000.0
    metrics.certificate_expiry("peer", "lync", None)
    assert expiry(metrics, "peer", "lync") is None
    metrics.certificate_expiry("peer", "lync", 1_900_000_001.0)  # set again after a removal: shown again
    assert expiry(metrics, "peer", "lync") == 1_900_000_001.0
    metrics.certificate_expiry("route", "gone", None)  # removing what is not there is no error


def test_ours_are_read_at_start_and_again_on_reload(pki: LabPki) -> None:
    out = pki.ca_cert.parent
    metrics = Metrics(CollectorRegistry())
    first = config(pki, xmpp_chain=pki.leaves[SIPFED].chain)
    report_ours(metrics, first, first)
    before = not_after(out / "soon.pem")
    assert expiry(metrics, "ours", "cisco") == before  # the TLS listener: [tls] cert_chain
    assert expiry(metrics, "ours", "lab") is None  # a TCP listener shows no certificate
    assert expiry(metrics, "ours", "xmpp") == not_after(pki.leaves[SIPFED].chain)  # [xmpp]'s own file
    metrics.certificate_expiry("peer", "lync", 1.0)
    metrics.certificate_expiry("route", "cisco", 2.0)

    renewed = issue_leaf(out, [SIPFED], days=20, key_type="ec", file_stem="soon")
    second = config(pki, xmpp_chain=out / "soon.pem", peers=False, routes=False)
    report_ours(metrics, second, first)
    assert expiry(metrics, "ours", "cisco") == not_after(renewed.chain)  # the renewed file, at once
    assert not_after(renewed.chain) >= before + 10 * 86400
    # [xmpp] now shows [tls]'s certificate (listed as the listener's), the peer and the route are gone:
    assert [expiry(metrics, *series) for series in (("ours", "xmpp"), ("peer", "lync"), ("route", "cisco"))] == [
        None,
        None,
        None,
    ]


def test_an_unreadable_certificate_is_logged_not_raised(pki: LabPki, tmp_path: Path, caplog: Any) -> None:
    garbage = tmp_path / "xmpp.pem"
    garbage.write_text("not a certificate\n")
    metrics = Metrics(CollectorRegistry())
    with caplog.at_level(logging.WARNING, logger="sipfed"):
        report_ours(metrics, config(pki, xmpp_chain=garbage), config(pki))
    assert expiry(metrics, "ours", "xmpp") is None
    assert expiry(metrics, "ours", "cisco") is not None
    assert f"cannot read the expiry of {garbage} (xmpp)" in caplog.text


# -- what the other end of a connection showed ------------------------------------------------------------


class Loop:
    """The loop methods a StreamConnection uses; nothing here runs a timer (no time passes)."""

    def time(self) -> float:
        return 100.0

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        return Timer()

    def call_soon(self, callback: Callable[[], None]) -> Any:
        return Timer()


class Timer:
    def cancel(self) -> None:
        pass


class Transport:
    """The transport a StreamConnection writes to; ``ssl_object`` as asyncio's TLS transport offers it."""

    def __init__(self, peer: tuple[str, int], ssl_object: ssl.SSLObject | None = None) -> None:
        self.peer, self.ssl_object = peer, ssl_object
        self.written: list[bytes] = []

    def get_extra_info(self, name: str) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 5061), "ssl_object": self.ssl_object}.get(name)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written.append(data)


def context(pki: LabPki, purpose: ssl.Purpose, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.leaves[name].chain), str(pki.leaves[name].key))
    if purpose is ssl.Purpose.CLIENT_AUTH:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def driver(metrics: Metrics) -> Driver:
    proxy = Proxy(RelayPolicy.build([], RouteTable(()), {}, frozenset()))
    trust = Trust(peers=(TrustedPeer("lync", (parse_subject(LYNC),)),))
    drv = Driver(
        proxy, Loop(), client_ssl=None, connect_timeout=1, max_message_bytes=65535, trust=trust, observer=metrics
    )  # type: ignore[arg-type]
    drv.gate.configure(10, 2, 0, 1, idle_seconds=5)
    return drv


def test_an_inbound_connection_bound_to_a_peer_shows_its_certificate(pki: LabPki) -> None:
    metrics = Metrics(CollectorRegistry())
    conn = StreamConnection(
        driver(metrics), "tls", "lync", outbound=False, tls=context(pki, ssl.Purpose.CLIENT_AUTH, SIPFED)
    )
    transport = Transport(("127.0.0.3", 5555))
    conn.connection_made(transport)  # type: ignore[arg-type]
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context(pki, ssl.Purpose.SERVER_AUTH, LYNC).wrap_bio(incoming, outgoing, server_hostname=SIPFED)
    for _ in range(10):  # bounded: TLS 1.3 with a client certificate takes two flights each way
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        conn.data_received(outgoing.read())
        for chunk in transport.written:
            incoming.write(chunk)
        transport.written.clear()
        if conn.flow is not None:
            break
    assert conn.flow is not None
    assert conn.flow.peer == "lync"
    assert expiry(metrics, "peer", "lync") == not_after(pki.leaves[LYNC].cert)


def test_an_outbound_connection_shows_its_routes_next_hop_certificate_once_it_answers(pki: LabPki) -> None:
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = context(pki, ssl.Purpose.SERVER_AUTH, SIPFED).wrap_bio(client_in, client_out, server_hostname=CUPS)
    server = context(pki, ssl.Purpose.CLIENT_AUTH, CUPS).wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):  # bounded: as asyncio's TLS would, before connection_made
        for obj in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    metrics = Metrics(CollectorRegistry())
    conn = StreamConnection(driver(metrics), "tls", "cisco", outbound=True)
    conn.connection_made(Transport(("127.0.0.2", 5061), client))  # type: ignore[arg-type]
    assert expiry(metrics, "route", "cisco") is None  # the hop is set once connected, not in connection_made
    conn.hop = NextHop("tls", "127.0.0.2", 5061, CUPS, "cisco", route="cisco")
    conn.data_received(b"\r\n")  # the peer's first bytes: it accepted us
    assert expiry(metrics, "route", "cisco") == not_after(pki.leaves[CUPS].cert)
