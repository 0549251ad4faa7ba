"""Stream framing (RFC 3261 §18.3) with size caps, and RFC 5626 §4.4.1 CRLF keep-alives.

On TCP and TLS a message ends where Content-Length says; the framer cuts the byte
stream into whole messages without parsing them, so one slow or hostile peer costs
no more than its own buffer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.sip.errors import MessageTooLarge, SipError, SipSyntaxError
from proxy.sip.grammar import digits

# Content-Length = ( "Content-Length" / "l" ) HCOLON 1*DIGIT   (RFC 3261 §20.14);
# the value runs to the end of the line and over folded continuation lines (§7.3.1).
_CONTENT_LENGTH_RE = re.compile(
    rb"^(?:content-length|l)[ \t]*:(.*?(?:\r\n[ \t].*?)*)\r?$", re.IGNORECASE | re.MULTILINE
)


# Request-Line or Status-Line at the start of a header block (RFC 3261 §7.1, §7.2).
_START_LINE_RE = re.compile(rb"[A-Za-z0-9!%*_+`'~.-]+ \S+ SIP/\d|SIP/\d+\.\d+ \d{3}")


@dataclass(frozen=True, slots=True)
class Ping:
    """A CRLFCRLF keep-alive ping; the answer is one CRLF (RFC 5626 §4.4.1)."""


class FramingError(SipError):
    """A message the framer could not pass on: a ``SipError`` (its status and reason are the answer's) that
    the framer hands back as a frame rather than raising, so the messages after it in the same read are not
    lost; the caller may raise it."""

    def __init__(self, cause: SipError, head: bytes, fatal: bool) -> None:
        super().__init__(cause.reason, cause.status, cause.headers)
        self.cause = cause
        """The parser's own error (``MessageTooLarge``, ``SipSyntaxError``, ...)."""
        self.head = head
        """The header block, so a 513 or 400 can still be answered: whole, or for a block over the cap its
        lines that end within it; b"" when nothing of it can be read."""
        self.fatal = fatal
        """True when the stream cannot be resynchronised and the connection must close."""

    @property
    def error(self) -> SipError:
        """The cause, under its earlier name."""
        return self.cause


Frame = bytes | Ping | FramingError


class StreamFramer:
    """Cuts a TCP/TLS byte stream into SIP messages."""

    __slots__ = ("_buffer", "_skip", "broken", "max_header_bytes", "max_message_bytes")

    def __init__(self, max_message_bytes: int = 65535, max_header_bytes: int = 16384) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_header_bytes = max_header_bytes
        self._buffer = bytearray()
        self._skip = 0
        self.broken = False

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held (for slow-sender timeouts); keep-alive CR/LF do not count."""
        buf = self._buffer
        return 0 if not buf or not buf.strip(b"\r\n") else len(buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self.broken:
            return []
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buffer += data
        frames: list[Frame] = []
        while self._buffer and not self.broken:
            frame = self._next()
            if frame is None:
                break
            frames.append(frame)
        return frames

    def _next(self) -> Frame | None:
        buf = self._buffer
        if buf[0] in (0x0D, 0x0A):
            return self._keepalive()
        end = buf.find(b"\r\n\r\n")
        if end < 0 and len(buf) <= self.max_header_bytes:
            return None
        if end < 0 or end + 4 > self.max_header_bytes:
            too_large = MessageTooLarge(f"Message Too Large (header block over {self.max_header_bytes} bytes)")
            return self._fail(too_large, self._readable_head())
        head = bytes(buf[: end + 4])
        length = self._content_length(head)
        if isinstance(length, SipError):
            if _START_LINE_RE.match(head) is None:
                # Not even a start line (e.g. stray octets after a body): drop up to the blank line, keep the stream.
                del buf[: end + 4]
                return FramingError(SipSyntaxError("octets that are not a SIP message were dropped"), head, False)
            return self._fail(length, head)
        total = end + 4 + length
        if total > self.max_message_bytes:
            del buf[: end + 4]
            self._skip = max(0, length - len(buf))
            del buf[:length]
            too_large = MessageTooLarge(f"message of {total} bytes exceeds {self.max_message_bytes}")
            return FramingError(too_large, head, False)
        if len(buf) < total:
            return None
        message = bytes(buf[:total])
        del buf[:total]
        return message

    def _keepalive(self) -> Frame | None:
        """Leading CR/LF: CRLFCRLF is a ping; a prefix of one waits; any other CR or LF is skipped one
        byte at a time, so the outcome never depends on how the stream was cut into reads."""
        buf = self._buffer
        while buf and buf[0] in (0x0D, 0x0A):
            if buf[:4] == b"\r\n\r\n":
                del buf[:4]
                return Ping()
            if b"\r\n\r\n".startswith(bytes(buf[:4])):
                return None  # the start of a ping, wait for the rest
            del buf[:1]  # a lone CRLF (a pong) or stray white space before a message (§7.5)
        return None if not buf else self._next()

    def _readable_head(self) -> bytes:
        """The lines of an oversized header block that end within the cap, for its 513 (RFC 3261 §21.5.14):
        Via, From, To, Call-ID and CSeq usually come first. A line is whole when the next one does not
        start with SP/HT (§7.3.1 folding); the buffer holds more than the cap, so the next byte is there
        and the result does not depend on how the stream was cut. b"" if no SIP start line leads it."""
        buf = self._buffer
        end = buf.rfind(b"\r\n", 0, self.max_header_bytes)
        while end >= 0 and buf[end + 2] in (0x20, 0x09):
            end = buf.rfind(b"\r\n", 0, end)
        head = bytes(buf[: end + 2]) if end >= 0 else b""
        return head if _START_LINE_RE.match(head) else b""

    def _content_length(self, head: bytes) -> int | SipError:
        text = _plain_content_length(head)
        if text is None:
            return content_length_by_grammar(head)
        length = digits(text, 10)
        if length is None:
            return SipSyntaxError(f"invalid Content-Length {text[:20].decode('latin-1')!r}")
        return length

    def _fail(self, error: SipError, head: bytes) -> FramingError:
        self.broken = True
        self._buffer.clear()
        return FramingError(error, head, True)


def _plain_content_length(head: bytes) -> bytes | None:
    """The Content-Length value when the header block holds it once, spelt out, on one line; else None.

    The common case, found with two searches instead of the grammar's regex (a fifth of the framer's
    time per message). Anything else - the compact form ``l``, a header name starting with 'l', two
    Content-Length lines, a folded value, no colon after the name - goes to ``content_length_by_grammar``.
    """
    lowered = head.lower()
    at = lowered.find(b"\ncontent-length")
    if (
        at < 0
        or b"\nl" in lowered
        or lowered.startswith((b"l", b"content-length"))
        or lowered.find(b"\ncontent-length", at + 15) >= 0
    ):
        return None
    start = at + 15
    end = head.find(b"\n", start)
    if end < 0 or head[end + 1 : end + 2] in (b" ", b"\t"):
        return None
    line = head[start:end]
    if line.endswith(b"\r"):
        line = line[:-1]
    line = line.lstrip(b" \t")
    if not line.startswith(b":"):
        return None
    return line[1:].strip(b" \t")


def content_length_by_grammar(head: bytes) -> int | SipError:
    """Content-Length read with the full grammar: compact form, folding, repeated values (RFC 3261 §7.3)."""
    values = {m.group(1).replace(b"\r\n", b"").strip(b" \t") for m in _CONTENT_LENGTH_RE.finditer(head)}
    if not values:
        # RFC 3261 §18.3: on a stream Content-Length MUST be present; without it the body's end is
        # unknowable (RFC 4475 §3.4.1 over TCP), so the message is answered 400 and the stream closed.
        return SipSyntaxError("Content-Length is required on TCP/TLS (RFC 3261 §18.3)")
    if len(values) > 1:
        return SipSyntaxError("conflicting Content-Length values")
    text = values.pop()
    length = digits(text, 10)
    if length is None:
        return SipSyntaxError(f"invalid Content-Length {text[:20].decode('latin-1')!r}")
    return length
