"""Routes that survive a destination going away, through the real sipfed process.

Two Kamailio processes on loopback are one route's destinations (both carry the certificate
cups.tomt.local); sipfed finds them by RFC 3263 DNS from a loopback authoritative server
(tests/integration/dnsserver.py) or from a hand-written pool; a stdlib TLS peer on the tomt.it side
sends the load. One Kamailio is stopped by PID mid-load, or answers 503, and every request must
still end in a 200 from the other; health checks, keep-alives, the ``sipfed_destination_up`` metric
and ``sipfed doctor --live`` must all tell the same story.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Sipfed, free_port, lab_config
from tests.integration.dnsserver import HOST, TinyAuthoritativeServer
from tests.integration.kamailio import Kamailio
from tests.integration.metrics_scrape import sample, scrape
from tests.integration.waiting import wait_until
from tests.peers.sippeer import Msg, Peer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LOAD = 240
STOP_AFTER = 80
SOA = "@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.53\n"


def destination(tmp_path: Path, certs: Path, name: str, port: int, *, message_status: str = "200") -> Kamailio:
    """A Kamailio that answers OPTIONS 200 and MESSAGE with ``message_status``, naming itself in the reason."""
    retry = 'append_to_reply("Retry-After: 20\\r\\n");' if message_status == "503" else ""
    return Kamailio(
        tmp_path,
        certs,
        name="cups.tomt.local",
        host="127.0.0.2",
        port=port,
        routing=f"""
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "Alive {name}"); exit; }}
    if (is_method("MESSAGE")) {{
        xlog("L_NOTICE", "MESSAGE-AT-{name} $ci\\n");
        {retry}
        sl_send_reply("{message_status}", "{"OK" if message_status == "200" else "Busy"} from {name}");
        exit;
    }}
    sl_send_reply("405", "Not here");
""",
    )


def metrics(sipfed: Sipfed) -> str:
    return scrape(sipfed.ports["metrics"])


def destination_up(sipfed: Sipfed, port: int) -> float | None:
    match = re.search(
        rf'sipfed_destination_up{{destination="tls:127\.0\.0\.2:{port}[^"]*",route="pool"}} (\S+)', metrics(sipfed)
    )
    return float(match.group(1)) if match else None


async def send_load(
    lync: Peer, conn_port: int, count: int, on_sent: Callable[[int], None], *, one_by_one: bool = False
) -> dict[str, Msg]:
    """``count`` MESSAGEs at about 100/s (or each after the last one's answer); every final answer by
    Call-ID (bounded to 30 s)."""
    await lync.start()
    conn = await lync.connect("127.0.0.1", conn_port, "sipfed.tomt.it")
    finals: dict[str, Msg] = {}

    async def collect() -> None:
        while len(finals) < count:
            msg, _ = await lync.next(timeout=30)
            if not msg.is_request and (msg.status or 0) >= 200:
                finals[msg.get("call-id") or ""] = msg

    collector = asyncio.create_task(collect())
    for i in range(count):
        await conn.send(
            lync.request(
                "MESSAGE",
                "sip:alice@pool.tomt.local",
                to="<sip:alice@pool.tomt.local>",
                call_id=f"load{i}@tomt.it",
                body=f"m{i}",
            )
        )
        on_sent(i)
        await asyncio.sleep(0.01)  # pacing the load at ~100/s, not synchronisation
        for _ in range(500 if one_by_one else 0):  # bounded: 5 s
            if len(finals) > i:
                break
            await asyncio.sleep(0.01)
    await asyncio.wait_for(collector, 30)
    await lync.stop()
    conn.close()
    return finals


@pytest.fixture
def dns_server() -> Iterator[list[TinyAuthoritativeServer]]:
    started: list[TinyAuthoritativeServer] = []
    yield started
    for server in started:
        server.close()


def with_proxy_settings(config: Path, settings: str) -> Path:
    config.write_text(config.read_text().replace("[proxy]\n", f"[proxy]\n{settings}\n", 1))
    return config


def test_dns_route_survives_a_destination_stopped_mid_load(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed], dns_server: list[TinyAuthoritativeServer]
) -> None:
    """RFC 3263 SRV (priority 10: a, 20: b) through the live process: 'a' serves until it is stopped; the
    requests in flight on it and every later one end in 200 from 'b'; health checks mark 'a' down (the
    metric and doctor --live say so), and up again when it comes back."""
    port_a, port_b = free_port("127.0.0.2"), free_port("127.0.0.2")
    zone = SOA + (
        f"_sips._tcp.cups 30 IN SRV 10 0 {port_a} a.cups\n_sips._tcp.cups 30 IN SRV 20 0 {port_b} b.cups\n"
        "a.cups IN A 127.0.0.2\nb.cups IN A 127.0.0.2\n"
    )
    dns = TinyAuthoritativeServer({"tomt.local.": zone})
    dns_server.append(dns)
    kam_a = destination(tmp_path, certs, "a", port_a)
    kam_b = destination(tmp_path, certs, "b", port_b)
    metrics_port = free_port()
    config = lab_config(
        tmp_path / "dns.toml",
        certs,
        cups_port=port_a,
        lync_port=free_port("127.0.0.3"),
        extra=f"""
[dns]
nameservers = ["{HOST}"]
port = {dns.port}

[[routes]]
name = "pool"
match_uri = "pool.tomt.local"
resolve = "cups.tomt.local"
listener = "cisco"
down_seconds = 30
health = {{ interval_seconds = 0.5, timeout_seconds = 0.4, failures_to_down = 2, successes_to_up = 1 }}
""",
    )
    config.write_text(config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{metrics_port}"'))
    sipfed = start_sipfed(config)
    lync = Peer("lync01.tomt.it", "127.0.0.3", certs)

    def stop_a(sent: int) -> None:
        if sent == STOP_AFTER:
            kam_a.stop()

    try:
        wait_until(
            lambda: destination_up(sipfed, port_a) == 1.0 and destination_up(sipfed, port_b) == 1.0,
            10,
            "both destinations reported up",
        )
        finals = asyncio.run(send_load(lync, sipfed.ports["lync"], LOAD, stop_a))
        assert len(finals) == LOAD
        statuses = {msg.status for msg in finals.values()}
        assert statuses == {200}, [f"{m.status} {m.start}" for m in finals.values() if m.status != 200][:5]
        by_server = {name: sum(f"from {name}" in (m.start or "") for m in finals.values()) for name in "ab"}
        assert by_server["a"] >= STOP_AFTER // 2, by_server  # the SRV priority was honoured while 'a' lived
        assert all("from b" in (finals[f"load{i}@tomt.it"].start or "") for i in range(STOP_AFTER + 1, LOAD))
        wait_until(lambda: destination_up(sipfed, port_a) == 0.0, 10, "a reported down")
        assert destination_up(sipfed, port_b) == 1.0
        page = metrics(sipfed)
        assert sample(page, "sipfed_health_checks_total", route="pool", result="fail") >= 2
        assert sample(page, "sipfed_health_checks_total", route="pool", result="pass") >= 2
        doctor = subprocess.run(
            [sys.executable, "-m", "proxy", "doctor", "--live", "--json", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        state = {
            (f["severity"], f["cause"].split(" marked down")[0].split(" (up)")[0])
            for f in json.loads(doctor.stdout)
            if f["check"] == "live.state" and f["subject"] == "route pool"
        }
        assert state == {
            ("error", f"the running sipfed has tls:127.0.0.2:{port_a} (a.cups.tomt.local)"),
            ("ok", f"the running sipfed sends to tls:127.0.0.2:{port_b} (b.cups.tomt.local)"),
        }, state
        kam_a = destination(tmp_path, certs, "a", port_a)  # back on the same port
        wait_until(lambda: destination_up(sipfed, port_a) == 1.0, 10, "a reported up again")
    finally:
        kam_a.stop()
        kam_b.stop()
    log = sipfed.wait_for_log(
        re.compile(
            rf"route pool: destination tls:127\.0\.0\.2:{port_a} \(a\.cups\.tomt\.local\) "
            "is down after 2 failed health checks"
        )
    )
    assert f"destination tls:127.0.0.2:{port_a} (a.cups.tomt.local) is up again" in log


def test_503_from_a_pool_member_is_answered_by_the_next(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    """RFC 3263 §4.3: the preferred member answers 503 Retry-After: 20; the sender sees only 200s from the
    other one, and the busy member is left alone for those 20 s (it sees exactly one MESSAGE)."""
    port_busy, port_ok = free_port("127.0.0.2"), free_port("127.0.0.2")
    busy = destination(tmp_path, certs, "busy", port_busy, message_status="503")
    ok = destination(tmp_path, certs, "ok", port_ok)
    config = lab_config(
        tmp_path / "pool.toml",
        certs,
        cups_port=port_ok,
        lync_port=free_port("127.0.0.3"),
        extra=f"""
[[routes]]
name = "pool"
match_uri = "pool.tomt.local"
tls_name = "cups.tomt.local"
listener = "cisco"
destinations = [
    {{ host = "127.0.0.2", port = {port_busy}, priority = 10 }},
    {{ host = "127.0.0.2", port = {port_ok}, priority = 20 }},
]
""",
    )
    sipfed = start_sipfed(config)
    lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
    try:
        finals = asyncio.run(send_load(lync, sipfed.ports["lync"], 5, lambda _: None, one_by_one=True))
    finally:
        busy.stop()
        ok.stop()
    assert sorted(m.start or "" for m in finals.values()) == ["SIP/2.0 200 OK from ok"] * 5
    assert busy.log_text().count("MESSAGE-AT-busy") == 1
    assert ok.log_text().count("MESSAGE-AT-ok") == 5
    sipfed.wait_for_log(
        re.compile(
            rf"route pool: candidate tls:127\.0\.0\.2:{port_busy} answered 503 Busy from busy; "
            r"marked down for 20 s"
        )
    )


def processes_of(pid: int) -> list[int]:
    """A process and its children (Kamailio forks its workers), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return [pid, *children]


def test_keepalive_pings_an_idle_connection_and_closes_a_dead_one(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    """RFC 5626 §4.4.1 on the connection sipfed opened to Kamailio: idle for 1 s, it gets CRLFCRLF and
    Kamailio pongs; with Kamailio frozen (SIGSTOP on its processes) no pong comes within 1 s and sipfed
    closes the connection; the next request, once Kamailio runs again, opens a new one and gets its 200."""
    port = free_port("127.0.0.2")
    kam = destination(tmp_path, certs, "k", port)
    config = lab_config(tmp_path / "keepalive.toml", certs, cups_port=port, lync_port=free_port("127.0.0.3"))
    with_proxy_settings(config, "keepalive_seconds = 1\nkeepalive_timeout_seconds = 1")
    sipfed = start_sipfed(config)

    async def one_message(i: int) -> Msg:
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)  # a new one per event loop
        await lync.start()
        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", body=f"k{i}"))
        msg, _ = await lync.next(timeout=10)
        await lync.stop()
        conn.close()
        return msg

    frozen: list[int] = []
    try:
        assert asyncio.run(one_message(1)).start == "SIP/2.0 200 OK from k"
        wait_until(
            lambda: sample(metrics(sipfed), "sipfed_keepalives_total", result="answered") >= 2,
            10,
            "CRLF pings answered by Kamailio's pong",
        )
        frozen = processes_of(kam.proc.pid)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        wait_until(
            lambda: sample(metrics(sipfed), "sipfed_keepalives_total", result="unanswered") >= 1,
            10,
            "a ping left unanswered closes the connection",
        )
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        frozen = []
        assert asyncio.run(one_message(2)).start == "SIP/2.0 200 OK from k"
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        kam.stop()
    sipfed.wait_for_log("no keep-alive pong within 1 s (RFC 5626 §4.4.1); closing it")


def test_a_silent_destination_fails_its_health_checks(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    """A destination that keeps its connection but answers nothing (Kamailio frozen by SIGSTOP): the
    checks time out, it goes down after two, and comes back once it answers again."""
    port = free_port("127.0.0.2")
    kam = destination(tmp_path, certs, "k", port)
    config = lab_config(
        tmp_path / "silent.toml",
        certs,
        cups_port=port,
        lync_port=free_port("127.0.0.3"),
        extra=f"""
[[routes]]
name = "pool"
match_uri = "pool.tomt.local"
destination = "127.0.0.2"
port = {port}
tls_name = "cups.tomt.local"
listener = "cisco"
health = {{ interval_seconds = 0.5, timeout_seconds = 0.4, failures_to_down = 2, successes_to_up = 1 }}
""",
    )
    sipfed = start_sipfed(config)
    frozen: list[int] = []
    try:
        wait_until(
            lambda: sample(metrics(sipfed), "sipfed_health_checks_total", route="pool", result="pass") >= 1,
            10,
            "a first check passed",
        )
        frozen = processes_of(kam.proc.pid)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: destination_up(sipfed, port) == 0.0, 10, "the silent destination reported down")
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        frozen = []
        wait_until(lambda: destination_up(sipfed, port) == 1.0, 10, "the destination reported up again")
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        kam.stop()
    sipfed.wait_for_log(
        re.compile(
            rf"route pool: destination tls:127\.0\.0\.2:{port} is down after 2 failed health "
            r"checks \(last: no answer in 0\.4 s\)"
        )
    )
