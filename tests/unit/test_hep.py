"""HEP v3 export: the encoder byte for byte against the HEP3 specification (rev. 37), the Call-ID as
correlation ID, the [hep] config section, and the export queue driven by a hand-made loop."""

from __future__ import annotations

import ast
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, HepConfig, load_config
from proxy.hep import HepTooLarge, call_id, encode
from proxy.net.hep_export import HepExport

ROOT = Path(__file__).resolve().parents[2]

OPTIONS = (
    b"OPTIONS sip:cups.tomt.local SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.3:40000;branch=z9hG4bK1\r\n"
    b"Call-ID: a84b4c76e66710@lync01.tomt.it\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def chunk(type_id: int, value: bytes) -> bytes:
    """A generic chunk written out by hand: vendor 0x0000, type, total length (header included), value."""
    return bytes.fromhex(f"0000 {type_id:04x} {6 + len(value):04x}") + value


def test_ipv4_tls_message_byte_for_byte() -> None:
    packet = encode(
        OPTIONS,
        "tls",
        ("127.0.0.3", 40000),
        ("127.0.0.1", 5062),
        1_700_000_000,
        123_456,
        2002,
        correlation_id=b"a84b4c76e66710@lync01.tomt.it",
    )
    body = (
        bytes.fromhex("0000 0001 0007 02")  # IP protocol family: 2, IPv4
        + bytes.fromhex("0000 0002 0007 06")  # IP protocol ID: TLS is carried over TCP, 6
        + bytes.fromhex("0000 0007 0008 9c40")  # source port 40000
        + bytes.fromhex("0000 0008 0008 13c6")  # destination port 5062
        + bytes.fromhex("0000 0009 000a 6553f100")  # seconds 1700000000
        + bytes.fromhex("0000 000a 000a 0001e240")  # microseconds 123456
        + bytes.fromhex("0000 000b 0007 01")  # protocol type: SIP
        + bytes.fromhex("0000 000c 000a 000007d2")  # capture agent ID 2002
        + bytes.fromhex("0000 0003 000a 7f000003")  # IPv4 source 127.0.0.3
        + bytes.fromhex("0000 0004 000a 7f000001")  # IPv4 destination 127.0.0.1
        + chunk(0x000F, OPTIONS)  # the captured payload, whole
        + chunk(0x0011, b"a84b4c76e66710@lync01.tomt.it")  # correlation ID
    )
    assert packet == b"HEP3" + struct.pack("!H", 6 + len(body)) + body
    assert packet[:4] == bytes.fromhex("48455033")


def test_ipv6_udp_message() -> None:
    packet = encode(OPTIONS, "udp", ("2001:db8::3", 5060), ("[2001:db8::1]", 5061), 1, 2, 7)
    chunks = walk(packet)
    assert chunks[0x0001] == b"\x0a"  # AF_INET6 as Linux numbers it, which receivers compare against
    assert chunks[0x0002] == b"\x11"  # UDP, 17
    assert chunks[0x0005] == bytes.fromhex("20010db8000000000000000000000003")
    assert chunks[0x0006] == bytes.fromhex("20010db8000000000000000000000001")
    assert 0x0003 not in chunks
    assert 0x0004 not in chunks
    assert packet[packet.index(bytes.fromhex("0000 0005")) :][:6] == bytes.fromhex("0000 0005 0016")  # 6 + 16
    assert (chunks[0x0007], chunks[0x0008]) == (struct.pack("!H", 5060), struct.pack("!H", 5061))
    assert chunks[0x000F] == OPTIONS
    assert 0x000E not in chunks
    assert 0x0011 not in chunks


def test_tcp_is_protocol_6_and_ipv4_mapped_addresses_are_ipv4() -> None:
    chunks = walk(encode(OPTIONS, "tcp", ("::ffff:192.0.2.7", 5555), ("192.0.2.1", 5060), 1, 2, 7))
    assert chunks[0x0002] == b"\x06"
    assert (chunks[0x0001], chunks[0x0003], chunks[0x0004]) == (b"\x02", bytes([192, 0, 2, 7]), bytes([192, 0, 2, 1]))


def test_password_is_the_authentication_key_chunk_before_the_payload() -> None:
    packet = encode(OPTIONS, "tls", ("127.0.0.3", 40000), ("127.0.0.1", 5062), 1, 2, 2002, b"s3cret")
    key = chunk(0x000E, b"s3cret")
    assert key in packet
    assert packet.index(key) + len(key) == packet.index(chunk(0x000F, OPTIONS))  # what fixed-layout readers expect
    assert walk(packet)[0x000E] == b"s3cret"


def test_the_header_length_counts_everything_and_a_too_large_message_is_refused() -> None:
    packet = encode(OPTIONS, "tls", ("127.0.0.3", 1), ("127.0.0.1", 2), 1, 2, 3, b"k", b"c")
    assert struct.unpack("!H", packet[4:6])[0] == len(packet)
    largest = 65535 - len(encode(b"", "tls", ("127.0.0.3", 1), ("127.0.0.1", 2), 1, 2, 3))
    assert len(encode(b"x" * largest, "tls", ("127.0.0.3", 1), ("127.0.0.1", 2), 1, 2, 3)) == 65535
    with pytest.raises(HepTooLarge, match="at most 65535"):
        encode(b"x" * (largest + 1), "tls", ("127.0.0.3", 1), ("127.0.0.1", 2), 1, 2, 3)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (OPTIONS, b"a84b4c76e66710@lync01.tomt.it"),
        (b"SIP/2.0 200 OK\r\ni: compact@x\r\n\r\n", b"compact@x"),  # RFC 3261 §7.3.3 compact form
        (b"MESSAGE sip:a SIP/2.0\r\nCALL-ID  :  spaced@x  \r\n\r\n", b"spaced@x"),
        (b"MESSAGE sip:a SIP/2.0\r\nTo: <sip:a>\r\n\r\nCall-ID: in-the-body\r\n", b""),  # headers only
        (b"MESSAGE sip:a SIP/2.0\r\nX-Call-ID: not-this\r\n\r\n", b""),
    ],
)
def test_call_id_is_the_correlation_id(message: bytes, expected: bytes) -> None:
    assert call_id(message) == expected


def test_the_encoder_is_sans_io() -> None:
    tree = ast.parse((ROOT / "proxy" / "hep.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"asyncio", "socket", "ssl", "time", "selectors", "threading", "prometheus_client"}


def walk(packet: bytes) -> dict[int, bytes]:
    """An independent chunk walker: the header's length is the packet's, every chunk is generic and in bounds."""
    assert packet[:4] == b"HEP3"
    assert struct.unpack("!H", packet[4:6])[0] == len(packet)
    chunks, at = {}, 6
    while at < len(packet):
        vendor, type_id, length = struct.unpack("!HHH", packet[at : at + 6])
        assert vendor == 0
        assert length >= 6
        assert at + length <= len(packet)
        chunks[type_id] = packet[at + 6 : at + length]
        at += length
    return chunks


# -- [hep] config --------------------------------------------------------------------------------------------

BASE = """
[proxy]
fqdn = "sipfed.tomt.local"

[[listeners]]
name = "cisco"
transport = "tcp"
address = "127.0.0.1"
port = 5060
"""


def config(tmp_path: Path, hep: str) -> Path:
    path = tmp_path / "sipfed.toml"
    path.write_text(BASE + hep)
    return path


def test_hep_section_loads(tmp_path: Path) -> None:
    loaded = load_config(
        config(tmp_path, '[hep]\naddress = "Homer.example:9060"\ncapture_id = 2002\npassword = "myHep"\n')
    )
    assert loaded.hep == HepConfig("homer.example", 9060, 2002, "myHep")
    v6 = load_config(config(tmp_path, '[hep]\naddress = "[2001:db8::9]:9060"\ncapture_id = 0\n'))
    assert v6.hep == HepConfig("2001:db8::9", 9060, 0, None)
    assert load_config(config(tmp_path, "")).hep is None


def test_every_hep_problem_is_reported_by_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            config(tmp_path, '[hep]\naddress = "2001:db8::9:9060"\ncapture_id = -1\npassword = ""\ncompress = true\n')
        )
    problems = caught.value.problems
    assert any(p.startswith("hep.address: '2001:db8::9:9060' must be HOST:PORT") for p in problems)
    assert "hep.capture_id: -1 must be a whole number 0-4294967295" in problems
    assert any(p.startswith("hep.password: must be a non-empty string") for p in problems)
    assert any(p.startswith("hep.compress: unknown key") for p in problems)
    assert str(tmp_path / "sipfed.toml") in str(caught.value)


@pytest.mark.parametrize("address", ["homer:0", "homer", ":9060", "homer:70000", "bad host:9060", "[::1]"])
def test_a_bad_hep_address_is_refused(tmp_path: Path, address: str) -> None:
    with pytest.raises(ConfigError, match=r"hep\.address: .* must be HOST:PORT"):
        load_config(config(tmp_path, f'[hep]\naddress = "{address}"\ncapture_id = 1\n'))


def test_capture_id_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hep\.capture_id: missing \(required\)"):
        load_config(config(tmp_path, '[hep]\naddress = "127.0.0.1:9060"\n'))


# -- the export queue, on a hand-made loop -------------------------------------------------------------------


class Loop:
    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def time(self) -> float:
        return 0.0

    def run(self) -> None:
        while self.soon:
            self.soon.pop(0)()


class Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.buffered = 0

    def sendto(self, data: bytes) -> None:
        self.sent.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class Done:
    def done(self) -> bool:
        return True


def export(queue_messages: int = 3) -> tuple[HepExport, Loop, Transport, dict[str, int]]:
    counts: dict[str, int] = {}

    def sent(n: int) -> None:
        counts["sent"] = counts.get("sent", 0) + n

    def dropped(reason: str, n: int) -> None:
        counts[reason] = counts.get(reason, 0) + n

    loop, transport = Loop(), Transport()
    hep = HepExport(
        loop,
        "127.0.0.1",
        9060,
        2002,
        b"pw",
        count_sent=sent,  # type: ignore[arg-type]
        count_dropped=dropped,
        queue_messages=queue_messages,
    )
    hep.transport = transport  # type: ignore[assignment]
    hep._task = Done()  # type: ignore[assignment]  # as if start() had connected
    return hep, loop, transport, counts


def test_copies_go_out_once_per_turn_in_order_and_a_full_queue_drops_and_counts() -> None:
    hep, loop, transport, counts = export(queue_messages=3)
    for n in range(5):
        hep.capture("tls", ("127.0.0.3", 40000 + n), ("127.0.0.1", 5062), OPTIONS)
    assert len(loop.soon) == 1
    assert transport.sent == []
    loop.run()
    assert [walk(p)[0x0007] for p in transport.sent] == [struct.pack("!H", 40000 + n) for n in range(3)]
    assert {walk(p)[0x000E] for p in transport.sent} == {b"pw"}
    assert {walk(p)[0x0011] for p in transport.sent} == {b"a84b4c76e66710@lync01.tomt.it"}
    assert counts == {"sent": 3, "queue_full": 2}


def test_a_message_too_large_for_hep_is_dropped_and_counted() -> None:
    hep, loop, transport, counts = export()
    hep.capture("tls", ("127.0.0.3", 1), ("127.0.0.1", 2), b"x" * 70_000)
    hep.capture("tls", ("127.0.0.3", 1), ("127.0.0.1", 2), OPTIONS)
    loop.run()
    assert len(transport.sent) == 1
    assert counts == {"sent": 1, "too_large": 1}


def test_a_pushed_back_socket_drops_instead_of_growing() -> None:
    hep, loop, transport, counts = export()
    transport.buffered = 2 << 20  # the kernel stopped taking datagrams; asyncio would buffer without bound
    hep.capture("udp", ("192.0.2.7", 5060), ("192.0.2.1", 5060), OPTIONS)
    loop.run()
    assert transport.sent == []
    assert counts == {"queue_full": 1}


def test_captures_before_the_socket_is_open_wait_for_it_and_after_close_are_dropped() -> None:
    hep, loop, transport, counts = export()
    hep.transport = None
    hep.capture("tls", ("127.0.0.3", 1), ("127.0.0.1", 2), OPTIONS)
    loop.run()
    assert counts == {}  # the first connect is still under way: kept
    hep.transport = transport  # type: ignore[assignment]
    hep._flush()
    assert counts == {"sent": 1}
    hep.close()
    hep.capture("tls", ("127.0.0.3", 1), ("127.0.0.1", 2), OPTIONS)
    loop.run()
    assert counts == {"sent": 1, "unreachable": 1}


def test_metrics_names(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from proxy.metrics import Metrics

    metrics = Metrics(CollectorRegistry())
    metrics.hep_sent(3)
    metrics.hep_dropped("queue_full", 2)
    value: Any = metrics.registry.get_sample_value
    assert value("sipfed_hep_sent_total") == 3
    assert value("sipfed_hep_dropped_total", {"reason": "queue_full"}) == 2
