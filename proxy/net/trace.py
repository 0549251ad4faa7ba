"""A full SIP message trace to a file, for review as one would in sngrep or Wireshark.

Each message is written whole, after a header line:
``2026-11-21T10:00:00.123456 RECV tls 127.0.0.3:40001 -> lync`` (or ``SEND ... <- listener``).

The file is bounded: past ``max_bytes`` it is rotated as logrotate and ``RotatingFileHandler`` do (``F``
becomes ``F.1``, ``F.1`` becomes ``F.2``, …; ``files`` old ones are kept, the oldest dropped). A ``TraceFilter``
narrows it to one peer or one Call-ID (``sipfed ctl trace on --peer lync --call-id …``). The file is created
0600: it holds the messages TLS kept from everyone else.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("sipfed.trace")

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
"""A trace file is rotated once it would grow past this."""
DEFAULT_FILES = 5
"""Rotated files kept beside the current one."""
REMEMBERED_CALLS = 4096
"""With a peer filter: the Call-IDs seen to or from that peer, whose other leg is traced too."""
RECENT = 32
"""With a peer filter: messages not (yet) matched, kept to write first when their call turns out to match
(the request from the other side that sipfed then sends to the peer)."""

#: RFC 3261 §20.8 Call-ID, or its compact form ``i``, in the header section.
CALL_ID_RE = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)

PeerOf = Callable[[str, tuple[str, int]], str | None]
"""(transport, remote address) -> the [[peers]] name of the connection there, or None."""


@dataclass(frozen=True, slots=True)
class TraceFilter:
    """Which messages a trace keeps; both set: a message must match both."""

    peer: str | None = None
    """A ``[[peers]]`` name: messages sent to or received from it, and the other leg of each of their calls."""
    call_id: str | None = None
    """Messages with exactly this Call-ID."""

    def describe(self) -> str:
        parts = [f"peer {self.peer}" if self.peer else "", f"Call-ID {self.call_id}" if self.call_id else ""]
        return ", ".join(p for p in parts if p) or "every message"


def call_id_of(data: bytes) -> str | None:
    """The Call-ID of a whole SIP message, or None when its header section has none."""
    end = data.find(b"\r\n\r\n")
    match = CALL_ID_RE.search(data, 0, end if end >= 0 else len(data))
    return match.group(1).decode("utf-8", "backslashreplace") if match else None


class Trace:
    """One trace file, rotated at ``max_bytes`` with ``files`` old ones kept, filtered by ``only``."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        files: int = DEFAULT_FILES,
        only: TraceFilter | None = None,
        peer_of: PeerOf | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.files = files
        self.only = only or TraceFilter()
        self.peer_of = peer_of
        self.written = 0
        """Messages written so far."""
        self._calls: OrderedDict[str, None] = OrderedDict()
        self._recent: deque[tuple[str, bytes]] = deque(maxlen=RECENT)
        self._file: BinaryIO = self._open()

    def _open(self) -> BinaryIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(fd).st_size
        return os.fdopen(fd, "ab", buffering=0)

    def message(self, direction: str, transport: str, remote: tuple[str, int], listener: str, data: bytes) -> None:
        filtered = self.only.peer is not None or self.only.call_id is not None
        call_id = call_id_of(data) if filtered else None
        if filtered and not self._wanted(transport, remote, call_id):
            if self.only.peer is not None and call_id is not None:
                self._recent.append((call_id, self._entry(direction, transport, remote, listener, data)))
            return
        if call_id is not None and self._recent:
            for recent_call, entry in [e for e in self._recent if e[0] == call_id]:
                self._write(entry)
                self._recent.remove((recent_call, entry))
        self._write(self._entry(direction, transport, remote, listener, data))

    @staticmethod
    def _entry(direction: str, transport: str, remote: tuple[str, int], listener: str, data: bytes) -> bytes:
        stamp = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        arrow = "->" if direction == "RECV" else "<-"
        text = data.decode("utf-8", "backslashreplace")
        return f"{stamp} {direction} {transport} {remote[0]}:{remote[1]} {arrow} {listener}\n{text}\n\n".encode()

    def _wanted(self, transport: str, remote: tuple[str, int], call_id: str | None) -> bool:
        only = self.only
        if only.call_id is not None and call_id != only.call_id:
            return False
        if only.peer is None:
            return True
        if call_id is not None and call_id in self._calls:
            self._calls.move_to_end(call_id)
            return True
        if (self.peer_of(transport, remote) if self.peer_of else None) != only.peer:
            return False
        if call_id is not None:
            self._calls[call_id] = None
            if len(self._calls) > REMEMBERED_CALLS:
                self._calls.popitem(last=False)
        return True

    def _write(self, entry: bytes) -> None:
        if self._file.closed:
            return
        try:
            if self._size and self._size + len(entry) > self.max_bytes:
                self._rotate()
            self._file.write(entry)  # one write per message: a reader never sees half of one
        except OSError as exc:  # a full disk must not take the relay with it: the trace stops instead
            log.error("trace to %s stopped: %s", self.path, exc.strerror or exc)
            self._file.close()
            return
        self._size += len(entry)
        self.written += 1

    def _rotate(self) -> None:
        self._file.close()
        if self.files:
            for n in range(self.files - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            os.truncate(self.path, 0)
        self._file = self._open()

    @property
    def active(self) -> bool:
        """Still writing (False after ``close``, or after a write failed)."""
        return not self._file.closed

    def close(self) -> None:
        self._file.close()
