"""SIPp (Debian sip-tester, an independent SIP implementation) through the real sipfed process.

SIPp has no TLS in Debian's build, so the TLS legs go through stunnel4 on both sides with
the lab certificates (client certificate toward sipfed, server certificate toward sipfed's
outbound check), exactly as a peer's TLS stack would present them.
"""

from __future__ import annotations

import re
import socket
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port
from tests.integration.sipp import stunnel

pytestmark = pytest.mark.integration

SCENARIOS = Path(__file__).parent / "sipp"


def config(path: Path, certs: Path, *, transport: str, uas_port: int, uas_host: str = "127.0.0.1",
           route_transport: str | None = None) -> Path:
    route_transport = route_transport or transport
    path.write_text(f"""
[proxy]
fqdn = "sipfed.tomt.local"
transaction_timeout_seconds = 4

[metrics]
listen = "127.0.0.1:0"

[tls]
cert_chain = "{certs}/sipfed.tomt.local.pem"
key = "{certs}/sipfed.tomt.local.key"
ca_bundle = "{certs}/ca.crt"

[[listeners]]
name = "cisco"
transport = "{transport}"
address = "127.0.0.1"
port = 0

[[listeners]]
name = "lync"
transport = "{transport}"
address = "127.0.0.1"
port = 0
fqdn = "sipfed.tomt.it"

[[routes]]
match_uri = "tomt.local"
destination = "{uas_host}"
port = {uas_port}
transport = "{route_transport}"
tls_name = "cups.tomt.local"
listener = "cisco"

# SIPp plays both sides from loopback; bound by network, the subscriber's own connection is an in-dialog
# target sipfed may use (its Contact is that connection: NOTIFYs ride it back).
[[peers]]
name = "sipp"
networks = ["127.0.0.0/8"]
""")
    return path


class SippUas:
    """A SIPp UAS that expects exactly ``calls`` calls and exits 0 when all succeeded."""

    def __init__(self, scenario: str, port: int, calls: int, transport: str, workdir: Path) -> None:
        self.proc = subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / scenario), "-t", transport, "-i", "127.0.0.1", "-p", str(port),
             "-m", str(calls), "-nostdin", "-timeout", "60s", "-trace_err", "-error_file", str(workdir / "uas.err")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=workdir)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return -1


def run_uac(scenario: str, target: int, transport: str, calls: int, rate: int, workdir: Path,
            *keys: str) -> tuple[int, list[float]]:
    """Run the SIPp UAC to completion (bounded); return its exit code and per-call latencies in ms."""
    local = free_port(kind=socket.SOCK_DGRAM if transport == "u1" else socket.SOCK_STREAM)
    args = ["sipp", f"127.0.0.1:{target}", "-sf", str(SCENARIOS / scenario), "-t", transport, "-i", "127.0.0.1",
            "-p", str(local), "-s", "alice", "-key", "from_domain", "tomt.it", "-m", str(calls), "-r", str(rate),
            "-l", "100", "-nostdin", "-recv_timeout", "5000", "-timeout", "60s", "-timeout_error",
            "-trace_logs", "-log_file", str(workdir / "uac.log"), "-trace_err", "-error_file",
            str(workdir / "uac.err")]
    for i in range(0, len(keys), 2):
        args += ["-key", keys[i], keys[i + 1]]
    result = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=workdir, timeout=90,
                            check=False)
    log = (workdir / "uac.log").read_text() if (workdir / "uac.log").exists() else ""
    latencies = [float(m.group(1)) / 1000 for m in re.finditer(r"lat_us;\d+;([\d.]+)", log)]
    return result.returncode, latencies


def errors(workdir: Path) -> str:
    return "\n".join(p.read_text()[-2000:] for p in workdir.glob("*.err"))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.parametrize(("transport", "sipp_transport"), [("tcp", "t1"), ("udp", "u1")])
def test_sipp_message_relay(workdir: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed],
                            transport: str, sipp_transport: str) -> None:
    calls = 200
    uas_port = free_port()
    uas = SippUas("uas_message.xml", uas_port, calls, sipp_transport, workdir)
    sipfed = start_sipfed(config(workdir / "sipfed.toml", certs, transport=transport, uas_port=uas_port))
    code, latencies = run_uac("uac_message.xml", sipfed.ports["lync"], sipp_transport, calls, 200, workdir,
                              "domain", "tomt.local")
    assert code == 0, errors(workdir)
    assert uas.wait() == 0, errors(workdir)
    assert len(latencies) == calls


def test_sipp_subscribe_notify_through_record_route(workdir: Path, certs: Path,
                                                    start_sipfed: Callable[[Path], Sipfed]) -> None:
    """SUBSCRIBE, 200 whose Record-Route carries sipfed's maddr, NOTIFY back through sipfed,
    in-dialog un-SUBSCRIBE along the route set, final NOTIFY (terminated)."""
    calls = 50
    uas_port = free_port()
    uas = SippUas("uas_subscribe.xml", uas_port, calls, "t1", workdir)
    sipfed = start_sipfed(config(workdir / "sipfed.toml", certs, transport="tcp", uas_port=uas_port))
    # The subscriber's side (lync listener) must see the federation FQDN of its own side.
    code, _ = run_uac("uac_subscribe.xml", sipfed.ports["lync"], "t1", calls, 50, workdir,
                      "domain", "tomt.local", "maddr", "sipfed.tomt.it")
    assert code == 0, errors(workdir)
    assert uas.wait() == 0, errors(workdir)


def test_sipp_message_over_mutual_tls(workdir: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    """SIPp -> stunnel (client cert lync01.tomt.it) -> sipfed TLS -> stunnel (server cert
    cups.tomt.local, client cert required) -> SIPp. Prints the relay figures; asserts none."""
    calls = 500
    uas_port, tls_port, client_port = free_port(), free_port(), free_port()
    uas = SippUas("uas_message.xml", uas_port, calls, "t1", workdir)
    server = stunnel.start_server_tunnel(workdir, accept_port=tls_port, connect_port=uas_port,
                                         cert_chain=certs / "cups.tomt.local.pem", key=certs / "cups.tomt.local.key",
                                         ca_file=certs / "ca.crt")
    try:
        sipfed = start_sipfed(config(workdir / "sipfed.toml", certs, transport="tls", uas_port=tls_port))
        client = stunnel.start_client_tunnel(workdir, accept_port=client_port, connect_port=sipfed.ports["lync"],
                                             cert_chain=certs / "lync01.tomt.it.pem", key=certs / "lync01.tomt.it.key",
                                             ca_file=certs / "ca.crt", check_host="sipfed.tomt.it")
        try:
            code, latencies = run_uac("uac_message.xml", client_port, "t1", calls, 250, workdir,
                                      "domain", "tomt.local")
        finally:
            client.stop()
    finally:
        server.stop()
    assert code == 0, errors(workdir) + sipfed.log_text()
    assert uas.wait() == 0, errors(workdir)
    assert len(latencies) == calls
    latencies.sort()
    print(f"\nTLS MESSAGE via stunnel: {calls} calls, p50 {statistics.median(latencies):.2f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f} ms")
