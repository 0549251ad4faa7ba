"""SIPp (Debian's sip-tester) as the tests drive it: the UAS and UAC processes, their error files, and a
sipfed config for SIPp on both sides. Shared by test_sipp, test_metrics and test_hardening."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

from tests.integration.conftest import free_port

SCENARIOS = Path(__file__).parent / "sipp"


def sipp_config(
    path: Path,
    certs: Path,
    *,
    transport: str,
    uas_port: int,
    uas_host: str = "127.0.0.1",
    route_transport: str | None = None,
) -> Path:
    """sipfed between SIPp's UAC (on the lync listener) and SIPp's UAS (the tomt.local route)."""
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
            [
                "sipp",
                "-sf",
                str(SCENARIOS / scenario),
                "-t",
                transport,
                "-i",
                "127.0.0.1",
                "-p",
                str(port),
                "-m",
                str(calls),
                "-nostdin",
                "-timeout",
                "60s",
                "-trace_err",
                "-error_file",
                str(workdir / "uas.err"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=workdir,
        )

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return -1


def run_uac(
    scenario: str, target: int, transport: str, calls: int, rate: int, workdir: Path, *keys: str
) -> tuple[int, list[float]]:
    """Run the SIPp UAC to completion (bounded); return its exit code and per-call latencies in ms."""
    local = free_port(kind=socket.SOCK_DGRAM if transport == "u1" else socket.SOCK_STREAM)
    args = [
        "sipp",
        f"127.0.0.1:{target}",
        "-sf",
        str(SCENARIOS / scenario),
        "-t",
        transport,
        "-i",
        "127.0.0.1",
        "-p",
        str(local),
        "-s",
        "alice",
        "-key",
        "from_domain",
        "tomt.it",
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-l",
        "100",
        "-nostdin",
        "-recv_timeout",
        "5000",
        "-timeout",
        "60s",
        "-timeout_error",
        "-trace_logs",
        "-log_file",
        str(workdir / "uac.log"),
        "-trace_err",
        "-error_file",
        str(workdir / "uac.err"),
    ]
    for i in range(0, len(keys), 2):
        args += ["-key", keys[i], keys[i + 1]]
    result = subprocess.run(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=workdir, timeout=90, check=False
    )
    log = (workdir / "uac.log").read_text() if (workdir / "uac.log").exists() else ""
    latencies = [float(m.group(1)) / 1000 for m in re.finditer(r"lat_us;\d+;([\d.]+)", log)]
    return result.returncode, latencies


def errors(workdir: Path) -> str:
    return "\n".join(p.read_text()[-2000:] for p in workdir.glob("*.err"))
