"""The asyncio bridge (proxy/net/driver.py, proxy/net/connection.py) with a fake core, in process, over real
loopback sockets (aioquic's tests/test_asyncio.py is the model): bytes a client writes reach the core as one
framed message with its flow; what the core outputs is written where it says — back on the flow, or to a
next hop on a connection the driver opens and reports with ``sent_on``; the core's timer is armed and run.
The core is the fake here, so these tests hold the bridge alone to its contract with ``Proxy``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from proxy.net.driver import Driver
from proxy.relay.state import RelaySettings
from proxy.relay.types import Flow, NextHop, Output, SendOnFlow, SendToHop

MESSAGE = (
    b"MESSAGE sip:alice@tomt.local SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKb1\r\n"
    b"From: <sip:bob@tomt.it>;tag=1\r\nTo: <sip:alice@tomt.local>\r\nCall-ID: bridge@test\r\n"
    b"CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 5\r\n\r\nhello"
)


@dataclass
class FakeCore:
    """What Driver calls on a Proxy, recording the calls; ``script`` says what to output for each message."""

    script: list[list[Output]] = field(default_factory=list)
    received: list[tuple[Flow, bytes]] = field(default_factory=list)
    bound: list[tuple[int, int | str]] = field(default_factory=list)
    timer_at: float | None = None
    timers_run: list[float] = field(default_factory=list)
    settings: RelaySettings = field(default_factory=RelaySettings)
    wall_offset: float = 0.0
    draining: int = 0
    pending_outputs: list[Output] = field(default_factory=list)

    def receive(self, flow: Flow, data: bytes, now: float, framed: bool = False) -> None:
        self.received.append((flow, data))
        if self.script:
            self.pending_outputs.extend(self.script.pop(0))

    def receive_framing_error(self, flow: Flow, error: object) -> None:
        raise AssertionError(f"no framing error expected: {error}")

    def take_outputs(self) -> list[Output]:
        out, self.pending_outputs = self.pending_outputs, []
        return out

    def get_timer(self) -> float | None:
        return self.timer_at

    def handle_timer(self, now: float) -> None:
        self.timers_run.append(now)
        self.timer_at = None

    def sent_on(self, token: int, where: int | str) -> None:
        self.bound.append((token, where))

    def hop_failed(self, token: int, reason: str, now: float, kind: str = "other") -> None:
        raise AssertionError(f"hop {token} failed: {reason}")

    def unanswered(self, tokens: list[int]) -> list[int]:
        return []

    def connection_lost(self, tokens: list[int], reason: str, now: float) -> None:
        return None

    def pending(self) -> int:
        return 0


async def until(predicate: object, what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def bridge(core: FakeCore) -> Driver:
    return Driver(
        core,
        asyncio.get_running_loop(),
        client_ssl=None,  # type: ignore[arg-type]
        connect_timeout=2.0,
        max_message_bytes=65535,
    )


def test_a_message_in_reaches_the_core_framed_and_the_answer_goes_back_on_its_flow() -> None:
    async def main() -> None:
        core = FakeCore()
        driver = bridge(core)
        server = await asyncio.get_running_loop().create_server(driver.stream_factory("tcp", "lab"), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(MESSAGE[:40])  # in two writes: the framer joins them
        await writer.drain()
        await asyncio.sleep(0)
        writer.write(MESSAGE[40:])
        await until(lambda: core.received, "the message at the core")
        [(flow, data)] = core.received
        assert data == MESSAGE
        assert (flow.transport, flow.listener, flow.remote[0]) == ("tcp", "lab", "127.0.0.1")
        core.pending_outputs.append(SendOnFlow(flow, b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"))
        driver.pump()
        driver.flush()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert answer == b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
        writer.close()
        server.close()
        await driver.close()

    asyncio.run(main())


def test_a_request_to_a_next_hop_opens_a_connection_and_reports_it() -> None:
    async def main() -> None:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def next_hop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await got.put(await reader.readuntil(b"hello"))

        hop_server = await asyncio.start_server(next_hop, "127.0.0.2", 0)
        hop_port = hop_server.sockets[0].getsockname()[1]
        hop = NextHop("tcp", "127.0.0.2", hop_port, None, "lab", "cisco")
        core = FakeCore(script=[[SendToHop(hop, MESSAGE, 7)]])
        driver = bridge(core)
        server = await asyncio.get_running_loop().create_server(driver.stream_factory("tcp", "lab"), "127.0.0.1", 0)
        _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(MESSAGE)
        assert await asyncio.wait_for(got.get(), 5) == MESSAGE
        await until(lambda: core.bound, "sent_on")
        [(token, where)] = core.bound
        assert token == 7
        assert isinstance(where, int)  # the id of the connection it went out on
        assert driver.connections[where].flow is not None
        assert driver.connections[where].flow.remote == ("127.0.0.2", hop_port)  # type: ignore[union-attr]
        writer.close()
        server.close()
        hop_server.close()
        await driver.close()

    asyncio.run(main())


def test_the_cores_timer_is_armed_and_run() -> None:
    async def main() -> None:
        core = FakeCore()
        driver = bridge(core)
        deadline = asyncio.get_running_loop().time() + 0.05
        core.timer_at = deadline
        driver.pump()
        await until(lambda: core.timers_run, "the timer")
        assert core.timers_run == [core.timers_run[0]]
        assert core.timers_run[0] >= deadline  # run at its deadline, not before
        await driver.close()

    asyncio.run(main())
