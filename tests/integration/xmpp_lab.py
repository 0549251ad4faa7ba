"""An XMPP domain for the integration tests: Prosody 0.12 (Debian) on loopback, dnsmasq as its lab DNS,
slixmpp clients as its users, and its certificates from ``sipfed certs``. Nothing here imports sipfed.

Prosody finds s2s peers by SRV only (lua-unbound), so ``LabDns`` serves the records a test gives it and
``ProsodyConfig.dns`` points libunbound at it. Each process runs in the foreground, is waited for by a
condition with a deadline and is stopped by its PID. Each ``XmppUser`` runs slixmpp on its own event loop in
a daemon thread behind a blocking, thread-safe API; ``close()`` stops that thread with a bounded join.

libunbound (1.17) answers its built-in zones for special-use names (RFC 6761 and later) itself and never asks
the forwarder: ``test.``, ``invalid.``, ``onion.``, ``home.arpa.``, ``localhost.``; a lab name avoids or unblocks them.
``local.`` and ``it.`` are not among them, so ``tomt.local`` and ``tomt.it`` resolve as they are; ``xmpp.test``
needs ``local-zone: "test. transparent"`` (``nodefault`` does not help when set through ``ub_ctx_set_option``,
which stores the whole ``"test. nodefault"`` string as the zone name).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import os
import re
import shutil
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, TypeVar

import dns.exception
import dns.message
import dns.query

from tests.integration.processes import stop_process
from tests.integration.waiting import wait_until

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Path(__file__).parent / "xmpp" / "prosody.cfg.lua"
WAIT_SECONDS = 10.0  # how long one effect a test caused may take to show: a deadline, not a pause
START_SECONDS = 15.0
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


# --- lab DNS -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostRecord:
    """An A record (dnsmasq ``--host-record``), served with TTL 0."""

    name: str
    """The owner name, e.g. ``gw.tomt.local``."""
    ip: str
    """Its IPv4 address."""

    def option(self) -> str:
        return f"--host-record={self.name},{self.ip}"


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """An SRV record (RFC 2782; dnsmasq ``--srv-host``), served with TTL 0."""

    service: str
    """The owner name, e.g. ``_xmpp-server._tcp.tomt.local``."""
    target: str
    """The host name it points at; give it a ``HostRecord`` too."""
    port: int
    priority: int = 0
    weight: int = 5

    def option(self) -> str:
        return f"--srv-host={self.service},{self.target},{self.port},{self.priority},{self.weight}"


def host_record(name: str, ip: str) -> HostRecord:
    return HostRecord(name, ip)


def srv(service: str, target: str, port: int, priority: int = 0, weight: int = 5) -> SrvRecord:
    return SrvRecord(service, target, port, priority, weight)


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """One question from dnsmasq's query log (``query[SRV] _xmpp-server._tcp.tomt.local from 127.0.0.1``)."""

    rdtype: str
    """The query type as dnsmasq prints it: ``A``, ``SRV``, ``AAAA``..."""
    name: str
    """The name asked for, without the trailing dot."""
    client: str
    """The address the question came from (Prosody's come from 127.0.0.1 whatever its own address)."""


# Foreground, query log on stderr (--log-facility=- works with --user=root), no system config, hosts file or
# upstream; --bind-interfaces binds 127.0.x.y without the address being configured on lo.
DNSMASQ_FLAGS = (
    *("--keep-in-foreground", "--log-facility=-", "--log-queries", "--user=root", "--pid-file="),
    *("--conf-file=/dev/null", "--no-hosts", "--no-resolv", "--no-poll", "--bind-interfaces"),
)
_QUERY_LINE = re.compile(r"query\[(?P<rdtype>[A-Za-z0-9]+)\] (?P<name>\S+) from (?P<client>\S+)")


class LabDns:
    """dnsmasq in the foreground on ``address:port`` (UDP and TCP), authoritative for ``zones``.

    ``records`` are fixed at start (restart to change them). A name under one of ``zones`` without a record gets
    NXDOMAIN at once (``--local``); any other name gets REFUSED: there is no upstream. Prosody uses it with
    ``ProsodyConfig(dns=lab_dns.forward)``, dnspython with ``nameservers=[address]`` and ``port``."""

    def __init__(
        self,
        address: str,
        port: int,
        records: Iterable[HostRecord | SrvRecord],
        zones: Iterable[str] = (),
        *,
        timeout: float = START_SECONDS,
    ) -> None:
        if shutil.which("dnsmasq") is None:
            raise RuntimeError("dnsmasq is not installed: apt-get install dnsmasq-base")
        self.address, self.port = address, port
        self.records = tuple(records)
        self.zones = tuple(zone.strip(".") for zone in zones)
        zone_args = [f"--local=/{zone}/" for zone in self.zones]
        args = ["dnsmasq", *DNSMASQ_FLAGS, f"--listen-address={address}", f"--port={port}", *zone_args]
        args += [record.option() for record in self.records]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log: list[str] = []
        self._drain = threading.Thread(target=self._drain_stderr, name=f"dnsmasq-{port}", daemon=True)
        self._drain.start()
        try:
            wait_until(self._answers, timeout, lambda: f"dnsmasq answering on {address}:{port}:\n{self.log_text()}")
        except BaseException:
            self.stop()
            raise

    @property
    def forward(self) -> str:
        """``IP@PORT``: libunbound's forward-addr syntax, for ``ProsodyConfig.dns``."""
        return f"{self.address}@{self.port}"

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace").rstrip("\n"))

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited {self.proc.returncode}:\n{self.log_text()}")
        # Outside every zone: REFUSED, which is an answer all the same.
        probe = dns.message.make_query("lab-dns-readiness-probe.invalid.", "A")
        try:
            dns.query.udp(probe, self.address, port=self.port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            return False
        return True

    def log_text(self) -> str:
        return "\n".join(self.log)

    def queries(self) -> list[DnsQuery]:
        """Every question asked so far, in order (the readiness probe included)."""
        found = (_QUERY_LINE.search(line) for line in list(self.log))
        return [DnsQuery(m["rdtype"], m["name"].rstrip("."), m["client"]) for m in found if m]

    def asked(self, name: str, rdtype: str | None = None) -> list[DnsQuery]:
        """The questions for ``name`` (and ``rdtype``, if given), case-insensitive."""
        name = name.rstrip(".").lower()
        return [q for q in self.queries() if q.name.lower() == name and rdtype in (None, q.rdtype)]

    def wait_for_query(self, name: str, rdtype: str | None = None, timeout: float = WAIT_SECONDS) -> DnsQuery:
        """The first question for ``name`` (and ``rdtype``), once it has been asked."""
        asked = wait_until(
            lambda: self.asked(name, rdtype),
            timeout,
            lambda: f"nobody asked dnsmasq for {name} {rdtype or ''}; its log:\n{self.log_text()}",
        )
        return asked[0]

    def stop(self) -> int:
        """SIGTERM by PID; after it the query log is complete."""
        code = stop_process(self.proc, grace_seconds=5)
        self._drain.join(5)
        return code

    def __enter__(self) -> LabDns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- Prosody -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProsodyConfig:
    """What the tests vary in Prosody's config; ``Prosody.restart(**changes)`` replaces fields."""

    cert: Path
    """PEM chain for ``domain``: leaf then intermediate (``sipfed certs``' ``<name>.pem``)."""
    key: Path
    """PEM private key of ``cert``."""
    cafile: Path
    """The CA(s) Prosody trusts for s2s peer certificates (``ssl.cafile``)."""
    domain: str = "xmpp.test"
    """The one VirtualHost."""
    address: str = "127.0.0.1"
    """Loopback address for c2s and s2s (outgoing s2s still comes from 127.0.0.1: 0.12 cannot bind it)."""
    c2s_port: int = 5222
    s2s_port: int = 5269
    """Give SRV records for ``domain`` this port."""
    dns: str | None = None
    """``IP@PORT`` of the lab DNS (``LabDns.forward``); None leaves libunbound on /etc/resolv.conf."""
    transparent_zones: tuple[str, ...] = ("test",)
    """libunbound built-in zones to unblock (at most two; see ``unbound_table``)."""
    s2s_require_encryption: bool = True
    s2s_secure_auth: bool = False
    """True: s2s peers must present a certificate that validates against ``cafile`` (no dialback)."""
    s2s_timeout_seconds: int = 10
    """How long an s2s connection may take to set up before queued stanzas bounce (Prosody's default: 90)."""
    modules: tuple[str, ...] = ()
    """Modules on top of disco, roster, saslauth, tls, dialback and posix, e.g. ``("ping",)``."""
    read_timeout_seconds: int | None = None
    """``network_settings.read_timeout``: how long a connection may stay silent before Prosody acts on it
    (its default is 840 s); None keeps the default."""


def lua_literal(value: str | bool | int) -> str:
    """A Lua literal for a config value; control characters are refused rather than escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if any(ord(char) < 0x20 for char in value):
        raise ValueError(f"control character in Prosody config value {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unbound_table(dns: str | None, transparent_zones: Sequence[str]) -> str:
    """Prosody's ``unbound`` option: lua-unbound passes it to ``lunbound.new``, and each ``options`` pair to
    ``ub_ctx_set_option``. A Lua table holds one ``local-zone:`` value; libunbound appends the colon to a
    key without one, so ``local-zone`` is a second, distinct key for a second zone and two is the limit."""
    if dns is None:
        return "-- no unbound table: libunbound's defaults (/etc/resolv.conf, /etc/hosts)"
    keys = ('["local-zone:"]', '["local-zone"]')
    if len(transparent_zones) > len(keys):
        raise ValueError(f"lua-unbound can unblock at most two built-in zones, not {list(transparent_zones)}")
    options = "; ".join(
        f"{key} = {lua_literal(zone.strip('.') + '. transparent')}"
        for key, zone in zip(keys, transparent_zones, strict=False)
    )
    return (
        "unbound = {\n  resolvconf = false; -- resolv.conf cannot give a port\n  hoststxt = false;\n"
        f"  forward = {lua_literal(dns)};\n  options = {{ {options} }};\n}}"
    )


def render_prosody_config(config: ProsodyConfig) -> str:
    modules = ("disco", "roster", "saslauth", "tls", "dialback", "posix", *config.modules)
    return Template(TEMPLATE.read_text()).substitute(
        modules="; ".join(lua_literal(name) for name in modules),
        address=lua_literal(config.address),
        c2s_port=lua_literal(config.c2s_port),
        s2s_port=lua_literal(config.s2s_port),
        s2s_require_encryption=lua_literal(config.s2s_require_encryption),
        s2s_secure_auth=lua_literal(config.s2s_secure_auth),
        s2s_timeout=lua_literal(config.s2s_timeout_seconds),
        unbound=unbound_table(config.dns, config.transparent_zones),
        domain=lua_literal(config.domain),
        network=(
            f"network_settings = {{ read_timeout = {lua_literal(config.read_timeout_seconds)} }}"
            if config.read_timeout_seconds is not None
            else "-- network_settings: Prosody's defaults"
        ),
    )


def listening(address: str, port: int) -> bool:
    """A TCP socket in LISTEN on ``address:port`` (/proc/net/tcp): checked without connecting, so a probe
    never shows up in Prosody's log as a client or an s2s peer."""
    wanted = f"{bytes(reversed([int(part) for part in address.split('.')])).hex().upper()}:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in list(table)[1:])


class Prosody:
    """Prosody as one XMPP domain, in the foreground (``prosody -F``) with a lab directory of its own under
    ``workdir``: the rendered config, certs/, trust/, data/ (accounts), run/ and prosody.log (debug)."""

    def __init__(self, workdir: Path, config: ProsodyConfig, *, timeout: float = START_SECONDS) -> None:
        if shutil.which("prosody") is None:
            raise RuntimeError("prosody is not installed: apt-get install prosody lua-unbound")
        self.lab = workdir / f"prosody-{config.domain}-{config.c2s_port}"
        self.lab.mkdir(parents=True)
        self.config_file = self.lab / "prosody.cfg.lua"
        self.log_file = self.lab / "prosody.log"
        self.config = config
        self.env = {**os.environ, "LAB": str(self.lab)}
        self._runs = 0
        self._start(timeout)

    def _write_files(self) -> None:
        for sub in ("certs", "trust", "data", "run"):
            (self.lab / sub).mkdir(exist_ok=True)
        shutil.copyfile(self.config.cert, self.lab / "certs" / f"{self.config.domain}.crt")
        key = self.lab / "certs" / f"{self.config.domain}.key"
        shutil.copyfile(self.config.key, key)
        key.chmod(0o600)
        shutil.copyfile(self.config.cafile, self.lab / "trust" / "cafile.pem")
        self.config_file.write_text(render_prosody_config(self.config))

    def _start(self, timeout: float) -> None:
        self._write_files()
        self._runs += 1
        if self.log_file.exists():  # each run its own log: log_text() is this run's
            self.log_file.rename(self.lab / f"prosody.{self._runs - 1}.log")
        with open(self.lab / "console.log", "ab") as console:
            self.proc = subprocess.Popen(
                ["prosody", "--config", str(self.config_file), "-F"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(self._ready, timeout, lambda: f"prosody listening, with lua-unbound set up:\n{self._tail()}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prosody exited {self.proc.returncode}:\n{self._tail()}")
        config = self.config
        ports = listening(config.address, config.c2s_port) and listening(config.address, config.s2s_port)
        # lua-unbound is set up on "server-started", after the ports open; s2s needs it.
        return ports and "Setting up net.server event handling" in self.log_text()

    def _tail(self) -> str:
        console = self.lab / "console.log"
        text = console.read_text(errors="replace") if console.exists() else ""
        return f"{text[-2000:]}\n--- prosody.log:\n{self.log_text()[-4000:]}"

    def log_text(self) -> str:
        """This run's debug log so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = WAIT_SECONDS) -> str:
        """This run's log, once it contains ``pattern`` (a text, or a compiled regex to search for)."""

        def logged() -> str:
            text = self.log_text()
            found = pattern.search(text) if isinstance(pattern, re.Pattern) else pattern in text
            return text if found else ""

        shown = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
        return wait_until(logged, timeout, lambda: f"prosody logged no {shown!r}; its log:\n{self._tail()}")

    def prosodyctl(self, *args: str, timeout: float = 30.0) -> str:
        """``prosodyctl --config <ours> ARGS...`` with LAB set; its output, or RuntimeError when it fails."""
        done = subprocess.run(
            ["prosodyctl", "--config", str(self.config_file), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"prosodyctl {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done.stdout + done.stderr

    def register(self, user: str, password: str) -> str:
        """An account ``user@domain`` (stored in data/, read by the running server at login); its JID."""
        self.prosodyctl("register", user, self.config.domain, password)
        return f"{user}@{self.config.domain}"

    def restart(self, timeout: float = START_SECONDS, **changes: Any) -> None:
        """Stop by PID, apply ``changes`` to the config (same lab directory: accounts stay), start again."""
        self.stop()
        self.config = dataclasses.replace(self.config, **changes)
        self._start(timeout)

    def stop(self) -> int:
        """SIGTERM by PID (a clean shutdown closes s2s streams), SIGKILL after 5 s; the exit code."""
        return stop_process(self.proc, grace_seconds=5)

    def __enter__(self) -> Prosody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- certificates --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class XmppPki:
    """One lab PKI made by ``sipfed certs``: a root CA, an intermediate, and a leaf per name."""

    directory: Path
    ca: Path
    """``ca.crt``: the root, the trust anchor (``ProsodyConfig.cafile``, a client's ``cafile``)."""

    def chain(self, name: str) -> Path:
        """``<name>.pem``: leaf then intermediate (``ProsodyConfig.cert``)."""
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


def xmpp_certs(
    out_dir: Path,
    names: Sequence[str] = ("xmpp.test",),
    *,
    issuer: Path | None = None,
    ips: Sequence[str] = ("127.0.0.1",),
    key_type: str = "ec",
) -> XmppPki:
    """Leaves for ``names`` (each ``"fqdn[,alt...]"``, as ``--name`` takes them) from the real CLI.

    Without ``issuer`` they come from a new CA of their own, separate from every other lab CA (so a Prosody
    can trust "only its own CA"); with ``issuer`` (a ``sipfed certs`` directory, e.g. the ``certs`` fixture)
    from a copy of that PKI's root and intermediate, so whoever trusts that CA trusts them too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if issuer is not None:
        for name in ("ca.crt", "ca.key", "intermediate.crt", "intermediate.key"):
            shutil.copy2(issuer / name, out_dir / name)
    args = [sys.executable, "-m", "proxy", "certs", "--out", str(out_dir), "--key-type", key_type]
    for name in names:
        args += ["--name", name]
    for ip in ips:
        args += ["--ip", ip]
    subprocess.run(args, check=True, capture_output=True, cwd=ROOT, timeout=60)
    return XmppPki(out_dir, out_dir / "ca.crt")


# --- a fake s2s peer -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """The opening ``<stream:stream>`` a peer sent (RFC 6120 §4.7), read namespace-aware."""

    peer: tuple[str, int]
    """Its source address and port."""
    tag: str
    """``{http://etherx.jabber.org/streams}stream`` when it is one."""
    attrib: dict[str, str]
    """Its attributes, namespaced ones in Clark notation (``{...XML/1998/namespace}lang``)."""
    default_ns: str
    """The default namespace it declared: ``jabber:server`` for s2s."""

    @property
    def to(self) -> str | None:
        return self.attrib.get("to")


class _HeaderHandler(socketserver.BaseRequestHandler):
    server: StreamHeaderRecorder

    def handle(self) -> None:
        self.request.settimeout(WAIT_SECONDS)
        parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start-ns", "start"))
        namespaces: dict[str, str] = {}
        try:
            while data := self.request.recv(4096):
                parser.feed(data)
                for event in parser.read_events():
                    item = event[-1]  # (event, item)
                    if isinstance(item, tuple):  # start-ns: (prefix, uri)
                        namespaces[item[0]] = item[1]
                    elif isinstance(item, ET.Element):
                        peer = self.client_address
                        self.server.record(StreamHeader(peer, item.tag, dict(item.attrib), namespaces.get("", "")))
                        return  # and hang up: the peer's stanzas bounce
        except (OSError, ET.ParseError):
            return


class StreamHeaderRecorder(socketserver.ThreadingTCPServer):
    """A TCP listener that reads each connection's stream header, records it, and hangs up without answering:
    what an s2s peer that is there but never completes a stream looks like (a daemon thread serves it)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int) -> None:
        super().__init__((address, port), _HeaderHandler)
        self.headers: list[StreamHeader] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.1,), name=f"s2s-{port}", daemon=True)
        self._thread.start()

    def record(self, header: StreamHeader) -> None:
        with self._changed:
            self.headers.append(header)
            self._changed.notify_all()

    def wait_for_header(self, to: str, timeout: float = WAIT_SECONDS) -> StreamHeader:
        """The first stream header addressed ``to`` a domain, once one arrived."""
        with self._changed:
            found = self._changed.wait_for(lambda: next((h for h in self.headers if h.to == to), None), timeout)
            if found is None:
                raise AssertionError(f"not within {timeout:g} s: no stream header to={to!r}; got {self.headers}")
            return found

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)

    def __enter__(self) -> StreamHeaderRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- XMPP users ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A ``<message/>`` stanza a user received (RFC 6121 §5)."""

    from_jid: str
    to_jid: str
    type: str
    """``normal`` when the stanza has no type attribute (RFC 6121 §5.2.2)."""
    body: str | None
    """The first ``<body/>``'s text."""
    lang: str | None
    """The stanza's own ``xml:lang`` attribute, not inherited from the stream."""
    error: str | None
    """The defined condition of a ``type='error'`` stanza, e.g. ``remote-server-not-found``."""
    id: str | None
    xml: str


@dataclass(frozen=True, slots=True)
class ReceivedPresence:
    """A ``<presence/>`` stanza a user received (RFC 6121 §4)."""

    from_jid: str
    """As sent: a resource's full JID, or a bare JID (subscription stanzas; the ``unavailable`` Prosody sends
    on behalf of a contact it has no presence from yet). Match full JIDs, or use ``since``."""
    type: str
    """``available`` when the stanza has no type attribute, else it (``unavailable``, ``subscribed``...)."""
    show: str
    """``away``, ``chat``, ``dnd``, ``xa``; empty when absent."""
    status: str | None
    xml: str


@dataclass(frozen=True, slots=True)
class RosterItem:
    """One contact in a user's roster (RFC 6121 §2.1.2)."""

    subscription: str
    """``none``, ``to`` (we see their presence), ``from`` (they see ours) or ``both``."""
    ask: str | None
    """``subscribe`` while our request is pending."""
    name: str | None


class XmppConnectError(RuntimeError):
    """The session did not start: the connection, TLS or SASL failed, or the deadline passed."""


# slixmpp events that end a login attempt, and what connect() then says.
_CONNECT_FAILURES = {
    "failed_all_auth": "authentication failed",
    "connection_failed": "connection failed",
    "ssl_invalid_chain": "TLS failed",
    "stream_error": "stream error",
    "disconnected": "disconnected",
}


def _first(items: Sequence[T], predicate: Callable[[T], bool] | None) -> T | None:
    return next((item for item in items if predicate is None or predicate(item)), None)


class XmppUser:
    """One XMPP user: a slixmpp client on its own event loop in a daemon thread, over c2s STARTTLS to the lab
    Prosody at ``address:port``, trusting ``cafile`` (the certificate must name the JID's domain).

    Every method blocks with a timeout and may be called from any thread but the user's own. From an async
    test call them through ``asyncio.to_thread``, or they block that test's loop while they wait.
    ``auto_authorize`` approves subscription requests (else they are recorded and left to ``authorize``);
    ``auto_subscribe`` then asks back. ``stream_lang`` is the stream's ``xml:lang``, which slixmpp also puts
    on every stanza (and Prosody would add to one without, RFC 6120 §8.1.5). ``close()`` ends the session
    and the thread."""

    def __init__(
        self,
        jid: str,
        password: str,
        *,
        address: str,
        port: int,
        cafile: Path,
        auto_authorize: bool = False,
        auto_subscribe: bool = False,
        stream_lang: str = "en",
    ) -> None:
        self.jid, self.address, self.port = jid, address, port
        self._password, self._cafile, self._stream_lang = password, cafile, stream_lang
        self._auto = auto_authorize, auto_subscribe
        self._messages: list[ReceivedMessage] = []
        self._presences: list[ReceivedPresence] = []
        self._state = "offline"  # offline, connecting, online, or the reason the session did not start
        self._initial_presence = True
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"xmpp-{jid}", daemon=True)
        self._thread.start()
        try:
            self._client = self._call(self._make_client, START_SECONDS)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise

    # The loop thread.

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("XmppUser's blocking methods cannot run on its own loop")
        future = asyncio.run_coroutine_threadsafe(make(), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"not within {timeout:g} s: {self.jid}: {make.__name__}") from None

    async def _make_client(self) -> Any:
        import slixmpp  # only the tests that need a user need slixmpp
        from slixmpp.xmlstream.handler import Callback
        from slixmpp.xmlstream.matcher import MatchXPath

        client = slixmpp.ClientXMPP(self.jid, self._password, lang=self._stream_lang)
        client.loop = self._loop
        client.ssl_context = ssl_context(self._cafile)
        client.enable_direct_tls = False  # c2s_ports are STARTTLS ports
        client.enable_starttls = True
        client.enable_plaintext = False
        client.auto_authorize = True if self._auto[0] else None  # None: leave requests pending, False rejects
        client.auto_subscribe = self._auto[1]
        client.register_handler(Callback("lab message", MatchXPath("{jabber:client}message"), self._on_message))
        client.add_event_handler("presence", self._on_presence)
        client.add_event_handler("session_start", self._on_session_start)
        for event, reason in _CONNECT_FAILURES.items():
            client.add_event_handler(event, functools.partial(self._fail, client, reason))
        client.add_event_handler("disconnected", lambda _: self._set_state("offline", only_if="online"))
        return client

    def _set_state(self, state: str, only_if: str | None = None) -> None:
        with self._changed:
            if only_if is None or self._state == only_if:
                self._state = state
            self._changed.notify_all()

    def _fail(self, client: Any, reason: str, detail: object) -> None:
        if self._state == "connecting":
            client.cancel_connection_attempt()  # slixmpp would retry with a growing back-off
            client.abort()
            self._set_state(f"{reason}: {detail}" if detail else reason)

    async def _on_session_start(self, _: object) -> None:
        await self._client.get_roster()  # RFC 6121 §2.2: the roster before initial presence
        if self._initial_presence:
            self._client.send_presence()
        self._set_state("online")

    def _on_message(self, msg: Any) -> None:
        error = msg.xml.find("{jabber:client}error")
        condition = None
        if error is not None:
            conditions = (child.tag.partition("}")[2] for child in error if child.tag.startswith(f"{{{STANZAS_NS}}}"))
            condition = next((name for name in conditions if name != "text"), None)
        record = ReceivedMessage(
            from_jid=msg.xml.get("from", ""),
            to_jid=msg.xml.get("to", ""),
            type=msg.xml.get("type", "normal"),
            body=msg.xml.findtext("{jabber:client}body"),
            lang=msg.xml.get(XML_LANG),
            error=condition,
            id=msg.xml.get("id"),
            xml=str(msg),
        )
        with self._changed:
            self._messages.append(record)
            self._changed.notify_all()

    def _on_presence(self, pres: Any) -> None:
        record = ReceivedPresence(
            from_jid=pres.xml.get("from", ""),
            type=pres.xml.get("type", "available"),
            show=pres.xml.findtext("{jabber:client}show") or "",
            status=pres.xml.findtext("{jabber:client}status"),
            xml=str(pres),
        )
        with self._changed:
            self._presences.append(record)
            self._changed.notify_all()

    # The blocking API.

    def connect(self, timeout: float = START_SECONDS, *, presence: bool = True) -> None:
        """Log in (STARTTLS, SASL, bind), fetch the roster and, with ``presence``, send initial presence;
        XmppConnectError when the session does not start within ``timeout``."""
        deadline = time.monotonic() + timeout
        self._initial_presence = presence
        self._set_state("connecting")

        async def connect() -> None:
            self._client.connect(self.address, self.port)

        self._call(connect, timeout)
        with self._changed:
            started = self._changed.wait_for(lambda: self._state != "connecting", deadline - time.monotonic())
            state = self._state
        if not started:
            self._call(self._abort, WAIT_SECONDS)
            raise XmppConnectError(f"{self.jid}: no session within {timeout:g} s")
        if state != "online":
            raise XmppConnectError(f"{self.jid}: {state}")

    async def _abort(self) -> None:
        self._client.cancel_connection_attempt()
        self._client.abort()
        self._set_state("offline")

    @property
    def online(self) -> bool:
        return self._state == "online"

    def send_message(self, to: str, body: str, lang: str | None = None, *, type: str = "chat") -> str:
        """Send a message, with ``xml:lang=lang`` on the stanza instead of ``stream_lang``; its id."""
        stanza_id = uuid.uuid4().hex

        async def send() -> None:
            msg = self._client.make_message(mto=to, mbody=body, mtype=type)
            msg["id"] = stanza_id
            if lang is not None:
                msg.xml.set(XML_LANG, lang)
            msg.send()

        self._call(send, WAIT_SECONDS)
        return stanza_id

    def _send_presence(self, **fields: Any) -> None:
        async def send() -> None:
            self._client.send_presence(**fields)

        self._call(send, WAIT_SECONDS)

    def subscribe(self, jid: str) -> None:
        """Ask for ``jid``'s presence (RFC 6121 §3.1.1)."""
        self._send_presence(pto=jid, ptype="subscribe")

    def unsubscribe(self, jid: str) -> None:
        """Stop receiving ``jid``'s presence (RFC 6121 §3.3.1)."""
        self._send_presence(pto=jid, ptype="unsubscribe")

    def authorize(self, jid: str) -> None:
        """Approve ``jid``'s subscription request (RFC 6121 §3.1.4)."""
        self._send_presence(pto=jid, ptype="subscribed")

    def unauthorize(self, jid: str) -> None:
        """Refuse or cancel ``jid``'s subscription (RFC 6121 §3.2.1)."""
        self._send_presence(pto=jid, ptype="unsubscribed")

    def set_presence(self, show: str | None = None, status: str | None = None, available: bool = True) -> None:
        """Broadcast presence: available with ``show``/``status``, or unavailable (RFC 6121 §4.2, §4.5)."""
        if available:
            self._send_presence(pshow=show, pstatus=status)
        else:
            self._send_presence(ptype="unavailable", pstatus=status)

    def roster(self, timeout: float = WAIT_SECONDS) -> dict[str, RosterItem]:
        """The server's whole roster now (RFC 6121 §2.1.3), by bare JID. Asked for without a version: with
        one, as slixmpp's ``get_roster`` sends, Prosody may answer "no change" with an empty result."""

        async def fetch() -> dict[str, RosterItem]:
            iq = self._client.Iq()
            iq["type"] = "get"
            iq.enable("roster")
            result = await iq.send(timeout=timeout)
            query = result.xml.find("{jabber:iq:roster}query")
            items = [] if query is None else query.findall("{jabber:iq:roster}item")
            return {
                item.get("jid", ""): RosterItem(item.get("subscription", "none"), item.get("ask"), item.get("name"))
                for item in items
            }

        return self._call(fetch, timeout)

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._changed:
            return list(self._messages)

    @property
    def presences(self) -> list[ReceivedPresence]:
        with self._changed:
            return list(self._presences)

    def wait_for_message(
        self, predicate: Callable[[ReceivedMessage], bool] | None = None, timeout: float = WAIT_SECONDS, since: int = 0
    ) -> ReceivedMessage:
        """The first message received (now or before, from index ``since`` of ``messages`` on) that
        ``predicate`` accepts."""
        with self._changed:
            found = self._changed.wait_for(lambda: _first(self._messages[since:], predicate), timeout)
            if found is None:
                raise AssertionError(f"not within {timeout:g} s: {self.jid} got no such message: {self._messages}")
            return found

    def wait_for_presence(
        self, predicate: Callable[[ReceivedPresence], bool] | None = None, timeout: float = WAIT_SECONDS, since: int = 0
    ) -> ReceivedPresence:
        """The first presence received (now or before, from index ``since`` of ``presences`` on) that
        ``predicate`` accepts."""
        with self._changed:
            found = self._changed.wait_for(lambda: _first(self._presences[since:], predicate), timeout)
            if found is None:
                raise AssertionError(f"not within {timeout:g} s: {self.jid} got no such presence: {self._presences}")
            return found

    def disconnect(self, timeout: float = WAIT_SECONDS) -> None:
        """Close the stream (the server then broadcasts unavailable); ``connect()`` may follow."""

        async def end() -> None:
            await self._client.disconnect(wait=timeout / 2)

        if self._thread.is_alive():
            self._call(end, timeout)
        self._set_state("offline")

    def close(self, timeout: float = WAIT_SECONDS) -> None:
        """Disconnect if connected and stop the loop thread (bounded join). Idempotent."""
        if not self._thread.is_alive():
            return
        try:
            if self._state != "offline":
                self.disconnect(timeout / 2)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> XmppUser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ssl_context(cafile: Path) -> ssl.SSLContext:
    """A client context that trusts only ``cafile`` and checks the server's name."""
    return ssl.create_default_context(cafile=str(cafile))
