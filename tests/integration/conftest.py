"""Fixtures that start the real ``sipfed`` process and make lab certificates with ``sipfed certs``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.processes import stop_process

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["sipfed.tomt.local,sipfed.tomt.it", "cups.tomt.local", "lync01.tomt.it", "wrong.example"]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab PKI made by the real CLI, with IP SANs for the loopback addresses the tests use."""
    out = tmp_path_factory.mktemp("certs")
    args = [sys.executable, "-m", "proxy", "certs", "--out", str(out), "--key-type", "ec"]
    for name in NAMES:
        args += ["--name", name]
    for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        args += ["--ip", ip]
    subprocess.run(args, check=True, capture_output=True, cwd=ROOT, timeout=60)
    return out


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Sipfed:
    """The real proxy as a child process; ``ports`` come from its readiness line."""

    def __init__(self, config: Path, timeout: float = 15.0, args: tuple[str, ...] = ()) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(config), *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.log: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.ports = self._wait_ready(timeout)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def _wait_ready(self, timeout: float) -> dict[str, int]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        result: dict[str, int] = {}
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if line.startswith("sipfed ready"):
                for item in line.split()[2:]:
                    name, _, rest = item.partition("=")
                    result[name] = int(rest.rsplit(":", 1)[1])
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(max(0.0, deadline - time.monotonic())) or not result:
            self.stop()
            raise RuntimeError("sipfed did not become ready:\n" + "\n".join(self.log))
        return result

    def log_text(self, settle: float = 0.3) -> str:
        time.sleep(settle)
        return "\n".join(self.log)

    def stop(self) -> int:
        return stop_process(self.proc)


@pytest.fixture
def start_sipfed() -> Iterator[object]:
    started: list[Sipfed] = []

    def start(config: Path, *args: str) -> Sipfed:
        proc = Sipfed(config, args=args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def lab_config(path: Path, certs: Path, *, cups_port: int, lync_port: int, extra: str = "",
               cisco_port: int = 0, lync_listener_port: int = 0, transport: str = "tls") -> Path:
    """The two-domain lab of examples/lab.toml with the test's ports."""
    path.write_text(f"""
[proxy]
fqdn = "sipfed.tomt.local"
federation_fqdn = "sipfed.tomt.local"
tolerated_option_tags = ["ms-benotify"]
transaction_timeout_seconds = 2
connect_timeout_seconds = 2

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
port = {cisco_port}

[[listeners]]
name = "lync"
transport = "{transport}"
address = "127.0.0.1"
port = {lync_listener_port}
fqdn = "sipfed.tomt.it"
federation_fqdn = "sipfed.tomt.it"

[[routes]]
name = "cisco"
match_uri = "tomt.local"
destination = "127.0.0.2"
port = {cups_port}
transport = "{transport}"
tls_name = "cups.tomt.local"
listener = "cisco"

[[routes]]
name = "lync"
match_uri = "tomt.it"
destination = "127.0.0.3"
port = {lync_port}
transport = "{transport}"
tls_name = "lync01.tomt.it"
listener = "lync"

[[maddr_rewrite]]
internal = "127.0.0.2"
external = "cups.tomt.local"
{extra}
""")
    return path
