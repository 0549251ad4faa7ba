"""Kamailio (Debian packages kamailio + kamailio-tls-modules) as an independent SIP server in tests.

Started in the foreground with a private runtime directory, waited for until its port listens,
stopped by PID. Nothing here imports sipfed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.processes import stop_process

MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
)


def module_dir() -> str:
    for candidate in MODULE_DIRS:
        if (Path(candidate) / "tm.so").exists():
            return candidate
    raise RuntimeError("Kamailio modules not found: apt-get install kamailio kamailio-tls-modules")


def tls_profile(certs: Path, name: str) -> str:
    """A tls.cfg: our chain and key, the lab CA; mutual TLS both ways."""
    return "\n".join(
        f"""[{side}:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
certificate = {certs}/{name}.pem
private_key = {certs}/{name}.key
ca_list = {certs}/ca.crt
"""
        for side in ("server", "client")
    )


class Kamailio:
    """One Kamailio process listening on ``host:port`` over TLS, running ``routing`` as its script body."""

    def __init__(
        self,
        workdir: Path,
        certs: Path,
        *,
        name: str,
        host: str,
        port: int,
        routing: str,
        modules: tuple[str, ...] = ("tls", "tm", "sl", "rr", "pv", "textops", "siputils", "auth", "xlog"),
        extra: str = "",
    ) -> None:
        if shutil.which("kamailio") is None:
            raise RuntimeError("kamailio is not installed: apt-get install kamailio kamailio-tls-modules")
        self.workdir = workdir / f"kamailio-{port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tls.cfg").write_text(tls_profile(certs, name))
        loads = "\n".join(f'loadmodule "{m}.so"' for m in modules)
        (self.workdir / "kamailio.cfg").write_text(f"""#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
auto_aliases=no
dns=no
rev_dns=no
enable_tls=yes
listen=tls:{host}:{port}
alias="{name}"
{loads}
modparam("tls", "config", "{self.workdir}/tls.cfg")
{extra}
request_route {{
{routing}
}}
""")
        self.host, self.port = host, port
        self.log = self.workdir / "kamailio.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    "kamailio",
                    "-DD",
                    "-E",
                    "-f",
                    str(self.workdir / "kamailio.cfg"),
                    "-L",
                    module_dir(),
                    "-Y",
                    str(self.workdir),
                    "-P",
                    str(self.workdir / "kamailio.pid"),
                    "-w",
                    str(self.workdir),
                    "-m",
                    "32",
                    "-M",
                    "8",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_listening(15)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection((self.host, self.port), 0.2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kamailio not listening on {self.host}:{self.port}:\n{self.log.read_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)


class KamailioConfig(Kamailio):
    """Kamailio running a complete config file rendered elsewhere (examples/lab/*.cfg), from that
    file's directory; ``host:port`` is the listener waited for. ``restart()`` keeps the same ports."""

    def __init__(self, config: Path, *, host: str, port: int) -> None:  # no super(): nothing to write
        if shutil.which("kamailio") is None:
            raise RuntimeError(
                "kamailio is not installed: apt-get install kamailio kamailio-tls-modules kamailio-presence-modules"
            )
        self.config, self.workdir = config, config.parent
        self.host, self.port = host, port
        self.log = self.workdir / "kamailio.log"
        self._spawn()

    def _spawn(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    "kamailio",
                    "-DD",
                    "-E",
                    "-f",
                    str(self.config),
                    "-L",
                    module_dir(),
                    "-Y",
                    str(self.workdir),
                    "-P",
                    str(self.workdir / "kamailio.pid"),
                    "-w",
                    str(self.workdir),
                    "-m",
                    "48",
                    "-M",
                    "8",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_listening(15)

    def restart(self) -> None:
        """Stop by PID and start the same config again (same ports), waiting until it listens."""
        self.stop()
        self._spawn()
