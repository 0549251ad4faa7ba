"""Logging: one line per event, with the Call-ID and peer when the event has them.

``--log-format text`` (default): ``2026-11-21T10:00:00.123 WARNING sipfed.relay: message call_id=… peer=lync``
``--log-format json``: one JSON object per line, for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
import time

FIELDS = ("call_id", "peer", "route", "listener", "remote", "worker")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        extras = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None))
        line = f"{stamp} {record.levelname} {record.name}: {record.getMessage()}"
        if extras:
            line += " " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: getattr(record, k) for k in FIELDS if getattr(record, k, None)})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class WorkerField(logging.Filter):
    """Worker mode: every line of worker ``index`` says so (``worker=1``); the supervisor's lines do not."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = str(index)

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def setup(level: str, fmt: str = "text", worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(WorkerField(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
