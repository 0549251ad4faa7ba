"""[hep] against a real HEP receiver: Debian's sngrep, headless (``-N -q -L udp:…``), with a HEP password,
writing what it receives to a pcap that is read back here (a few lines of ``struct``).

Two MESSAGE exchanges cross the real sipfed over mutual TLS, one each way; every message of each (request in,
request out, response in, response out) must be in the capture, in that order, decrypted, with the
addresses and ports of its own leg as the peers' sockets saw them, and a timestamp from the test's run.
sngrep checks the HEP authentication key (chunk 0x000e) and drops packets without it, so the capture also
proves the password chunk; it writes each HEP payload as a UDP packet in an Ethernet/IPv4 frame of its own
making, which is what is parsed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port, lab_config
from tests.integration.metrics_scrape import reading
from tests.integration.waiting import wait_until
from tests.peers.sippeer import Conn, Peer

pytestmark = pytest.mark.integration

PASSWORD = "myHep"
Address = tuple[str, int]


@dataclass(frozen=True)
class Captured:
    """One packet of sngrep's pcap: the HEP copy's addresses, timestamp and SIP payload."""

    source: Address
    destination: Address
    stamp: float
    payload: bytes

    @property
    def start_line(self) -> str:
        return self.payload.split(b"\r\n", 1)[0].decode()

    @property
    def body(self) -> str:
        return self.payload.split(b"\r\n\r\n", 1)[1].decode()

    def header(self, name: str) -> str | None:
        head = self.payload.split(b"\r\n\r\n", 1)[0].decode()
        values = [
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")[1:]
            if line.split(":", 1)[0].strip().lower() == name.lower()
        ]
        return values[0] if values else None


def read_pcap(path: Path) -> list[Captured]:
    """A classic pcap (microsecond or nanosecond), Ethernet frames holding IPv4/UDP, as sngrep writes them."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}[
        magic
    ]
    fraction = 1e9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e6
    assert struct.unpack(endian + "I", data[20:24])[0] == 1, "expected Ethernet frames (DLT_EN10MB)"
    out, at = [], 24
    while at + 16 <= len(data):
        seconds, fractional, length, _ = struct.unpack(endian + "IIII", data[at : at + 16])
        frame = data[at + 16 : at + 16 + length]
        at += 16 + length
        if len(frame) < length or frame[12:14] != b"\x08\x00":
            continue  # a record cut short (still being written), or not IPv4
        ip = frame[14:]
        header_bytes = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        udp = ip[header_bytes:]
        sport, dport = struct.unpack("!HH", udp[:4])
        out.append(
            Captured(
                (socket.inet_ntoa(ip[12:16]), sport),
                (socket.inet_ntoa(ip[16:20]), dport),
                seconds + fractional / fraction,
                bytes(udp[8:]),
            )
        )
    return out


def udp_bound(port: int) -> bool:
    """Something listens on 127.0.0.1:port/udp (Linux's table: little-endian hex address, hex port)."""
    with open("/proc/net/udp") as table:
        return any(line.split()[1] == f"0100007F:{port:04X}" for line in table.readlines()[1:])


class Sngrep:
    """sngrep receiving HEP3 on loopback with a password, capturing to a pcap; stopped by its PID."""

    def __init__(self, workdir: Path, password: str) -> None:
        if shutil.which("sngrep") is None:
            raise RuntimeError("sngrep is not installed: apt-get install sngrep (make system-deps)")
        self.port = free_port(kind=socket.SOCK_DGRAM)
        self.pcap = workdir / "hep.pcap"
        rc = workdir / "sngreprc"
        rc.write_text(f"set eep.listen.pass {password}\n")
        self.proc = subprocess.Popen(
            ["sngrep", "-N", "-q", "-F", "-f", str(rc), "-L", f"udp:127.0.0.1:{self.port}", "-O", str(self.pcap)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 10
        while not (udp_bound(self.port) and self.pcap.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sngrep did not start listening: {self.stderr}")
            time.sleep(0.05)

    @property
    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""

    def stop(self) -> int:
        """SIGTERM to our sngrep's PID; it closes (and flushes) the pcap on the way out."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture
def sngrep(tmp_path: Path) -> Iterator[Sngrep]:
    receiver = Sngrep(tmp_path, PASSWORD)
    yield receiver
    receiver.stop()


def legs(conn: Conn) -> tuple[Address, Address]:
    """(this end, the other end) of a peer's connection, as its socket reports them."""
    local, remote = conn.writer.get_extra_info("sockname"), conn.writer.get_extra_info("peername")
    return (local[0], local[1]), (remote[0], remote[1])


def test_every_message_of_both_legs_reaches_sngrep_decrypted_with_its_legs_addresses(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed], sngrep: Sngrep
) -> None:
    began = time.time()

    async def main() -> tuple[Sipfed, list[tuple[str, str, list[tuple[Address, Address, str]]]]]:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        hep = f'\n[hep]\naddress = "127.0.0.1:{sngrep.port}"\ncapture_id = 2002\npassword = "{PASSWORD}"\n'
        sipfed = start_sipfed(
            lab_config(tmp_path / "sipfed.toml", certs, cups_port=cups.port, lync_port=lync.port, extra=hep)
        )
        exchanges = []
        try:
            ways = (
                (lync, cups, "lync", "sipfed.tomt.it", "sip:alice@tomt.local"),
                (cups, lync, "cisco", "sipfed.tomt.local", "sip:bob@tomt.it"),
            )
            for sender, receiver, listener, fqdn, uri in ways:
                inbound = await sender.connect("127.0.0.1", sipfed.ports[listener], fqdn)
                request = sender.request(
                    "MESSAGE", uri, to=f"<{uri}>", body=f"hello via {listener}", extra=[("Content-Type", "text/plain")]
                )
                await inbound.send(request)
                relayed, outbound = await receiver.next()
                answer, _ = await sender.next()
                assert (relayed.body, answer.status) == (f"hello via {listener}", 200)
                sender_end, sipfed_in = legs(inbound)
                receiver_end, sipfed_out = legs(outbound)
                exchanges.append(
                    (
                        request.get("call-id") or "",
                        request.body,
                        [
                            (sender_end, sipfed_in, f"MESSAGE {uri} SIP/2.0"),  # request in
                            (
                                sipfed_out,
                                receiver_end,
                                f"MESSAGE {uri} SIP/2.0",
                            ),  # request out, on sipfed's own connection
                            (receiver_end, sipfed_out, "SIP/2.0 200 OK"),  # response in
                            (sipfed_in, sender_end, "SIP/2.0 200 OK"),  # response out
                        ],
                    )
                )
        finally:
            await cups.stop()
            await lync.stop()
        return sipfed, exchanges

    sipfed, exchanges = asyncio.run(main())
    wait_until(lambda: len(read_pcap(sngrep.pcap)) >= 8, 10, "8 HEP copies in sngrep's pcap")
    assert reading(sipfed, "sipfed_hep_sent_total") >= 8
    sipfed.stop()
    assert sngrep.stop() == 0
    ended = time.time()

    captured = read_pcap(sngrep.pcap)
    for call_id, body, expected in exchanges:
        mine = [c for c in captured if c.header("Call-ID") == call_id]
        assert [(c.source, c.destination, c.start_line) for c in mine] == expected
        assert all(began - 1 <= c.stamp <= ended + 1 for c in mine)  # chunks 0x0009/0x000a: when sipfed saw it
        request_in, request_out, response_in, response_out = mine
        assert request_in.header("Max-Forwards") == "70"
        assert request_out.header("Max-Forwards") == "69"
        assert request_in.body == request_out.body == body  # decrypted
        assert (request_out.header("Via") or "").startswith("SIP/2.0/TLS sipfed.tomt.")  # sipfed's Via on top
        assert (response_in.header("Via") or "").startswith("SIP/2.0/TLS sipfed.tomt.")
        assert response_out.header("Via") == request_in.header("Via")  # and taken off again
    assert len(captured) == 8  # nothing else: no keep-alives, no copies of other traffic
