"""Metrics as a real Prometheus sees them, and TLS refusals explained in plain words."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.admin.certs import issue_leaf
from tests.integration.conftest import Sipfed, free_port, lab_config
from tests.integration.metrics_scrape import Prometheus, sample, scrape
from tests.integration.sipp_tools import SippUas, errors, run_uac, sipp_config
from tests.peers.sippeer import Peer

pytestmark = pytest.mark.integration


def test_prometheus_scrapes_the_relay(tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    calls = 120
    uas_port = free_port()
    uas = SippUas("uas_message.xml", uas_port, calls, "t1", tmp_path)
    sipfed = start_sipfed(sipp_config(tmp_path / "sipfed.toml", certs, transport="tcp", uas_port=uas_port))
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{sipfed.ports['metrics']}")
    try:
        code, _ = run_uac("uac_message.xml", sipfed.ports["lync"], "t1", calls, 100, tmp_path, "domain", "tomt.local")
        assert code == 0, errors(tmp_path)
        assert uas.wait() == 0
        relayed = 'sum(sipfed_requests_relayed_total{method="MESSAGE",route="tomt.local"})'
        assert prometheus.wait_for(relayed, calls) == calls, prometheus.log.read_text()[-2000:]
        assert prometheus.query('sum(sipfed_responses_total{method="MESSAGE",status_class="2xx"})') == calls
        assert prometheus.query('sum(sipfed_relay_latency_seconds_count{method="MESSAGE"})') == calls
        assert prometheus.query('sum(sipfed_open_connections{listener="lync"})') == 0  # SIPp has hung up
        assert prometheus.query("sipfed_build_info") == 1
    finally:
        prometheus.stop()


def test_tls_refusals_are_explained_and_counted(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """Clients with a certificate lacking clientAuth, an expired one, none at all, or plain TCP on
    a TLS port: each refused with a log line that names the cause and a labelled metric; an outbound
    name mismatch is labelled name_mismatch."""
    pki = tmp_path / "pki"
    shutil.copytree(certs, pki)
    issue_leaf(pki, ["noclientauth.tomt.it"], eku=("serverAuth",), key_type="ec", ip_addresses=["127.0.0.3"])
    issue_leaf(
        pki,
        ["expired.tomt.it"],
        key_type="ec",
        ip_addresses=["127.0.0.3"],
        not_before=datetime(2020, 1, 1, tzinfo=UTC),
        not_after=datetime(2021, 1, 1, tzinfo=UTC),
    )

    async def attempt(port: int, name: str | None) -> str:
        """What the refused client's own TLS stack reports (the alert sipfed sent)."""
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        if name is not None:
            ctx.load_cert_chain(str(pki / f"{name}.pem"), str(pki / f"{name}.key"))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="sipfed.tomt.it")
            writer.write(b"OPTIONS sip:sipfed.tomt.it SIP/2.0\r\n\r\n")
            data = await asyncio.wait_for(reader.read(100), 5)
            writer.close()
        except ssl.SSLError as exc:
            return str(exc.reason)
        return f"no alert, read {data!r}"

    async def plain(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"OPTIONS sip:sipfed.tomt.it SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(reader.read(100), 5)
        writer.close()

    async def main() -> Sipfed:
        impostor = Peer("wrong.example", "127.0.0.2", certs)
        await impostor.start()
        sipfed = start_sipfed(lab_config(tmp_path / "m.toml", certs, cups_port=impostor.port, lync_port=free_port()))
        port = sipfed.ports["lync"]
        # The client's own TLS stack now names the cause (before, it saw a bare EOF).
        assert await attempt(port, "noclientauth.tomt.it") == "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE"
        assert await attempt(port, "expired.tomt.it") == "SSLV3_ALERT_CERTIFICATE_EXPIRED"
        assert await attempt(port, None) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
        await plain(port)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await lync.start()
        conn = await lync.connect("127.0.0.1", port, "sipfed.tomt.it")
        await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
        answer, _ = await lync.next()
        assert answer.status == 503
        return sipfed

    sipfed = asyncio.run(asyncio.wait_for(main(), 40))
    # Each client saw its refusal, so sipfed has counted it; its log line may still be in the pipe.
    text = scrape(sipfed.ports["metrics"])
    for reason, words in (
        ("unsupported_certificate", "no Client Authentication EKU"),
        ("certificate_expired", "has expired"),
        ("no_client_certificate", "sent no certificate"),
        ("not_tls", "plain SIP sent to a TLS port"),
    ):
        sipfed.wait_for_log(re.compile(rf"listener lync refused \({reason}\): .*{words}"))
        assert (
            sample(
                text,
                "sipfed_tls_handshakes_total",
                listener="lync",
                direction="inbound",
                outcome="failure",
                reason=reason,
            )
            >= 1
        ), (reason, text)
    assert (
        sample(
            text,
            "sipfed_tls_handshakes_total",
            listener="cisco",
            direction="outbound",
            outcome="failure",
            reason="name_mismatch",
        )
        == 1
    )
    assert sample(text, "sipfed_next_hop_failures_total", route="cisco", reason="tls_failure") == 1
    assert sample(text, "sipfed_tls_handshakes_total", listener="lync", direction="inbound", outcome="success") == 1


def test_next_hop_refusing_our_certificate_after_tls13_handshake(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """The tomt.local server (stunnel, OpenSSL) shows a certificate we trust but trusts another CA,
    so over TLS 1.3 it refuses ours only after our side of the handshake finished. The sender gets
    503 with the cause, not the 408 the transaction timeout would give (how soon is for ``make bench``)."""
    from proxy.admin.certs import make_lab_pki
    from tests.integration.sipp import stunnel

    other = tmp_path / "other-pki"
    make_lab_pki(other, [["unrelated.example"]], key_type="ec")
    tls_port = free_port()
    server = stunnel.start_server_tunnel(
        tmp_path,
        accept_port=tls_port,
        connect_port=free_port(),
        cert_chain=certs / "cups.tomt.local.pem",
        key=certs / "cups.tomt.local.key",
        ca_file=other / "ca.crt",
    )

    async def main() -> tuple[Sipfed, str]:
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await lync.start()
        config = lab_config(tmp_path / "refuse.toml", certs, cups_port=tls_port, lync_port=lync.port)
        config.write_text(config.read_text().replace('destination = "127.0.0.2"', 'destination = "127.0.0.1"'))
        sipfed = start_sipfed(config)
        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
        answer, _ = await lync.next(timeout=10)
        assert answer.status == 503  # not 408: the lab config's 2 s transaction timeout did not decide it
        return sipfed, answer.reason

    try:
        sipfed, reason = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        server.stop()
    assert "the peer refused our certificate (TLS alert 48 unknown_ca)" in reason
    text = scrape(sipfed.ports["metrics"])
    assert (
        sample(
            text,
            "sipfed_tls_handshakes_total",
            listener="cisco",
            direction="outbound",
            outcome="failure",
            reason="peer_unknown_ca",  # the peer refused us; "unknown_ca" is ours refusing them (issue 16)
        )
        == 1
    )
    assert sample(text, "sipfed_tls_handshakes_total", direction="outbound", outcome="success") == 0
