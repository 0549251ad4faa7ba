"""Server-side TLS over ``ssl.MemoryBIO``, so a refused client gets its TLS alert.

asyncio's TLS transport (and uvloop's) drops the connection on a failed server handshake
without flushing the alert OpenSSL wrote, and tells nobody why. Running the handshake here
lets sipfed send the alert (so the peer's own log says e.g. *unsupported certificate*),
name the cause in its log, and count it.
"""

from __future__ import annotations

import contextlib
import ssl


class TlsSession:
    """One server-side TLS connection's state: bytes in, plaintext and bytes-to-send out."""

    __slots__ = ("closed", "handshaken", "incoming", "obj", "outgoing")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.handshaken = False
        self.closed = False

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed received bytes; return (plaintext, bytes to send). Raises ssl.SSLError when the
        handshake fails; ``pending()`` then holds the alert to send before closing."""
        self.incoming.write(data)
        if not self.handshaken:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                return b"", self.outgoing.read()
            self.handshaken = True
        chunks = []
        incoming, obj = self.incoming, self.obj
        while True:
            try:
                chunk = obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:  # close_notify from the peer: CPython's read returns b"" for it (raises only if unclean)
                self.closed = True
                break
            chunks.append(chunk)
            if not incoming.pending and not obj.pending():
                break  # all read: asking again would only raise SSLWantReadError, which is not free
        if self.closed:
            with contextlib.suppress(ssl.SSLError):
                obj.unwrap()  # our close_notify in answer (RFC 8446 §6.1), sent before the connection closes
        outgoing = self.outgoing
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), (outgoing.read() if outgoing.pending else b"")

    def send(self, plaintext: bytes) -> bytes:
        """Encrypt; return the bytes to write."""
        self.obj.write(plaintext)
        return self.outgoing.read()

    def pending(self) -> bytes:
        """Whatever OpenSSL still has to say (after a failure: the alert)."""
        return self.outgoing.read()
