"""``make bench-workers``: worker mode measured. MESSAGE closed loop, from 1 and from K client connections,
through sipfed with 1 worker, sipfed with 2 workers (``[proxy] workers = 2``), Kamailio and the bare relay (the
ceiling), arms alternating, in the same run; over TCP (SIPp straight to the proxy, Kamailio with 2 TCP
children) and over TLS (a client stunnel per arm, Kamailio with 1 TCP child: see ``KAMAILIO_TLS_CHILDREN``).

Each client connection is one SIPp UAC (``-t t1``), so K SIPps make K connections to the proxy (through the
stunnel, K TLS connections); the UAS is one SIPp (behind a server stunnel for TLS). The K SIPps run at once with
the calls and the in-flight limit shared out; the throughput is all their successful calls over the longest
run's wall time, the CPU that of the proxy's whole process tree (the supervisor and its workers, or Kamailio's
children). The JSON goes to bench/results/<UTC stamp>-workers.json.

Why K matters: SO_REUSEPORT spreads connections, not messages. A federation peer opens one or two connections,
so with K = 1 every message lands on one worker and a second one cannot help; K = 8 is a peer pool, or many
peers, at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import lab, procstat
from bench.cli import sipfed_build
from bench.sipp import UacResult, run_uac

MESSAGE_KEYS = {"domain": "tomt.local", "from_domain": "tomt.it"}
KAMAILIO_TLS_CHILDREN = 1
"""Kamailio 5.6.3 with OpenSSL 3 (Debian 12) corrupts its shared memory when TLS handshakes are spread over
several TCP children (bench/kamailio.cfg; kamailio#3695, #3791): the first full run of this bench lost Kamailio
to SIGABRT ("qm_free(): BUG: freeing already freed pointer ... tls_init.c") at 8 connections. Over TLS it runs
with one TCP child, over TCP with the bench's usual two."""
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Arm:
    name: str
    child: lab.Child
    port: int
    """The client stunnel's accept port in front of this proxy."""
    runs: dict[int, list[dict[str, float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    calls: int
    in_flight: int
    repetitions: int
    connections: tuple[int, ...]
    warmup_calls: int
    timeout_seconds: float
    transports: tuple[str, ...] = ("tcp", "tls")


FULL = Plan(calls=12_000, in_flight=64, repetitions=3, connections=(1, 8), warmup_calls=2000, timeout_seconds=60)
QUICK = Plan(calls=800, in_flight=32, repetitions=1, connections=(1, 4), warmup_calls=100, timeout_seconds=20)


def local_ports(k: int) -> list[int]:
    """K ports free at once (SIPps started together each picking "a free port" could pick the same one)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(k)]
        for sock in socks:
            sock.bind((lab.LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parallel_closed_loop(
    arm: Arm, work: Path, tag: str, calls: int, in_flight: int, k: int, timeout: float
) -> dict[str, float]:
    """K SIPp UACs at once on ``arm`` (one TLS connection each), ``calls`` and ``in_flight`` shared out."""
    results: list[UacResult | None] = [None] * k
    ports = local_ports(k)
    pids = arm.child.pids()
    cpu_before = procstat.cpu_seconds(pids)

    def one(i: int) -> None:
        results[i] = run_uac(
            work,
            f"{tag}-{i}",
            scenario_xml="uac_message.xml",
            target_port=arm.port,
            transport="tcp",
            calls=calls // k,
            rate=100_000,
            limit=max(1, in_flight // k),
            keys=MESSAGE_KEYS,
            timeout_seconds=timeout,
            local_port=ports[i],
        )

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(k)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 30)
    cpu = procstat.cpu_seconds(arm.child.pids()) - cpu_before
    done = [r for r in results if r is not None]
    ok = sum(max(0, r.successful) for r in done)
    failed = (calls // k) * k - ok  # a SIPp that could not start, or stopped early, fails its share
    wall = max((r.wall_seconds for r in done), default=0.0)
    latencies = sorted(us for r in done for us in r.latencies_us)

    def p(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000 if latencies else float("nan")

    return {
        "connections": k,
        "successful": ok,
        "failed": failed,
        "wall_seconds": wall,
        "calls_per_second": ok / wall if wall > 0 else 0.0,
        "cpu_seconds": cpu,
        "cpu_per_1000": 1000 * cpu / ok if ok else float("nan"),
        "p50_ms": p(0.50),
        "p99_ms": p(0.99),
    }


def start(stack: contextlib.ExitStack, work: Path, certs: Path, source: Path | None, transport: str) -> list[Arm]:
    """UAS, sipfed with 1 and with 2 workers, Kamailio, the bare relay; over TLS a client stunnel before each."""
    tls = transport == "tls"
    uas_port = lab.free_port()
    route_port = lab.free_port() if tls else uas_port
    uas = lab.start_uas(work, "uas_message.xml", uas_port, "tcp", lifetime_seconds=1800)
    stack.callback(uas.stop)
    if tls:
        server = lab.start_server_tunnel(work, certs, accept_port=route_port, uas_port=uas_port)
        stack.callback(server.stop)
    children: list[tuple[str, lab.Child, int]] = []
    for workers in (1, 2):
        folder = work / f"sipfed-{workers}"
        folder.mkdir()
        config = lab.sipfed_config(
            folder / "sipfed.toml", certs, listener_transport=transport, route_transport=transport, uas_port=route_port
        )
        config.write_text(config.read_text().replace("[proxy]\n", f"[proxy]\nworkers = {workers}\n", 1))
        child, port = lab.start_sipfed(folder, config, source)
        stack.callback(child.stop)
        children.append((f"sipfed-{workers}w", child, port))
    kamailio, ports = lab.start_kamailio(
        work,
        certs,
        uas_uri=f"sip:{lab.LOOPBACK}:{route_port};transport={transport}",
        wait_transport=transport,
        tcp_children=KAMAILIO_TLS_CHILDREN if tls else 2,
    )
    stack.callback(kamailio.stop)
    children.append(("kamailio", kamailio, ports.tls if tls else ports.tcp))
    relay, relay_port = lab.start_bare_relay(
        work,
        certs,
        listen_transport=transport,
        upstream_transport=transport,
        uas_host=lab.LOOPBACK,
        uas_port=route_port,
    )
    stack.callback(relay.stop)
    children.append(("ceiling", relay, relay_port))
    arms = []
    for name, child, port in children:
        if tls:
            accept = lab.free_port()
            tunnel = lab.start_client_tunnel(work, certs, accept_port=accept, proxy_port=port, name=name)
            stack.callback(tunnel.stop)
            port = accept
        arms.append(Arm(name, child, port))
    return arms


def median(runs: list[dict[str, float]], key: str) -> float:
    values = [r[key] for r in runs if r[key] == r[key]]  # NaN-free
    return statistics.median(values) if values else float("nan")


def report(arms: list[Arm], plan: Plan, transport: str) -> str:
    kamailio = f"Kamailio {KAMAILIO_TLS_CHILDREN if transport == 'tls' else 2} TCP child(ren)"
    lines = [
        f"MESSAGE/{transport.upper()} closed loop, {plan.calls} calls, {plan.in_flight} in flight, median of "
        f"{plan.repetitions}; {kamailio}",
        f"{'connections':>11}  {'arm':<11} {'calls/s':>9} {'CPU/1000':>9} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6}"
        f"  {'vs Kamailio':>11}  {'vs 1 worker':>11}",
    ]
    for k in plan.connections:
        kam = median(arms[2].runs.get(k, []), "calls_per_second")
        one = median(arms[0].runs.get(k, []), "calls_per_second")
        for arm in arms:
            runs = arm.runs.get(k, [])
            rate = median(runs, "calls_per_second")
            failed = sum(int(r["failed"]) for r in runs)
            vs_kam = f"{rate / kam:.2f}x" if kam and arm.name != "kamailio" else "-"
            vs_one = f"{rate / one:.2f}x" if one and arm.name.startswith("sipfed-2") else "-"
            lines.append(
                f"{k:>11}  {arm.name:<11} {rate:>9.0f} {median(runs, 'cpu_per_1000'):>9.3f} "
                f"{median(runs, 'p50_ms'):>7.2f} {median(runs, 'p99_ms'):>7.2f} {failed:>6}  {vs_kam:>11}  {vs_one:>11}"
            )
    return "\n".join(lines)


def measure(arms: list[Arm], work: Path, plan: Plan, transport: str) -> None:
    for arm in arms:
        parallel_closed_loop(
            arm, work, f"warmup-{arm.name}", plan.warmup_calls, plan.in_flight, 1, plan.timeout_seconds
        )
    serial = 0
    for k in plan.connections:
        for rep in range(plan.repetitions):
            for arm in arms:  # alternating: A B C D A B C D ...
                serial += 1
                run = parallel_closed_loop(
                    arm, work, f"{serial:03d}-{arm.name}-k{k}", plan.calls, plan.in_flight, k, plan.timeout_seconds
                )
                arm.runs.setdefault(k, []).append(run)
                log(
                    f"  {transport} k={k} rep {rep + 1} {arm.name:<11} {run['successful']:>6} ok {run['failed']:>4} "
                    f"failed {run['calls_per_second']:>7.0f}/s cpu {run['cpu_seconds']:.2f}s p99 {run['p99_ms']:.2f} ms"
                )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/workers.py", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="a short run that checks the machinery")
    parser.add_argument("--sipfed-source", type=Path, help="run sipfed from this tree (make fast's build/mypyc)")
    parser.add_argument("--work", type=Path, help="work folder (default: a new one under /tmp)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    source = args.sipfed_source.resolve() if args.sipfed_source else None
    lab.require_tools()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = args.work or Path(f"/tmp/sipfed-bench-workers-{stamp}")
    work.mkdir(parents=True, exist_ok=True)
    certs = lab.make_certs(work / "certs")
    started = time.monotonic()
    tables: dict[str, str] = {}
    runs: dict[str, Any] = {}
    dead: list[str] = []
    for transport in plan.transports:
        folder = work / transport
        folder.mkdir()
        with contextlib.ExitStack() as stack:
            arms = start(stack, folder, certs, source, transport)
            log(f"{transport}: " + ", ".join(f"{a.name} ({len(a.child.pids())} processes)" for a in arms))
            measure(arms, folder, plan, transport)
            dead += [f"{transport} {a.name}" for a in arms if a.child.proc.poll() is not None]
        tables[transport] = report(arms, plan, transport)
        runs[transport] = {a.name: {str(k): r for k, r in a.runs.items()} for a in arms}
        print(tables[transport] + "\n", flush=True)
    document: dict[str, Any] = {
        "stamp": stamp,
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        **sipfed_build(source),
        "cpus": os.cpu_count(),
        "plan": plan.__dict__,
        "kamailio_tcp_children": {"tcp": 2, "tls": KAMAILIO_TLS_CHILDREN},
        "died": dead,
        "runs": runs,
        "tables": tables,
    }
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{stamp}-workers.json"
        out.write_text(json.dumps(document, indent=2) + "\n")
        log(f"written: {out}")
    if dead:
        log(f"died during the run: {', '.join(dead)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
