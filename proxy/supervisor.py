"""Worker mode's supervisor (``[proxy] workers = N`` > 1): binds the listeners, starts N workers, keeps them up.

What it does, in order (proxy/workers.py says how the sockets are shared):

1. Binds every listener N times with ``SO_REUSEPORT`` (the first bind settles a port 0; the others join it),
   and per UDP listener one more socket per worker (port 0: the worker's own, for its requests' Via). A port in
   use fails here, once, with the message a single process gives.
2. Starts worker *i* as ``python -m proxy <the same arguments>`` with its sockets inherited and its slot in
   ``$SIPFED_WORKER``; the worker binds nothing itself and writes one line on a pipe when it serves.
3. Prints ``sipfed ready …`` (as one process would) once every worker has, and tells systemd (``READY=1``; the workers
   are not given ``$NOTIFY_SOCKET``).
4. Serves ``[metrics] listen``: ``/metrics`` is every worker's, each sample labelled ``worker``, plus its own
   (``sipfed_worker_up``, ``sipfed_worker_restarts_total``); ``/ready`` and ``/healthz`` ask every worker.
   Serves ``[control] socket`` by asking every worker's (``<socket>.<i>``) and answering with all the answers.
5. A worker that dies is started again on the same sockets (connections that arrive meanwhile wait in its
   listening socket's queue), at most ``RestartBudget.limit`` times a minute; past that it stops everything.
   One that cannot start gives its sockets up (the others take its share) and is tried again later.
6. SIGHUP is passed to every worker (each re-reads the config); SIGTERM/SIGINT too, then it waits for them to
   drain and exit, closing its own copies of the listening sockets first so no new connection is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from proxy.config import Config, ListenerConfig
from proxy.ctl import CtlError, ask
from proxy.net.control import ControlError, ControlServer
from proxy.net.control_rpc import FAILED, Method, Params, RpcError
from proxy.net.notify import notify, reloading
from proxy.net.status import Readiness, StatusServer
from proxy.server import StartupError, raise_open_files
from proxy.workers import (
    BACKLOG,
    OUT_SUFFIX,
    WORKER_ENV,
    RestartBudget,
    WorkerSlot,
    merge_metrics,
    merge_ready,
    parse_ready,
)

log = logging.getLogger("sipfed")
PACKAGE = __name__.rpartition(".")[0]
"""The package whose ``__main__`` a worker runs: this one's."""

START_SECONDS = 60.0
"""A worker that has not reported ready this long after it was started is taken as failed."""
FANNED_OUT = ("status", "connections", "routes", "subscriptions", "reload", "trace", "log_level")
"""The control methods (proxy/net/control_methods.py) the supervisor answers by asking every worker; ``trace``'s
``file`` becomes ``<file>.<worker>``, as ``run --trace`` does."""
RETRY_SECONDS = 10.0
"""How often a worker that could not start again is tried."""
ASK_SECONDS = 2.0
"""How long a scrape, probe or control request waits for one worker."""


@dataclass(slots=True)
class Worker:
    index: int
    sockets: dict[str, socket.socket]
    process: asyncio.subprocess.Process | None = None
    """None while not running (not started yet, exited, or could not start)."""
    pid: int = 0
    metrics_port: int | None = None
    restarts: int = 0


class Supervisor:
    def __init__(self, config: Config, argv: Sequence[str]) -> None:
        self.config = config
        self.argv = list(argv)
        self.loop = asyncio.get_running_loop()
        self.ports: dict[str, int] = {}
        self._where: dict[str, tuple[socket.AddressFamily, socket.SocketKind, tuple[Any, ...]]] = {}
        """Each listener's family, kind and address (with its settled port), to bind a worker's copy again."""
        self.workers = [Worker(i, {}) for i in range(config.workers)]
        self.budget = RestartBudget()
        self.registry = CollectorRegistry()
        self.up = Gauge(
            "sipfed_worker_up", "1 while worker N runs and has reported ready", ["worker"], registry=self.registry
        )
        self.restarted = Counter(
            "sipfed_worker_restarts", "Workers started again after they died", ["worker"], registry=self.registry
        )
        self.registry.register(WorkersCollector(self))
        self.status: StatusServer | None = None
        self.control: ControlServer | None = None
        self.stopping = False

    # -- 1. the sockets ------------------------------------------------------------------------------------------

    def bind(self) -> None:
        for listener in self.config.listeners:
            try:
                self._bind(listener)
            except OSError as exc:
                self.close_sockets()
                raise StartupError(
                    f"cannot listen on {listener.address}:{listener.port} ({listener.transport}) "
                    f"for listener {listener.name!r}: {exc.strerror or exc}"
                ) from None

    def _bind(self, listener: ListenerConfig) -> None:
        kind = socket.SOCK_DGRAM if listener.transport == "udp" else socket.SOCK_STREAM
        family, _, _, _, address = socket.getaddrinfo(
            listener.address, listener.port, type=kind, flags=socket.AI_PASSIVE
        )[0]
        # First without SO_REUSEPORT: a port another process holds (another sipfed in worker mode included, whose
        # SO_REUSEPORT group we would otherwise join and split its traffic with) fails here as in one process.
        # It also settles a port 0.
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
            self.ports[listener.name] = probe.getsockname()[1]
        self._where[listener.name] = (family, kind, (address[0], self.ports[listener.name], *address[2:]))
        for worker in self.workers:
            self._bind_for(worker, listener.name)

    def _bind_for(self, worker: Worker, name: str) -> None:
        """``worker``'s copy of listener ``name`` (SO_REUSEPORT, at the settled port), and for UDP its own socket."""
        family, kind, address = self._where[name]
        sock = socket.socket(family, kind)
        worker.sockets[name] = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
        else:
            own = socket.socket(family, kind)
            worker.sockets[name + OUT_SUFFIX] = own
            own.bind((address[0], 0, *address[2:]))

    def unbind(self, worker: Worker) -> None:
        """A worker that could not start leaves the SO_REUSEPORT groups, so the kernel gives its share of new
        connections and datagrams to the workers that serve (those waiting in its queue are reset); its next
        attempt binds afresh."""
        for sock in worker.sockets.values():
            sock.close()
        worker.sockets.clear()

    def close_sockets(self, kinds: tuple[int, ...] = (socket.SOCK_STREAM, socket.SOCK_DGRAM)) -> None:
        for worker in self.workers:
            for name, sock in list(worker.sockets.items()):
                if sock.type in kinds:
                    sock.close()
                    del worker.sockets[name]

    # -- 2. the workers ------------------------------------------------------------------------------------------

    def command(self) -> list[str]:
        """This very program again: the same interpreter, its -P (the compiled tree on PYTHONPATH), the same
        package (``proxy`` in the checkout, ``sipfed.proxy`` from the wheel), the same arguments (the config
        file, --log-level, --log-format, --trace)."""
        return [sys.executable, *(["-P"] if sys.flags.safe_path else []), "-m", PACKAGE, *self.argv]

    async def start(self, worker: Worker) -> None:
        """Start ``worker`` and wait for its ready line; StartupError when it exits or hangs first."""
        read, write = os.pipe()
        fds = {name: sock.fileno() for name, sock in worker.sockets.items()}
        slot = WorkerSlot(worker.index, len(self.workers), fds, write, os.getpid())
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # only the supervisor tells systemd
        env[WORKER_ENV] = slot.encode()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command(), pass_fds=[*fds.values(), write], env=env, stdin=subprocess.DEVNULL
            )
        finally:
            os.close(write)
        worker.process, worker.pid = process, process.pid
        reader = asyncio.StreamReader()
        with os.fdopen(read, "rb", buffering=0) as pipe:
            transport, _ = await self.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
            try:
                line = await asyncio.wait_for(reader.readline(), START_SECONDS)
            except TimeoutError:
                line = b""
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            finally:
                transport.close()
        ready = parse_ready(line)
        if ready is None:
            worker.process = None
            code = await process.wait()
            raise StartupError(
                f"worker {worker.index} (pid {process.pid}) did not start (exit status {code}); its log says why"
            )
        worker.metrics_port = ready.metrics_port
        self.up.labels(str(worker.index)).set(1)
        log.info("worker %d (pid %d) ready", worker.index, process.pid)

    async def run(self) -> int:
        self.bind()
        try:
            await asyncio.gather(*(self.start(worker) for worker in self.workers))
        except StartupError:
            await self.stop_workers(5.0)
            self.close_sockets()
            raise
        line = " ".join(
            f"{lst.name}={lst.transport}:{lst.address}:{self.ports[lst.name]}" for lst in self.config.listeners
        )
        if self.config.metrics_listen is not None:
            host, port = self.config.metrics_listen
            try:
                self.status = StatusServer(host, port, self.registry, self.loop, self.readiness, self.health)
            except OSError as exc:
                await self.stop_workers(5.0)
                raise StartupError(
                    f"cannot serve metrics on {host}:{port} ([metrics] listen): {exc.strerror or exc}"
                ) from None
            line += f" metrics=http:{host}:{self.status.port}"
        if self.config.control is not None:
            self.control = ControlServer(self.config.control.socket, self.control_methods(), self.loop)
            try:
                await self.control.start(self.config.control.mode)
            except ControlError as exc:
                await self.stop_workers(5.0)
                raise StartupError(str(exc)) from None
        print(f"sipfed ready {line}", flush=True)
        log.info("%d workers share the listeners (SO_REUSEPORT); supervisor pid %d", len(self.workers), os.getpid())
        notify("READY=1", f"STATUS=relaying: {len(self.workers)} workers, {len(self.config.listeners)} listener(s)")
        code = await self.supervise()
        if self.status is not None:
            await self.loop.run_in_executor(None, self.status.close)
        return code

    async def supervise(self) -> int:
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, stop.set)
            self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        stopping = asyncio.ensure_future(stop.wait())
        code = 0
        while code == 0:
            exits: dict[asyncio.Future[Any], Worker] = {
                asyncio.ensure_future(w.process.wait()): w for w in self.workers if w.process is not None
            }
            waiting: set[asyncio.Future[Any]] = {stopping, *exits}
            if any(w.process is None for w in self.workers):  # one could not start: try it again in a while
                waiting.add(asyncio.ensure_future(asyncio.sleep(RETRY_SECONDS)))
            done, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in pending - {stopping}:
                task.cancel()
            if stopping in done:
                break
            for task in done:
                if task in exits and not self.died(exits[task]):
                    code = 1  # crashing faster than the budget allows: restarting will not mend it
            if code == 0:
                await self.start_missing()
        if not stopping.done():
            stopping.cancel()
        log.info("stopping: the workers drain and exit")
        notify("STOPPING=1", "STATUS=workers draining")
        if self.control is not None:
            self.control.close()
        clean = await self.stop_workers(self.config.transaction_timeout_seconds + 10)
        self.close_sockets()
        return code if clean else 1

    def died(self, worker: Worker) -> bool:
        """A running worker exited: log it and count it; False when the restart budget is spent."""
        assert worker.process is not None
        status = worker.process.returncode
        worker.process = None
        self.up.labels(str(worker.index)).set(0)
        if not self.budget.allow(time.monotonic()):
            log.error(
                "worker %d (pid %d) exited (status %s): %d restarts within %g s already; stopping sipfed",
                worker.index,
                worker.pid,
                status,
                self.budget.limit,
                self.budget.window,
            )
            return False
        log.error("worker %d (pid %d) exited (status %s); starting it again", worker.index, worker.pid, status)
        return True

    async def start_missing(self) -> None:
        """Start every worker that is not running. One that cannot start (its log says why: a config file
        broken since, a port table full) is tried again every ``RETRY_SECONDS`` while the others serve, and
        ``/ready`` says it is missing; that is no crash loop, so it spends no restart budget."""
        for worker in self.workers:
            if worker.process is not None:
                continue
            try:
                if not worker.sockets:
                    for name in self._where:
                        self._bind_for(worker, name)
                await self.start(worker)
            except (StartupError, OSError) as exc:
                worker.process = None
                self.unbind(worker)
                log.error("%s; trying again in %g s (the other workers serve meanwhile)", exc, RETRY_SECONDS)
                continue
            worker.restarts += 1
            self.restarted.labels(str(worker.index)).inc()

    def reload(self) -> None:
        """SIGHUP: every worker re-reads the config (each answers for itself in its log)."""
        notify(*reloading(f"reloading {self.config.path} in {len(self.workers)} workers"))
        for worker in self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGHUP)
        notify("READY=1", f"STATUS=relaying: {len(self.workers)} workers")

    def running(self) -> Iterator[Worker]:
        return (w for w in self.workers if w.process is not None and w.process.returncode is None)

    async def stop_workers(self, limit: float) -> bool:
        """SIGTERM to every worker, our listening copies closed (nothing new queues on them), then wait up to
        ``limit`` seconds; a worker still there is killed. True when every worker exited with status 0."""
        self.stopping = True
        live = list(self.running())
        for worker in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        self.close_sockets((socket.SOCK_STREAM,))
        clean = True
        for worker in live:
            assert worker.process is not None
            try:
                status = await asyncio.wait_for(worker.process.wait(), limit)
            except TimeoutError:
                log.error("worker %d (pid %d) still running after %g s; killed", worker.index, worker.pid, limit)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                status = await worker.process.wait()
            clean = clean and status == 0
            self.up.labels(str(worker.index)).set(0)
        return clean

    # -- 4. /metrics, /ready, /healthz and the control socket, over the workers -----------------------------------

    def _get(self, worker: Worker, path: str) -> tuple[int | None, str]:
        """One worker's status page (from the HTTP thread): (HTTP status or None, body or why not)."""
        if worker.metrics_port is None:
            return None, "no metrics port"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}{path}", timeout=ASK_SECONDS) as answer:
                return int(answer.status), answer.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
        except (OSError, ValueError) as exc:
            return None, str(getattr(exc, "reason", None) or exc)

    def readiness(self) -> Readiness:
        answers: list[tuple[int, int | None, str]] = []
        for worker in self.workers:
            if worker.process is None or worker.process.returncode is not None:
                answers.append((worker.index, None, "not running"))
                continue
            status, body = self._get(worker, "/ready")
            answers.append((worker.index, status, body))
        ready, lines = merge_ready(answers)
        return Readiness(
            ready and not self.stopping,
            tuple(lines) + (("draining: sipfed is shutting down",) if self.stopping else ()),
        )

    def health(self) -> str | None:
        for worker in self.workers:
            if worker.process is None or worker.process.returncode is not None:
                return f"worker {worker.index}: not running"
            status, body = self._get(worker, "/healthz")
            if status != 200:
                return f"worker {worker.index}: {body.strip() or 'no answer'}"
        return None

    def control_methods(self) -> dict[str, Method]:
        return {name: self._fan_out(name) for name in FANNED_OUT}

    def _fan_out(self, method: str) -> Method:
        assert self.config.control is not None
        base = str(self.config.control.socket)

        def call(params: Params) -> Any:
            answers: list[dict[str, Any]] = []
            for worker in self.workers:
                path = Path(f"{base}.{worker.index}")
                entry: dict[str, Any] = {"worker": worker.index, "pid": worker.pid, "restarts": worker.restarts}
                given = params
                if method == "trace" and isinstance(params.get("file"), str):  # a file each: no two writers
                    given = {**params, "file": f"{params['file']}.{worker.index}"}
                try:
                    entry["result"] = ask(path, method, given, ASK_SECONDS)
                except RpcError as exc:
                    if method == "reload":  # every worker reads the same file: the first refusal is the answer
                        raise
                    entry["error"] = exc.to_json()
                except CtlError as exc:
                    entry["error"] = {"code": FAILED, "message": str(exc)}
                answers.append(entry)
            return {"workers": answers}

        return call


class WorkersCollector(Collector):
    """``/metrics``: each running worker's, scraped when Prometheus scrapes, its samples labelled ``worker``."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        texts = []
        for worker in list(self.supervisor.workers):
            if worker.process is not None and worker.process.returncode is None:
                status, body = self.supervisor._get(worker, "/metrics")
                if status == 200:
                    texts.append((worker.index, body))
        yield from merge_metrics(texts)


def supervise(config: Config, argv: Sequence[str]) -> int:
    """``sipfed run`` with ``[proxy] workers`` > 1 (the supervisor itself needs no uvloop: it moves no SIP)."""
    raise_open_files()  # the workers inherit the raised limit
    return asyncio.run(_supervise(config, argv))


async def _supervise(config: Config, argv: Sequence[str]) -> int:
    return await Supervisor(config, argv).run()
