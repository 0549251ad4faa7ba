"""Diagnosis, second round (issue 16): each broken setup of the field notes built for real — certificates from
the lab PKI, the real sipfed process, TLS peers that do not import sipfed (tests/peers/sippeer.py) — and what
sipfed says about it read where an admin reads it: the log line (the cause and the fix), the metric's reason,
and ``sipfed_destination_up``.

- our chain file lacks the intermediate: a warning at start naming the missing issuer; when a peer refuses us
  (inbound and outbound), that our chain lacks it, not that the peer distrusts our CA; ``peer_unknown_ca``;
  the destination down;
- the Lync pool's static route points at the Cisco-facing listener: the peer, the listener it reached and the
  one its route should name; ``topology_problems_total{kind="wrong_listener"}``;
- a CA-valid certificate in no ``[[peers]]`` entry: its names, the source, the entry that would admit it;
- a route to a port where a plain TCP server answers: "accepts TCP but no TLS handshake: not a TLS listener"
  (the words of ``doctor --live``); the destination down;
- ``federation_fqdn`` not a name of our certificate: a warning at start naming it;
- our key is not our certificate's: ``run`` and ``check-config`` refuse the config, no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import LAB_PEERS, ROOT, Sipfed, free_port, lab_config
from tests.integration.waiting import async_wait_until
from tests.peers.sippeer import Conn, Msg, Peer

pytestmark = pytest.mark.integration


def metric(sipfed: Sipfed, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{sipfed.ports['metrics']}/metrics", timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def config(
    tmp_path: Path,
    certs: Path,
    *,
    cups_port: int = 1,
    lync_port: int = 1,
    extra: str = LAB_PEERS,
    chain: str = "sipfed.tomt.local.pem",
) -> Path:
    path = lab_config(tmp_path / "sipfed.toml", certs, cups_port=cups_port, lync_port=lync_port, extra=extra)
    path.write_text(path.read_text().replace("sipfed.tomt.local.pem", chain))
    return path


@contextlib.contextmanager
def cups_on_openssl(tmp_path: Path, certs: Path, crl_file: Path | None = None) -> Iterator[int]:
    """tomt.local's server as OpenSSL does TLS: stunnel on 127.0.0.1 requiring a client certificate that chains
    to the lab root alone (and, with ``crl_file``, is on none of its CRLs); yields its port, stops it after."""
    from tests.integration.sipp import stunnel

    tls_port = free_port()
    server = stunnel.start_server_tunnel(
        tmp_path,
        accept_port=tls_port,
        connect_port=free_port(),
        cert_chain=certs / "cups.tomt.local.pem",
        key=certs / "cups.tomt.local.key",
        ca_file=certs / "ca.crt",
        crl_file=crl_file,
    )
    try:
        yield tls_port
    finally:
        server.stop()


def config_to_openssl_cups(tmp_path: Path, certs: Path, tls_port: int, **kwargs: Any) -> Path:
    """``config`` whose route cisco leads to ``cups_on_openssl``."""
    path = config(tmp_path, certs, cups_port=tls_port, **kwargs)
    path.write_text(path.read_text().replace('destination = "127.0.0.2"', 'destination = "127.0.0.1"'))
    return path


async def message_to_tomt_local(lync: Peer, sipfed: Sipfed) -> tuple[Msg, Conn]:
    """The Lync side sends a MESSAGE for tomt.local through sipfed: sipfed's answer, and the connection."""
    conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
    await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
    answer, _ = await lync.next(timeout=10)
    return answer, conn


def test_our_chain_without_its_intermediate_is_named_both_ways(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    async def main() -> None:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)  # trusts only the root: needs our intermediate
        await cups.start()
        sipfed = start_sipfed(config(tmp_path, certs, cups_port=cups.port, chain="sipfed.tomt.local.crt"))
        try:
            sipfed.wait_for_log("holds sipfed.tomt.local's certificate without its issuer sipfed lab intermediate")
            with pytest.raises(ssl.SSLError):  # the client refuses our listener's certificate, with its alert
                await asyncio.to_thread(blocking_client, certs, sipfed.ports["lync"])
            log = await sipfed.async_wait_for_log("the client refused our certificate (TLS alert 48 unknown_ca)")
            assert "our chain file sends sipfed.tomt.local without its issuer sipfed lab intermediate" in log
            assert "append the intermediate's PEM to tls.cert_chain" in log
            assert "does not chain to tls.ca_bundle" not in log  # not the other side's fault
            assert (
                metric(
                    sipfed,
                    'sipfed_tls_handshakes_total{direction="inbound",listener="lync",outcome="failure",'
                    'reason="peer_unknown_ca"}',
                )
                >= 1
            )
        finally:
            await cups.stop()

    asyncio.run(main())


def blocking_client(certs: Path, port: int) -> None:
    """A TLS client that trusts only the lab root (as OpenSSL clients do, it sends its alert when it refuses)."""
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.load_cert_chain(str(certs / "lync01.tomt.it.pem"), str(certs / "lync01.tomt.it.key"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.3", 0))
    with raw, context.wrap_socket(raw, server_hostname="sipfed.tomt.it") as tls:
        tls.recv(1)


def test_outbound_refusal_of_our_incomplete_chain_is_ours_and_marks_the_destination_down(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    """sipfed connects to tomt.local (route cisco; stunnel, OpenSSL, trusting only the lab root) with its leaf
    alone; tomt.local refuses it with unknown_ca. The log blames our chain, the reason says the peer refused
    (``peer_unknown_ca``), and the destination is down."""

    async def main(tls_port: int) -> None:
        lenient = tmp_path / "lenient"  # lync also knows the intermediate, so it accepts our bare leaf
        shutil.copytree(certs, lenient)
        (lenient / "ca.crt").write_bytes((certs / "ca.crt").read_bytes() + (certs / "intermediate.crt").read_bytes())
        lync = Peer("lync01.tomt.it", "127.0.0.3", lenient)
        await lync.start()  # its Via names its own listening port
        sipfed = start_sipfed(config_to_openssl_cups(tmp_path, certs, tls_port, chain="sipfed.tomt.local.crt"))
        try:
            answer, conn = await message_to_tomt_local(lync, sipfed)
            assert answer.status == 503
            log = await sipfed.async_wait_for_log("the peer refused our certificate (TLS alert 48 unknown_ca)")
            assert "our chain file sends sipfed.tomt.local without its issuer sipfed lab intermediate" in log
            assert "it does not trust our CA" not in log
            reason = 'sipfed_tls_handshakes_total{direction="outbound",listener="cisco",outcome="failure",'
            assert metric(sipfed, reason + 'reason="peer_unknown_ca"}') >= 1
            down = f'sipfed_destination_up{{destination="tls:127.0.0.1:{tls_port}'
            await async_wait_until(
                lambda: down_known(sipfed, down) and metric(sipfed, down) == 0.0, 10, "the destination is not down"
            )
            conn.close()
        finally:
            await lync.stop()

    with cups_on_openssl(tmp_path, certs) as tls_port:
        asyncio.run(asyncio.wait_for(main(tls_port), 60))


def test_a_peer_on_the_wrong_listener_is_named(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    """The Lync pool's static route points at sipfed's Cisco-facing listener: relayed (it is a trusted peer), and
    named once per connection with the listener its route should name."""

    async def main() -> None:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        sipfed = start_sipfed(config(tmp_path, certs, cups_port=cups.port))
        try:
            conn = await lync.connect("127.0.0.1", sipfed.ports["cisco"], "sipfed.tomt.local")
            await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
            log = await sipfed.async_wait_for_log("peer lync connected to listener cisco")
            assert "should name listener lync (127.0.0.1:" in log
            assert "which faces cisco" in log
            await async_wait_until(
                lambda: metric(sipfed, 'sipfed_topology_problems_total{kind="wrong_listener",listener="cisco"}') >= 1,
                10,
                "no wrong_listener in the metrics",
            )
            conn.close()
        finally:
            await cups.stop()

    asyncio.run(main())


def test_a_verified_certificate_in_no_peers_entry_is_logged_with_the_entry_that_would_admit_it(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    async def main() -> None:
        stranger = Peer("wrong.example", "127.0.0.9", certs)  # CA-valid, in no [[peers]] entry
        sipfed = start_sipfed(config(tmp_path, certs))
        conn = await stranger.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        log = await sipfed.async_wait_for_log("presented a verified certificate")
        assert "wrong.example" in log
        assert "(from 127.0.0.9:" in log
        assert 'add [[peers]] name = "wrong", subjects = ["wrong.example"]' in log
        await async_wait_until(
            lambda: metric(sipfed, 'sipfed_topology_problems_total{kind="unlisted_certificate",listener="lync"}') >= 1,
            10,
            "no unlisted_certificate in the metrics",
        )
        conn.close()

    asyncio.run(main())


def test_a_route_to_a_plain_tcp_port_says_it_is_no_tls_listener(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    """The field notes' "wrong port": the route names a port where a plain TCP SIP server waits silently. The
    log says so in the words of ``sipfed doctor --live``, and the destination is down."""

    async def main() -> None:
        silent = socket.socket()
        silent.bind(("127.0.0.2", 0))
        silent.listen(8)  # accepts, never speaks TLS
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await lync.start()
        path = config(tmp_path, certs, cups_port=silent.getsockname()[1])
        path.write_text(path.read_text().replace("connect_timeout_seconds = 2", "connect_timeout_seconds = 1"))
        sipfed = start_sipfed(path)
        try:
            conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
            await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
            log = await sipfed.async_wait_for_log("accepts TCP but no TLS handshake within 1 s: not a TLS listener")
            assert "(route cisco) unreachable" in log
            down = 'sipfed_destination_up{destination="tls:127.0.0.2:' + str(silent.getsockname()[1])
            await async_wait_until(
                lambda: metric(sipfed, down) == 0.0 and down_known(sipfed, down), 10, "destination not down"
            )
            conn.close()
        finally:
            silent.close()

    asyncio.run(main())


def down_known(sipfed: Sipfed, prefix: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{sipfed.ports['metrics']}/metrics", timeout=5) as page:
        return any(line.startswith(prefix) for line in page.read().decode().splitlines())


def test_federation_fqdn_that_is_no_name_of_ours_is_a_warning_at_start(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    path = config(tmp_path, certs)
    path.write_text(path.read_text().replace('federation_fqdn = "sipfed.tomt.it"', 'federation_fqdn = "fed.tomt.it"'))
    sipfed = start_sipfed(path)
    log = sipfed.wait_for_log("listeners[lync].federation_fqdn: 'fed.tomt.it' is not a name of our certificate")
    assert "CUP's Federation Routing FQDN" in log


def test_a_key_that_is_not_our_certificates_is_a_config_error(tmp_path: Path, certs: Path) -> None:
    path = config(tmp_path, certs)
    path.write_text(path.read_text().replace("sipfed.tomt.local.key", "cups.tomt.local.key"))
    for command in ("check-config", "run"):
        done = subprocess.run(
            [sys.executable, "-m", "proxy", command, "--config", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode != 0, command
        assert "is not the private key of tls.cert_chain's certificate (sipfed.tomt.local)" in done.stderr + done.stdout
        assert "Traceback" not in done.stderr


def test_our_revoked_certificate_refused_by_the_peer_is_named_with_the_fix(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    """tomt.local's server (stunnel, OpenSSL, with its CA's CRLs) finds our certificate revoked and refuses us
    with TLS alert 44. The log says our certificate is revoked and what to do, the reason is
    ``peer_certificate_revoked``, the sender gets 503."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    def crl(issuer_stem: str, revoked_serials: list[int]) -> bytes:
        issuer = x509.load_pem_x509_certificate((certs / f"{issuer_stem}.crt").read_bytes())
        key = serialization.load_pem_private_key((certs / f"{issuer_stem}.key").read_bytes(), None)
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=1))
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        signed = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
        return signed.public_bytes(serialization.Encoding.PEM)

    ours = x509.load_pem_x509_certificate((certs / "sipfed.tomt.local.crt").read_bytes())
    crl_file = tmp_path / "lab.crl.pem"  # stunnel checks every level: the root's CRL (empty) and the intermediate's
    crl_file.write_bytes(crl("ca", []) + crl("intermediate", [ours.serial_number]))

    async def main(tls_port: int) -> None:
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await lync.start()
        sipfed = start_sipfed(config_to_openssl_cups(tmp_path, certs, tls_port, lync_port=lync.port))
        try:
            answer, conn = await message_to_tomt_local(lync, sipfed)
            assert answer.status == 503
            log = await sipfed.async_wait_for_log("the peer refused our certificate (TLS alert 44 certificate_revoked)")
            assert "our certificate is revoked: have the CA issue a new one, put it in tls.cert_chain" in log
            reason = 'sipfed_tls_handshakes_total{direction="outbound",listener="cisco",outcome="failure",'
            assert metric(sipfed, reason + 'reason="peer_certificate_revoked"}') >= 1
            conn.close()
        finally:
            await lync.stop()

    with cups_on_openssl(tmp_path, certs, crl_file) as tls_port:
        asyncio.run(asyncio.wait_for(main(tls_port), 60))
