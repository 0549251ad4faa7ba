"""A full SIP message trace to a file, for review as one would in sngrep or Wireshark.

Each message is written whole, after a header line:
``2026-11-21T10:00:00.123456 RECV tls 127.0.0.3:40001 -> lync`` (or ``SEND ... <- listener``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO


class Trace:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO = open(path, "a", encoding="utf-8", errors="backslashreplace", buffering=1)  # noqa: SIM115

    def message(self, direction: str, transport: str, remote: tuple[str, int], listener: str, data: bytes) -> None:
        stamp = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        arrow = "->" if direction == "RECV" else "<-"
        text = data.decode("utf-8", "backslashreplace")
        self._file.write(f"{stamp} {direction} {transport} {remote[0]}:{remote[1]} {arrow} {listener}\n{text}\n\n")

    def close(self) -> None:
        self._file.close()
