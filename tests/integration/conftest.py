"""Fixtures that start the real ``sipfed`` process and make lab certificates with ``sipfed certs``."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.processes import stop_process
from tests.integration.waiting import async_wait_until, wait_until

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["sipfed.tomt.local,sipfed.tomt.it", "cups.tomt.local", "lync01.tomt.it", "wrong.example"]
LOG_SECONDS = 10.0  # how long a log line the test caused may take to show: a deadline, not a pause
#: A compiled tree from tools/mypyc_build.py (``make test-compiled`` sets it): the real process runs from there.
COMPILED = os.environ.get("SIPFED_COMPILED", "")


def sipfed_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """``python -m proxy ARGS`` and its environment: the checkout's pure package, or the compiled tree first on
    the path with ``-P`` (the current folder's pure ``proxy`` must not come first) when ``SIPFED_COMPILED`` is
    set."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not COMPILED:
        return [sys.executable, "-m", "proxy", *args], env
    env["PYTHONPATH"] = os.pathsep.join([COMPILED, str(ROOT)])
    return [sys.executable, "-P", "-m", "proxy", *args], env


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

    def __init__(
        self,
        config: Path,
        timeout: float = 15.0,
        args: tuple[str, ...] = (),
        program: Path | None = None,
        cwd: Path = ROOT,
    ) -> None:
        """``program``: another ``sipfed`` to run (an installed wheel's) instead of the checkout's."""
        self.config = config
        command, env = sipfed_command("run", "--config", str(config), *args)
        if program is not None:
            command, env = (
                [str(program), "run", "--config", str(config), *args],
                {**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.proc = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.log: list[str] = []
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()
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

    def log_text(self) -> str:
        """The log so far: what the stderr reader has taken from the pipe (all of it after ``stop()``)."""
        return "\n".join(self.log)

    def _logged(self, pattern: str | re.Pattern[str]) -> str:
        text = self.log_text()
        found = pattern.search(text) if isinstance(pattern, re.Pattern) else pattern in text
        return text if found else ""

    def _not_logged(self, pattern: str | re.Pattern[str]) -> str:
        shown = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
        return f"sipfed logged no {shown!r}; its log:\n{self.log_text()}"

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = LOG_SECONDS) -> str:
        """The log so far, once it contains ``pattern`` (a text, or a compiled regex to search for)."""
        return wait_until(lambda: self._logged(pattern), timeout, lambda: self._not_logged(pattern))

    async def async_wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = LOG_SECONDS) -> str:
        """``wait_for_log`` inside an event loop (the test's peers keep running)."""
        return await async_wait_until(lambda: self._logged(pattern), timeout, lambda: self._not_logged(pattern))

    def stop(self) -> int:
        """SIGTERM and its exit code; the stderr reader is then through the pipe, so ``log_text()`` is the
        whole log: an absence in it (a line logged once, not twice) is a fact, not a race with the reader."""
        code = stop_process(self.proc)
        self._drain.join(10)
        return code


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


UDP_LISTENER = """
[[listeners]]
name = "lab-udp"
transport = "udp"
address = "127.0.0.1"
port = 0
"""
"""A UDP listener on a free port, for ``lab_config``'s ``extra``."""

LAB_PEERS = """
[[peers]]
name = "lync"
subjects = ["lync01.tomt.it"]
domains = ["tomt.it"]
answers_digest = false

[[peers]]
name = "cisco"
subjects = ["cups.tomt.local"]
domains = ["tomt.local"]
"""
"""The two sides of ``lab_config`` as trusted peers (its ``extra``): Lync never answers digest."""


def lab_config(
    path: Path,
    certs: Path,
    *,
    cups_port: int,
    lync_port: int,
    extra: str = "",
    cisco_port: int = 0,
    lync_listener_port: int = 0,
    transport: str = "tls",
) -> Path:
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
