"""The XMPP domain of the ``xmpp`` bench scenario: dnsmasq as its DNS (SRV records), Prosody as its server, and
raw c2s clients as its users. Nothing here imports sipfed or tests/ (the tests' lab, tests/integration/xmpp_lab.py,
was the model: same dnsmasq flags, same lua-unbound table).

The users are not slixmpp: a bench client must stamp each message when its bytes are read and must not be the
bottleneck at thousands of messages per second. ``ChatClient`` logs in (STARTTLS, SASL PLAIN, resource binding,
initial presence, RFC 6120/6121) and then only parses (expat, one ``XMLPullParser`` per stream) and writes; all
clients share one asyncio loop in a daemon thread (``ClientThread``), driven from the bench's main thread through
blocking calls with timeouts. bench/README.md says what slixmpp managed on this machine.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, TypeVar

import dns.exception
import dns.message
import dns.query

from bench import procstat
from bench.lab import LabError, parent_is

T = TypeVar("T")
NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_CLIENT = "jabber:client"
# The bench's message body: run id, sequence number, send time (µs since the epoch; SIPp prints it as a double).
BODY_RE = re.compile(r"r=(\d+) n=(\d+) t=(\d+)")
LOGIN_SECONDS = 15.0

# --- processes ------------------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A long-running child with its log file, stopped by its PID (SIGTERM, then SIGKILL after a bounded wait)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    known_pids: set[int] = field(default_factory=set)
    """Every PID seen in its tree, so a worker left behind is killed by PID too."""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        pids = procstat.tree_pids(self.popen.pid) if self.alive() else []
        self.known_pids.update(pids)
        return pids

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_seconds: float = 5.0) -> int | None:
        self.pids()
        if self.alive():
            self.popen.terminate()  # by PID
            try:
                self.popen.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for pid in self.known_pids - {self.popen.pid}:
            if parent_is(pid, self.popen.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return self.popen.returncode


def spawn(name: str, args: list[str], workdir: Path, *, stdout: int | None = subprocess.DEVNULL) -> Proc:
    """Start ``args`` with stderr (and stdout unless piped) in ``workdir/name.log``."""
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log if stdout is None else stdout, stderr=log, cwd=workdir
        )
    return Proc(name, popen, log_path)


def wait_until(ready: Callable[[], bool], proc: Proc, what: str, timeout: float = 15.0) -> None:
    """Poll ``ready`` until ``timeout``; a LabError with the child's log if it exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise LabError(f"{proc.name} exited with {proc.popen.returncode} before {what}:\n{proc.log_tail()}")
        if ready():
            return
        time.sleep(0.05)
    raise LabError(f"{proc.name}: no {what} after {timeout:.0f}s:\n{proc.log_tail()}")


def tcp_listening(address: str, port: int) -> bool:
    """A TCP socket in LISTEN on ``address:port`` (/proc/net/tcp), checked without connecting to it."""
    wanted = f"{bytes(reversed([int(part) for part in address.split('.')])).hex().upper()}:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in list(table)[1:])


# --- DNS ------------------------------------------------------------------------------------------------------

# Foreground, no system config, hosts file or upstream; --bind-interfaces binds 127.0.x.y without configuring it.
DNSMASQ_FLAGS = (
    *("--keep-in-foreground", "--log-facility=-", "--user=root", "--pid-file="),
    *("--conf-file=/dev/null", "--no-hosts", "--no-resolv", "--no-poll", "--bind-interfaces"),
)


def start_dns(
    workdir: Path, address: str, port: int, *, hosts: dict[str, str], srv: dict[str, tuple[str, int]]
) -> Proc:
    """dnsmasq on ``address:port``: A records ``hosts`` (name -> IP), SRV records ``srv`` (owner -> (target,
    port)), authoritative (NXDOMAIN) for the zones of both, REFUSED for anything else."""
    zones = sorted({name.split(".", 1)[1] for name in hosts} | {o.split(".", 2)[2] for o in srv})
    args = ["dnsmasq", *DNSMASQ_FLAGS, f"--listen-address={address}", f"--port={port}"]
    args += [f"--local=/{zone}/" for zone in zones]
    args += [f"--host-record={name},{ip}" for name, ip in hosts.items()]
    args += [f"--srv-host={owner},{target},{p},0,5" for owner, (target, p) in srv.items()]
    proc = spawn("dnsmasq", args, workdir)

    def answers() -> bool:
        probe = dns.message.make_query("bench-readiness-probe.invalid.", "A")
        try:
            dns.query.udp(probe, address, port=port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            return False
        return True

    try:
        wait_until(answers, proc, f"DNS answers on {address}:{port}")
    except BaseException:
        proc.stop()
        raise
    return proc


# --- Prosody --------------------------------------------------------------------------------------------------

# Prosody 0.12 leaves Nagle's algorithm on (net.server_epoll ``nagle = true``). Toward a client that never writes,
# its c2s writes then wait for the client's delayed ACKs: 40 ms stalls, and SIP -> XMPP p99 ~40 ms at every rate
# from 1,000/s up on this machine. The bench turns it off, as sipfed (uvloop) and the bench's clients (asyncio)
# have it off, so the figures are the gateway's and not a c2s batching artefact (bench/README.md has both).
PROSODY_NAGLE = False
# Prosody 0.12 (Debian 12) as xmpp.test. Logging at info (per connection, not per stanza: debug would cost more
# CPU than the stanzas). No mod_limits: nothing throttles c2s. Containers run as root (run_as_root).
PROSODY_CONFIG = Template("""-- generated by bench/xmpp_client.py
run_as_root = true
pidfile = "$lab/prosody.pid"
data_path = "$lab/data"
admins = { }
modules_enabled = { "disco"; "roster"; "saslauth"; "tls"; "dialback"; "posix" }
interfaces = { "$address" }
c2s_interfaces = { "$address" }
s2s_interfaces = { "$address" }
local_interfaces = { "$address" }
component_interfaces = { "$address" }
c2s_ports = { $c2s_port }
s2s_ports = { $s2s_port }
component_ports = { $component_port }
use_ipv6 = false
authentication = "internal_plain"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = false
certificates = "$lab/certs"
ssl = { cafile = "$cafile" }
unbound = { resolvconf = false; hoststxt = false; forward = "$dns" }
network_settings = { nagle = $nagle }
log = {
  { levels = { min = "info" }, to = "file", filename = "$lab/prosody.log" };
  { levels = { min = "error" }, to = "console" };
}
VirtualHost "$domain"
$component
""")


@dataclass(frozen=True, slots=True)
class ProsodyPorts:
    """Where Prosody listens (all on one loopback address)."""

    c2s: int
    s2s: int
    """The target of the domain's ``_xmpp-server._tcp`` SRV record."""
    component: int
    """XEP-0114 components (the Kamailio probe)."""


class Prosody:
    """Prosody in the foreground (``-F``) with a lab directory of its own: config, certs/, data/, log."""

    def __init__(
        self,
        workdir: Path,
        *,
        domain: str,
        address: str,
        ports: ProsodyPorts,
        pki: Path,
        dns_forward: str,
        component: tuple[str, str] | None = None,
    ) -> None:
        self.lab, self.domain, self.address, self.ports = workdir / "prosody", domain, address, ports
        for sub in ("certs", "data"):
            (self.lab / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pki / f"{domain}.pem", self.lab / "certs" / f"{domain}.crt")  # leaf + intermediate
        shutil.copyfile(pki / f"{domain}.key", self.lab / "certs" / f"{domain}.key")
        (self.lab / "certs" / f"{domain}.key").chmod(0o600)
        self.config = self.lab / "prosody.cfg.lua"
        self.config.write_text(
            PROSODY_CONFIG.substitute(
                lab=self.lab,
                address=address,
                c2s_port=ports.c2s,
                s2s_port=ports.s2s,
                component_port=ports.component,
                cafile=pki / "ca.crt",
                dns=dns_forward,
                nagle="true" if PROSODY_NAGLE else "false",
                domain=domain,
                component=f'Component "{component[0]}"\n  component_secret = "{component[1]}"' if component else "",
            )
        )
        self.proc = spawn("prosody", ["prosody", "--config", str(self.config), "-F"], self.lab)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Every port listening and c2s activated (the last service Prosody starts)."""

        def ready() -> bool:
            ports = (self.ports.c2s, self.ports.s2s, self.ports.component)
            log = self.log_text()
            return all(tcp_listening(self.address, p) for p in ports) and "Activated service 'c2s'" in log

        wait_until(ready, self.proc, "Prosody listening", timeout)

    def register(self, user: str, password: str) -> str:
        """An account ``user@domain`` (prosodyctl, read by the running server at login); its JID."""
        done = subprocess.run(
            ["prosodyctl", "--config", str(self.config), "register", user, self.domain, password],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise LabError(f"prosodyctl register {user} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return f"{user}@{self.domain}"

    def log_text(self) -> str:
        path = self.lab / "prosody.log"
        return path.read_text(errors="replace") if path.exists() else ""


# --- clients --------------------------------------------------------------------------------------------------


Received = tuple[int, int, int]
"""A bench message as received: sequence number, send time from its body, receive time (µs since the epoch)."""


class Inbox:
    """Bench messages a client received and error stanzas, per run. Written on the client loop, read from the
    main thread."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._got: dict[int, list[Received]] = {}
        self._errors: dict[int, int] = {}

    def deliver(self, run: int, seq: int, sent_us: int, received_us: int) -> None:
        with self._changed:
            self._got.setdefault(run, []).append((seq, sent_us, received_us))
            self._changed.notify_all()

    def error(self, run: int) -> None:
        with self._changed:
            self._errors[run] = self._errors.get(run, 0) + 1
            self._changed.notify_all()

    def wait(self, run: int, expected: int, timeout: float, idle_seconds: float = 2.0) -> None:
        """Until ``expected`` messages (or errors) of ``run`` arrived, none came for ``idle_seconds``, or
        ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        with self._changed:
            seen = -1
            while (now := time.monotonic()) < deadline:
                count = len(self._got.get(run, ())) + self._errors.get(run, 0)
                if count >= expected:
                    return
                if count == seen:  # nothing new for idle_seconds
                    return
                seen = count
                self._changed.wait_for(
                    lambda: len(self._got.get(run, ())) + self._errors.get(run, 0) >= expected,
                    min(idle_seconds, deadline - now),
                )

    def take(self, run: int) -> tuple[list[Received], int]:
        """The run's deliveries and error count, forgotten here."""
        with self._changed:
            return self._got.pop(run, []), self._errors.pop(run, 0)

    def leftovers(self) -> dict[int, int]:
        """Deliveries not taken, per run: after ``take``, what arrived too late for its run."""
        with self._changed:
            return {run: len(got) for run, got in self._got.items() if got}


@dataclass(frozen=True, slots=True)
class SendResult:
    """One paced send."""

    sent: int
    seconds: float
    """From the first write to the last."""


class _Stream:
    """One XML stream read incrementally: the stream header, then each top-level element (a stanza) whole."""

    def __init__(self) -> None:
        self._parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
        self._root: ET.Element | None = None
        self._depth = 0

    def feed(self, data: bytes) -> list[ET.Element]:
        self._parser.feed(data)
        done: list[ET.Element] = []
        for pair in self._parser.read_events():
            event, elem = pair[0], pair[-1]
            if not isinstance(elem, ET.Element):  # start and end events only: always an element
                continue
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self._root = elem
            else:
                self._depth -= 1
                if self._depth == 1 and self._root is not None:
                    done.append(elem)
                    self._root.remove(elem)  # the stream element would keep every stanza
        return done


def _tag(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


class ChatClient:
    """One XMPP user over c2s: ``login``, then a reader task that files bench messages into ``inbox``, and
    ``send`` at a paced rate. Runs on the ``ClientThread``'s loop only."""

    def __init__(self, jid: str, password: str, *, address: str, port: int, cafile: Path) -> None:
        self.jid, self._password, self.address, self.port = jid, password, address, port
        self.user, _, self.domain = jid.partition("@")
        self._tls = ssl.create_default_context(cafile=str(cafile))
        self.inbox = Inbox()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._stream = _Stream()
        self._pending: list[ET.Element] = []
        self._task: asyncio.Task[None] | None = None

    async def _open_stream(self) -> ET.Element:
        """RFC 6120 §4.2: a new stream (after connecting, STARTTLS and SASL); returns its features."""
        assert self._writer is not None
        self._stream, self._pending = _Stream(), []
        self._writer.write(
            f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}' "
            f"to='{self.domain}' version='1.0'>".encode()
        )
        return await self._expect(_tag(NS_STREAM, "features"))

    async def _expect(self, tag: str) -> ET.Element:
        assert self._reader is not None
        while True:
            while self._pending:
                elem = self._pending.pop(0)
                if elem.tag == tag:
                    return elem
                if elem.tag in (_tag(NS_SASL, "failure"), _tag(NS_STREAM, "error")) or elem.get("type") == "error":
                    raise LabError(f"{self.jid}: login failed: {ET.tostring(elem, encoding='unicode')[:300]}")
            data = await self._reader.read(65536)
            if not data:
                raise LabError(f"{self.jid}: the server closed the stream while waiting for {tag}")
            self._pending += self._stream.feed(data)

    async def login(self) -> None:
        """STARTTLS (RFC 6120 §5), SASL PLAIN (§6, RFC 4616), bind (§7), initial presence (RFC 6121 §4.2)."""
        self._reader, self._writer = await asyncio.open_connection(self.address, self.port)
        await self._open_stream()
        self._writer.write(f"<starttls xmlns='{NS_TLS}'/>".encode())
        await self._expect(_tag(NS_TLS, "proceed"))
        await self._writer.start_tls(self._tls, server_hostname=self.domain)
        await self._open_stream()
        token = base64.b64encode(f"\0{self.user}\0{self._password}".encode()).decode()
        self._writer.write(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>".encode())
        await self._expect(_tag(NS_SASL, "success"))
        await self._open_stream()
        bind = f"<bind xmlns='{NS_BIND}'><resource>bench</resource></bind>"
        self._writer.write(f"<iq type='set' id='bind-1'>{bind}</iq>".encode())
        await self._expect(_tag(NS_CLIENT, "iq"))
        self._writer.write(b"<presence/>")
        await self._writer.drain()
        self._task = asyncio.get_running_loop().create_task(self._read_forever())

    async def _read_forever(self) -> None:
        assert self._reader is not None
        for elem in self._pending:
            self._file(elem, time.time_ns() // 1000)
        while data := await self._reader.read(65536):
            now_us = time.time_ns() // 1000  # stamped when read: parsing is the client's cost, not the path's
            for elem in self._stream.feed(data):
                self._file(elem, now_us)

    def _file(self, elem: ET.Element, now_us: int) -> None:
        if elem.tag != _tag(NS_CLIENT, "message"):
            return
        found = BODY_RE.search(elem.findtext(_tag(NS_CLIENT, "body")) or "")
        if found is None:
            return
        run, seq, sent_us = (int(x) for x in found.groups())
        if elem.get("type") == "error":
            self.inbox.error(run)
        else:
            self.inbox.deliver(run, seq, sent_us, now_us)

    async def send(self, to: str, run: int, count: int, rate: float) -> SendResult:
        """``count`` chat messages to ``to`` at ``rate``/s: each loop turn writes the messages now due in one
        TLS write, each stamped with that write's time."""
        assert self._writer is not None
        started = time.monotonic()
        sent = 0
        while sent < count:
            due = min(count, int((time.monotonic() - started) * rate) + 1)
            now_us = time.time_ns() // 1000
            self._writer.write(
                "".join(
                    f"<message type='chat' to='{to}' id='b{run}-{n}'><body>r={run} n={n} t={now_us}</body></message>"
                    for n in range(sent + 1, due + 1)
                ).encode()
            )
            sent = due
            await self._writer.drain()
            if sent < count:
                await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
        return SendResult(sent, time.monotonic() - started)

    def online(self) -> bool:
        """Logged in and still reading (a client whose stream ended would make every later run fail)."""
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError, ssl.SSLError):
                self._writer.write(b"</stream:stream>")
                self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ssl.SSLError):
                await asyncio.wait_for(self._task, 2)


class ClientThread:
    """One asyncio loop in a daemon thread for every ``ChatClient``; ``call`` runs a coroutine there and
    waits for it (bounded)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-xmpp-clients", daemon=True)
        self._thread.start()

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(make(), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise LabError(f"XMPP client: not done within {timeout:g}s") from None

    def cpu_seconds(self) -> float:
        """CPU time of the loop's thread so far: the clients' own cost, apart from the rest of the bench."""

        async def now() -> float:
            return time.thread_time()

        return self.call(now, 5)

    def login(self, client: ChatClient) -> ChatClient:
        self.call(client.login, LOGIN_SECONDS)
        return client

    def stop(self, clients: list[ChatClient]) -> None:
        """Close the clients, stop the loop, join the thread (bounded)."""
        with contextlib.suppress(LabError, OSError, ssl.SSLError):
            for client in clients:
                self.call(client.close, 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
