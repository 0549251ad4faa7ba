"""sipfed as a service, against the real things: ``systemd-analyze verify`` on examples/sipfed.service, the
sd_notify datagrams of the live process on a socket the test binds, ``curl`` and urllib on /healthz and
/ready while the next hop comes and goes, and ms-diagnostics-public on what sipfed refuses the Lync peer."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Sipfed, lab_config
from tests.peers.sippeer import Msg, Peer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

UNIT = ROOT / "examples" / "sipfed.service"
INSTALLED = "/usr/local/bin/sipfed"
HEALTH = "health = { interval_seconds = 0.5, timeout_seconds = 0.4, failures_to_down = 2, successes_to_up = 1 }"
PEERS = """
[[peers]]
name = "lync"
subjects = ["lync01.tomt.it"]
domains = ["tomt.it"]
answers_digest = false
microsoft = true

[[peers]]
name = "cisco"
subjects = ["cups.tomt.local"]
domains = ["tomt.local"]
"""


# -- the unit file -------------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The example as shipped, with its ExecStart/ExecReload pointed at this venv's ``sipfed`` script:
    systemd-analyze verify fails a unit whose command does not exist ("Command … is not executable"), and
    /usr/local/bin/sipfed does not exist on a test machine."""
    sipfed = Path(sys.executable).parent / "sipfed"
    assert sipfed.is_file(), f"{sipfed}: the venv has no sipfed script (pip install -e . makes it)"
    text = UNIT.read_text()
    assert text.count(INSTALLED) == 2
    unit = tmp_path / "sipfed.service"
    unit.write_text(text.replace(INSTALLED, str(sipfed)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "sipfed" in line]
    assert result.returncode == 0, result.stdout + result.stderr
    assert ours == [], ours
    # systemd's own reading of the hardening: 0 (locked down) to 10 (exposed); the unit scores 1.8 today.
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    score = re.search(r"Overall exposure level for sipfed\.service: (\d+\.\d+)", security.stdout + security.stderr)
    assert score is not None, security.stdout + security.stderr
    assert float(score.group(1)) <= 2.5, security.stdout


def test_the_shipped_path_is_what_verify_would_refuse_if_missing(tmp_path: Path) -> None:
    """The honest half of the substitution above: verify does check the command, so the test is not
    passing a unit it never looked at."""
    if Path(INSTALLED).exists():
        pytest.skip(f"{INSTALLED} exists here")
    unit = tmp_path / "sipfed.service"
    unit.write_text(UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert INSTALLED in result.stdout + result.stderr


def test_the_unit_says_what_the_readme_promises() -> None:
    settings = unit_settings(UNIT.read_text())
    assert settings["Type"] == ["notify"]
    assert settings["ExecStart"] == [f"{INSTALLED} run --config /etc/sipfed/sipfed.toml"]
    assert settings["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert settings["AmbientCapabilities"] == settings["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert settings["User"] == ["sipfed"]
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RuntimeDirectory", "sipfed"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
    ]:
        assert settings[key] == [value], key


# -- sd_notify from the live process -------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """systemd's end of $NOTIFY_SOCKET: a datagram socket the test binds; sipfed inherits the variable."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def next_notice(sock: socket.socket, wanted: str, seconds: float = 15) -> list[str]:
    """The lines of the first datagram with line ``wanted``, within ``seconds``; the others are skipped."""
    deadline = time.monotonic() + seconds
    seen: list[list[str]] = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            lines = sock.recv(4096).decode().split("\n")
        except TimeoutError:
            break
        if wanted in lines:
            return lines
        seen.append(lines)
    raise AssertionError(f"no {wanted} within {seconds:g} s; got {seen}")


def test_ready_reloading_and_stopping_reach_the_notify_socket(
    tmp_path: Path, certs: Path, notify_socket: socket.socket, start_sipfed: Callable[..., Sipfed]
) -> None:
    config = lab_config(tmp_path / "sipfed.toml", certs, cups_port=5, lync_port=5)
    sipfed = start_sipfed(config)
    ready = next_notice(notify_socket, "READY=1")
    assert "STATUS=relaying: 2 listener(s), 2 route(s)" in ready
    sipfed.proc.send_signal(signal.SIGHUP)
    reloading = next_notice(notify_socket, "RELOADING=1")
    assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
    assert "READY=1" in next_notice(notify_socket, "READY=1")
    sipfed.proc.send_signal(signal.SIGTERM)
    assert "STATUS=draining transactions in flight" in next_notice(notify_socket, "STOPPING=1")
    assert sipfed.proc.wait(30) == 0


# -- /healthz and /ready -------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def curl(url: str) -> tuple[int, str]:
    """curl's own reading of an endpoint: (status, body)."""
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "5", "--write-out", "\n%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, _, code = result.stdout.rpartition("\n")  # the body, then the "\n%{http_code}" we asked for
    return int(code), body


async def until_status(url: str, status: int, seconds: float, what: str) -> str:
    """Poll ``url`` off the event loop (the peers live on it) until it answers ``status``; its body."""
    deadline = time.monotonic() + seconds
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(get, url)
        if last[0] == status:
            return last[1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {seconds:g} s: {what}; last answer {last}")


def test_healthz_and_ready_follow_the_next_hop(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    """/ready is 200 while the cisco route's only destination passes its health checks, 503 naming the route
    once they mark it down, 200 again when it is back; /healthz stays 200 and /metrics keeps working."""

    async def main() -> None:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        config = lab_config(tmp_path / "sipfed.toml", certs, cups_port=cups.port, lync_port=lync.port)
        config.write_text(config.read_text().replace('listener = "cisco"\n', f'listener = "cisco"\n{HEALTH}\n', 1))
        sipfed = await asyncio.to_thread(start_sipfed, config)
        base = f"http://127.0.0.1:{sipfed.ports['metrics']}"
        try:
            body = await until_status(f"{base}/ready", 200, 10, "ready with both next hops up")
            assert body.startswith("ready\n")
            assert "route cisco: 1 of 1 destination(s) up" in body
            assert await asyncio.to_thread(curl, f"{base}/healthz") == (200, "ok\n")
            status, body = await asyncio.to_thread(curl, f"{base}/ready")
            assert status == 200, body
            await cups.stop()
            body = await until_status(f"{base}/ready", 503, 15, "not ready once cups is down")
            assert body.startswith("not ready\n")
            assert f"route cisco: no destination up: tls:127.0.0.2:{cups.port}" in body
            assert "lync" not in body  # the other route is fine
            status, body = await asyncio.to_thread(curl, f"{base}/ready")
            assert status == 503, body
            assert "route cisco: no destination up" in body
            assert await asyncio.to_thread(curl, f"{base}/healthz") == (200, "ok\n")
            status, page = await asyncio.to_thread(get, f"{base}/metrics")
            assert status == 200
            assert 'sipfed_destination_up{destination="tls:127.0.0.2:' in page
            back = Peer("cups.tomt.local", "127.0.0.2", certs, port=cups.port)
            await back.start()
            await until_status(f"{base}/ready", 200, 15, "ready again once cups is back")
            await back.stop()
        finally:
            await cups.stop()
            await lync.stop()

    asyncio.run(main())


# -- ms-diagnostics-public toward the Lync peer --------------------------------------------------------


def test_refusals_to_the_microsoft_peer_carry_ms_diagnostics_public(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    async def refusal(peer: Peer, port: int, server_name: str, uri: str, from_user: str = "bob") -> Msg:
        conn = await peer.connect("127.0.0.1", port, server_name)
        await conn.send(peer.request("MESSAGE", uri, to=f"<{uri}>", from_user=from_user))
        while True:
            msg, _ = await peer.next(timeout=10)
            if not msg.is_request and msg.status >= 200:
                conn.close()
                return msg

    async def main() -> None:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        config = lab_config(tmp_path / "sipfed.toml", certs, cups_port=cups.port, lync_port=lync.port, extra=PEERS)
        sipfed = await asyncio.to_thread(start_sipfed, config)
        lync_port, cisco_port = sipfed.ports["lync"], sipfed.ports["cisco"]
        try:
            no_route = await refusal(lync, lync_port, "sipfed.tomt.it", "sip:carol@nowhere.example")
            assert no_route.status == 404
            assert no_route.all("ms-diagnostics-public") == ['1005;reason="Cannot route to destination domain"']
            spoofed = await refusal(
                lync, lync_port, "sipfed.tomt.it", "sip:alice@tomt.local", from_user="bob@evil.example"
            )
            assert spoofed.status == 403
            assert spoofed.all("ms-diagnostics-public") == [
                '52010;reason="The sending server may not send requests for this From domain"'
            ]
            from_cisco = await refusal(
                cups, cisco_port, "sipfed.tomt.local", "sip:carol@nowhere.example", from_user="alice"
            )
            assert from_cisco.status == 404
            assert from_cisco.get("ms-diagnostics-public") is None  # cisco is no Microsoft peer
            await cups.stop()
            unreachable = await refusal(lync, lync_port, "sipfed.tomt.it", "sip:alice@tomt.local")
            assert unreachable.status == 503
            assert unreachable.all("ms-diagnostics-public") == ['1007;reason="Temporarily cannot route"']
            for answer in (no_route, spoofed, unreachable):
                header = answer.get("ms-diagnostics-public") or ""
                assert "source=" not in header
                assert "127.0.0." not in header
        finally:
            await cups.stop()
            await lync.stop()

    asyncio.run(main())
