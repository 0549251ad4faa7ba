"""Worker mode (``[proxy] workers = N``): what the supervisor (proxy/supervisor.py) and its workers agree on.

N worker processes each run the whole proxy on the same listening ports, as Kamailio's children or nginx's
workers do. The supervisor binds every listener N times with ``SO_REUSEPORT`` and hands worker *i* its own copy
of each (so the kernel spreads new TCP/TLS connections and UDP sources over the workers, and a connection is
owned, with its TLS session and transactions, by the worker that accepted it), plus, per UDP listener, a socket
of the worker's own: the requests it sends leave from there and name its port in their Via, so their answers
come back to the worker that holds the transaction (RFC 3261 §18.2.2) rather than to whichever worker the
shared port would hash them to.

This module holds the parts with no I/O: the slot a worker is started with (an environment variable), the
restart budget, and the merge of the workers' ``/metrics`` and ``/ready`` answers into the supervisor's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

WORKER_ENV = "SIPFED_WORKER"
"""The variable a worker finds its slot in (JSON); unset: sipfed runs as one process, or is the supervisor."""
OUT_SUFFIX = "/out"
"""A UDP listener's own socket of a worker is passed as ``<listener name>/out``."""


BACKLOG = 1024
"""Each worker's listening queue (asyncio's default is 100; a sign-in storm opens connections in bursts). The
worker's asyncio calls ``listen`` again on the socket it is handed, so it must pass the same number."""


class SlotError(Exception):
    """``$SIPFED_WORKER`` does not describe a worker slot (set by hand, or by another version)."""


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Worker ``index`` of ``count``: its sockets (listener name -> inherited file descriptor), where it reports
    that it is ready, and the supervisor it serves (it stops when that process is gone)."""

    index: int
    count: int
    sockets: Mapping[str, int]
    ready_fd: int
    supervisor: int

    def encode(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "count": self.count,
                "sockets": dict(self.sockets),
                "ready_fd": self.ready_fd,
                "supervisor": self.supervisor,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerSlot | None:
        text = environ.get(WORKER_ENV)
        if not text:
            return None
        try:
            raw = json.loads(text)
            slot = cls(
                int(raw["index"]),
                int(raw["count"]),
                {str(k): int(v) for k, v in dict(raw["sockets"]).items()},
                int(raw["ready_fd"]),
                int(raw["supervisor"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SlotError(f"${WORKER_ENV} is not a worker slot ({exc}); it is set by sipfed's supervisor") from None
        if not 0 <= slot.index < slot.count:
            raise SlotError(f"${WORKER_ENV}: worker {slot.index} of {slot.count} does not exist")
        return slot

    def suffixed(self, path: str) -> str:
        """A file of the worker's own beside the one the config names (control socket, trace file)."""
        return f"{path}.{self.index}"


def ready_message(pid: int, line: str, metrics_port: int | None) -> bytes:
    """What a worker writes on its ready pipe once every listener is served."""
    return json.dumps({"pid": pid, "ready": line, "metrics_port": metrics_port}).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int
    line: str
    metrics_port: int | None


def parse_ready(data: bytes) -> Ready | None:
    """A worker's ready message; None for nothing (it exited first) or anything else."""
    try:
        raw = json.loads(data)
        port = raw["metrics_port"]
        return Ready(int(raw["pid"]), str(raw["ready"]), None if port is None else int(port))
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(slots=True)
class RestartBudget:
    """A worker that dies is started again, up to ``limit`` times in ``window`` seconds (all workers together);
    past that something is wrong that restarting will not fix (a crash on every start): sipfed stops and says so."""

    limit: int = 5
    window: float = 60.0
    times: list[float] = field(default_factory=list)

    def allow(self, now: float) -> bool:
        self.times = [t for t in self.times if now - t < self.window]
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True


def merge_metrics(answers: Iterable[tuple[int, str]]) -> list[Metric]:
    """Each worker's ``/metrics`` text, its samples labelled ``worker="i"``: one family per name, in the order
    first seen. ``sum without (worker) (...)`` in PromQL gives the proxy's total."""
    families: dict[str, Metric] = {}
    for index, text in answers:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                merged.add_sample(
                    sample.name,
                    {**sample.labels, "worker": str(index)},
                    sample.value,
                    sample.timestamp,
                    sample.exemplar,
                )
    return list(families.values())


def merge_ready(answers: Sequence[tuple[int, int | None, str]]) -> tuple[bool, list[str]]:
    """``/ready`` over the workers: ready when every worker is; each worker's lines under its number.
    ``answers``: (worker, HTTP status or None when it did not answer, body)."""
    ready = bool(answers)
    lines: list[str] = []
    for index, status, body in answers:
        if status != 200:
            ready = False
        shown = [line for line in body.splitlines()[1:] if line] if status is not None else []
        state = "ready" if status == 200 else "not ready" if status is not None else "not answering"
        lines.append(f"worker {index}: {state}" + (f" ({body.strip()})" if status is None and body else ""))
        lines.extend(f"worker {index}: {line}" for line in shown)
    return ready, lines
