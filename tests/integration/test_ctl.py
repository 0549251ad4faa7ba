"""``sipfed ctl`` against the real running process, over the real Unix socket, with real TLS peers connected.

The client is run as a subprocess (``python -m proxy ctl …``), and both its table and its ``--json`` output
are checked. 'cups' (tomt.local, 127.0.0.2) and 'lync' (tomt.it, 127.0.0.3) are stdlib-ssl peers that import
nothing of sipfed.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.integration.conftest import Sipfed, free_port, lab_config
from tests.peers.sippeer import Msg, Peer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

PEERS = """
[[peers]]
name = "lync"
subjects = ["lync01.tomt.it"]
networks = ["127.0.0.3/32"]

[[peers]]
name = "cisco"
subjects = ["cups.tomt.local"]
networks = ["127.0.0.2/32"]
"""

Scenario = Callable[[Sipfed, Peer, Peer, Path], Awaitable[None]]


def control_section(sock: Path) -> str:
    return f'\n[control]\nsocket = "{sock}"\n'


def pool_route(dead_port: int, live_port: int) -> str:
    """A pool whose first candidate refuses connections: it is marked down and tried last."""
    return f"""
[[routes]]
name = "pool"
match_uri = "pool.example"
tls_name = "cups.tomt.local"
listener = "cisco"
down_seconds = 300
destinations = [
    {{ host = "127.0.0.2", port = {dead_port}, priority = 10 }},
    {{ host = "127.0.0.2", port = {live_port}, priority = 20 }},
]
"""


def run_lab(
    tmp_path: Path,
    certs: Path,
    start_sipfed: Callable[[Path], Sipfed],
    scenario: Scenario,
    extra: Callable[[Peer, Peer], str] = lambda cups, lync: "",
) -> Sipfed:
    """Both peers and sipfed with a control socket in tmp_path; the scenario bounded to 90 s."""

    async def main() -> Sipfed:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        sock = tmp_path / "ctl.sock"
        config = lab_config(
            tmp_path / "sipfed.toml",
            certs,
            cups_port=cups.port,
            lync_port=lync.port,
            extra=PEERS + extra(cups, lync) + control_section(sock),
        )
        sipfed = start_sipfed(config)
        try:
            await asyncio.wait_for(scenario(sipfed, cups, lync, sock), 90)
        finally:
            await cups.stop()
            await lync.stop()
        return sipfed

    return asyncio.run(main())


async def ctl(sock: Path, *args: str) -> tuple[int, str, str]:
    """The real client in its own process: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "ctl",
        "--socket",
        str(sock),
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ctl_json(sock: Path, *args: str) -> Any:
    code, out, err = await ctl(sock, "--json", *args)
    assert code == 0, err
    return json.loads(out)


async def answer_to(peer: Peer, call_id: str) -> Msg:
    """The next response on ``peer`` with this Call-ID (other messages are skipped)."""
    while True:
        msg, _ = await peer.next()
        if not msg.is_request and msg.get("call-id") == call_id:
            return msg


async def message(lync_conn: Any, lync: Peer, domain: str, call_id: str) -> int:
    await lync_conn.send(
        lync.request(
            "MESSAGE",
            f"sip:x@{domain}",
            to=f"<sip:x@{domain}>",
            call_id=call_id,
            extra=[("Content-Type", "text/plain")],
            body=f"hello {call_id}",
        )
    )
    return (await answer_to(lync, call_id)).status


def not_after(pem: Path) -> str:
    return x509.load_pem_x509_certificate(pem.read_bytes()).not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_status_connections_routes_and_subscriptions(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    dead = free_port("127.0.0.2")

    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer, sock: Path) -> None:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        status = await ctl_json(sock, "status")
        assert {x["name"]: x["port"] for x in status["listeners"]} == {
            "cisco": sipfed.ports["cisco"],
            "lync": sipfed.ports["lync"],
        }
        assert status["config"]["file"] == str(sipfed.config)
        assert status["version"]
        assert status["pid"] == sipfed.proc.pid
        assert status["uptime_seconds"] >= 0
        code, out, _ = await ctl(sock, "status")
        assert code == 0
        assert f"config {sipfed.config}, loaded {status['config']['loaded']}" in out
        assert any(
            line.split()[:4] == ["lync", "tls", "127.0.0.1", str(sipfed.ports["lync"])] for line in out.splitlines()
        )

        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        assert await message(conn, lync, "tomt.local", "ctl-message-1") == 200
        assert await message(conn, lync, "pool.example", "ctl-pool-1") == 200  # the dead candidate failed first
        connections = await ctl_json(sock, "connections")
        inbound = [c for c in connections if c["direction"] == "in" and c["remote"].startswith("127.0.0.3:")]
        assert len(inbound) == 1, connections
        assert inbound[0]["listener"] == "lync"
        assert inbound[0]["peer"] == "lync"
        assert inbound[0]["subject"] == "CN=lync01.tomt.it"
        assert "lync01.tomt.it" in inbound[0]["names"]
        assert inbound[0]["not_after"] == not_after(certs / "lync01.tomt.it.pem")
        assert inbound[0]["idle_seconds"] >= 0
        outbound = [c for c in connections if c["direction"] == "out"]
        assert {c["remote"] for c in outbound} == {f"127.0.0.2:{cups.port}"}
        assert {c["peer"] for c in outbound} == {"cisco"}
        code, out, _ = await ctl(sock, "connections")
        row = next(line for line in out.splitlines() if "127.0.0.3:" in line)
        assert row.split()[1:3] == ["lync", "in"]
        assert "CN=lync01.tomt.it" in row
        assert not_after(certs / "lync01.tomt.it.pem") in row

        routes = {r["route"]: r for r in await ctl_json(sock, "routes")}
        assert [c["destination"] for c in routes["cisco"]["candidates"]] == [f"tls:127.0.0.2:{cups.port}"]
        assert routes["cisco"]["candidates"][0]["up"] is True
        pool = routes["pool"]["candidates"]
        assert [(c["destination"], c["up"]) for c in pool] == [
            (f"tls:127.0.0.2:{cups.port}", True),
            (f"tls:127.0.0.2:{dead}", False),
        ]
        assert "refused" in pool[1]["why"]
        assert 0 < pool[1]["down_for_seconds"] <= 300
        code, out, _ = await ctl(sock, "routes")
        assert "route pool (pool.example):" in out
        down = next(line for line in out.splitlines() if f":{dead}" in line)
        assert down.split()[:3] == ["2", f"tls:127.0.0.2:{dead}", "DOWN"]
        assert "refused" in down

        assert (await ctl_json(sock, "subscriptions"))["total"] == 0
        await conn.send(
            lync.request(
                "SUBSCRIBE",
                "sip:alice@tomt.local",
                to="<sip:alice@tomt.local>",
                call_id="ctl-subscribe-1",
                extra=[("Event", "presence"), ("Expires", "600")],
            )
        )
        assert (await answer_to(lync, "ctl-subscribe-1")).status == 200
        subscriptions = await ctl_json(sock, "subscriptions")
        assert subscriptions["total"] == 1
        assert [(c["peer"], c["event"], c["count"]) for c in subscriptions["counts"]] == [("lync", "presence", 1)]
        code, out, _ = await ctl(sock, "subscriptions")
        assert out.splitlines()[0] == "1 active subscription(s)"
        assert "presence" in out.splitlines()[2]

        code, out, err = await ctl(sock, "--json", "nonsense")
        assert code == 2
        assert "invalid choice" in err

    sipfed = run_lab(tmp_path, certs, start_sipfed, scenario, extra=lambda cups, lync: pool_route(dead, cups.port))
    assert sipfed.stop() == 0
    assert not (tmp_path / "ctl.sock").exists()  # removed when sipfed stopped


def test_trace_by_call_id_and_log_level(tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    trace = tmp_path / "trace" / "sip.trace"
    trace.parent.mkdir()

    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer, sock: Path) -> None:
        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        code, out, err = await ctl(
            sock,
            "trace",
            "on",
            "--call-id",
            "trace-keep",
            "--file",
            str(trace),
            "--max-bytes",
            "1000000",
            "--files",
            "2",
        )
        assert code == 0, err
        assert out.strip() == f"trace on: {trace} (Call-ID trace-keep), rotated at 976.6 KiB, 2 old file(s) kept"
        for call_id in ("trace-drop", "trace-keep", "trace-drop-2"):
            assert await message(conn, lync, "tomt.local", call_id) == 200
        state = (await ctl_json(sock, "status"))["trace"]
        assert (state["on"], state["call_id"], state["written"]) == (True, "trace-keep", 4)
        assert (await ctl_json(sock, "trace", "off")) == {"on": False, "file": str(trace), "written": 4}
        text = trace.read_text()
        heads = [
            [*line.split()[1:3], line.split()[-1]] for line in text.splitlines() if " -> " in line or " <- " in line
        ]
        assert heads == [
            ["RECV", "tls", "lync"],
            ["SEND", "tls", "cisco"],
            ["RECV", "tls", "cisco"],
            ["SEND", "tls", "lync"],
        ]
        assert {line for line in text.splitlines() if line.lower().startswith("call-id")} == {"Call-ID: trace-keep"}
        assert stat.S_IMODE(os.stat(trace).st_mode) == 0o600
        assert await message(conn, lync, "tomt.local", "trace-keep") == 200  # off: nothing more is written
        assert trace.read_text() == text

        code, out, err = await ctl(sock, "trace", "on", "--file", "/nonexistent-dir/x.trace")
        assert code == 1
        assert "cannot open the trace file /nonexistent-dir/x.trace: No such file or directory" in err
        code, out, err = await ctl(sock, "trace", "on", "--peer", "nobody", "--file", str(trace))
        assert code == 1
        assert "no [[peers]] entry is named 'nobody' (peers: lync, cisco)" in err

        code, out, err = await ctl(sock, "log-level", "debug")
        assert (code, out.strip()) == (0, "log level debug (was info)"), err
        assert (await ctl_json(sock, "status"))["log_level"] == "debug"
        cups_conn = await cups.connect("127.0.0.1", sipfed.ports["cisco"], "sipfed.tomt.local")
        await sipfed.async_wait_for_log("DEBUG sipfed.net: connection")  # a debug line, at debug level only
        assert await ctl_json(sock, "log-level", "warning") == {"level": "warning", "previous": "debug"}
        cups_conn.close()

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_reload_returns_the_problems_or_what_changed(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer, sock: Path) -> None:
        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        loaded = (await ctl_json(sock, "status"))["config"]["loaded"]

        def rewrite(extra: str, peers: str = PEERS) -> None:
            lab_config(
                sipfed.config,
                certs,
                cups_port=cups.port,
                lync_port=lync.port,
                extra=peers + extra + control_section(sock),
            )

        rewrite('\n[limits]\nmax_headers = 5\n\n[[routes]]\nmatch_uri = "extra.example"\nport = 70000\n')
        code, out, err = await ctl(sock, "reload")
        assert code == 1
        assert out == ""
        lines = err.splitlines()
        assert lines[0].startswith("sipfed ctl reload: reload refused, the running config stays: ")
        assert lines[0].endswith(f" problem(s) in {sipfed.config}")
        assert "  - limits.max_headers: 5 must be a number from 16 to 4096" in lines
        code, out, err = await ctl(sock, "--json", "reload")
        assert code == 1
        error = json.loads(out)["error"]
        assert error["code"] == -32000
        assert error["data"]["file"] == str(sipfed.config)
        assert any(p.startswith("routes[2].") for p in error["data"]["problems"]), error
        assert (await ctl_json(sock, "status"))["config"]["loaded"] == loaded  # the running config stays
        assert await message(conn, lync, "tomt.local", "after-refused") == 200

        rewrite(f"""
[[routes]]
name = "extra"
match_uri = "extra.example"
destination = "127.0.0.2"
port = {cups.port}
tls_name = "cups.tomt.local"
listener = "cisco"
""")
        changes = await ctl_json(sock, "reload")
        assert changes["file"] == str(sipfed.config)
        assert changes["routes"] == {"added": ["extra"], "removed": [], "changed": []}
        assert changes["peers"] == {"added": [], "removed": [], "changed": []}
        assert changes["connections"]["closed"] == 0
        assert changes["connections"]["kept"] >= 1
        assert await message(conn, lync, "extra.example", "via-extra") == 200

        rewrite("", PEERS.replace('name = "cisco"', 'name = "cups"'))  # the extra route goes, a peer is renamed
        code, out, err = await ctl(sock, "reload")
        assert code == 0, err
        assert out.splitlines()[0] == f"reloaded {sipfed.config}"
        assert "  routes removed: extra" in out.splitlines()
        assert "  peers added: cups" in out.splitlines()
        assert "  peers removed: cisco" in out.splitlines()
        assert "open connections: " in out
        assert (await ctl_json(sock, "status"))["config"]["loaded"] >= loaded

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_the_socket_at_start_stale_live_and_missing(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    sock = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # a socket file nothing listens on, as a killed sipfed leaves it
    config = lab_config(
        tmp_path / "a.toml",
        certs,
        cups_port=free_port("127.0.0.2"),
        lync_port=free_port("127.0.0.3"),
        extra=control_section(sock),
    )
    first = start_sipfed(config)

    async def status() -> Any:
        return await ctl_json(sock, "status")

    assert asyncio.run(status())["pid"] == first.proc.pid
    second = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 2
    assert f"another process listens on the control socket {sock}" in second.stderr
    assert asyncio.run(status())["pid"] == first.proc.pid  # the live socket was left alone

    missing = lab_config(
        tmp_path / "b.toml",
        certs,
        cups_port=free_port("127.0.0.2"),
        lync_port=free_port("127.0.0.3"),
        extra=control_section(tmp_path / "no-dir" / "ctl.sock"),
    )
    third = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", str(missing)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert third.returncode == 2
    assert f"the directory {tmp_path / 'no-dir'} does not exist; create it" in third.stderr
