"""Idle mutual-TLS connections opened by the bench process itself, to weigh what a proxy keeps per connection.

Each connection presents lync01.tomt.it (the lab's federation peer), checks the proxy's certificate
(sipfed.tomt.local), sends one OPTIONS and waits for a final response to it, so the proxy has really
accepted and read the connection; then it stays open and silent until ``close``. Loopback only; every
loop is bounded in count and by a deadline.
"""

from __future__ import annotations

import contextlib
import re
import resource
import socket
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.lab import LOOPBACK

SERVER_NAME = "sipfed.tomt.local"
STATUS_RE = re.compile(rb"^SIP/2\.0 (\d{3}) ", re.MULTILINE)


def client_context(certs: Path) -> ssl.SSLContext:
    """TLS 1.2+, client certificate lync01.tomt.it, the lab CA, the server's name checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certs / "lync01.tomt.it.pem", certs / "lync01.tomt.it.key")
    context.load_verify_locations(certs / "ca.crt")
    return context


def raise_open_files(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to ``needed`` (at most the hard limit); returns the soft limit.
    Children started afterwards (the proxies, SIPp) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def options_request(port: int, local: tuple[str, int], n: int, run: str) -> bytes:
    """An OPTIONS to the proxy itself (sipfed answers it; Kamailio's bench config answers 404: both final)."""
    return (
        f"OPTIONS sip:{LOOPBACK}:{port};transport=tls SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS {local[0]}:{local[1]};branch=z9hG4bK-idle-{run}-{n}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:bench@tomt.it>;tag=idle{n}\r\n"
        f"To: <sip:{LOOPBACK}:{port}>\r\n"
        f"Call-ID: idle-{run}-{n}@{LOOPBACK}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@dataclass
class IdleConnections:
    """Connections to one proxy's TLS listener."""

    port: int
    """The proxy's TLS port on 127.0.0.1."""
    sockets: list[ssl.SSLSocket] = field(default_factory=list)
    """Open connections, handshake done."""
    answered: int = 0
    """Connections on which the OPTIONS got a final response."""
    problems: Counter[str] = field(default_factory=Counter)
    """Failed connects, handshakes and OPTIONS, by kind (the first words of the error)."""

    def open(self, context: ssl.SSLContext, count: int, deadline: float) -> None:
        """Up to ``count`` connections, one after the other, until ``deadline`` (monotonic)."""
        for attempt in range(count):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.problems["not tried: deadline reached while opening"] += count - attempt
                return
            try:
                raw = socket.create_connection((LOOPBACK, self.port), timeout=min(5.0, remaining))
            except OSError as exc:
                self.problems[f"connect: {exc.strerror or type(exc).__name__}"] += 1
                continue
            try:
                self.sockets.append(context.wrap_socket(raw, server_hostname=SERVER_NAME))
            except (OSError, ssl.SSLError) as exc:
                raw.close()
                self.problems[f"handshake: {type(exc).__name__}"] += 1

    def ping(self, deadline: float) -> int:
        """One OPTIONS on every connection (all sent first), then each one's final response; returns how many
        answered. A connection that does not answer by ``deadline`` is counted as a problem and left open."""
        run = uuid.uuid4().hex[:8]
        sent: list[ssl.SSLSocket] = []
        for n, sock in enumerate(self.sockets):
            try:
                sock.sendall(options_request(self.port, sock.getsockname()[:2], n, run))
                sent.append(sock)
            except OSError as exc:
                self.problems[f"send: {type(exc).__name__}"] += 1
        for sock in sent:
            if _final_response(sock, deadline):
                self.answered += 1
            else:
                self.problems["no final response to OPTIONS"] += 1
        return self.answered

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()


def _final_response(sock: ssl.SSLSocket, deadline: float) -> bool:
    """Read until a final (>= 200) status line arrives, the peer closes, or ``deadline``."""
    received = b""
    while len(received) < 65536:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
        except (OSError, ssl.SSLError):
            return False
        if not chunk:
            return False
        received += chunk
        if any(int(code) >= 200 for code in STATUS_RE.findall(received)):
            return True
    return False
