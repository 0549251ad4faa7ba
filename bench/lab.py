"""The loopback lab: certificates, ports, and the long-running children (proxies, bare relay, SIPp UAS, stunnel).

Every child is started here, remembered by PID, and stopped by PID (SIGTERM, then SIGKILL after a
bounded wait). Nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Protocol

from bench import procstat

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SIPP_DIR = ROOT / "tests" / "integration" / "sipp"
LOOPBACK = "127.0.0.1"
# The UAS's server stunnel listens here when in-dialog requests must stay on the TLS connections: sipfed lends a
# static route's certificate name to every URI on the route's destination address, so with the UAS on 127.0.0.1
# a NOTIFY to the SIPp UAC's Contact (127.0.0.1 too) would be checked against cups.tomt.local and not reuse the
# UAC's connection. Linux answers all of 127.0.0.0/8 on the loopback interface.
UAS_TLS_HOST = "127.0.0.2"
CERT_NAMES = ("sipfed.tomt.local,sipfed.tomt.it", "cups.tomt.local", "lync01.tomt.it")
# Shared memory: tm keeps each transaction ~5 s after its final response (wait timer). At ~5,000/s the 64 MB
# default runs out: tls "ssl bug #1491 workaround: not enough memory", 477 replies, dropped connections.
# 256 MB held ~4,500/s here; 512 MB leaves room for a faster machine (only touched pages count in RSS).
KAMAILIO_SHM_MB = 512
KAMAILIO_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
)


class LabError(RuntimeError):
    """A lab component could not be started."""


class Tunnel(Protocol):
    """What the bench uses of tests/integration/sipp/stunnel.py's ``Tunnel``."""

    @property
    def pid(self) -> int: ...

    def running(self) -> bool: ...

    def log_text(self) -> str: ...

    def stop(self, timeout: float = 5.0) -> int | None: ...


@functools.cache
def load_stunnel() -> ModuleType:
    """tests/integration/sipp/stunnel.py, imported by path (stdlib only, shared with the tests)."""
    path = SIPP_DIR / "stunnel.py"
    spec = importlib.util.spec_from_file_location("sipfed_bench_stunnel", path)
    if spec is None or spec.loader is None:
        raise LabError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def free_port(kind: int = socket.SOCK_STREAM, host: str = LOOPBACK) -> int:
    """A port the kernel just handed out on loopback (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _udp_bound(port: int) -> bool:
    with contextlib.suppress(OSError), open("/proc/net/udp") as f:
        return any(int(line.split()[1].rsplit(":", 1)[1], 16) == port for line in list(f)[1:])
    return False


def make_certs(out: Path) -> Path:
    """The lab PKI from ``sipfed certs`` (EC keys), into ``out``."""
    args = [sys.executable, "-m", "proxy", "certs", "--out", str(out), "--ip", LOOPBACK, "--key-type", "ec"]
    for name in CERT_NAMES:
        args += ["--name", name]
    subprocess.run(args, check=True, capture_output=True, cwd=ROOT, timeout=60)
    return out


def kamailio_module_dir() -> str:
    """Where Debian (or a source install) put Kamailio's modules (tm.so)."""
    for candidate in KAMAILIO_MODULE_DIRS:
        if Path(candidate, "tm.so").is_file():
            return candidate
    raise LabError("Kamailio modules (tm.so) not found; apt-get install kamailio kamailio-tls-modules")


def require_tools() -> dict[str, str]:
    """Paths of kamailio, sipp and stunnel4; a LabError naming what is missing."""
    found = {name: shutil.which(name) for name in ("kamailio", "sipp")}
    found["stunnel"] = shutil.which("stunnel4") or shutil.which("stunnel")
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise LabError(
            f"missing tools: {', '.join(missing)} (apt-get install kamailio kamailio-tls-modules sip-tester stunnel4)"
        )
    return {name: str(path) for name, path in found.items()}


@dataclass
class Child:
    """A long-running child process with its log file; ``root_pid`` heads its process tree."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    known_pids: set[int] = field(default_factory=set)
    stop_timeout: float = 8.0
    """Seconds between SIGTERM and SIGKILL."""

    @property
    def root_pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        """The live process tree (remembered, so stray workers can be stopped by PID later)."""
        pids = procstat.tree_pids(self.proc.pid) if self.proc.poll() is None else []
        self.known_pids.update(pids)
        return pids

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the root PID, SIGKILL it after ``timeout``; then SIGKILL any remembered worker left."""
        timeout = self.stop_timeout if timeout is None else timeout
        self.pids()
        load_stunnel().terminate(self.proc, timeout)
        for pid in self.known_pids - {self.proc.pid}:
            if procstat.tree_pids(pid) and parent_is(pid, self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return self.proc.returncode


def parent_is(pid: int, parent: int) -> bool:
    """True while ``pid`` is alive and still a child of ``parent`` (or reparented to init after it died)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    ppid = int(text[text.rindex(")") + 2 :].split()[1])
    return ppid in (parent, 1)


def spawn(
    name: str,
    args: list[str],
    workdir: Path,
    *,
    stdout: int | None = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
) -> Child:
    """Start ``args`` with stderr (and, unless piped, stdout) going to ``workdir/name.log``."""
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log if stdout is None else stdout, stderr=log, cwd=workdir, env=env
        )
    return Child(name, proc, log_path)


def wait_until(ready: Callable[[], bool], child: Child, what: str, timeout: float = 15.0) -> None:
    """Poll ``ready`` (bounded by ``timeout``); on failure the child is stopped and a LabError carries its log."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise LabError(f"{child.name} exited with {child.proc.returncode} before {what}:\n{child.log_tail()}")
            if ready():
                return
            time.sleep(0.05)
        raise LabError(f"{child.name}: no {what} after {timeout:.0f}s:\n{child.log_tail()}")
    except BaseException:
        child.stop()
        raise


def port_ready(port: int, transport: str) -> Callable[[], bool]:
    """A readiness probe that never connects (a connect would make a client stunnel dial out)."""
    if transport == "udp":
        return lambda: _udp_bound(port)
    stunnel = load_stunnel()
    return lambda: bool(stunnel.port_is_listening(port))


# -- the SIPp UAS ---------------------------------------------------------------------------------


def start_uas(
    workdir: Path,
    scenario_xml: str,
    port: int,
    transport: str,
    lifetime_seconds: int,
    keys: dict[str, str] | None = None,
) -> Child:
    """A SIPp UAS on ``port`` (TCP ``t1`` or UDP ``u1``); it answers until stopped (or its lifetime ends)."""
    flag = "u1" if transport == "udp" else "t1"
    args = [
        "sipp",
        "-sf",
        str(SIPP_DIR / scenario_xml),
        "-t",
        flag,
        "-i",
        LOOPBACK,
        "-p",
        str(port),
        "-nostdin",
        "-timeout",
        f"{lifetime_seconds}s",
        "-timeout_error",
        "-trace_err",
        "-error_file",
        str(workdir / "uas.errors"),
    ]
    for name, value in (keys or {}).items():
        args += ["-key", name, value]
    uas = spawn("uas", args, workdir)
    uas.stop_timeout = 3.0  # SIPp may wait for calls in progress on SIGTERM; it is SIGKILLed after this
    wait_until(port_ready(port, "udp" if transport == "udp" else "tcp"), uas, f"listening on {port}")
    return uas


# -- sipfed -----------------------------------------------------------------------------------------


def sipfed_config(
    path: Path, certs: Path, *, listener_transport: str, route_transport: str, uas_port: int, uas_host: str = LOOPBACK
) -> Path:
    """One listener (TLS; UDP or TCP in those scenarios) and the route tomt.local -> the UAS (its stunnel)."""
    path.write_text(f"""# generated by bench/run.py
[proxy]
fqdn = "sipfed.tomt.local"
transaction_timeout_seconds = 4
log_level = "warning"

[metrics]
listen = "127.0.0.1:0"   # served as in production, on a free port (9561 may be taken by a running sipfed)

# Every bench client connects from one address (SIPp and stunnel on loopback) and the idle-connection
# scenario holds 1,000 connections that send nothing for a while: the per-source connection limits, which a
# federation edge wants, would refuse the load itself. Kamailio's bench config has none either.
[limits]
max_connections_per_source = 0
handshakes_per_source_per_second = 0
unauthenticated_idle_seconds = 3600

# SIPp plays both sides from loopback. Bound as a trusted peer by network, the subscriber's own connection is
# an in-dialog target (its Contact is that connection: NOTIFYs ride it back), as in a federation where the
# far side record-routes; unbound, sipfed refuses to follow a Contact no route accounts for (no open relay).
[[peers]]
name = "bench"
networks = ["127.0.0.0/8"]

[tls]
cert_chain = "{certs}/sipfed.tomt.local.pem"
key = "{certs}/sipfed.tomt.local.key"
ca_bundle = "{certs}/ca.crt"

[[listeners]]
name = "bench"
transport = "{listener_transport}"
address = "{LOOPBACK}"
port = 0

[[routes]]
name = "uas"
match_uri = "tomt.local"
destination = "{uas_host}"
port = {uas_port}
transport = "{route_transport}"
tls_name = "cups.tomt.local"
""")
    return path


def start_sipfed(workdir: Path, config: Path, source: Path | None = None, timeout: float = 30.0) -> tuple[Child, int]:
    """``python -m proxy run`` (from ``source``, another checkout, if given); returns the child and its
    listener port from the readiness line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    child = spawn(
        "sipfed",
        [sys.executable, "-m", "proxy", "run", "--config", str(config)],
        workdir,
        stdout=subprocess.PIPE,
        env=env,
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(_readline(child)), daemon=True)
    reader.start()
    reader.join(timeout)
    if not line or not line[0].startswith("sipfed ready"):
        child.stop()
        raise LabError(f"sipfed did not become ready in {timeout:.0f}s:\n{child.log_tail()}")
    return child, int(line[0].split()[2].rsplit(":", 1)[1])


def _readline(child: Child) -> str:
    assert child.proc.stdout is not None
    return child.proc.stdout.readline().decode(errors="replace")


# -- Kamailio ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KamailioPorts:
    """Where the Kamailio arm listens."""

    udp: int
    """UDP listener (2 UDP workers)."""
    tcp: int
    """Plain TCP listener: in-dialog requests toward a SIPp Contact (``transport=TCP``) leave from it."""
    tls: int
    """TLS listener (the UAC's client stunnel connects here)."""


def render(template: Path, out: Path, values: dict[str, str]) -> Path:
    """Copy ``template`` to ``out`` replacing each ``@@NAME@@``; refuses to leave one unreplaced."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace(f"@@{name}@@", value)
    if "@@" in text:
        raise LabError(f"{template}: placeholder left unreplaced near {text[text.index('@@') :][:40]!r}")
    out.write_text(text)
    return out


def start_kamailio(
    workdir: Path, certs: Path, *, uas_uri: str, wait_transport: str, tcp_children: int = 2
) -> tuple[Child, KamailioPorts]:
    """Kamailio in the foreground (-DD -E) from the bench templates, with a private runtime dir and pid file."""
    ports = KamailioPorts(free_port(socket.SOCK_DGRAM), free_port(), free_port())
    runtime = workdir / "kamailio-run"
    runtime.mkdir(exist_ok=True)
    tls_cfg = render(
        BENCH / "kamailio-tls.cfg",
        workdir / "kamailio-tls.cfg",
        {
            "CERT_CHAIN": str(certs / "sipfed.tomt.local.pem"),
            "KEY": str(certs / "sipfed.tomt.local.key"),
            "CA": str(certs / "ca.crt"),
        },
    )
    cfg = render(
        BENCH / "kamailio.cfg",
        workdir / "kamailio.cfg",
        {
            "UDP_PORT": str(ports.udp),
            "TCP_PORT": str(ports.tcp),
            "TLS_PORT": str(ports.tls),
            "TLS_CFG": str(tls_cfg),
            "UAS_URI": uas_uri,
            "TCP_CHILDREN": str(tcp_children),
        },
    )
    args = [
        "kamailio",
        "-DD",
        "-E",
        "-f",
        str(cfg),
        "-L",
        kamailio_module_dir(),
        "-Y",
        str(runtime),
        "-P",
        str(runtime / "kamailio.pid"),
        "-w",
        str(runtime),
        "-m",
        str(KAMAILIO_SHM_MB),
        "-M",
        "8",
    ]
    child = spawn("kamailio", args, workdir)
    port = {"udp": ports.udp, "tcp": ports.tcp, "tls": ports.tls}[wait_transport]
    wait_until(port_ready(port, "udp" if wait_transport == "udp" else "tcp"), child, f"listening on {port}")
    # 2 UDP + 2 (or 1) TCP workers, the TCP main, timers and the attendant: wait until the forks settle.
    deadline = time.monotonic() + 10
    while len(child.pids()) < 5 + tcp_children and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return child, ports


# -- the bare relay (the ceiling arm) ---------------------------------------------------------------


def start_bare_relay(
    workdir: Path, certs: Path, *, listen_transport: str, upstream_transport: str, uas_host: str, uas_port: int
) -> tuple[Child, int]:
    """bench/bare_relay.py between the UAC and the UAS (its stunnel), with sipfed's certificates and CA;
    returns the child and its listening port."""
    port = free_port(socket.SOCK_DGRAM if listen_transport == "udp" else socket.SOCK_STREAM)
    args = [
        sys.executable,
        str(BENCH / "bare_relay.py"),
        "--listen",
        f"{LOOPBACK}:{port}",
        "--transport",
        listen_transport,
        "--upstream",
        f"{uas_host}:{uas_port}",
        "--upstream-transport",
        upstream_transport,
        "--cert-chain",
        str(certs / "sipfed.tomt.local.pem"),
        "--key",
        str(certs / "sipfed.tomt.local.key"),
        "--ca",
        str(certs / "ca.crt"),
        "--tls-name",
        "cups.tomt.local",
    ]
    child = spawn("bare-relay", args, workdir, stdout=None)
    wait_until(port_ready(port, "udp" if listen_transport == "udp" else "tcp"), child, f"listening on {port}")
    return child, port


# -- stunnel ----------------------------------------------------------------------------------------


def start_server_tunnel(workdir: Path, certs: Path, *, accept_port: int, uas_port: int, host: str = LOOPBACK) -> Tunnel:
    """TLS in front of the UAS on ``host``: certificate cups.tomt.local, client certificate required."""
    stunnel = load_stunnel()
    files = {
        "cert_chain": certs / "cups.tomt.local.pem",
        "key": certs / "cups.tomt.local.key",
        "ca_file": certs / "ca.crt",
    }
    name = f"stunnel-uas-{accept_port}"
    if host == LOOPBACK:
        tunnel: Tunnel = stunnel.start_server_tunnel(
            workdir, accept_port=accept_port, connect_port=uas_port, name=name, debug="warning", **files
        )
        return tunnel
    # The tests' helper accepts on 127.0.0.1 only: same config, other accept address, started the same way.
    config = stunnel.write_config(
        workdir / f"{name}.conf", client=False, accept_port=accept_port, connect_port=uas_port, debug="warning", **files
    )
    text = config.read_text()
    accept = f"accept = {LOOPBACK}:{accept_port}"
    if accept not in text:
        raise LabError(f"{config}: no {accept!r} line to move to {host}")
    config.write_text(text.replace(accept, f"accept = {host}:{accept_port}"))
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [stunnel.find_stunnel(), str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    tunnel = stunnel.Tunnel(proc, config, log_path, accept_port, uas_port)
    deadline = time.monotonic() + 10
    while not stunnel.port_is_listening(accept_port):
        if not tunnel.running() or time.monotonic() > deadline:
            tunnel.stop()
            raise LabError(f"stunnel not listening on {host}:{accept_port}:\n{tunnel.log_text()[-2000:]}")
        time.sleep(0.02)
    return tunnel


def start_client_tunnel(workdir: Path, certs: Path, *, accept_port: int, proxy_port: int, name: str) -> Tunnel:
    """Plain TCP from the SIPp UAC -> TLS to a proxy, presenting lync01.tomt.it, checking sipfed.tomt.local."""
    stunnel = load_stunnel()
    tunnel: Tunnel = stunnel.start_client_tunnel(
        workdir,
        accept_port=accept_port,
        connect_port=proxy_port,
        cert_chain=certs / "lync01.tomt.it.pem",
        key=certs / "lync01.tomt.it.key",
        ca_file=certs / "ca.crt",
        check_host="sipfed.tomt.local",
        name=f"stunnel-{name}",
        debug="warning",
    )
    return tunnel
