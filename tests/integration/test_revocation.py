"""Revocation against the real sipfed process (issue 16): peers whose certificates ``openssl ca`` issued (one of
them revoked, keyCompromise), the CRL served over HTTP on loopback by a server the test starts, stops and
counts (tests/integration/crl_lab.py), TLS peers that do not import sipfed (tests/peers/sippeer.py).

What is asserted is what an admin reads: the connection refused (or the request answered 503), the log line
with the certificate, the CRL URL and the fix, ``sipfed_tls_handshakes_total{reason="revoked"|"crl_unreachable"}``
and ``sipfed_revocation_checks_total``; and that a good certificate goes through, its first messages held, not
lost, while the CRL is fetched.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import LAB_PEERS, Sipfed, lab_config
from tests.integration.crl_lab import HOST, CrlServer, Pki, make_pki
from tests.integration.metrics_scrape import sample, scrape
from tests.integration.waiting import async_wait_until
from tests.peers.sippeer import Conn, Peer

pytestmark = pytest.mark.integration

TEST_SECONDS = 60.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("openssl-ca"))


@pytest.fixture
def crl_server(pki: Pki) -> Iterator[CrlServer]:
    port = int(pki.url.rsplit(":", 1)[1].split("/")[0])
    server = CrlServer((HOST, port), {"/ca.crl": pki.crl_der})
    yield server
    server.stop()


@pytest.fixture
def openssl_peers(tmp_path: Path, certs: Path, pki: Pki) -> Path:
    """The peers' files as sippeer.Peer reads them: their openssl-issued certificates and keys, and the lab CA
    (sipfed's certificate is the lab's)."""
    out = tmp_path / "peers"
    out.mkdir()
    shutil.copy(certs / "ca.crt", out / "ca.crt")
    for stem, name in (("lync01", "lync01.tomt.it"), ("cups", "cups.tomt.local")):
        shutil.copy(pki.dir / f"{stem}.crt", out / f"{name}.pem")
        shutil.copy(pki.dir / f"{stem}.key", out / f"{name}.key")
    return out


def config(tmp_path: Path, certs: Path, pki: Pki, tls: str, *, cups_port: int = 1, lync_port: int = 1) -> Path:
    """The lab config; its CA bundle also holds the openssl CA; ``tls``: lines added to [tls]."""
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes((certs / "ca.crt").read_bytes() + (pki.dir / "ca.crt").read_bytes())
    path = lab_config(tmp_path / "sipfed.toml", certs, cups_port=cups_port, lync_port=lync_port, extra=LAB_PEERS)
    text = path.read_text().replace(f'ca_bundle = "{certs}/ca.crt"', f'ca_bundle = "{bundle}"\n{tls}')
    path.write_text(text)
    return path


async def open_as(peer: Peer, port: int, server_name: str) -> Conn:
    """A TLS connection of ``peer`` to sipfed that the test reads itself (Peer.connect would answer on it)."""
    context = ssl.create_default_context(cafile=str(peer.certs / "ca.crt"))
    context.load_cert_chain(str(peer.certs / f"{peer.name}.pem"), str(peer.certs / f"{peer.name}.key"))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_name, local_addr=(peer.host, 0)
    )
    return Conn(reader, writer)


async def closed_without_answer(conn: Conn) -> bool:
    """The connection ends (EOF or a reset) and nothing came on it."""
    try:
        data = await asyncio.wait_for(conn.reader.read(65536), 15)
    except (ConnectionError, ssl.SSLError):
        return True
    return data == b""


def metric(sipfed: Sipfed, name: str, **labels: str) -> float:
    return sample(scrape(sipfed.ports["metrics"]), name, **labels)


def run(main: Callable[[], object]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), TEST_SECONDS)  # type: ignore[arg-type]

    asyncio.run(bounded())


def test_a_revoked_client_certificate_is_refused_with_its_crl_and_the_fix(
    tmp_path: Path,
    certs: Path,
    pki: Pki,
    crl_server: CrlServer,
    openssl_peers: Path,
    start_sipfed: Callable[..., Sipfed],
) -> None:
    """The Lync pool's certificate was revoked (keyCompromise); sipfed (default soft-fail) fetches the CRL its
    certificate names, refuses the connection, and says which certificate, which CRL and what to do. A second
    connection is refused from the cached CRL, without a second fetch."""
    sipfed = start_sipfed(config(tmp_path, certs, pki, ""))

    async def main() -> None:
        lync = Peer("lync01.tomt.it", "127.0.0.3", openssl_peers, port=5061)
        for attempt in (1, 2):
            conn = await open_as(lync, sipfed.ports["lync"], "sipfed.tomt.it")
            await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
            assert await closed_without_answer(conn), f"attempt {attempt}: the revoked peer was answered"
            conn.close()
        log = await sipfed.async_wait_for_log("was revoked on")
        assert "TLS from a client on listener lync refused (revoked)" in log
        assert "CN=lync01.tomt.it" in log
        assert "(keyCompromise)" in log
        assert f"CRL {pki.url}" in log
        assert "fix: its CA revoked it: the peer's admin must install a new certificate" in log
        await async_wait_until(
            lambda: metric(sipfed, "sipfed_tls_handshakes_total", direction="inbound", reason="revoked") == 2,
            10,
            "two revoked handshakes in the metrics",
        )

    run(main)
    assert crl_server.hits["/ca.crl"] == 1  # the second refusal came from the cache
    text = scrape(sipfed.ports["metrics"])
    assert sample(text, "sipfed_revocation_checks_total", reason="revoked", admitted="false") == 2
    assert sample(text, "sipfed_tls_handshakes_total", direction="inbound", outcome="success") == 0


def test_a_good_certificate_goes_through_its_first_message_held_while_the_crl_is_fetched(
    tmp_path: Path,
    certs: Path,
    pki: Pki,
    crl_server: CrlServer,
    openssl_peers: Path,
    start_sipfed: Callable[..., Sipfed],
) -> None:
    """tomt.local's server (not revoked) connects and sends its MESSAGE at once: the CRL server holds its answer
    until the test releases it; the MESSAGE waits with the connection, then is relayed. (soft-fail, the default:
    under hard-fail the lab's Lync, whose certificate names no CRL, could not be the next hop.)"""
    crl_server.held.set()

    async def main() -> None:
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)  # the lab's Lync: the route's next hop
        await lync.start()
        sipfed = start_sipfed(config(tmp_path, certs, pki, "", lync_port=lync.port))
        cups = Peer("cups.tomt.local", "127.0.0.2", openssl_peers, port=5061)  # its Via names a port
        conn = await open_as(cups, sipfed.ports["cisco"], "sipfed.tomt.local")
        await conn.send(cups.request("MESSAGE", "sip:bob@tomt.it", to="<sip:bob@tomt.it>", from_user="alice"))
        await async_wait_until(lambda: crl_server.hits["/ca.crl"] == 1, 10, "the CRL request at the server")
        assert lync.received.empty()  # held while the CRL is on its way
        crl_server.released.set()
        try:
            relayed, _ = await lync.next(timeout=10)
        except TimeoutError:
            raise AssertionError(sipfed.log_text()) from None
        assert relayed.method == "MESSAGE"
        answer = await asyncio.wait_for(conn._read_raw(), 10)
        assert answer.startswith(b"SIP/2.0 200")
        assert metric(sipfed, "sipfed_revocation_checks_total", reason="good", admitted="true") == 1
        conn.close()
        await lync.stop()

    run(main)


@pytest.mark.parametrize("mode", ["hard-fail", "soft-fail"])
def test_an_unreachable_crl_refuses_under_hard_fail_and_warns_under_soft_fail(
    mode: str,
    tmp_path: Path,
    certs: Path,
    pki: Pki,
    openssl_peers: Path,
    start_sipfed: Callable[..., Sipfed],
) -> None:
    """The field notes' IE8 case: the CRL distribution point does not answer (no server on its port)."""

    async def main() -> None:
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await lync.start()
        sipfed = start_sipfed(config(tmp_path, certs, pki, f'revocation = "{mode}"', lync_port=lync.port))
        cups = Peer("cups.tomt.local", "127.0.0.2", openssl_peers, port=5061)  # its Via names a port
        conn = await open_as(cups, sipfed.ports["cisco"], "sipfed.tomt.local")
        await conn.send(cups.request("MESSAGE", "sip:bob@tomt.it", to="<sip:bob@tomt.it>", from_user="alice"))
        if mode == "hard-fail":
            assert await closed_without_answer(conn)
            log = await sipfed.async_wait_for_log("refused with revocation unknown (hard-fail)")
            assert f"CRL {pki.url} could not be fetched: connection refused" in log
            assert "fix: let sipfed reach that URL over HTTP" in log
            assert metric(sipfed, "sipfed_tls_handshakes_total", direction="inbound", reason="crl_unreachable") == 1
        else:
            answer = await asyncio.wait_for(conn._read_raw(), 10)
            assert answer.startswith(b"SIP/2.0 200")
            log = await sipfed.async_wait_for_log("admitted with revocation unknown (soft-fail)")
            assert f"CRL {pki.url} could not be fetched" in log
            labels = {"reason": "crl_unreachable", "admitted": "true"}
            assert metric(sipfed, "sipfed_revocation_checks_total", **labels) == 1
        conn.close()
        await lync.stop()

    run(main)


def test_a_revoked_next_hop_is_not_sent_to_and_its_destination_is_down(
    tmp_path: Path,
    certs: Path,
    pki: Pki,
    crl_server: CrlServer,
    openssl_peers: Path,
    start_sipfed: Callable[..., Sipfed],
) -> None:
    """The route to tomt.it leads to a server with the revoked certificate: the request gets 503 with the
    words, no byte of it reaches that server, the failure is counted as outbound ``revoked``, the route down."""

    async def main() -> None:
        revoked = Peer("lync01.tomt.it", "127.0.0.3", openssl_peers)
        await revoked.start()
        sipfed = start_sipfed(config(tmp_path, certs, pki, "", lync_port=revoked.port))
        cups = Peer("cups.tomt.local", "127.0.0.2", certs, port=5061)
        conn = await open_as(cups, sipfed.ports["cisco"], "sipfed.tomt.local")
        await conn.send(cups.request("MESSAGE", "sip:bob@tomt.it", to="<sip:bob@tomt.it>", from_user="alice"))
        answer = (await asyncio.wait_for(conn._read_raw(), 10)).decode()
        assert answer.startswith("SIP/2.0 503"), answer
        assert "was revoked on" in answer.split("\r\n", 1)[0]  # the reason phrase says why
        log = await sipfed.async_wait_for_log("next hop")
        assert "CN=lync01.tomt.it" in log
        assert "(keyCompromise)" in log
        assert revoked.received.empty()
        text = scrape(sipfed.ports["metrics"])
        assert sample(text, "sipfed_tls_handshakes_total", direction="outbound", reason="revoked") == 1
        assert sample(text, "sipfed_destination_up", destination=f"tls:127.0.0.3:{revoked.port}") == 0
        conn.close()
        await revoked.stop()

    run(main)


def test_a_local_crl_file_decides_without_fetching(
    tmp_path: Path, certs: Path, pki: Pki, openssl_peers: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    """``tls.crl_files`` under hard-fail, with no CRL server at all: the revoked peer is refused by the file."""
    sipfed = start_sipfed(config(tmp_path, certs, pki, f'revocation = "hard-fail"\ncrl_files = ["{pki.crl_pem}"]'))

    async def main() -> None:
        lync = Peer("lync01.tomt.it", "127.0.0.3", openssl_peers, port=5061)
        conn = await open_as(lync, sipfed.ports["lync"], "sipfed.tomt.it")
        await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
        assert await closed_without_answer(conn)
        log = await sipfed.async_wait_for_log("was revoked on")
        assert f"CRL file {pki.crl_pem}" in log
        conn.close()

    run(main)


def test_a_crl_file_that_is_no_crl_stops_the_start_with_its_key(
    tmp_path: Path, certs: Path, pki: Pki, start_sipfed: Callable[..., Sipfed]
) -> None:
    junk = tmp_path / "junk.crl"
    junk.write_text("not a CRL\n")
    path = config(tmp_path, certs, pki, f'revocation = "sometimes"\ncrl_files = ["{junk}"]')
    import subprocess
    import sys

    from tests.integration.conftest import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    said = done.stderr + done.stdout
    assert f"tls.crl_files: '{junk}' holds no CRL" in said
    assert "tls.revocation: 'sometimes' must be one of off, soft-fail, hard-fail" in said
    assert "Traceback" not in done.stderr
