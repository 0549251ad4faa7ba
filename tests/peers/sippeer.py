"""A minimal SIP endpoint over TLS/TCP for integration tests, written on purpose without
importing anything from sipfed: it frames by Content-Length, parses naively, and answers
the way a presence server or client would (RFC 3261 §8.2.6, §12.1.1)."""

from __future__ import annotations

import asyncio
import itertools
import re
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path

_seq = itertools.count(1)


@dataclass
class Msg:
    """One SIP message as text: start line, ordered headers, body."""

    start: str
    headers: list[tuple[str, str]]
    body: str = ""

    @property
    def is_request(self) -> bool:
        return not self.start.startswith("SIP/")

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0]

    @property
    def uri(self) -> str:
        return self.start.split(" ")[1]

    @property
    def status(self) -> int:
        return int(self.start.split(" ")[1])

    @property
    def reason(self) -> str:
        return self.start.split(" ", 2)[2] if self.start.count(" ") >= 2 else ""

    def all(self, name: str) -> list[str]:
        out: list[str] = []
        for key, value in self.headers:
            if key.lower() == name.lower():
                out.extend(v.strip() for v in re.split(r",(?![^<]*>)", value)) if name.lower() in (
                    "via",
                    "route",
                    "record-route",
                ) else out.append(value)
        return out

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def text(self) -> str:
        body = self.body.encode()
        headers = [(k, v) for k, v in self.headers if k.lower() != "content-length"]
        lines = [self.start, *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}", "", ""]
        return "\r\n".join(lines) + self.body


def parse(raw: bytes) -> Msg:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return Msg(lines[0], headers, body.decode())


class Conn:
    """One connection: send messages, read whole messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pongs = 0

    async def send(self, msg: Msg | str) -> None:
        self.writer.write((msg.text() if isinstance(msg, Msg) else msg).encode())
        await self.writer.drain()

    async def read(self, timeout: float = 5.0) -> Msg:
        return parse(await asyncio.wait_for(self._read_raw(), timeout))

    async def _read_raw(self) -> bytes:
        line = await self.reader.readuntil(b"\r\n")
        while line == b"\r\n":  # a CRLF keep-alive pong before a message (RFC 5626 §4.4.1)
            self.pongs += 1
            line = await self.reader.readuntil(b"\r\n")
        head = line + await self.reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"^(?:content-length|l)\s*:\s*(\d+)", head, re.IGNORECASE | re.MULTILINE)
        body = await self.reader.readexactly(int(match.group(1))) if match else b""
        return head + body

    def close(self) -> None:
        self.writer.close()


@dataclass
class Peer:
    """A SIP server/client on one loopback address, e.g. the 'cups' or 'lync' side."""

    name: str
    host: str
    certs: Path
    transport: str = "tls"
    port: int = 0
    received: asyncio.Queue[tuple[Msg, Conn]] = field(default_factory=asyncio.Queue)
    auto_answer: bool = True
    extra_answer_headers: list[tuple[str, str]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _conns: list[Conn] = field(default_factory=list)

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        ctx = ssl.create_default_context(purpose, cafile=str(self.certs / "ca.crt"))
        ctx.load_cert_chain(str(self.certs / f"{self.name}.pem"), str(self.certs / f"{self.name}.key"))
        if purpose is ssl.Purpose.CLIENT_AUTH:
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    async def start(self) -> None:
        ctx = self._context(ssl.Purpose.CLIENT_AUTH) if self.transport == "tls" else None
        self._server = await asyncio.start_server(self._accept, self.host, self.port, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection (the peer goes away)."""
        if self._server is not None:
            self._server.close()
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    async def connect(self, host: str, port: int, server_hostname: str) -> Conn:
        ctx = self._context(ssl.Purpose.SERVER_AUTH) if self.transport == "tls" else None
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=server_hostname if ctx else None, local_addr=(self.host, 0)
        )
        conn = Conn(reader, writer)
        asyncio.get_running_loop().create_task(self._serve(conn))
        return conn

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(Conn(reader, writer))

    async def _serve(self, conn: Conn) -> None:
        self._conns.append(conn)
        try:
            while True:
                msg = parse(await conn._read_raw())
                if msg.is_request and self.auto_answer and msg.method != "ACK":
                    await conn.send(self.answer(msg, 200, "OK"))
                await self.received.put((msg, conn))
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            ssl.SSLError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            return

    async def next(self, timeout: float = 5.0) -> tuple[Msg, Conn]:
        return await asyncio.wait_for(self.received.get(), timeout)

    def contact(self, user: str) -> str:
        return f"<sip:{user}@{self.host}:{self.port};transport={self.transport}>"

    def answer(self, req: Msg, status: int, reason: str) -> Msg:
        """§8.2.6.2 copy Via/From/To/Call-ID/CSeq; §12.1.1 copy Record-Route into a dialog-making 2xx."""
        headers = [(k, v) for k, v in req.headers if k.lower() in ("via", "from", "call-id", "cseq")]
        to = req.get("to") or ""
        headers.append(("To", to if ";tag=" in to else f"{to};tag={self.name[:4]}{next(_seq)}"))
        if 200 <= status < 300 and req.method in ("SUBSCRIBE", "INVITE"):
            headers += [("Record-Route", rr) for rr in req.all("record-route")]
            headers.append(("Contact", self.contact("alice")))
            if req.method == "SUBSCRIBE":
                headers.append(("Expires", req.get("expires") or "600"))
        headers += self.extra_answer_headers
        return Msg(f"SIP/2.0 {status} {reason}", headers)

    def request(
        self,
        method: str,
        uri: str,
        *,
        to: str,
        from_user: str = "bob",
        call_id: str | None = None,
        cseq: int = 1,
        extra: list[tuple[str, str]] | None = None,
        body: str = "",
        max_forwards: int = 70,
    ) -> Msg:
        """An out-of-dialog request from this peer (a UA behind it, really)."""
        headers = [
            ("Via", f"SIP/2.0/{self.transport.upper()} {self.host}:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:12]}"),
            ("Max-Forwards", str(max_forwards)),
            ("From", f"<sip:{from_user if '@' in from_user else f'{from_user}@{self.name}'}>;tag=f{next(_seq)}"),
            ("To", to),
            ("Call-ID", call_id or f"{uuid.uuid4().hex}@{self.host}"),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", self.contact(from_user)),
            *(extra or []),
        ]
        return Msg(f"{method} {uri} SIP/2.0", headers, body)

    def in_dialog(
        self,
        method: str,
        dialog_response: Msg,
        *,
        uas: bool,
        cseq: int,
        extra: list[tuple[str, str]] | None = None,
        body: str = "",
        request: Msg | None = None,
    ) -> Msg:
        """§12.2.1.1: an in-dialog request; the route set comes from Record-Route (reversed for the UAC)."""
        rr = dialog_response.all("record-route") if request is None else request.all("record-route")
        route = rr if uas else list(reversed(rr))
        source = request if uas and request is not None else dialog_response
        if uas:
            assert request is not None
            target = (request.get("contact") or "").strip("<>").split(">")[0]
            local, remote = request.get("to") or "", request.get("from") or ""
            local = dialog_response.get("to") or local
        else:
            target = (dialog_response.get("contact") or "").strip("<>").split(">")[0]
            local, remote = dialog_response.get("from") or "", dialog_response.get("to") or ""
        headers = [
            ("Via", f"SIP/2.0/{self.transport.upper()} {self.host}:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:12]}"),
            *(("Route", r) for r in route),
            ("Max-Forwards", "70"),
            ("From", local),
            ("To", remote),
            ("Call-ID", source.get("call-id") or ""),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", self.contact("alice" if uas else "bob")),
            *(extra or []),
        ]
        return Msg(f"{method} {target} SIP/2.0", headers, body)


def digest_answer(
    challenge: str, method: str, uri: str, username: str, password: str, nc: int = 1, cnonce: str = "0a4f113b"
) -> str:
    """A Proxy-Authorization for a Digest challenge (RFC 7616 §3.4), written here from the RFC so the
    tests do not lean on sipfed's own digest code."""
    import hashlib

    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.split(" ", 1)[1]))
    algorithm = fields.get("algorithm", "MD5")
    hasher = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]

    def hx(text: str) -> str:
        return hasher(text.encode()).hexdigest()

    ha1 = hx(f"{username}:{fields['realm']}:{password}")
    ha2 = hx(f"{method}:{uri}")
    nc_text = f"{nc:08x}"
    response = hx(f"{ha1}:{fields['nonce']}:{nc_text}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{username}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}, cnonce="{cnonce}", qop=auth, nc={nc_text}'
    )
