"""Profile the live sipfed process under one bench scenario: ``python bench/profile_live.py SCENARIO``.

Starts sipfed alone (no Kamailio, no ceiling) with the bench's SIPp UAS, stunnels and config for SCENARIO (one of
``bench/run.py``'s), warms it up, then runs the SIPp UAC ``--reps`` times and prints the rates and sipfed's CPU
per call. With ``--spy`` (needs ``pip install py-spy``; root, or ptrace allowed) py-spy samples the process with
``--native`` meanwhile, so the compiled core's C functions show, and the functions with the most samples are
printed: on their own (self) and with what they call (inclusive), for the event loop's thread only. This is how
the profiles in the README's Performance section were taken, e.g.::

    python bench/profile_live.py signin-tls --calls 5000 --limit 5000 --reps 10 --spy --sipfed-source build/mypyc
    python bench/profile_live.py subscribe-tls --calls 6000 --reps 3 --spy --sipfed-source build/mypyc

py-spy stops the process for each sample (``--native`` cannot sample without stopping it), so rates measured
with ``--spy`` are lower; take rates and CPU from a run without it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import lab, procstat
from bench.cli import SCENARIOS, UasSide, prepared
from bench.sipp import run_uac

SPY_RATE = 400
"""Samples per second: enough for ~5,000 samples over a few storms without slowing sipfed past its timeouts."""
MAIN_THREAD = "main (proxy/cli.py)"
"""A frame only the event loop's thread has (the status server's HTTP thread mostly sleeps in poll)."""


def start(
    stack: contextlib.ExitStack, name: str, work: Path, source: Path | None
) -> tuple[lab.Child, int, dict[str, str]]:
    """UAS (+ server stunnel), sipfed, a client stunnel for TLS; returns sipfed, the UAC's target port, SIPp keys."""
    scenario = prepared(SCENARIOS[name], work)
    certs = lab.make_certs(work / "certs")
    side = UasSide.of(scenario)
    uas = side.start_uas(scenario, work)
    stack.callback(uas.stop)
    side.start_tunnel(stack, scenario, certs, work)
    sipfed, port = side.start_sipfed(stack, scenario, certs, work, source)
    if scenario.uac_transport == "tls":
        accept = lab.free_port()
        client = lab.start_client_tunnel(work, certs, accept_port=accept, proxy_port=port, name="sipfed")
        stack.callback(client.stop)
        port = accept
    return sipfed, port, dict(scenario.keys)


def summary(raw: Path, top: int = 25) -> str:
    """py-spy's raw output (``frame;frame;... count`` per line), the event loop's thread only."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        if MAIN_THREAD not in frames or not count.isdigit():
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples of the event loop's thread"
    lines = [f"{total} samples of the event loop's thread", "-- self"]
    lines += [f"{100 * n / total:5.1f}%  {frame[:140]}" for frame, n in own.most_common(top)]
    lines.append("-- inclusive")
    lines += [f"{100 * n / total:5.1f}%  {frame[:140]}" for frame, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/profile_live.py", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument("scenario", choices=list(SCENARIOS))
    parser.add_argument("--calls", type=int, default=6000, help="SIPp calls per repetition (default 6000)")
    parser.add_argument("--limit", type=int, default=50, help="calls in flight (default 50; the storm: = --calls)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--spy", action="store_true", help="sample sipfed with py-spy --native meanwhile")
    parser.add_argument("--sipfed-source", type=Path, help="run sipfed from this tree (make fast's build/mypyc)")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if args.spy and not Path(spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    source = args.sipfed_source.resolve() if args.sipfed_source else None
    lab.require_tools()
    work = Path(tempfile.mkdtemp(prefix=f"sipfed-profile-{args.scenario}-"))
    scenario = SCENARIOS[args.scenario]
    with contextlib.ExitStack() as stack:
        sipfed, port, keys = start(stack, args.scenario, work, source)

        def run(tag: str, calls: int) -> tuple[float, int]:
            result = run_uac(
                work,
                tag,
                scenario_xml=prepared(scenario, work).uac_xml,
                target_port=port,
                transport=scenario.uac_transport,
                calls=calls,
                rate=100_000,
                limit=args.limit,
                keys=keys,
                timeout_seconds=120,
                recv_timeout_ms=30_000,
            )
            return result.calls_per_second, max(0, result.successful)

        run("warmup", 2000)
        sampler = None
        raw = work / "py-spy.txt"
        if args.spy:
            sampler = subprocess.Popen(
                [
                    spy,
                    "record",
                    "-p",
                    str(sipfed.root_pid),
                    "-o",
                    str(raw),
                    "-f",
                    "raw",
                    "-r",
                    str(SPY_RATE),
                    "--native",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches
        cpu_before = procstat.cpu_seconds(sipfed.pids())
        rates, ok = [], 0
        for i in range(args.reps):
            rate, successful = run(f"run{i}", args.calls)
            rates.append(round(rate))
            ok += successful
        cpu = procstat.cpu_seconds(sipfed.pids()) - cpu_before
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(60)
    print(f"{args.scenario}: {ok} of {args.calls * args.reps} calls ok; calls/s per repetition {rates}")
    print(
        f"sipfed CPU {cpu:.2f} s = {1e6 * cpu / max(1, ok):.0f} us per call{' (py-spy attached)' if args.spy else ''}"
    )
    if args.spy:
        print(summary(raw) if raw.exists() else "py-spy wrote nothing (ptrace not allowed?)")
    print(f"work folder: {work}")
    return 0 if ok == args.calls * args.reps else 1


if __name__ == "__main__":
    sys.exit(main())
