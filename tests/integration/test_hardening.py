"""The live process under hostile input: a slow sender, a stalled TLS handshake, garbage on the
socket, and a SIPp flood far above the configured rate — while a trusted peer keeps being served."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port, lab_config
from tests.integration.metrics_scrape import metric_reaches, sample, scrape
from tests.integration.processes import rss_kib
from tests.integration.sipp_tools import SippUas, run_uac
from tests.peers.sippeer import Peer

pytestmark = pytest.mark.integration

LIMITS = """
[limits]
incomplete_message_timeout_seconds = 1
tls_handshake_timeout_seconds = 1
per_source_requests_per_second = {rate}
burst_seconds = 1

[[peers]]
name = "lync"
subjects = ["lync01.tomt.it"]
domains = ["tomt.it"]
answers_digest = false

[[peers]]
name = "cisco"
subjects = ["cups.tomt.local"]
domains = ["tomt.local"]

[acl]
incoming = ["Allow from 127.0.0.0/8"]
"""


def test_slow_sender_stalled_handshake_and_garbage(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    async def main() -> Sipfed:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        sipfed = start_sipfed(
            lab_config(
                tmp_path / "h.toml", certs, cups_port=cups.port, lync_port=lync.port, extra=LIMITS.format(rate=0)
            )
        )
        port = sipfed.ports["lync"]
        # A TCP client that never starts its TLS handshake: closed by the configured 1 s, not the default 10 s
        # (the deadline of the read; the log line below names the 1 s).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        # Garbage where a TLS ClientHello should be: refused at once.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(bytes(range(256)) * 4)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        # A trusted peer that sends half a message and stalls (Content-Length past the body).
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        context.load_cert_chain(str(certs / "lync01.tomt.it.pem"), str(certs / "lync01.tomt.it.key"))
        slow_reader, slow_writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="sipfed.tomt.it"
        )
        half = lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", body="0123456789").text()
        slow_writer.write(half.encode()[:-5])
        await slow_writer.drain()
        # Meanwhile another connection is served normally.
        conn = await lync.connect("127.0.0.1", port, "sipfed.tomt.it")
        await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
        got, _ = await cups.next()
        assert got.method == "MESSAGE"
        answer, _ = await lync.next()
        assert answer.status == 200
        assert await asyncio.wait_for(slow_reader.read(), 5) == b""  # the stalled one was closed (1 s, not 10 s)
        # The half message was never relayed: had it been, at the close, it would reach tomt.local before a
        # MESSAGE sent after the close on the same path.
        await conn.send(
            lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", body="after the close")
        )
        got, _ = await cups.next()
        assert got.body == "after the close"
        assert (await lync.next())[0].status == 200
        return sipfed

    sipfed = asyncio.run(asyncio.wait_for(main(), 40))
    sipfed.wait_for_log(re.compile(r"refused \(other\): .*no TLS handshake within 1 s"))
    sipfed.wait_for_log(
        re.compile(
            r"incomplete message for 1 s \(a slow sender, or a Content-Length larger than "
            r"the body\)"
        )
    )
    text = scrape(sipfed.ports["metrics"])
    assert sample(text, "sipfed_slow_senders_total", listener="lync", stage="handshake") == 1
    assert sample(text, "sipfed_slow_senders_total", listener="lync", stage="message") == 1
    assert sample(text, "sipfed_tls_handshakes_total", listener="lync", outcome="failure", reason="not_tls") == 1
    assert sipfed.proc.poll() is None


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_flood_is_refused_with_503_while_a_trusted_peer_is_served(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed], transport: str
) -> None:
    """SIPp floods from an unbound source at ~10x the configured 100/s; the excess gets 503, the process
    stays up with bounded memory, and the trusted Lync peer's MESSAGEs all get 200. Over UDP too, where the
    listener's 2 MiB receive buffer lets a flood queue more datagrams than the kernel's default would: the
    queue must not starve the trusted peer or grow the process."""
    flood_calls, rate = 3000, 1000
    sipp = "u1" if transport == "udp" else "t1"
    uas_port = free_port(kind=socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
    uas = SippUas("uas_message.xml", uas_port, flood_calls, sipp, tmp_path)

    async def main() -> tuple[Sipfed, list[int], int, int]:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        extra = (
            LIMITS.format(rate=100)
            + f"""
[[listeners]]
name = "lab"
transport = "{transport}"
address = "127.0.0.1"
port = 0

[[routes]]
name = "flood"
match_uri = "flood.example"
destination = "127.0.0.1"
port = {uas_port}
transport = "{transport}"
"""
        )
        sipfed = start_sipfed(
            lab_config(tmp_path / "f.toml", certs, cups_port=cups.port, lync_port=lync.port, extra=extra)
        )
        before = rss_kib(sipfed.proc.pid)
        flood = asyncio.get_running_loop().run_in_executor(
            None,
            lambda: run_uac(
                "uac_message.xml", sipfed.ports["lab"], sipp, flood_calls, rate, tmp_path, "domain", "flood.example"
            ),
        )
        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        served = []
        for i in range(20):
            await conn.send(
                lync.request(
                    "MESSAGE",
                    "sip:alice@tomt.local",
                    to="<sip:alice@tomt.local>",
                    from_user="bob@tomt.it",
                    body=f"during the flood {i}",
                )
            )
            answer, _ = await lync.next(timeout=10)
            served.append(answer.status)
            await asyncio.sleep(0.1)  # pacing: the trusted MESSAGEs spread over the flood, not synchronisation
        await flood
        return sipfed, served, before, rss_kib(sipfed.proc.pid)

    sipfed, served, before, after = asyncio.run(asyncio.wait_for(main(), 90))
    uas.wait(5)
    text = scrape(sipfed.ports["metrics"])
    refused = sample(text, "sipfed_overload_total", reason="source_rate")
    relayed = sample(text, "sipfed_requests_relayed_total", route="flood")
    received = sample(text, "sipfed_requests_received_total")
    answered = sample(text, "sipfed_responses_total")
    assert served == [200] * 20
    assert refused > flood_calls / 2  # most of the flood was refused ...
    assert relayed > 0  # ... and the admitted part relayed
    # Every request sipfed took in (SIPp follows each refused MESSAGE with a BYE, so there are more
    # than flood_calls) got exactly one final answer: none lost silently, none queued.
    assert received == answered
    assert received == refused + relayed + 20
    assert sipfed.proc.poll() is None
    assert after - before < 50_000, (before, after)  # KiB: bounded under the flood


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")  # the attacker's
def test_old_tls_refused_and_certificates_reread_on_reload(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """A TLS 1.1 client never gets in (tls.min_version 1.2); after the certificate files are replaced
    and SIGHUP is sent, new connections see the new certificate while the old connection keeps working."""
    import shutil
    import signal

    from proxy.admin.certs import issue_leaf

    pki = tmp_path / "pki"
    shutil.copytree(certs, pki)

    async def main() -> Sipfed:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        config = lab_config(tmp_path / "r.toml", pki, cups_port=cups.port, lync_port=lync.port)
        sipfed = start_sipfed(config)
        port = sipfed.ports["lync"]

        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(pki / "ca.crt"))
        old.load_cert_chain(str(pki / "lync01.tomt.it.pem"), str(pki / "lync01.tomt.it.key"))
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=old, server_hostname="sipfed.tomt.it"), 5
            )

        def serial_seen() -> int:
            context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            context.load_cert_chain(str(pki / "lync01.tomt.it.pem"), str(pki / "lync01.tomt.it.key"))
            with (
                socket.create_connection(("127.0.0.1", port), 5) as raw,
                context.wrap_socket(raw, server_hostname="sipfed.tomt.it") as tls,
            ):
                der = tls.getpeercert(binary_form=True)
            from cryptography import x509

            return x509.load_der_x509_certificate(der).serial_number

        before = await asyncio.to_thread(serial_seen)
        conn = await lync.connect("127.0.0.1", port, "sipfed.tomt.it")
        issue_leaf(pki, ["sipfed.tomt.local", "sipfed.tomt.it"], key_type="ec", ip_addresses=["127.0.0.1"])
        sipfed.proc.send_signal(signal.SIGHUP)
        await metric_reaches(sipfed, "sipfed_config_reloads_total", 1, outcome="applied")
        after = await asyncio.to_thread(serial_seen)
        assert after != before
        await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
        answer, _ = await lync.next()
        assert answer.status == 200  # the connection made before the reload still works
        return sipfed

    sipfed = asyncio.run(asyncio.wait_for(main(), 30))
    text = scrape(sipfed.ports["metrics"])
    assert sample(text, "sipfed_tls_handshakes_total", listener="lync", outcome="failure", reason="protocol") == 1
    assert sample(text, "sipfed_config_reloads_total", outcome="applied") == 1
