"""``make bench``: sipfed and Kamailio under the same SIPp load on loopback, in one run.

Per scenario: one SIPp UAS (behind a server stunnel for TLS), both proxies and the ceiling (bench/bare_relay.py:
bytes relayed with no SIP work), a client stunnel per arm for TLS; then warm-up, closed loop, fixed rates and
step-up, each alternating sipfed / Kamailio / ceiling (signin-tls instead: live dialog memory, sign-in storm,
idle TLS connection memory; bench/signin.py; the ceiling only in the storm).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import idle_tls, lab, procstat, signin, xmpp
from bench.phases import CEILING, MAX_STEP_RATE, Arm, Bench, Counts, Scenario, proxies, round_rate
from bench.report import Figure, closed_loop_rate, figures, noise_note, signin_figures, table, write_json
from bench.sipp import tls_dialog_variant

MESSAGE_KEYS = (("domain", "tomt.local"), ("from_domain", "tomt.it"))
SCENARIOS = {
    "message-tls": Scenario("message-tls", "tls", "tls", "uac_message.xml", "uas_message.xml", 1, MESSAGE_KEYS),
    "message-udp": Scenario("message-udp", "udp", "udp", "uac_message.xml", "uas_message.xml", 1, MESSAGE_KEYS),
    # Plain TCP on both legs: SIPp fails a call whose NOTIFY (or un-SUBSCRIBE) overtakes the 200 sent just before
    # it, and with stunnel in front of a SIPp the in-dialog request goes straight to the SIPp's Contact port while
    # the 200 takes the longer way through stunnel, in both proxies. Over TCP the proxy reuses the connection
    # that comes from (or goes to) the Contact's address, so the order holds. See bench/README.md.
    "subscribe-tcp": Scenario(
        "subscribe-tcp", "tcp", "tcp", "uac_subscribe.xml", "uas_subscribe.xml", 4, (*MESSAGE_KEYS, ("maddr", "*"))
    ),
    # TLS on every leg, the tests' scenarios rewritten so in-dialog requests stay on the TLS connections (the UAC
    # offers its connection with Via alias, Contacts name TLS addresses; see bench/README.md).
    "subscribe-tls": Scenario(
        "subscribe-tls",
        "tls",
        "tls",
        "uac_subscribe.xml",
        "uas_subscribe.xml",
        4,
        (*MESSAGE_KEYS, ("maddr", "*")),
        tls_dialogs=True,
    ),
    # Idle TLS connections, sign-in storm, live dialog memory (bench/signin.py): SUBSCRIBE + NOTIFY, no un-SUBSCRIBE.
    "signin-tls": Scenario(
        "signin-tls",
        "tls",
        "tls",
        str(lab.BENCH / "sipp" / "uac_subscribe_hold.xml"),
        str(lab.BENCH / "sipp" / "uas_subscribe_hold.xml"),
        2,
        MESSAGE_KEYS,
        tls_dialogs=True,
        kind="signin",
    ),
}
# Trimmed when subscribe-tls and signin-tls came (was 15,000 calls, 3 s fixed, 2.5 s x 9 steps) to stay < 10 min.
FULL = Counts(
    warmup_calls=2000,
    closed_loop_calls=12_000,
    in_flight=50,
    repetitions=2,
    fixed_seconds=2.5,
    step_seconds=2.0,
    step_start_rate=500,
    max_steps=10,
    run_timeout_seconds=40,
    storm_calls=5000,
    dialogs=10_000,
    dialog_rate=1000,
    idle_tls_connections=1000,
    linger_seconds=6.0,
)
QUICK = Counts(
    warmup_calls=100,
    closed_loop_calls=500,
    in_flight=50,
    repetitions=1,
    fixed_seconds=0.5,
    step_seconds=0.5,
    step_start_rate=500,
    max_steps=3,
    run_timeout_seconds=15,
    storm_calls=200,
    dialogs=300,
    dialog_rate=1000,
    idle_tls_connections=50,
    linger_seconds=1.0,
)
SUBSCRIBE_SCALE = 4  # a SUBSCRIBE call is 4 transactions: a quarter of the calls keeps the runs as long
FIXED_RATE = 1000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def scaled(counts: Counts, scenario: Scenario) -> Counts:
    """Fewer calls for load scenarios with several transactions per call."""
    if scenario.transactions_per_call == 1 or scenario.kind != "load":
        return counts
    k = SUBSCRIBE_SCALE
    return dataclasses.replace(
        counts,
        warmup_calls=max(50, counts.warmup_calls // k),
        closed_loop_calls=max(100, counts.closed_loop_calls // k),
        step_start_rate=max(100, counts.step_start_rate // k),
    )


def _memory(arm: Arm, key: str, value_kb: int, into: dict[str, dict[str, float]]) -> None:
    into.setdefault(arm.name, {})[key] = round(value_kb / 1024, 2)


def dead_proxies(arms: list[Arm]) -> list[str]:
    return [f"{arm.name} (exit {arm.proxy.proc.returncode})" for arm in arms if arm.proxy.proc.poll() is not None]


@dataclass
class Uas:
    """The SIPp UAS, started again on its port when it has died: SIPp's UAS died after steps far past a
    proxy's limit (tens of thousands of calls failed in 2 s), which ended the scenario for every arm."""

    start: Callable[[], lab.Child]
    child: lab.Child
    restarts: int = 0

    def alive(self) -> bool:
        return self.child.proc.poll() is None

    def revive(self) -> None:
        self.child.stop()  # reaps it
        self.child = self.start()
        self.restarts += 1
        log(f"  (the SIPp UAS had died after the previous run; started again, restart {self.restarts})")

    def stop(self) -> None:
        self.child.stop()


@dataclass
class Lab:
    """The running lab of one scenario."""

    arms: list[Arm]
    """sipfed, Kamailio and the ceiling (the bare relay), in that order."""
    uas_udp_port: int | None
    """The UAS's UDP port (UDP scenario), for its kernel drop counter."""
    helpers: list[tuple[str, Callable[[], bool], int]]
    """Name, liveness probe and PID of each helper (stunnels); one dying invalidates every later run."""
    uas: Uas
    """The SIPp UAS: started again if it died (the run that killed it has already failed)."""

    def health(self) -> str | None:
        if not self.uas.alive():
            self.uas.revive()
        dead = [name for name, alive, _ in self.helpers if not alive()]
        dead += dead_proxies(self.arms)
        return f"lab component(s) died: {', '.join(dead)}" if dead else None

    def lab_pids(self) -> list[int]:
        """Every process of the lab: UAS, helpers and every arm's tree (the SIPp UAC is counted apart)."""
        helpers = [self.uas.child.root_pid] + [pid for _, _, pid in self.helpers]
        return helpers + [pid for arm in self.arms for pid in arm.proxy.pids()]


def prepared(scenario: Scenario, work: Path) -> Scenario:
    """The scenario with its SIPp files rewritten for TLS dialogs when it asks for that (tests' files only)."""
    if not scenario.tls_dialogs or Path(scenario.uac_xml).is_absolute():
        return scenario
    return dataclasses.replace(
        scenario,
        uac_xml=str(tls_dialog_variant(scenario.uac_xml, work, contact="[local_ip]:[local_port]", alias=True)),
        uas_xml=str(tls_dialog_variant(scenario.uas_xml, work, contact="[uas_contact]", alias=False)),
    )


@dataclasses.dataclass(frozen=True)
class UasSide:
    """Where a scenario's SIPp UAS listens, and what the proxies' route names (its server stunnel over TLS)."""

    host: str
    port: int
    route_port: int
    keys: dict[str, str] | None
    """SIPp keys for the UAS (its Contact, for TLS dialogs)."""

    @classmethod
    def of(cls, scenario: Scenario) -> UasSide:
        host = lab.UAS_TLS_HOST if scenario.tls_dialogs else lab.LOOPBACK
        port = lab.free_port(socket.SOCK_DGRAM if scenario.uas_transport == "udp" else socket.SOCK_STREAM)
        route_port = lab.free_port(host=host) if scenario.uas_transport == "tls" else port
        return cls(host, port, route_port, {"uas_contact": f"{host}:{route_port}"} if scenario.tls_dialogs else None)

    def start_uas(self, scenario: Scenario, work: Path) -> lab.Child:
        transport = "udp" if scenario.uas_transport == "udp" else "tcp"
        return lab.start_uas(work, scenario.uas_xml, self.port, transport, lifetime_seconds=900, keys=self.keys)

    def start_tunnel(
        self, stack: contextlib.ExitStack, scenario: Scenario, certs: Path, work: Path
    ) -> lab.Tunnel | None:
        """The UAS's server stunnel when the route is TLS."""
        if scenario.uas_transport != "tls":
            return None
        server = lab.start_server_tunnel(work, certs, accept_port=self.route_port, uas_port=self.port, host=self.host)
        stack.callback(server.stop)
        return server

    def start_sipfed(
        self, stack: contextlib.ExitStack, scenario: Scenario, certs: Path, work: Path, source: Path | None
    ) -> tuple[lab.Child, int]:
        """sipfed with the bench config for ``scenario``, routing to this UAS; its listener port."""
        config = lab.sipfed_config(
            work / "sipfed.toml",
            certs,
            listener_transport=scenario.uac_transport,
            route_transport=scenario.uas_transport,
            uas_port=self.route_port,
            uas_host=self.host,
        )
        sipfed, port = lab.start_sipfed(work, config, source)
        stack.callback(sipfed.stop)
        return sipfed, port


def start_lab(
    stack: contextlib.ExitStack, scenario: Scenario, certs: Path, work: Path, sipfed_source: Path | None
) -> Lab:
    """UAS (+ server stunnel), sipfed, Kamailio, the bare relay and, for a TLS UAC, a client stunnel in front of
    each."""
    udp = scenario.uas_transport == "udp"
    side = UasSide.of(scenario)
    uas_host, uas_port, route_port = side.host, side.port, side.route_port
    uas = Uas(lambda: side.start_uas(scenario, work), side.start_uas(scenario, work))
    stack.callback(uas.stop)
    helpers: list[tuple[str, Callable[[], bool], int]] = []
    server = side.start_tunnel(stack, scenario, certs, work)
    if server is not None:
        helpers.append(("UAS stunnel", server.running, server.pid))
    sipfed, sipfed_port = side.start_sipfed(stack, scenario, certs, work, sipfed_source)
    kamailio, ports = lab.start_kamailio(
        work,
        certs,
        uas_uri=f"sip:{uas_host}:{route_port};transport={scenario.uas_transport}",
        wait_transport=scenario.uac_transport,
    )
    stack.callback(kamailio.stop)
    relay, relay_port = lab.start_bare_relay(
        work,
        certs,
        listen_transport=scenario.uac_transport,
        upstream_transport=scenario.uas_transport,
        uas_host=uas_host,
        uas_port=route_port,
    )
    stack.callback(relay.stop)
    kamailio_port = {"udp": ports.udp, "tcp": ports.tcp, "tls": ports.tls}[scenario.uac_transport]
    # The relay adds no Record-Route: the UAC's maddr check (subscribe scenarios) is off on that arm.
    no_maddr = (("maddr", "off"),) if "maddr" in dict(scenario.keys) else ()
    arms = []
    for name, child, port, overrides in (
        ("sipfed", sipfed, sipfed_port, ()),
        ("kamailio", kamailio, kamailio_port, ()),
        (CEILING, relay, relay_port, no_maddr),
    ):
        if scenario.uac_transport == "udp":
            arms.append(Arm(name, child, port, udp_port=port, sipp_keys=overrides))
        elif scenario.uac_transport == "tcp":
            arms.append(Arm(name, child, port, sipp_keys=overrides))
        else:
            accept = lab.free_port()
            client = lab.start_client_tunnel(work, certs, accept_port=accept, proxy_port=port, name=name)
            stack.callback(client.stop)
            helpers.append((f"{name} client stunnel", client.running, client.pid))
            arms.append(Arm(name, child, accept, tls_port=port, sipp_keys=overrides))
    return Lab(arms, uas_port if udp else None, helpers, uas)


def run_idle_tls(
    scenario: Scenario,
    counts: Counts,
    certs: Path,
    work: Path,
    sipfed_source: Path | None,
    steps: list[signin.MemoryStep],
) -> str | None:
    """Idle TLS connection memory against a fresh sipfed and a fresh one-TCP-worker Kamailio (no SIPp, no
    stunnel: this process is the client); appends to ``steps``; returns an error, or None."""
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        config = lab.sipfed_config(
            work / "sipfed.toml", certs, listener_transport="tls", route_transport="tls", uas_port=lab.free_port()
        )  # a route nothing is sent on
        sipfed, sipfed_port = lab.start_sipfed(work, config, sipfed_source)
        stack.callback(sipfed.stop)
        kamailio, ports = lab.start_kamailio(
            work, certs, uas_uri=f"sip:{lab.LOOPBACK}:9;transport=tls", wait_transport="tls", tcp_children=1
        )
        stack.callback(kamailio.stop)
        arms = [Arm("sipfed", sipfed, 0, tls_port=sipfed_port), Arm("kamailio", kamailio, 0, tls_port=ports.tls)]
        bench = Bench(
            scenario, counts, work, arms, log, lab_pids=lambda: [pid for arm in arms for pid in arm.proxy.pids()]
        )
        signin.idle_tls_memory(bench, certs, steps, log)
        dead = dead_proxies(arms)
    return f"died during the idle TLS connections: {', '.join(dead)}" if dead else None


def run_phases(bench: Bench, scenario: Scenario, counts: Counts) -> tuple[list[int], dict[str, int]]:
    """Warm-up, closed loop, fixed rates, step-up; returns the fixed rates and the step-up results."""
    log(f"{scenario.name}: warm-up, closed loop ({counts.closed_loop_calls} calls, {counts.in_flight} in flight)")
    bench.warmup()
    bench.closed_loop()
    kamailio_max = closed_loop_rate(bench.arms[1]) or 0.0
    fixed_rates = sorted({FIXED_RATE // scenario.transactions_per_call, round_rate(kamailio_max / 2)})
    for rate in fixed_rates:
        log(f"{scenario.name}: fixed rate {rate} calls/s for {counts.fixed_seconds:g}s")
        bench.fixed_rate(rate)
    log(f"{scenario.name}: step-up from {counts.step_start_rate} calls/s")
    return fixed_rates, bench.step_up()


def run_scenario(
    scenario: Scenario, counts: Counts, certs: Path, work: Path, sipfed_source: Path | None = None
) -> dict[str, Any]:
    """Start the lab for ``scenario``, run every phase on its arms, return figures and raw runs.

    A lab helper that dies (UAS, stunnel) ends the scenario early; what was measured is kept, with the error.
    """
    work.mkdir(parents=True, exist_ok=True)
    started, load_start = time.monotonic(), os.getloadavg()
    memory: dict[str, dict[str, float]] = {}
    fixed_rates: list[int] = []
    step_best: dict[str, int] = {}
    steps: list[signin.MemoryStep] = []
    error: str | None = None
    scenario = prepared(scenario, work)
    with contextlib.ExitStack() as stack:
        running = start_lab(stack, scenario, certs, work, sipfed_source)
        arms = running.arms
        for arm in proxies(arms):
            _memory(arm, "rss_start_mb", procstat.rss_kb(arm.proxy.pids()), memory)
        bench = Bench(
            scenario,
            counts,
            work,
            arms,
            log,
            uas_udp_port=running.uas_udp_port,
            health=running.health,
            lab_pids=running.lab_pids,
        )
        try:
            if scenario.kind == "signin":
                signin.run(bench, steps, log)
            else:
                fixed_rates, step_best = run_phases(bench, scenario, counts)
        except lab.LabError as exc:
            error = str(exc)
            log(f"{scenario.name}: stopped early: {error}")
        uas_restarts = running.uas.restarts
        for arm in proxies(arms):
            pids = arm.proxy.pids()
            _memory(arm, "peak_rss_mb", procstat.peak_rss_kb(pids), memory)
            _memory(arm, "pss_end_mb", procstat.pss_kb(pids), memory)
            memory[arm.name]["processes"] = len(pids)
            memory[arm.name]["alive_at_end"] = float(arm.proxy.proc.poll() is None)
    if scenario.kind == "signin":  # independent of the lab above: runs even if that one stopped early
        try:
            idle_error = run_idle_tls(scenario, counts, certs, work / "idle-tls", sipfed_source, steps)
        except lab.LabError as exc:
            idle_error = f"idle TLS connections: {exc}"
        error = error or idle_error
        figs = signin_figures(arms, steps, memory=memory, counts=counts)
    else:
        figs = figures(
            arms,
            fixed_rates=fixed_rates,
            step_best=step_best,
            memory=memory,
            transactions_per_call=scenario.transactions_per_call,
        )
    notes = [
        f"step-up: {name} passed the ladder's top ({MAX_STEP_RATE:,} calls/s): its figure is a lower bound"
        for name, best in step_best.items()
        if best >= MAX_STEP_RATE
    ]
    if uas_restarts:
        notes.append(f"the SIPp UAS died {uas_restarts} time(s) after a failed step and was started again")
    return {
        "figures": figs,
        "error": error,
        "noise": noise_note(arms),
        "notes": notes,
        "uas_restarts": uas_restarts,
        "seconds": round(time.monotonic() - started, 1),
        "loadavg_start_end": [load_start, os.getloadavg()],
        "memory": memory,
        **({"memory_steps": [step.to_json() for step in steps]} if scenario.kind == "signin" else {}),
        "fixed_rates": fixed_rates,
        "runs": {arm.name: [run.to_json() for run in arm.runs] for arm in arms},
    }


def _version(args: list[str], containing: str = "") -> str:
    """The first output line of ``args`` (that contains ``containing``), or ``?``."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if containing in line and line.strip()]
    return lines[0] if lines else "?"


def environment() -> dict[str, Any]:
    """What the figures depend on: machine, tool versions, sipfed commit, uvloop."""
    commit = _version(["git", "-C", str(lab.ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(lab.ROOT), "status", "--porcelain", "--", "proxy", "routes", "acl"])
    try:
        import uvloop  # noqa: F401  # sipfed uses it when the venv has it

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "sipfed_commit": commit,
        "sipfed_tree_dirty": dirty not in ("?", ""),
        "sipfed_event_loop": loop,
        "kamailio": _version(["kamailio", "-v"]),
        "sipp": _version(["sipp", "-v"]),
        "stunnel": _version([shutil.which("stunnel4") or "stunnel", "-version"], "stunnel "),
    }


def sipfed_build(source: Path | None) -> dict[str, str]:
    """Where sipfed ran from and which SIP core it imports there (tools/mypyc_build.py, ``make fast``), asked
    as ``lab.start_sipfed`` runs it: with ``source`` first on the path, from another folder."""
    env = {**os.environ}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    done = subprocess.run(
        [sys.executable, "-c", "import proxy; print(proxy.build_kind())"],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    core = done.stdout.strip() if done.returncode == 0 else f"? ({done.stderr.strip()[-200:]})"
    return {"sipfed_source": str(source or lab.ROOT), "sipfed_core": core}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test of the whole bench (~2.5 min)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted([*SCENARIOS, "xmpp"]),
        dest="scenarios",
        help="run only this scenario (repeatable); default: all but xmpp (bench/xmpp.py: --scenario xmpp)",
    )
    parser.add_argument("--results", type=Path, default=lab.BENCH / "results", help="where the JSON goes")
    parser.add_argument(
        "--sipfed-source",
        type=Path,
        metavar="DIR",
        help="run sipfed's packages from another checkout (e.g. a `git archive` of a commit)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory (logs, configs)")
    return parser


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every child is stopped by PID on the way out."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_all(args: argparse.Namespace, counts: Counts, work: Path, document: dict[str, Any]) -> int:
    """Every selected scenario in turn; fills ``document["scenarios"]``; 1 if one failed or stopped early."""
    status = 0
    certs = lab.make_certs(work / "certs")
    for name in args.scenarios or list(SCENARIOS):
        try:
            if name == "xmpp":  # a lab of its own: dnsmasq, Prosody, XMPP clients, the gateways (bench/xmpp.py)
                result = xmpp.run_scenario(work / name, quick=args.quick, sipfed_source=args.sipfed_source)
            else:
                scenario = SCENARIOS[name]
                result = run_scenario(scenario, scaled(counts, scenario), certs, work / name, args.sipfed_source)
        except (lab.LabError, OSError, subprocess.SubprocessError) as exc:
            log(f"{name}: failed: {exc}")
            document["scenarios"][name] = {"error": str(exc)}
            status = 1
            continue
        status = status or int(result["error"] is not None)
        document["scenarios"][name] = {**result, "figures": {f.key: f.to_json() for f in result["figures"]}}
        document["tables"][name] = result["figures"]
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sipfed_source is not None:  # the children run from the work directory: a relative path would miss
        args.sipfed_source = args.sipfed_source.resolve()
    try:
        lab.require_tools()
        lab.kamailio_module_dir()
    except lab.LabError as exc:
        log(f"bench: {exc}")
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    counts = QUICK if args.quick else FULL
    # The idle TLS connections are this process's descriptors; the proxies inherit the raised limit too.
    idle_tls.raise_open_files(counts.idle_tls_connections + 1024)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    work = Path(tempfile.mkdtemp(prefix="sipfed-bench-"))
    log(f"bench: work directory {work}{' (quick)' if args.quick else ''}")
    started = time.monotonic()
    document: dict[str, Any] = {
        "started_utc": stamp,
        "quick": args.quick,
        "environment": {**environment(), **sipfed_build(args.sipfed_source)},
        "counts": dataclasses.asdict(counts),
        "scenarios": {},
        "tables": {},
    }
    status = 1
    try:
        status = run_all(args, counts, work, document)
    finally:
        shown: dict[str, list[Figure]] = document.pop("tables")
        document["seconds"] = round(time.monotonic() - started, 1)
        path = write_json(args.results, stamp, document)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    notes: dict[str, list[str]] = {}
    for name, result in document["scenarios"].items():
        if result.get("noise"):
            notes.setdefault(name, []).append(result["noise"])
        notes.setdefault(name, []).extend(result.get("notes", []))
        if result.get("error"):
            notes.setdefault(name, []).append(
                f"!! {'stopped early' if name in shown else 'failed'}: {result['error'].splitlines()[0]}"
            )
    print(table(shown, notes))
    env = document["environment"]
    print(
        f"\nsipfed's SIP core: {env['sipfed_core']} (from {env['sipfed_source']})"
        f"\n{'quick smoke test, not a measurement; ' if args.quick else ''}{document['seconds']:.0f} s; "
        f"results: {path} (and latest.json)"
    )
    return status
