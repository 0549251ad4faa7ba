"""SIPp (Debian sip-tester, an independent SIP implementation) through the real sipfed process.

SIPp has no TLS in Debian's build, so the TLS legs go through stunnel4 on both sides with
the lab certificates (client certificate toward sipfed, server certificate toward sipfed's
outbound check), exactly as a peer's TLS stack would present them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port
from tests.integration.sipp import stunnel
from tests.integration.sipp_tools import SippUas, errors, run_uac, sipp_config

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.parametrize(("transport", "sipp_transport"), [("tcp", "t1"), ("udp", "u1")])
def test_sipp_message_relay(
    workdir: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed], transport: str, sipp_transport: str
) -> None:
    calls = 200
    uas_port = free_port()
    uas = SippUas("uas_message.xml", uas_port, calls, sipp_transport, workdir)
    sipfed = start_sipfed(sipp_config(workdir / "sipfed.toml", certs, transport=transport, uas_port=uas_port))
    code, latencies = run_uac(
        "uac_message.xml", sipfed.ports["lync"], sipp_transport, calls, 200, workdir, "domain", "tomt.local"
    )
    assert code == 0, errors(workdir)
    assert uas.wait() == 0, errors(workdir)
    assert len(latencies) == calls


def test_sipp_subscribe_notify_through_record_route(
    workdir: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """SUBSCRIBE, 200 whose Record-Route carries sipfed's maddr, NOTIFY back through sipfed,
    in-dialog un-SUBSCRIBE along the route set, final NOTIFY (terminated)."""
    calls = 50
    uas_port = free_port()
    uas = SippUas("uas_subscribe.xml", uas_port, calls, "t1", workdir)
    sipfed = start_sipfed(sipp_config(workdir / "sipfed.toml", certs, transport="tcp", uas_port=uas_port))
    # The subscriber's side (lync listener) must see the federation FQDN of its own side.
    code, _ = run_uac(
        "uac_subscribe.xml",
        sipfed.ports["lync"],
        "t1",
        calls,
        50,
        workdir,
        "domain",
        "tomt.local",
        "maddr",
        "sipfed.tomt.it",
    )
    assert code == 0, errors(workdir)
    assert uas.wait() == 0, errors(workdir)


def test_sipp_message_over_mutual_tls(workdir: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    """SIPp -> stunnel (client cert lync01.tomt.it) -> sipfed TLS -> stunnel (server cert
    cups.tomt.local, client cert required) -> SIPp. Prints the relay figures; asserts none."""
    calls = 500
    uas_port, tls_port, client_port = free_port(), free_port(), free_port()
    uas = SippUas("uas_message.xml", uas_port, calls, "t1", workdir)
    server = stunnel.start_server_tunnel(
        workdir,
        accept_port=tls_port,
        connect_port=uas_port,
        cert_chain=certs / "cups.tomt.local.pem",
        key=certs / "cups.tomt.local.key",
        ca_file=certs / "ca.crt",
    )
    try:
        sipfed = start_sipfed(sipp_config(workdir / "sipfed.toml", certs, transport="tls", uas_port=tls_port))
        client = stunnel.start_client_tunnel(
            workdir,
            accept_port=client_port,
            connect_port=sipfed.ports["lync"],
            cert_chain=certs / "lync01.tomt.it.pem",
            key=certs / "lync01.tomt.it.key",
            ca_file=certs / "ca.crt",
            check_host="sipfed.tomt.it",
        )
        try:
            code, latencies = run_uac("uac_message.xml", client_port, "t1", calls, 250, workdir, "domain", "tomt.local")
        finally:
            client.stop()
    finally:
        server.stop()
    assert code == 0, errors(workdir) + sipfed.log_text()
    assert uas.wait() == 0, errors(workdir)
    assert len(latencies) == calls
    latencies.sort()
    print(
        f"\nTLS MESSAGE via stunnel: {calls} calls, p50 {statistics.median(latencies):.2f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f} ms"
    )
