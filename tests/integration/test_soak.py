"""Soak: mixed load for a bounded time with faults injected, and not one transaction lost.

CI runs it for 60 s (``SOAK_SECONDS``); ``make soak`` runs 600 s. Every MESSAGE sent gets exactly
one final response (200 from the next hop, or 503/408 from sipfed while the next hop is down);
malformed messages get 400; a slow client is closed; RSS stays flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port
from tests.integration.processes import rss_kib
from tests.integration.waiting import async_wait_until
from tests.peers.sippeer import Msg, Peer

pytestmark = pytest.mark.integration

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
RATE = 150  # MESSAGEs per second


def soak_config(path: Path, certs: Path, uas_port: int) -> Path:
    path.write_text(f"""
[proxy]
fqdn = "sipfed.tomt.local"
transaction_timeout_seconds = 2
connect_timeout_seconds = 1
log_level = "warning"

[metrics]
listen = "127.0.0.1:0"

[limits]
incomplete_message_timeout_seconds = 2

[[listeners]]
name = "lab"
transport = "tcp"
address = "127.0.0.1"
port = 0

[[routes]]
match_uri = "tomt.local"
destination = "127.0.0.2"
port = {uas_port}
transport = "tcp"
""")
    return path


async def run_soak(certs: Path, sipfed: Sipfed, uas_port: int, seconds: float) -> dict[str, object]:
    uas = Peer("cups.tomt.local", "127.0.0.2", certs, transport="tcp", port=uas_port)
    await uas.start()
    client = Peer("lync01.tomt.it", "127.0.0.3", certs, transport="tcp")
    await client.start()
    conn = await client.connect("127.0.0.1", sipfed.ports["lab"], "sipfed.tomt.local")
    finals: dict[str, list[int]] = {}
    sent: list[str] = []
    rss: list[int] = []
    malformed_answers: list[int] = []
    slow_closed = []

    async def collect() -> None:
        while True:
            msg, _ = await client.received.get()
            if not msg.is_request and msg.status >= 200:
                finals.setdefault(msg.get("call-id") or "", []).append(msg.status)

    async def drain_uas() -> None:
        while True:
            await uas.received.get()

    async def faults(deadline: float) -> None:
        """At 8 s and every 15 s after: the next hop goes away for 3 s; malformed input; a slow client."""
        pause = 8.0
        while time.monotonic() + pause < deadline - 5:  # bounded by the soak's deadline
            await asyncio.sleep(pause)  # the fault schedule, not synchronisation
            pause = 15.0
            await uas.stop()
            await asyncio.sleep(3)  # the outage itself: load keeps coming while the next hop is away
            await uas.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", sipfed.ports["lab"])
            bad = Msg(
                "MESSAGE sip:x@tomt.local SIP/2.0",
                [
                    ("Via", "SIP/2.0/TCP 127.0.0.9;branch=z9hG4bKbad"),
                    ("CSeq", "one MESSAGE"),
                    ("Call-ID", "bad"),
                    ("From", "<sip:a@b>;tag=1"),
                    ("To", "<sip:x@tomt.local>"),
                ],
            )
            writer.write(bad.text().encode())
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            malformed_answers.append(int(answer.split(b" ")[1]))
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", sipfed.ports["lab"])
            writer.write(b"MESSAGE sip:x@tomt.local SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.9;branch=z9hG4bKslow\r\n")
            slow_closed.append(await asyncio.wait_for(reader.read(), 10) == b"")
            writer.close()

    tasks = [asyncio.create_task(collect()), asyncio.create_task(drain_uas())]
    deadline = time.monotonic() + seconds
    fault_task = asyncio.create_task(faults(deadline))
    start = time.monotonic()
    i = 0
    while time.monotonic() < deadline:  # bounded in time
        call_id = f"soak-{uuid.uuid4().hex}"
        sent.append(call_id)
        await conn.send(
            client.request(
                "MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", call_id=call_id, body=f"soak {i}"
            )
        )
        i += 1
        if i % RATE == 0:
            rss.append(rss_kib(sipfed.proc.pid))
        await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))  # pacing the load at RATE
    with contextlib.suppress(AssertionError):  # the assertions below say which ones are missing
        await async_wait_until(lambda: len(finals) >= len(sent), 10, "the last answers (transaction timeout 2 s)")
    await fault_task
    for task in tasks:
        task.cancel()
    return {"sent": sent, "finals": finals, "rss": rss, "malformed": malformed_answers, "slow": slow_closed}


def test_soak_without_losing_a_transaction(tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    uas_port = free_port("127.0.0.2")
    sipfed = start_sipfed(soak_config(tmp_path / "soak.toml", certs, uas_port))
    result = asyncio.run(asyncio.wait_for(run_soak(certs, sipfed, uas_port, SOAK_SECONDS), SOAK_SECONDS + 60))
    sent: list[str] = result["sent"]  # type: ignore[assignment]
    finals: dict[str, list[int]] = result["finals"]  # type: ignore[assignment]
    lost = [c for c in sent if c not in finals]
    doubled = [c for c, statuses in finals.items() if len(statuses) != 1]
    statuses = [s[0] for s in finals.values()]
    rss: list[int] = result["rss"]  # type: ignore[assignment]
    print(
        f"\nsoak {SOAK_SECONDS:g} s: {len(sent)} MESSAGEs, lost {len(lost)}, 200: {statuses.count(200)}, "
        f"503: {statuses.count(503)}, 408: {statuses.count(408)}, malformed answered {result['malformed']}, "
        f"RSS {min(rss[3:] or rss)}-{max(rss[3:] or rss)} KiB"
    )
    assert len(sent) > RATE * SOAK_SECONDS * 0.8
    assert lost == []
    assert doubled == []
    assert set(statuses) <= {200, 503, 408}
    assert statuses.count(200) > len(sent) * 0.8
    assert all(status == 400 for status in result["malformed"])  # type: ignore[attr-defined]
    assert all(result["slow"])  # type: ignore[arg-type]
    assert len(result["malformed"]) >= 1  # type: ignore[arg-type]  # the faults really happened
    assert statuses.count(503) + statuses.count(408) > 0  # ... and the next hop really went away
    steady = rss[3:] or rss
    assert max(steady) - min(steady) < 20_000  # KiB: flat after warm-up
    assert sipfed.proc.poll() is None
