"""Worker mode (``[proxy] workers = 2``) on the real process: the supervisor and its workers sharing the ports
(SO_REUSEPORT), driven by SIPp and scraped by Prometheus.

What could go wrong, and what each test would see:

- An answer over UDP reaching the worker that did not send the request: that worker holds no transaction for
  it and drops it (proxy/relay/responses.py), so SIPp's call times out. Every call from many sources, spread
  over both workers, must succeed.
- Traffic not spread, or metrics not merged: each worker's ``sipfed_requests_relayed_total`` (``worker``
  label) must be above 0, and Prometheus's ``sum without (worker)`` must equal the calls made.
- A dead worker not replaced, or replaced on other sockets: after SIGKILL the port must serve again, the
  restart counted, the other worker untouched.
- A worker's own UDP socket as a way around admission: the same request gets the same refusal there.
- Another instance joining our SO_REUSEPORT group and taking half the traffic: it must fail to start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import LAB_PEERS, ROOT, UDP_LISTENER, Sipfed, free_port, lab_config, sipfed_command
from tests.integration.metrics_scrape import Prometheus, sample, scrape
from tests.integration.sipp_tools import SippUas, errors, run_uac, sipp_config
from tests.integration.test_attacks_relay import raw_request
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

WORKERS = 2


def in_worker_mode(config: Path, control: Path | None = None) -> Path:
    """``config`` with ``[proxy] workers = 2`` (and a control socket)."""
    text = config.read_text().replace("[proxy]\n", f"[proxy]\nworkers = {WORKERS}\n", 1)
    if control is not None:
        text += f'\n[control]\nsocket = "{control}"\n'
    config.write_text(text)
    return config


def ctl(config: Path, *args: str) -> dict[str, object]:
    command, env = sipfed_command("ctl", "--config", str(config), "--json", *args)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert isinstance(answer, dict)
    return answer


def worker_pids(config: Path) -> list[int]:
    """Each worker's pid, in worker order, as ``sipfed ctl status`` (through the supervisor) reports them."""
    answers = ctl(config, "status")["workers"]
    assert isinstance(answers, list)
    assert len(answers) == WORKERS, answers
    return [int(entry["result"]["pid"]) for entry in answers]


def alive(pid: int) -> bool:
    """Running (a zombie whose parent is gone, left for init to reap, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def relayed_by_worker(sipfed: Sipfed) -> list[float]:
    text = scrape(sipfed.ports["metrics"])
    return [sample(text, "sipfed_requests_relayed_total", method="MESSAGE", worker=str(i)) for i in range(WORKERS)]


@pytest.mark.parametrize(("transport", "sipp_transport"), [("udp", "u1"), ("tcp", "t1")])
def test_calls_from_many_sources_are_spread_over_the_workers_and_all_answered(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed], transport: str, sipp_transport: str
) -> None:
    """16 SIPp clients, each from its own port (its own TCP connection): the kernel spreads them by address and
    port. Over UDP each worker sends from its own socket (and names it in Via, for servers that ignore rport),
    so the UAS's 200s come back to it: a 200 at the other worker would be dropped and the call would time out at
    SIPp (sending from the shared socket instead fails this test with 408s). 2^-15 is the chance that all 16
    sources hash to one worker."""
    runs, calls = 16, 10
    uas_port = free_port(kind=socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
    uas = SippUas("uas_message.xml", uas_port, runs * calls, sipp_transport, tmp_path)
    config = sipp_config(tmp_path / "sipfed.toml", certs, transport=transport, uas_port=uas_port)
    sipfed = start_sipfed(in_worker_mode(config))
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{sipfed.ports['metrics']}")
    try:
        for _ in range(runs):
            code, _latencies = run_uac(
                "uac_message.xml", sipfed.ports["lync"], sipp_transport, calls, 200, tmp_path, "domain", "tomt.local"
            )
            assert code == 0, errors(tmp_path)
        assert uas.wait() == 0, errors(tmp_path)
        per_worker = relayed_by_worker(sipfed)
        assert sum(per_worker) == runs * calls, per_worker
        assert all(count > 0 for count in per_worker), f"one worker relayed everything: {per_worker}"
        total = 'sum without (worker) (sipfed_requests_relayed_total{method="MESSAGE",route="tomt.local"})'
        assert prometheus.wait_for(total, runs * calls) == runs * calls, prometheus.log.read_text()[-2000:]
        assert prometheus.query("count(sipfed_build_info)") == WORKERS
        assert prometheus.query("sum(sipfed_worker_up)") == WORKERS
    finally:
        prometheus.stop()


def test_a_killed_worker_is_started_again_on_the_same_port(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    uas_port = free_port()
    uas = SippUas("uas_message.xml", uas_port, 40, "t1", tmp_path)
    config = sipp_config(tmp_path / "sipfed.toml", certs, transport="tcp", uas_port=uas_port)
    sipfed = start_sipfed(in_worker_mode(config, tmp_path / "ctl.sock"))
    before = worker_pids(config)
    os.kill(before[0], signal.SIGKILL)
    sipfed.wait_for_log(re.compile(rf"worker 0 \(pid {before[0]}\) exited \(status -9\); starting it again"))
    wait_until(
        lambda: (
            sample(scrape(sipfed.ports["metrics"]), "sipfed_worker_restarts_total", worker="0") == 1
            and sample(scrape(sipfed.ports["metrics"]), "sipfed_worker_up") == WORKERS
        ),
        15,
        "worker 0 counted as restarted and both workers up",
    )
    after = worker_pids(config)
    assert after[0] != before[0]
    assert after[1] == before[1]
    assert not alive(before[0])
    for _ in range(4):  # four connections: each worker accepts some, the restarted one on the inherited socket
        code, _ = run_uac("uac_message.xml", sipfed.ports["lync"], "t1", 10, 100, tmp_path, "domain", "tomt.local")
        assert code == 0, errors(tmp_path)
    assert uas.wait() == 0, errors(tmp_path)
    assert sipfed.stop() == 0
    assert not any(alive(pid) for pid in after), "a worker outlived its supervisor's SIGTERM"
    assert "stopped: 0 transaction(s) answered by the drain, 0 unanswered" in sipfed.log_text()


def test_a_worker_that_cannot_start_is_tried_again_while_the_other_serves(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """The config file broken after start (an admin mid-edit), then a worker crashes: its successor cannot
    load the file. sipfed keeps the other worker serving, says so, and starts the missing one once the file
    is good again; a start that fails is no crash, so it spends no restart budget."""
    uas_port = free_port()
    uas = SippUas("uas_message.xml", uas_port, 10, "t1", tmp_path)
    config = sipp_config(tmp_path / "sipfed.toml", certs, transport="tcp", uas_port=uas_port)
    sipfed = start_sipfed(in_worker_mode(config, tmp_path / "ctl.sock"))
    good = config.read_text()
    before = worker_pids(config)
    config.write_text(good + "\n[nonsense]\n")
    os.kill(before[0], signal.SIGKILL)
    sipfed.wait_for_log("did not start (exit status 2); its log says why; trying again in 10 s", timeout=30)
    assert "nonsense: unknown section" in sipfed.log_text()
    assert sipfed.proc.poll() is None
    code, _ = run_uac("uac_message.xml", sipfed.ports["lync"], "t1", 10, 100, tmp_path, "domain", "tomt.local")
    assert code == 0, errors(tmp_path)  # worker 1 took the connection: the port never stopped serving
    assert uas.wait() == 0, errors(tmp_path)
    config.write_text(good)
    wait_until(
        lambda: sample(scrape(sipfed.ports["metrics"]), "sipfed_worker_up") == WORKERS,
        40,
        "the missing worker started again once the file was good",
    )
    assert worker_pids(config)[1] == before[1]


def test_a_worker_crashing_in_a_loop_stops_sipfed(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """Five restarts a minute at most (RestartBudget): the sixth crash stops sipfed with exit status 1 and says
    why, rather than restart forever."""
    config = lab_config(tmp_path / "sipfed.toml", certs, cups_port=free_port("127.0.0.2"), lync_port=free_port())
    sipfed = start_sipfed(in_worker_mode(config, tmp_path / "ctl.sock"))
    for crash in range(6):
        pid = worker_pids(config)[1]
        os.kill(pid, signal.SIGKILL)
        if crash < 5:
            sipfed.wait_for_log(re.compile(rf"worker 1 \(pid {pid}\) exited \(status -9\); starting it again"))
            wait_until(
                lambda: sample(scrape(sipfed.ports["metrics"]), "sipfed_worker_up") == WORKERS,
                20,
                "worker 1 up again",
            )
    assert sipfed.proc.wait(60) == 1
    assert "5 restarts within 60 s already; stopping sipfed" in sipfed.log_text()


def test_workers_stop_when_their_supervisor_is_killed(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """SIGKILL leaves the supervisor no chance to pass a SIGTERM on: the workers notice their parent is gone,
    drain and exit, and the ports are free again (no orphan keeps serving, or holding them)."""
    config = lab_config(
        tmp_path / "sipfed.toml", certs, cups_port=free_port("127.0.0.2"), lync_port=free_port(), cisco_port=free_port()
    )
    sipfed = start_sipfed(in_worker_mode(config, tmp_path / "ctl.sock"))
    pids = worker_pids(config)
    os.kill(sipfed.proc.pid, signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in pids), 15, f"workers {pids} gone after their supervisor")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", sipfed.ports["cisco"]))  # nothing holds the listener's port any more


def test_reload_and_status_reach_every_worker(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    config = lab_config(tmp_path / "sipfed.toml", certs, cups_port=free_port("127.0.0.2"), lync_port=free_port())
    sipfed = start_sipfed(in_worker_mode(config, tmp_path / "ctl.sock"))
    reloaded = ctl(config, "reload")["workers"]
    assert isinstance(reloaded, list)
    assert [entry["worker"] for entry in reloaded] == [0, 1]
    assert all("result" in entry for entry in reloaded), reloaded
    levels = ctl(config, "log-level", "debug")["workers"]
    assert [entry["result"] for entry in levels] == [{"level": "debug", "previous": "info"}] * WORKERS, levels
    traced = ctl(config, "trace", "on", "--file", str(tmp_path / "sip.trace"))["workers"]
    assert [entry["result"]["file"] for entry in traced] == [str(tmp_path / f"sip.trace.{i}") for i in range(WORKERS)]
    # A broken file is refused by the workers, and the supervisor passes the refusal on (exit status 1).
    config.write_text(config.read_text() + "\n[nonsense]\n")
    command, env = sipfed_command("ctl", "--config", str(config), "reload")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1, done.stderr
    assert "nonsense: unknown section" in done.stderr
    sipfed.wait_for_log("reload refused, the running config stays")
    assert sipfed.proc.poll() is None  # the supervisor still runs, the workers on the old config


def test_the_workers_own_udp_socket_admits_as_the_listener_does(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """A request from a source no [[peers]] entry binds, sent to the listener's port and to each worker's own
    UDP socket (found with ss, as an attacker scanning the host would): the same refusal from all of them."""
    config = lab_config(
        tmp_path / "sipfed.toml",
        certs,
        cups_port=free_port("127.0.0.2"),
        lync_port=free_port(),
        extra=LAB_PEERS + UDP_LISTENER,
    )
    sipfed = start_sipfed(in_worker_mode(config, tmp_path / "ctl.sock"))
    listener = sipfed.ports["lab-udp"]
    own_ports = []
    for pid in worker_pids(config):
        shown = subprocess.run(["ss", "-u", "-a", "-n", "-p"], capture_output=True, text=True, timeout=10).stdout
        ports = {
            int(m.group(1))
            for m in re.finditer(rf"127\.0\.0\.1:(\d+)\s.*pid={pid},", shown)
            if int(m.group(1)) != listener
        }
        assert len(ports) == 1, shown
        own_ports.extend(ports)
    answers = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.9", 0))
        sock.settimeout(5)
        for port in (listener, *own_ports):
            sock.sendto(
                raw_request(
                    "MESSAGE", "sip:alice@tomt.local", transport="UDP", sent_by=f"127.0.0.9:{sock.getsockname()[1]}"
                ),
                ("127.0.0.1", port),
            )
            answers.append(sock.recv(65535).split(b"\r\n", 1)[0])
    assert len(answers) == 3
    assert set(answers) == {b"SIP/2.0 403 Forbidden (not a trusted peer, not exempt, no credentials)"}, answers


def test_a_second_instance_cannot_join_the_ports(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """SO_REUSEPORT would let a second process of the same user share the port and take a share of the peers'
    connections: the supervisor binds each port once without it first, so the second start fails as it would
    against one process, and the first keeps every connection."""
    config = lab_config(
        tmp_path / "first.toml",
        certs,
        cups_port=free_port("127.0.0.2"),
        lync_port=free_port(),
        cisco_port=free_port(),
        lync_listener_port=free_port(),
    )
    first = start_sipfed(in_worker_mode(config))
    command, env = sipfed_command("run", "--config", str(config))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{first.ports['cisco']} (tls)" in done.stderr
    assert "Address already in use" in done.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{first.ports['metrics']}/ready", timeout=5) as answer:
        assert answer.status == 200
        assert answer.read().decode().count(": ready") == WORKERS
