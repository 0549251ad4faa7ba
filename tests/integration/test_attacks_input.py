"""Attacks on the live process with malformed input (issue 14, rows 12 and 13).

Row 12: a second, unescaped '@' in a From URI parameter or URI header (``<sip:ceo@tomt.local;x=@tomt.it>``)
must not move the domain the trust check reads: RFC 3261 §25.1 allows one '@' only, ending the userinfo,
so the request is refused with 400 and never relayed.
Row 13: a header block over the stream cap (17 KiB, or 10,000 short header lines) is answered
``513 Message Too Large`` (RFC 3261 §21.5.14) before sipfed closes the connection, as the README promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port, lab_config
from tests.peers.sippeer import Msg, Peer

pytestmark = pytest.mark.integration

#: Plain-TCP peers bound by source address, each allowed to speak for its own domain only.
PEERS = """
[[peers]]
name = "lync"
networks = ["127.0.0.3/32"]
domains = ["tomt.it"]

[[peers]]
name = "cisco"
networks = ["127.0.0.2/32"]
domains = ["tomt.local"]
"""


def with_from(msg: Msg, value: str) -> Msg:
    """``msg`` with its From header field replaced by ``value``, written as given."""
    return Msg(msg.start, [(k, value if k == "From" else v) for k, v in msg.headers], msg.body)


@pytest.mark.parametrize("from_", ["<sip:ceo@tomt.local;x=@tomt.it>;tag=1", "<sip:ceo@tomt.local?x=@tomt.it>;tag=1"])
def test_second_at_sign_in_from_uri_is_400_and_not_relayed(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed], from_: str
) -> None:
    """The lync peer may speak for tomt.it only; a From whose real domain is tomt.local gets 400, not relayed."""

    async def main() -> None:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs, transport="tcp")
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs, transport="tcp")
        await cups.start()
        await lync.start()
        config = lab_config(
            tmp_path / "at.toml", certs, cups_port=cups.port, lync_port=lync.port, transport="tcp", extra=PEERS
        )
        sipfed = start_sipfed(config)
        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        spoofed = with_from(
            lync.request(
                "MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", call_id="spoofed-at@127.0.0.3"
            ),
            from_,
        )
        await conn.send(spoofed)
        answer, _ = await lync.next()
        assert answer.get("call-id") == "spoofed-at@127.0.0.3"
        assert answer.status == 400, answer.start
        # A legitimate MESSAGE on the same connection afterwards: it must be the first thing cups sees.
        await conn.send(
            lync.request(
                "MESSAGE",
                "sip:alice@tomt.local",
                to="<sip:alice@tomt.local>",
                from_user="bob@tomt.it",
                call_id="control@127.0.0.3",
            )
        )
        got, _ = await cups.next()
        assert got.get("call-id") == "control@127.0.0.3"
        answer, _ = await lync.next()
        assert answer.status == 200

    asyncio.run(asyncio.wait_for(main(), 30))


def oversized_request(call_id: str, lines: list[str]) -> bytes:
    """A MESSAGE whose addressing headers come first and ``lines`` after them, before Content-Length."""
    head = [
        "MESSAGE sip:alice@tomt.local SIP/2.0",
        f"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK{uuid.uuid4().hex}",
        "Max-Forwards: 70",
        "From: <sip:bob@tomt.it>;tag=big1",
        "To: <sip:alice@tomt.local>",
        f"Call-ID: {call_id}",
        "CSeq: 1 MESSAGE",
        *lines,
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(head).encode()


def send_and_read_to_close(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new TCP connection; everything sipfed writes until it closes (within ``timeout``)."""
    deadline = time.monotonic() + timeout
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # sipfed may close before it has read it all: what it answered is still there to be read.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break  # unread request octets make the close a reset; the answer came before it
            if not chunk:
                break
            received += chunk
    return received


@pytest.mark.parametrize(
    ("kind", "lines"),
    [
        ("17 KiB block", [f"X-Pad-{i}: " + "a" * 1000 for i in range(17)]),
        ("10000 headers", [f"X-H{i}: 1" for i in range(10000)]),
    ],
)
def test_oversized_header_block_on_tcp_gets_513_before_close(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed], kind: str, lines: list[str]
) -> None:
    config = lab_config(
        tmp_path / "big.toml",
        certs,
        cups_port=free_port("127.0.0.2"),
        lync_port=free_port("127.0.0.3"),
        transport="tcp",
    )
    sipfed = start_sipfed(config)
    call_id = f"oversized-{uuid.uuid4().hex[:8]}@127.0.0.1"
    request = oversized_request(call_id, lines)
    assert len(request) > 17 * 1024, kind
    reply = send_and_read_to_close(sipfed.ports["cisco"], request)
    assert reply.startswith(b"SIP/2.0 513 "), (reply[:200], sipfed.log_text())
    head = reply.split(b"\r\n\r\n", 1)[0].decode()
    assert f"Call-ID: {call_id}" in head
    assert "CSeq: 1 MESSAGE" in head
    assert "From: <sip:bob@tomt.it>;tag=big1" in head
    assert sipfed.proc.poll() is None
