"""The two-domain lab of ``make lab`` for the test_lab_* modules: Kamailio as tomt.local (a CUP stand-in) and as
tomt.it (a Lync pool stand-in), sipfed between them, baresip users in each domain (``start_lab``), and SIPp
where baresip cannot say something (``sipp``). The configs are the ones ``make lab`` runs (examples/lab/),
rendered with free ports; ``lab`` is examples/lab/lab.py itself."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from tests.integration.conftest import ROOT, Sipfed
from tests.integration.kamailio import KamailioConfig
from tests.integration.waiting import wait_until

SIPP = Path(__file__).parent / "sipp"
WAIT = 15.0  # seconds any one user-visible effect may take


def _load_lab() -> ModuleType:
    """examples/lab/lab.py (stdlib only, no sipfed imports): templates, baresip driver, trace ladder."""
    if "sipfed_lab" not in sys.modules:
        spec = importlib.util.spec_from_file_location("sipfed_lab", ROOT / "examples" / "lab" / "lab.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["sipfed_lab"] = module
        spec.loader.exec_module(module)
    return sys.modules["sipfed_lab"]


lab = _load_lab()


@dataclass
class Lab:
    """The processes of one lab; ``stop()`` ends each by PID, newest first."""

    workdir: Path
    ports: lab.Ports
    sipfed: Sipfed | None = None
    kamailio: dict[str, KamailioConfig] = field(default_factory=dict)
    users: dict[str, lab.Baresip] = field(default_factory=dict)
    trace: Path | None = None
    certs: Path | None = None

    def stop(self) -> None:
        for user in self.users.values():
            user.stop(1)  # no need to wait for baresip's goodbye (un-REGISTER, un-SUBSCRIBE)
        if self.sipfed is not None:
            self.sipfed.stop()
        for kamailio in self.kamailio.values():
            kamailio.stop()


def start_lab(
    workdir: Path,
    certs: Path,
    *,
    domains: tuple[str, ...] = ("tomt.local", "tomt.it"),
    users: tuple[str, ...] = ("alice", "bob"),
    exempt_sipfed: bool = True,
    credentials: bool = False,
    maddr_fix: bool = True,
    lync_route: tuple[str, int] | None = None,
    transaction_timeout_seconds: int = 8,
    in_dialog_networks: tuple[str, ...] = (),
    dns: tuple[str, int] | None = None,
    xmpp: str = "",
    xmpp_contact: str = "",
    xmpp_others: tuple[str, ...] = (),
    ports: lab.Ports | None = None,
) -> Lab:
    """Start the lab's Kamailios, sipfed (with ``--trace``) and baresip users on free ports."""
    ports = ports or lab.Ports.free()
    the_lab = Lab(workdir, ports, trace=workdir / "sipfed.trace", certs=certs)
    try:
        for domain in domains:
            config = lab.write_kamailio(
                workdir / domain, domain, ports, certs, exempt_sipfed=exempt_sipfed, maddr_fix=maddr_fix
            )
            host, port = (ports.cups, ports.cups_tls) if domain == "tomt.local" else (ports.lync, ports.lync_tls)
            the_lab.kamailio[domain] = KamailioConfig(config, host=host, port=port)
            wait_for_kamailio_log(the_lab.kamailio[domain], "lab DNS: sipfed", 10)  # sipfed's names resolve
        config = lab.write_sipfed(
            workdir / "sipfed.toml",
            ports,
            certs,
            credentials=credentials,
            lync_route=lync_route,
            transaction_timeout_seconds=transaction_timeout_seconds,
            in_dialog_networks=in_dialog_networks,
            dns=dns,
            xmpp=xmpp,
        )
        the_lab.sipfed = Sipfed(config, args=("--trace", str(the_lab.trace)))
        for user in users:
            address = ports.alice if user == "alice" else ports.bob
            the_lab.users[user] = lab.Baresip(
                lab.write_baresip(workdir / user, user, ports, xmpp_contact=xmpp_contact, xmpp_others=xmpp_others),
                user,
                address,
                ports.user_cons,
            )
        for baresip in the_lab.users.values():
            baresip.open_console()
            baresip.wait_view(r"200 OK .*\[1 binding\]", WAIT)  # registered with its own domain's server
    except BaseException:
        the_lab.stop()
        raise
    return the_lab


def wait_for_kamailio_log(kamailio: KamailioConfig, text: str, timeout: float) -> None:
    wait_until(
        lambda: text in kamailio.log_text(),
        timeout,
        lambda: f"kamailio never logged {text!r}:\n{kamailio.log_text()[-2000:]}",
    )


def sipp(
    scenario: str,
    target: tuple[str, int],
    workdir: Path,
    *keys: str,
    local_ip: str = "127.0.0.6",
    local_port: int = 0,
    transport: str = "u1",
    service: str = "alice",
    auth: tuple[str, str] | None = None,
    recv_timeout_seconds: float = 10,
    timeout: float = 30,
) -> tuple[int, str]:
    """Run a SIPp UAC scenario once (bounded) from ``local_ip``; return its exit code and what it
    logged (``-log_file``) and reported as errors. ``auth``: digest username and password."""
    local_port = local_port or lab.free_port(local_ip, both=True)
    log, err = workdir / f"{Path(scenario).stem}.log", workdir / f"{Path(scenario).stem}.err"
    args = [
        "sipp",
        f"{target[0]}:{target[1]}",
        "-sf",
        str(SIPP / scenario),
        "-t",
        transport,
        "-i",
        local_ip,
        "-p",
        str(local_port),
        "-s",
        service,
        "-m",
        "1",
        "-nostdin",
        "-recv_timeout",
        str(int(recv_timeout_seconds * 1000)),
        "-timeout",
        f"{int(timeout) - 5}s",
        "-timeout_error",
        "-trace_logs",
        "-log_file",
        str(log),
        "-trace_err",
        "-error_file",
        str(err),
        "-trace_msg",
        "-message_file",
        str(workdir / "sipp.msg"),
    ]
    for i in range(0, len(keys), 2):
        args += ["-key", keys[i], keys[i + 1]]
    if auth:
        args += ["-au", auth[0], "-ap", auth[1]]
    result = subprocess.run(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=workdir, timeout=timeout, check=False
    )
    report = "\n".join(p.read_text(errors="replace")[-3000:] for p in (log, err) if p.exists())
    return result.returncode, report + result.stderr.decode(errors="replace")
