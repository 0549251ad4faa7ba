"""The two-domain lab's pieces, shared by run.py (``make lab``) and tests/integration/test_lab_*.py.

Stdlib only, and nothing from sipfed: sipfed is a process here like Kamailio and baresip.

- ``Ports``: every address and port (each process has its own loopback address).
- ``write_kamailio``, ``write_sipfed``, ``write_baresip``: render the templates beside this file.
- ``Child``, ``Baresip``: processes this lab started, read through their logs and consoles,
  stopped by PID.
- ``ladder``: the SIP ladder from ``sipfed run --trace FILE``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DBTEXT_SCHEMA = Path("/usr/share/kamailio/dbtext/kamailio")
DB_TABLES = ("version", "subscriber", "address", "presentity", "active_watchers", "watchers", "xcap")
KAMAILIO_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
)
CERT_NAMES = (
    "sipfed.tomt.local,sipfed.tomt.it",
    "cups.tomt.local",
    "lync01.tomt.it",
    "tomt.local,tomt.it",
    "xmpp.test",
)
XMPP_DOMAIN = "xmpp.test"
"""The third domain: an XMPP server (Prosody) that sipfed federates with over XMPP S2S."""
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "sipfed": "sipfed-pw"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --- addresses and ports ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    """Every address and port of the lab."""

    sipfed: str = "127.0.0.1"
    """sipfed's listeners and metrics."""
    cisco_listener: int = 5061
    """sipfed's listener facing tomt.local (CUP's static route for tomt.it points here)."""
    lync_listener: int = 5062
    """sipfed's listener facing tomt.it (the pool's static route for tomt.local points here)."""
    metrics: int = 9561
    cups: str = "127.0.0.2"
    """tomt.local's Kamailio (the CUP stand-in)."""
    cups_tls: int = 5062
    """tomt.local's peer-auth TLS listener (sipfed's route "cisco")."""
    cups_users: int = 5060
    """tomt.local's UDP/TCP port for its own users."""
    lync: str = "127.0.0.3"
    """tomt.it's Kamailio (the Lync pool stand-in)."""
    lync_tls: int = 5061
    """tomt.it's TLS listener (sipfed's route "lync")."""
    lync_users: int = 5060
    alice: str = "127.0.0.4"
    """alice@tomt.local's baresip."""
    bob: str = "127.0.0.5"
    """bob@tomt.it's baresip."""
    user_sip: int = 5060
    """each baresip's SIP port (on its own address)."""
    user_cons: int = 5555
    """each baresip's console port."""
    xmpp: int = 5269
    """sipfed's XMPP server-to-server listener (what _xmpp-server._tcp.tomt.local/tomt.it point at)."""
    prosody: str = "127.0.30.3"
    """xmpp.test's Prosody."""
    prosody_c2s: int = 5222
    prosody_s2s: int = 5269
    dns: str = "127.0.30.53"
    """The lab DNS (dnsmasq): the SRV records of all three domains; its port is always a free one."""

    @classmethod
    def free(cls) -> Ports:
        """The same addresses with ports the kernel says are free now."""
        base = cls()
        return replace(
            base,
            cisco_listener=free_port(base.sipfed),
            lync_listener=free_port(base.sipfed),
            metrics=free_port(base.sipfed),
            cups_tls=free_port(base.cups),
            cups_users=free_port(base.cups, both=True),
            lync_tls=free_port(base.lync),
            lync_users=free_port(base.lync, both=True),
            user_sip=free_port(base.alice, base.bob, both=True),
            user_cons=free_port(base.alice, base.bob),
            xmpp=free_port(base.sipfed),
            prosody_c2s=free_port(base.prosody),
            prosody_s2s=free_port(base.prosody),
        )

    def busy(self) -> list[str]:
        """The names of the fixed ports something else already holds on their address."""
        taken = []
        for name, host in (
            ("cisco_listener", self.sipfed),
            ("lync_listener", self.sipfed),
            ("metrics", self.sipfed),
            ("cups_tls", self.cups),
            ("cups_users", self.cups),
            ("lync_tls", self.lync),
            ("lync_users", self.lync),
            ("user_sip", self.alice),
            ("user_sip", self.bob),
            ("user_cons", self.alice),
            ("user_cons", self.bob),
            ("xmpp", self.sipfed),
            ("prosody_c2s", self.prosody),
            ("prosody_s2s", self.prosody),
        ):
            try:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind((host, getattr(self, name)))
            except OSError:
                taken.append(name)
        return sorted(set(taken))

    def instead_of(self, busy: list[str]) -> Ports:
        """The same ports, with a free one in place of each ``busy`` one."""
        hosts = {
            "cisco_listener": (self.sipfed,),
            "lync_listener": (self.sipfed,),
            "metrics": (self.sipfed,),
            "cups_tls": (self.cups,),
            "cups_users": (self.cups,),
            "lync_tls": (self.lync,),
            "lync_users": (self.lync,),
            "user_sip": (self.alice, self.bob),
            "user_cons": (self.alice, self.bob),
            "xmpp": (self.sipfed,),
            "prosody_c2s": (self.prosody,),
            "prosody_s2s": (self.prosody,),
        }
        return replace(self, **{name: free_port(*hosts[name], both=True) for name in busy})


def free_port(*hosts: str, both: bool = False) -> int:
    """A port free for TCP (and UDP with ``both``) on every one of ``hosts``."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if both else (socket.SOCK_STREAM,)
        try:
            for host in hosts:
                for kind in kinds:
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port on {hosts}")


# --- rendering the templates --------------------------------------------------------------------


def render(template: str, values: dict[str, object]) -> str:
    """Fill ``@NAME@`` placeholders; a placeholder left unfilled is an error, not a silent blank."""
    text = (HERE / template).read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", str(value))
    left = sorted(set(re.findall(r"@([A-Z_]+)@", text)))
    if left:
        raise ValueError(f"{template}: no value for {', '.join(left)}")
    return text


def tls_cfg(certs: Path, name: str) -> str:
    """Kamailio's tls.cfg: our chain and key, the lab CA; mutual TLS both ways."""
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


MADDR_TRANSPORT_FIX = """    if ($du =~ "^sip:sipfed[.]tomt[.](local|it):[0-9]+$") {
        $du = $du + ";transport=tls";
    }"""
MADDR_TRANSPORT_AS_IS = """    return;  # this run keeps the quirk: in-dialog requests toward sipfed leave over UDP"""


def write_kamailio(
    workdir: Path, domain: str, ports: Ports, certs: Path, *, exempt_sipfed: bool = True, maddr_fix: bool = True
) -> Path:
    """Render ``DOMAIN.cfg`` with its tls.cfg and db_text tables into ``workdir``; return the config.

    ``exempt_sipfed``: tomt.local's Incoming ACL lists sipfed's address (else it challenges sipfed).
    ``maddr_fix``: put back the transport=tls Kamailio's rr module drops from a Route with maddr.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "db"
    db.mkdir(exist_ok=True)
    for table in DB_TABLES:
        shutil.copyfile(DBTEXT_SCHEMA / table, db / table)
    if domain == "tomt.local":
        users, cert = ["alice", "carol", "sipfed"], "cups.tomt.local"
        address, tls_port, user_port, federation = ports.cups, ports.cups_tls, ports.cups_users, ports.cisco_listener
        if exempt_sipfed:  # CUP's Incoming ACL: who is never asked for MD5 (permissions, group 1)
            with open(db / "address", "a") as acl:
                acl.write(f"1:1:{ports.sipfed}:32:0:sipfed\n")
    else:
        users, cert = ["bob"], "lync01.tomt.it"
        address, tls_port, user_port, federation = ports.lync, ports.lync_tls, ports.lync_users, ports.lync_listener
    with open(db / "subscriber", "a") as subscribers:  # auth_db reads HA1 = MD5(user:realm:password)
        for i, user in enumerate(users, 1):
            ha1 = hashlib.md5(f"{user}:{domain}:{PASSWORDS[user]}".encode()).hexdigest()
            ha1b = hashlib.md5(f"{user}@{domain}:{domain}:{PASSWORDS[user]}".encode()).hexdigest()
            subscribers.write(f"{i}:{user}:{domain}:{PASSWORDS[user]}:{ha1}:{ha1b}\n")
    (workdir / "tls.cfg").write_text(tls_cfg(certs, cert))
    config = workdir / "kamailio.cfg"
    config.write_text(
        render(
            f"{domain}.cfg",
            {
                "ADDRESS": address,
                "USER_PORT": user_port,
                "TLS_PORT": tls_port,
                "FEDERATION": f"{ports.sipfed}:{federation}",
                "WORKDIR": workdir,
                "SIPFED_ADDRESS": ports.sipfed,
                "MADDR_TRANSPORT_FIX": MADDR_TRANSPORT_FIX if maddr_fix else MADDR_TRANSPORT_AS_IS,
                "XMPP_DOMAIN": XMPP_DOMAIN,
            },
        )
    )
    return config


CREDENTIALS = f"""
# This run's tomt.local does not exempt sipfed: answer its MD5 challenge for the pool.
[[acl.credentials]]
route = "cisco"
username = "sipfed"
password = "{PASSWORDS["sipfed"]}"
realm = "tomt.local"
"""


def write_sipfed(
    path: Path,
    ports: Ports,
    certs: Path,
    *,
    credentials: bool = False,
    transaction_timeout_seconds: int = 8,
    lync_route: tuple[str, int] | None = None,
    in_dialog_networks: tuple[str, ...] = (),
    dns: tuple[str, int] | None = None,
    xmpp: str = "",
) -> Path:
    """Render sipfed.toml; ``lync_route`` replaces the tomt.it Kamailio as the route's destination;
    ``in_dialog_networks`` opts in to in-dialog targets outside the routes (``[proxy] in_dialog_networks``);
    ``dns``: the lab DNS server's address and port (``[dns]``); ``xmpp``: an ``[xmpp]`` section (``xmpp_section``)."""
    lync_address, lync_port = lync_route or (ports.lync, ports.lync_tls)
    path.write_text(
        render(
            "sipfed.toml",
            {
                "SIPFED_ADDRESS": ports.sipfed,
                "CISCO_LISTENER_PORT": ports.cisco_listener,
                "LYNC_LISTENER_PORT": ports.lync_listener,
                "METRICS_PORT": ports.metrics,
                "CERTS": certs,
                "CUPS_ADDRESS": ports.cups,
                "CUPS_TLS_PORT": ports.cups_tls,
                "LYNC_ADDRESS": lync_address,
                "LYNC_TLS_PORT": lync_port,
                "TRANSACTION_TIMEOUT": transaction_timeout_seconds,
                "CREDENTIALS": CREDENTIALS if credentials else "",
                "IN_DIALOG_NETWORKS": (
                    f"in_dialog_networks = {list(in_dialog_networks)!r}".replace("'", '"') if in_dialog_networks else ""
                ),
                "DNS": f'[dns]\nnameservers = ["{dns[0]}"]\nport = {dns[1]}\n' if dns else "",
                "XMPP": xmpp,
            },
        )
    )
    return path


def xmpp_section(
    listen: tuple[str, int],
    certs: Path,
    *,
    store: str = ":memory:",
    **partner: object,
) -> str:
    """``[xmpp]`` for the lab: sipfed serves tomt.local and tomt.it to the XMPP domain ``XMPP_DOMAIN`` with the
    certificate ``tomt.local,tomt.it`` in ``certs``; ``partner`` sets [[xmpp.partners]] keys (``tls``,
    ``sasl``, ``dialback``, ``partner_type``...)."""
    settings = {"name": "jabber", "primary_domain": XMPP_DOMAIN, **partner}
    lines = "\n".join(
        f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value).replace(chr(39), chr(34))}"
        for key, value in settings.items()
    )
    return f"""
# The third domain: XMPP server-to-server federation with {XMPP_DOMAIN} (Prosody).
[xmpp]
listen = "{listen[0]}:{listen[1]}"
domains = ["tomt.local", "tomt.it"]
cert_chain = "{certs}/tomt.local.pem"   # names tomt.local and tomt.it: the XMPP domains
key = "{certs}/tomt.local.key"
ca_bundle = "{certs}/ca.crt"
store = "{store}"
keepalive_seconds = 5

[[xmpp.partners]]
{lines}
"""


def write_baresip(
    workdir: Path, user: str, ports: Ports, *, xmpp_contact: str = "", xmpp_others: tuple[str, ...] = ()
) -> Path:
    """alice@tomt.local (registered at the CUP stand-in) or bob@tomt.it (at the pool stand-in),
    each watching the other's presence (and ``xmpp_contact``'s, an XMPP user, when given); ``xmpp_others``:
    more XMPP addresses in the contact list, not watched (to write to them)."""
    alice = user == "alice"
    workdir.mkdir(parents=True, exist_ok=True)
    values: dict[str, object] = {
        "ADDRESS": ports.alice if alice else ports.bob,
        "SIP_PORT": ports.user_sip,
        "CONS_PORT": ports.user_cons,
        "USER": user,
        "DOMAIN": "tomt.local" if alice else "tomt.it",
        "PASSWORD": PASSWORDS[user],
        "SERVER": f"{ports.cups}:{ports.cups_users}" if alice else f"{ports.lync}:{ports.lync_users}",
        "PEER": "bob@tomt.it" if alice else "alice@tomt.local",
        "PEER_NAME": "Bob" if alice else "Alice",
        "XMPP_CONTACT": "\n".join(
            [f'"{xmpp_contact.split("@")[0].title()}" <sip:{xmpp_contact}>;presence=p2p'] * bool(xmpp_contact)
            + [f'"{other.split("@")[0].title()}" <sip:{other}>' for other in xmpp_others]
        ),
    }
    for name in ("config", "accounts", "contacts"):
        (workdir / name).write_text(render(f"baresip/{name}", values))
    return workdir


def make_certs(out: Path, python: str) -> Path:
    """The lab PKI with ``sipfed certs`` (a process): CA, intermediate, one leaf per name (kept when it exists:
    a leaf missing from an older lab directory is added)."""
    if all((out / f"{name.split(',')[0]}.pem").exists() for name in CERT_NAMES):
        return out
    args = [python, "-m", "proxy", "certs", "--out", str(out)]
    for name in CERT_NAMES:
        args += ["--name", name]
    for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        args += ["--ip", ip]
    subprocess.run(args, check=True, capture_output=True, cwd=ROOT, timeout=60)
    return out


# --- processes ----------------------------------------------------------------------------------


def kamailio_module_dir() -> str:
    for candidate in KAMAILIO_MODULE_DIRS:
        if (Path(candidate) / "tm.so").exists():
            return candidate
    raise RuntimeError(
        "Kamailio modules not found: apt-get install kamailio kamailio-tls-modules kamailio-presence-modules"
    )


def kamailio_command(config: Path) -> list[str]:
    workdir = config.parent
    return [
        "kamailio",
        "-DD",
        "-E",
        "-f",
        str(config),
        "-L",
        kamailio_module_dir(),
        "-Y",
        str(workdir),
        "-P",
        str(workdir / "kamailio.pid"),
        "-w",
        str(workdir),
        "-m",
        "48",
        "-M",
        "8",
    ]


class Child:
    """One process this lab started: output to a log file (read back), stopped by its PID."""

    def __init__(self, name: str, args: list[str], log: Path, *, cwd: Path | None = None) -> None:
        self.name, self.args, self.log, self.cwd = name, args, log, cwd
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            return subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def text(self) -> str:
        return ANSI.sub("", self.log.read_text(errors="replace")) if self.log.exists() else ""

    def wait_for(self, pattern: str, timeout: float, *, after: int = 0) -> re.Match[str]:
        """Wait until the log (from character ``after``) matches ``pattern``; bounded."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.text()[after:], re.MULTILINE)
            if found:
                return found
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.proc.returncode} before /{pattern}/:\n{self.text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no /{pattern}/ within {timeout:.0f} s:\n{self.text()[after:][-3000:]}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def wait_listening(host: str, port: int, child: Child, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited {child.proc.returncode}:\n{child.text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{child.name} not listening on {host}:{port}:\n{child.text()[-3000:]}")


class Baresip(Child):
    """A baresip user agent. Its console (the ``cons`` module: one TCP client at a time, kept open
    here) takes commands and shows what the user sees: incoming messages, command output. Presence
    changes and registrations go to its log. ``mark()`` and ``wait_view()`` read both."""

    def __init__(self, workdir: Path, name: str, address: str, cons_port: int) -> None:
        super().__init__(name, ["baresip", "-f", str(workdir)], workdir / "baresip.log", cwd=workdir)
        self.address, self.cons_port = address, cons_port
        self._console: socket.socket | None = None
        self._seen = bytearray()
        self._lock = threading.Lock()

    def open_console(self, timeout: float = 10) -> socket.socket:
        deadline = time.monotonic() + timeout
        while self._console is None:
            try:
                self._console = socket.create_connection((self.address, self.cons_port), 1)
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name}: no console on {self.address}:{self.cons_port}:\n{self.text()[-2000:]}"
                    ) from None
                time.sleep(0.05)
            else:
                threading.Thread(target=self._read, args=(self._console,), daemon=True).start()
        return self._console

    def close_console(self) -> None:
        """Let someone else (``nc ADDRESS PORT``) have the console."""
        if self._console is not None:
            with contextlib.suppress(OSError):
                self._console.close()
            self._console = None

    def _read(self, console: socket.socket) -> None:
        console.settimeout(None)
        with contextlib.suppress(OSError):
            while chunk := console.recv(4096):
                with self._lock:
                    self._seen += chunk

    def command(self, line: str, timeout: float = 10) -> None:
        """Type one console command, e.g. ``/message hello`` or ``/presence_offline``."""
        self.open_console(timeout).sendall(line.encode() + b"\n")

    def console(self) -> str:
        with self._lock:
            return ANSI.sub("", self._seen.decode(errors="replace")).replace("\r", "\n")

    def mark(self) -> tuple[int, int]:
        """Where the log and the console are now; ``wait_view(since=...)`` looks only past it."""
        return len(self.text()), len(self.console())

    def wait_view(self, pattern: str, timeout: float, *, since: tuple[int, int] = (0, 0)) -> str:
        """Wait until this user's log or console, past ``since``, shows ``pattern``; return the line."""
        deadline = time.monotonic() + timeout
        while True:
            for text in (self.text()[since[0] :], self.console()[since[1] :]):
                found = re.search(pattern, text, re.MULTILINE)
                if found:
                    start = text.rfind("\n", 0, found.start()) + 1
                    end = text.find("\n", found.end())
                    return text[start : end if end >= 0 else None].strip()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no /{pattern}/ within {timeout:.0f} s; it reported:\n"
                    f"{self.text()[since[0] :][-2500:]}\n--- console ---\n{self.console()[since[1] :]}"
                )
            time.sleep(0.05)

    def contact_presence(self, peer: str, status: str, timeout: float) -> str:
        """Ask baresip (``/contacts``) until it lists ``peer`` with ``status`` from the NOTIFYs it got."""
        deadline = time.monotonic() + timeout
        while True:
            since = self.mark()
            self.command("/contacts")
            try:
                return self.wait_view(rf"^.*{status} .*<sip:{re.escape(peer)}>", 0.5, since=since)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.name}: {peer} not {status} after {timeout:.0f} s; baresip lists:\n"
                        f"{self.console()[since[1] :]}"
                    ) from None

    def stop(self, timeout: float = 3) -> None:
        """SIGTERM makes baresip unregister and unsubscribe first; do not wait long for that."""
        self.close_console()
        super().stop(timeout)


# --- the ladder -------------------------------------------------------------------------------

TRACE_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:(\d\d:\d\d\.\d{3})\d*) (RECV|SEND) (\w+) ([\d.]+):(\d+) (->|<-) (\w+)$", re.MULTILINE
)


@dataclass(frozen=True)
class Hop:
    """One message as sipfed's trace recorded it."""

    time: str
    """mm:ss.mmm"""
    received: bool
    """True: sipfed received it; False: sipfed sent it."""
    listener: str
    """the sipfed listener it came in on or left by ("cisco", "lync")."""
    remote: str
    """the other end, address:port."""
    text: str
    """the whole message."""

    def label(self) -> str:
        """``SUBSCRIBE alice@tomt.local 600s``, ``200 OK (SUBSCRIBE)``, ``NOTIFY bob@tomt.it active/open``,
        ``MESSAGE alice@tomt.local "Hello…"``. A request is named by its To (the user, also inside a
        dialog, where the Request-URI is a Contact)."""
        first = self.text.split("\n", 1)[0].rstrip("\r")
        cseq = re.search(r"^CSeq:\s*\d+\s+(\S+)", self.text, re.MULTILINE | re.IGNORECASE)
        if first.startswith("SIP/2.0"):
            code, _, reason = first[8:].partition(" ")
            return f"{code} {reason.split(' (')[0]} ({cseq.group(1) if cseq else '?'})"
        method = first.split(" ")[0]
        to = re.search(r"^(?:To|t):[^<]*<sips?:([^;>]+)", self.text, re.MULTILINE | re.IGNORECASE)
        label = f"{method} {to.group(1) if to else first.split(' ')[1]}"
        state = re.search(r"^Subscription-State:\s*(\w+)", self.text, re.MULTILINE | re.IGNORECASE)
        basic = re.search(r"<basic>(\w+)</basic>", self.text)
        expires = re.search(r"^Expires:\s*(\d+)", self.text, re.MULTILINE | re.IGNORECASE)
        if method == "SUBSCRIBE" and expires:
            label += f" {expires.group(1)}s"
        if state:
            label += " " + "/".join(g for g in (state.group(1), basic.group(1) if basic else "") if g)
        if method == "MESSAGE":
            body = re.split(r"\r?\n\r?\n", self.text, maxsplit=1)[-1].strip()
            label += f' "{body}"'
        return label


def read_trace(path: Path, offset: int = 0) -> list[Hop]:
    """The hops in a ``--trace`` file from byte ``offset`` on."""
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    heads = list(TRACE_LINE.finditer(text))
    hops = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        hops.append(
            Hop(
                head.group(2),
                head.group(3) == "RECV",
                head.group(8),
                f"{head.group(5)}:{head.group(6)}",
                text[head.end() + 1 : end].strip(),
            )
        )
    return hops


LANE = 46


def _arrow(label: str, rightwards: bool) -> str:
    inner = LANE - 1
    label = label if len(label) <= inner - 6 else label[: inner - 7] + "…"
    text = f" {label} "
    fill = inner - len(text) - 1
    return "--" + text + "-" * (fill - 2) + ">" if rightwards else "<--" + text + "-" * (fill - 2)


def ladder(
    hops: list[Hop], left: str = "lync", sides: tuple[str, str] = ("tomt.it", "tomt.local"), right: str = ""
) -> list[str]:
    """Three lanes: the ``left`` listener's side, sipfed, the other side (``right``: its listeners' label);
    one row per message."""
    blank = " " * (LANE - 1)
    head = f"{'':9}  {sides[0]:<{LANE}}{'sipfed':<{LANE}}{sides[1]}"
    right = right or ("cisco" if left == "lync" else "lync")
    sub = f"{'':9}  |{'':{LANE - 6}}{left:>5}|{right:<5}{'':{LANE - 6}}|"
    rows = [head, sub]
    for hop in hops:
        on_left = hop.listener == left
        arrow = _arrow(hop.label(), rightwards=hop.received == on_left)
        lanes = f"|{arrow}|{blank}|" if on_left else f"|{blank}|{arrow}|"
        rows.append(f"{hop.time}  {lanes}")
    return rows
