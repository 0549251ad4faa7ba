"""Issue 14, rows 7-9, against the real process: bounded connections (idle anonymous connections and a
handshake flood while the trusted peer is served), the idle timeout for unauthenticated connections, a
reload that re-binds open connections, and a drain that answers everything it accepted.

The attackers connect from loopback addresses of their own (127.0.0.5, 127.0.0.6): the per-source
limits are per address, as they would be on the Internet. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, lab_config
from tests.integration.metrics_scrape import metric_reaches, sample, scrape
from tests.peers.sippeer import Conn, Msg, Peer

pytestmark = pytest.mark.integration

IDLE_ATTACKER = "127.0.0.5"
FLOOD_ATTACKER = "127.0.0.6"

PEERS = """
[[peers]]
name = "{lync_name}"
subjects = ["{lync_subject}"]
domains = ["tomt.it"]
answers_digest = false

[[peers]]
name = "cisco"
subjects = ["cups.tomt.local"]
domains = ["tomt.local"]
"""

TCP_LISTENER = """
[[listeners]]
name = "lab"
transport = "tcp"
address = "127.0.0.1"
port = 0
"""


def peers(lync_name: str = "lync", lync_subject: str = "lync01.tomt.it") -> str:
    return PEERS.format(lync_name=lync_name, lync_subject=lync_subject)


async def closed_by_sipfed(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the other end closes within ``timeout`` (anything it sends before is read and dropped)."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while (left := deadline - time.monotonic()) > 0:
            try:
                if not await asyncio.wait_for(reader.read(4096), left):
                    return True
            except TimeoutError:
                return False
        return False
    return True  # reset


async def at_eof(conn: Conn, timeout: float) -> bool:
    """True when sipfed closes ``conn`` within ``timeout`` (the peer's own task reads it: poll its reader)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.reader.at_eof() or conn.reader.exception() is not None:
            return True
        await asyncio.sleep(0.05)
    return False


def message(lync: Peer, n: int) -> Msg:
    return lync.request(
        "MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", from_user="bob@tomt.it", body=f"message {n}"
    )


async def started_lab(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed], extra: str, cups_answers: bool = True
) -> tuple[Sipfed, Peer, Peer, Path]:
    cups = Peer("cups.tomt.local", "127.0.0.2", certs, auto_answer=cups_answers)
    lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
    await cups.start()
    await lync.start()
    config = lab_config(tmp_path / "sipfed.toml", certs, cups_port=cups.port, lync_port=lync.port, extra=extra)
    return start_sipfed(config), cups, lync, config


# -- row 7: bounded connections ------------------------------------------------------------------------------


def open_idle(port: int, count: int, deadline: float) -> tuple[list[socket.socket], int]:
    """``count`` plain TCP connections from IDLE_ATTACKER that never send anything; (sockets, failures)."""
    held, failed = [], 0
    for _ in range(count):
        if time.monotonic() > deadline:
            failed += 1
            continue
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(IDLE_ATTACKER, 0)))
        except OSError:
            failed += 1
    return held, failed


async def handshake_flood(port: int, count: int, per_second: float) -> int:
    """``count`` TLS handshakes without a client certificate from FLOOD_ATTACKER, ``per_second`` of them
    started each second; returns how many got a TLS session (none should: the listener is mutual TLS)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    async def one() -> bool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=context, local_addr=(FLOOD_ATTACKER, 0)), 3
            )
        except (OSError, ssl.SSLError, TimeoutError):
            return False
        writer.write(b"\r\n\r\n")
        closed = await closed_by_sipfed(reader, 3)
        writer.close()
        return not closed

    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / per_second)  # pacing the flood, not synchronisation
    return sum(await asyncio.gather(*tasks))


LIMITS_ROW7 = """
[limits]
max_connections = 64
max_connections_per_source = 16
handshakes_per_source_per_second = 5
unauthenticated_idle_seconds = 60
"""


def test_idle_connections_and_handshake_flood_leave_the_trusted_peer_served(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """450 idle anonymous TCP connections under a 400 file-descriptor limit, and a certificate-less handshake
    flood at ~100/s on the mutual-TLS listener: sipfed closes the excess at once, and the trusted lync peer
    keeps connecting (a new handshake each time) and every one of its MESSAGEs is answered 200."""

    async def main() -> tuple[Sipfed, list[int], int, int, int]:
        sipfed, _cups, lync, _ = await started_lab(tmp_path, certs, start_sipfed, peers() + TCP_LISTENER + LIMITS_ROW7)
        resource.prlimit(sipfed.proc.pid, resource.RLIMIT_NOFILE, (400, 400))  # the issue's `ulimit -n 400`
        held, failed = await asyncio.to_thread(open_idle, sipfed.ports["lab"], 450, time.monotonic() + 20)
        try:
            flood = asyncio.create_task(handshake_flood(sipfed.ports["lync"], 150, 100))
            statuses: list[int] = []
            for round_ in range(20):  # a fresh connection (and handshake) per round, while the flood lasts
                conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
                for i in range(4):
                    await conn.send(message(lync, round_ * 4 + i))
                    answer, _ = await lync.next(timeout=5)
                    statuses.append(answer.status)
                conn.close()
                if flood.done():
                    break
            flooded_sessions = await flood
            fds = len(os.listdir(f"/proc/{sipfed.proc.pid}/fd"))
        finally:
            for sock in held:
                sock.close()
        return sipfed, statuses, failed, flooded_sessions, fds

    sipfed, statuses, failed, flooded_sessions, fds = asyncio.run(asyncio.wait_for(main(), 60))
    assert statuses
    assert statuses == [200] * len(statuses)
    assert len(statuses) >= 8  # at least two rounds ran during the flood
    assert failed == 0  # every attacker's connect was accepted (and the excess closed at once), none hung
    assert flooded_sessions == 0
    assert fds < 200, fds
    text = scrape(sipfed.ports["metrics"])
    assert sample(text, "sipfed_connections_refused_total", listener="lab", reason="per_source") == 450 - 16
    assert sample(text, "sipfed_connections_refused_total", listener="lync", reason="handshake_rate") > 100
    assert sipfed.proc.poll() is None


def test_anonymous_connection_that_sends_nothing_valid_is_closed(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """unauthenticated_idle_seconds: a silent connection and one sending only keep-alives and garbage are
    closed; the trusted peer's connection, idle for longer, stays and is served."""

    async def main() -> Sipfed:
        sipfed, _cups, lync, _ = await started_lab(
            tmp_path, certs, start_sipfed, peers() + TCP_LISTENER + "\n[limits]\nunauthenticated_idle_seconds = 1\n"
        )
        trusted = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        silent_reader, silent = await asyncio.open_connection(
            "127.0.0.1", sipfed.ports["lab"], local_addr=(IDLE_ATTACKER, 0)
        )
        noisy_reader, noisy = await asyncio.open_connection(
            "127.0.0.1", sipfed.ports["lab"], local_addr=(IDLE_ATTACKER, 0)
        )
        closed = False
        for _ in range(40):  # keep-alives and a line of garbage every 0.1 s, at most 4 s
            noisy.write(b"\r\n\r\n" if _ % 2 else b"hello sipfed\r\n\r\n")
            if await closed_by_sipfed(noisy_reader, 0.1):
                closed = True
                break
        assert closed, "the connection sending only keep-alives and garbage was not closed"
        assert await closed_by_sipfed(silent_reader, 3), "the silent connection was not closed"
        silent.close()
        noisy.close()
        await trusted.send(message(lync, 1))  # idle longer than the anonymous ones, but trusted
        answer, _ = await lync.next(timeout=5)
        assert answer.status == 200
        return sipfed

    sipfed = asyncio.run(asyncio.wait_for(main(), 30))
    text = scrape(sipfed.ports["metrics"])
    assert sample(text, "sipfed_connections_closed_total", listener="lab", reason="unauthenticated_idle") == 2
    assert sample(text, "sipfed_open_connections", listener="lync", peer="lync") == 1


# -- row 8: reload re-binds -------------------------------------------------------------------------------------


def test_reload_rebinds_and_closes_connections_whose_certificate_no_longer_binds(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """SIGHUP renaming the lync peer moves its open connection to the new name; SIGHUP changing its
    subjects closes the connection (its certificate no longer binds it to the peer it was bound to)."""

    async def main() -> Sipfed:
        sipfed, cups, lync, config = await started_lab(tmp_path, certs, start_sipfed, peers())
        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        await conn.send(message(lync, 1))
        assert (await lync.next())[0].status == 200
        assert await metric_reaches(sipfed, "sipfed_open_connections", 1, listener="lync", peer="lync") == 1

        lab_config(config, certs, cups_port=cups.port, lync_port=lync.port, extra=peers(lync_name="pool"))
        sipfed.proc.send_signal(signal.SIGHUP)
        assert await metric_reaches(sipfed, "sipfed_open_connections", 1, listener="lync", peer="pool") == 1
        await conn.send(message(lync, 2))
        assert (await lync.next())[0].status == 200  # the same connection, bound to the renamed peer

        lab_config(
            config,
            certs,
            cups_port=cups.port,
            lync_port=lync.port,
            extra=peers(lync_name="pool", lync_subject="lync02.tomt.it"),
        )
        sipfed.proc.send_signal(signal.SIGHUP)
        assert await at_eof(conn, 5), "the connection whose certificate no longer binds stayed"
        return sipfed

    sipfed = asyncio.run(asyncio.wait_for(main(), 30))
    text = scrape(sipfed.ports["metrics"])
    assert sample(text, "sipfed_connections_closed_total", listener="lync", reason="trust_reload") == 1
    assert sample(text, "sipfed_config_reloads_total", outcome="applied") == 2
    sipfed.wait_for_log(
        re.compile(
            r"connection from 127\.0\.0\.3:\d+ closed: its certificate no longer binds it "
            r"to peer 'pool'"
        )
    )


# -- row 9: drain loses nothing ---------------------------------------------------------------------------------


async def answer_slowly(cups: Peer, delay: float, stop: asyncio.Event) -> None:
    """The slow next hop: every request is answered 200 after ``delay``; an INVITE only rings (180)."""

    async def later(msg: Msg, conn: Conn) -> None:
        if msg.method == "INVITE":
            await conn.send(cups.answer(msg, 180, "Ringing"))
            return
        await asyncio.sleep(delay)  # the next hop's slowness is the scenario, not synchronisation
        with contextlib.suppress(ConnectionError):
            await conn.send(cups.answer(msg, 200, "OK"))

    pending: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        try:
            msg, conn = await cups.next(timeout=0.2)
        except TimeoutError:
            continue
        if msg.is_request and msg.method != "ACK":
            task = asyncio.create_task(later(msg, conn))
            pending.add(task)
            task.add_done_callback(pending.discard)


async def collect_finals(peer: Peer, finals: dict[str, Msg], stop: asyncio.Event) -> None:
    """Keep each Call-ID's first final response that reaches ``peer``, until ``stop`` and nothing is left."""
    while not (stop.is_set() and peer.received.empty()):
        try:
            msg, _ = await peer.next(timeout=0.2)
        except TimeoutError:
            continue
        if not msg.is_request and msg.status >= 200:
            finals.setdefault(msg.get("call-id") or "", msg)


def test_sigterm_drain_answers_every_request(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """SIGTERM during ~100 requests/s toward a next hop that takes 0.5 s to answer, and an INVITE that only
    rings: new requests on the open connection get 503 with Retry-After, every request sent gets a final
    response (the INVITE a 503 at the drain's deadline), and the last log line says 0 unanswered."""

    async def main() -> tuple[Sipfed, list[str], dict[str, Msg], list[str], int | None]:
        sipfed, cups, lync, _ = await started_lab(tmp_path, certs, start_sipfed, peers(), cups_answers=False)
        stop = asyncio.Event()
        hop = asyncio.create_task(answer_slowly(cups, 0.5, stop))
        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        finals: dict[str, Msg] = {}
        collector = asyncio.create_task(collect_finals(lync, finals, stop))
        sent: list[str] = []
        invite = lync.request("INVITE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", from_user="bob@tomt.it")
        await conn.send(invite)
        sent.append(invite.get("call-id") or "")
        after_sigterm: list[str] = []
        for n in range(400):  # ~100/s: 1 s before SIGTERM, then until sipfed refuses, at most 4 s in all
            request = message(lync, n)
            try:
                await conn.send(request)
            except ConnectionError:
                break  # sipfed closed the connection: the drain ended while requests were still coming
            sent.append(request.get("call-id") or "")
            if n == 100:
                sipfed.proc.send_signal(signal.SIGTERM)
            if n > 100:
                after_sigterm.append(sent[-1])
                refused = [finals[c] for c in after_sigterm if c in finals and finals[c].status == 503]
                if len(refused) >= 10:
                    break
            await asyncio.sleep(0.01)  # pacing the load at ~100/s, not synchronisation
        code = await asyncio.to_thread(sipfed.proc.wait, 15)
        stop.set()
        await hop
        await collector
        return sipfed, sent, finals, after_sigterm, code

    sipfed, sent, finals, after_sigterm, code = asyncio.run(asyncio.wait_for(main(), 40))
    assert code == 0
    missing = [c for c in sent if c not in finals]
    assert not missing, f"{len(missing)} of {len(sent)} requests got no final response"
    refused = [finals[c] for c in after_sigterm if finals[c].status == 503]
    assert len(refused) >= 10
    assert all(r.get("retry-after") for r in refused)
    assert all("shutting down" in r.reason for r in refused)
    assert finals[sent[0]].status == 503  # the INVITE that only rang, answered at the drain's deadline
    sipfed.wait_for_log(re.compile(r"stopped: 1 transaction\(s\) answered by the drain, 0 unanswered"))
