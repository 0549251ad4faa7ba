"""The control socket of ``sipfed ctl``: JSON-RPC 2.0 over a Unix stream socket, one JSON object per line.

Framing and its rules (the README's "Control socket" section lists the methods):

1. A request is one line of UTF-8 JSON ended by ``\\n``; so is each answer, in the order of the requests.
2. A line that is not JSON gets a Parse error (-32700, ``id`` null); one that is JSON but no request an
   Invalid Request (-32600). Either way the connection stays open for the next line.
3. A line longer than ``MAX_REQUEST_BYTES`` gets an Invalid Request and the connection is closed: where the
   next request would start cannot be trusted.
4. A connection with no complete request for ``IDLE_SECONDS`` is closed; at most ``MAX_CLIENTS`` are open.
5. A notification (no ``id``) is carried out and not answered; a batch (an array) is answered by an array
   (JSON-RPC 2.0 §4.1, §6).
6. A method that cannot do what was asked answers an error whose message an admin can act on; ``data``
   carries the details (e.g. a refused reload's ``problems``).

The socket file is created with its mode already set (umask around ``bind``), so nobody else can connect in
between; a stale file is removed only when nothing answers on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import socket
import ssl
import stat
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from proxy import __version__
from proxy.config import Config, ControlConfig
from proxy.net.trace import DEFAULT_FILES, DEFAULT_MAX_BYTES, Trace, TraceFilter
from routes import Candidate

if TYPE_CHECKING:
    from proxy.net.connection import StreamConnection
    from proxy.net.driver import Driver
    from proxy.server import Server
    from routes.probe import Prober

log = logging.getLogger("sipfed.control")

MAX_REQUEST_BYTES = 65536
IDLE_SECONDS = 30.0
MAX_CLIENTS = 16

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RELOAD_REFUSED = -32000
"""The new config has problems (``data.problems``); the running config stays."""
FAILED = -32001
"""The method could not do what was asked (a trace file that cannot be opened, ...)."""

Params = dict[str, Any]
Method = Callable[[Params], Any]


class RpcError(Exception):
    """A JSON-RPC error answer: ``code``, an admin-readable ``message``, optional ``data``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ControlError(Exception):
    """The control socket cannot be set up: one line for the admin (sipfed does not start)."""


# -- framing: pure functions, shared with the client (proxy/ctl.py) ------------------------------------------


def encode(message: Any) -> bytes:
    """One JSON object (or batch) as one line."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def request(method: str, params: Params | None = None, request_id: int | str | None = 1) -> bytes:
    """A JSON-RPC 2.0 request line (``request_id`` None: a notification)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params:
        message["params"] = params
    if request_id is not None:
        message["id"] = request_id
    return encode(message)


def answer_line(line: bytes, methods: Mapping[str, Method]) -> bytes | None:
    """Rules 2 and 5: the answer line to one request line, or None when nothing is to be answered."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep, a 5,000-digit number
        return encode(_error(None, RpcError(PARSE_ERROR, f"parse error: not JSON ({exc})")))
    if isinstance(message, list):
        if not message:
            return encode(_error(None, RpcError(INVALID_REQUEST, "invalid request: an empty batch")))
        answers = [a for a in (answer(m, methods) for m in message) if a is not None]
        return encode(answers) if answers else None
    result = answer(message, methods)
    return encode(result) if result is not None else None


def answer(message: object, methods: Mapping[str, Method]) -> dict[str, Any] | None:
    """JSON-RPC 2.0 §4-§5 for one decoded request: its response object, or None for a notification."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or not isinstance(message.get("method"), str):
        return _error(
            None,
            RpcError(
                INVALID_REQUEST, 'invalid request: expected {"jsonrpc": "2.0", "method": …, "params": {…}, "id": …}'
            ),
        )
    request_id = message.get("id")
    if ("id" in message and not isinstance(request_id, str | int | None)) or isinstance(request_id, bool):
        return _error(None, RpcError(INVALID_REQUEST, "invalid request: id must be a string, a number or null"))
    try:
        result = call(message, methods)
    except RpcError as exc:
        return _error(request_id, exc) if "id" in message else None
    return {"jsonrpc": "2.0", "result": result, "id": request_id} if "id" in message else None


def call(message: dict[str, Any], methods: Mapping[str, Method]) -> Any:
    name = message["method"]
    method = methods.get(name)
    if method is None:
        raise RpcError(METHOD_NOT_FOUND, f"no method {name!r} (methods: {', '.join(sorted(methods))})")
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "params must be an object of named parameters")
    try:
        return method(params)
    except RpcError:
        raise
    except Exception as exc:  # a bug must answer, not leave the client waiting
        log.exception("control: internal error in %s", name)
        raise RpcError(INTERNAL_ERROR, f"internal error in {name}: {exc!r} (sipfed's log has the traceback)") from None


def _error(request_id: Any, exc: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": exc.to_json(), "id": request_id}


def result_of(line: bytes, request_id: int | str) -> Any:
    """The client's side: the result of the answer line to request ``request_id``, or its RpcError raised."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise RpcError(PARSE_ERROR, f"the answer is not JSON ({exc})") from None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, "the answer is no JSON-RPC 2.0 response")
    error = message.get("error")
    if isinstance(error, dict):
        raise RpcError(int(error.get("code", INTERNAL_ERROR)), str(error.get("message", "")), error.get("data"))
    if message.get("id") != request_id or "result" not in message:
        raise RpcError(INVALID_REQUEST, "the answer is not the response to this request")
    return message["result"]


def params(given: Params, known: Mapping[str, type | tuple[type, ...]]) -> Params:
    """Check named parameters against their types; unknown ones are an Invalid params error."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        known_names = ", ".join(sorted(known)) or "none"
        raise RpcError(INVALID_PARAMS, f"unknown parameter {unknown[0]!r} (known: {known_names})")
    for key, kind in known.items():
        value = given.get(key)
        if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise RpcError(INVALID_PARAMS, f"parameter {key!r}: {value!r} must be {names}")
    return given


# -- the socket --------------------------------------------------------------------------------------------


class ControlServer:
    """The listening Unix socket and its clients (rules 3 and 4)."""

    def __init__(self, path: Path, methods: Mapping[str, Method], loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.methods = methods
        self.loop = loop
        self.clients: set[ControlClient] = set()
        self._server: asyncio.AbstractServer | None = None
        self.closing: list[Callable[[], None]] = []
        """Called when the socket closes (the activity sampling stops with it)."""
        self._inode: tuple[int, int] | None = None

    async def start(self, mode: int) -> None:
        sock = bind_unix(self.path, mode)
        info = os.stat(self.path)
        self._inode = (info.st_dev, info.st_ino)
        self._server = await self.loop.create_unix_server(lambda: ControlClient(self), sock=sock)
        log.info("control socket %s (mode %#o)", self.path, mode)

    def close(self) -> None:
        """Stop listening, close the clients, remove the socket file if it is still ours."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for client in list(self.clients):
            client.close()
        for hook in self.closing:
            hook()
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._inode:
                os.unlink(self.path)


class ControlClient(asyncio.Protocol):
    """One ``sipfed ctl`` connection: lines in, answers out."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.server.clients) >= MAX_CLIENTS:
            log.warning("control: %d clients connected already; closing a new one", MAX_CLIENTS)
            self.transport.close()
            return
        self.server.clients.add(self)
        self._arm()

    def _arm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.server.loop.call_later(IDLE_SECONDS, self.close)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\n")) >= 0:
            line, self.buffer = bytes(self.buffer[:end]), self.buffer[end + 1 :]
            if len(line) > MAX_REQUEST_BYTES:
                return self._too_large()
            self._arm()
            if line.strip():
                try:
                    out = answer_line(line, self.server.methods)
                except Exception:  # a result that does not encode: still an answer, and the connection lives
                    log.exception("control: internal error answering a request")
                    out = encode(_error(None, RpcError(INTERNAL_ERROR, "internal error (sipfed's log has it)")))
                if out is not None and self.transport is not None and not self.transport.is_closing():
                    self.transport.write(out)
        if len(self.buffer) > MAX_REQUEST_BYTES:
            self._too_large()
        return None

    def _too_large(self) -> None:
        self.buffer.clear()
        if self.transport is not None:
            error = RpcError(INVALID_REQUEST, f"request longer than {MAX_REQUEST_BYTES} bytes; closing")
            self.transport.write(encode(_error(None, error)))
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.server.clients.discard(self)


def bind_unix(path: Path, mode: int) -> socket.socket:
    """A Unix stream socket bound at ``path`` whose file has ``mode`` from its first moment."""
    if not path.parent.is_dir():
        raise ControlError(
            f"cannot create the control socket {path} ([control] socket): the directory "
            f"{path.parent} does not exist; create it (systemd: RuntimeDirectory=sipfed)"
        )
    remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)  # bind creates the file 0777 & ~umask: exactly ``mode``
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        raise ControlError(
            f"cannot create the control socket {path} ([control] socket): {exc.strerror or exc}"
        ) from None
    finally:
        os.umask(old)
    os.chmod(path, mode)  # the same bits again: some file systems ignore the umask for sockets
    sock.setblocking(False)
    return sock


def remove_stale(path: Path) -> None:
    """A socket file left by a sipfed that did not stop cleanly is removed; a live one, or another kind
    of file, is left alone and sipfed does not start."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlError(f"{path} ([control] socket) exists and is not a socket; remove it or choose another path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("control: removing the stale socket %s (nothing listens on it)", path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        except OSError as exc:
            raise ControlError(f"cannot check the existing control socket {path}: {exc.strerror or exc}") from None
    raise ControlError(
        f"another process listens on the control socket {path} (another sipfed?); stop it, or "
        "give this one its own [control] socket"
    )


@dataclass(frozen=True, slots=True)
class Reloaded:
    """What one reload did: SIGHUP logs it, ``sipfed ctl reload`` shows it."""

    file: str
    """The config file read."""
    problems: tuple[str, ...] = ()
    """Why it was refused (the running config stays); () when it was applied."""
    changes: dict[str, Any] = field(default_factory=dict)
    """When applied: routes and peers added, removed, changed; other settings changed; connections re-bound."""

    @classmethod
    def refused(cls, file: Path | str, problems: list[str]) -> Reloaded:
        return cls(str(file), tuple(problems))

    @classmethod
    def applied(cls, old: Config, new: Config, outcomes: list[str]) -> Reloaded:
        changes: dict[str, Any] = {
            "routes": _named_changes({r.name: r for r in old.routes}, {r.name: r for r in new.routes}),
            "peers": _named_changes({p.name: p for p in old.trust.peers}, {p.name: p for p in new.trust.peers}),
            "settings": sorted(
                f.name
                for f in fields(new)
                if f.name not in _NOT_SETTINGS and getattr(old, f.name) != getattr(new, f.name)
            ),
            "connections": {outcome: outcomes.count(outcome) for outcome in ("rebound", "closed", "kept")},
            "warnings": list(new.warnings),
        }
        if replace(old.trust, peers=()) != replace(new.trust, peers=()):
            changes["settings"] = sorted([*changes["settings"], "acl/auth"])
        if old.control != new.control:
            changes["warnings"].append("[control] changes take effect at the next restart")
        return cls(str(new.path), changes=changes)


#: Config fields shown as they are, not as "settings" that changed.
_NOT_SETTINGS = frozenset({"path", "routes", "trust", "warnings"})


def _named_changes(old: Mapping[str, object], new: Mapping[str, object]) -> dict[str, list[str]]:
    return {
        "added": [n for n in new if n not in old],
        "removed": [n for n in old if n not in new],
        "changed": [n for n in new if n in old and new[n] != old[n]],
    }


# -- the methods -------------------------------------------------------------------------------------------

LOG_LEVELS = ("debug", "info", "warning", "error")
TRACE_PARAMS: dict[str, type | tuple[type, ...]] = {
    "on": bool,
    "file": str,
    "peer": str,
    "call_id": str,
    "max_bytes": int,
    "files": int,
}


async def open_control(server: Server, control: ControlConfig) -> ControlServer:
    """Start ``sipfed ctl``'s socket on the running Server, once its listeners are bound."""
    watch = ActivityWatch(server.driver)
    control_server = ControlServer(control.socket, ServerMethods(server, watch).table(), server.loop)
    await control_server.start(control.mode)
    watch.start()
    control_server.closing.append(watch.close)
    return control_server


class ActivityWatch:
    """When each connection last carried anything, to the second: a connection counts its reads and sends
    (``rx``, ``tx``) but keeps no time, so the counts are sampled once a second and each change dated."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.seen: dict[int, tuple[int, float]] = {}
        """Connection id -> (reads + sends, when that count was first seen)."""
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.sample(self.driver.loop.time())
        self._timer = self.driver.loop.call_later(1.0, self.start)

    def sample(self, now: float) -> None:
        seen: dict[int, tuple[int, float]] = {}
        for conn_id, conn in self.driver.connections.items():
            activity, last = conn.rx + conn.tx, self.seen.get(conn_id)
            seen[conn_id] = last if last is not None and last[0] == activity else (activity, now)
        self.seen = seen

    def idle_seconds(self, conn_id: int, now: float) -> float:
        last = self.seen.get(conn_id)
        return max(0.0, now - last[1]) if last is not None else 0.0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class ServerMethods:
    """The methods ``sipfed ctl`` calls, on the running Server (README: "Control socket")."""

    def __init__(self, server: Server, watch: ActivityWatch) -> None:
        self.server = server
        self.driver = server.driver
        self.watch = watch

    def table(self) -> dict[str, Method]:
        return {
            "status": self.status,
            "connections": self.connections,
            "routes": self.routes,
            "subscriptions": self.subscriptions,
            "reload": self.reload,
            "trace": self.trace,
            "log_level": self.log_level,
        }

    def status(self, given: Params) -> dict[str, Any]:
        params(given, {})
        server, driver, config = self.server, self.driver, self.server.config
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started": _iso(server.started_at),
            "uptime_seconds": round(time.time() - server.started_at, 1),
            "config": {"file": str(config.path), "loaded": _iso(server.config_loaded_at)},
            "listeners": [
                {
                    "name": lst.name,
                    "transport": lst.transport,
                    "address": lst.address,
                    "port": server.ports.get(lst.name),
                    "fqdn": lst.fqdn,
                }
                for lst in config.listeners
            ],
            "routes": len(config.routes),
            "peers": len(config.trust.peers),
            "connections": len(driver.connections),
            "transactions_in_flight": driver.proxy.pending(),
            "subscriptions": len(driver.proxy.subscriptions.active),
            "draining": driver.proxy.draining > 0,
            "log_level": _log_level(),
            "trace": _trace_state(driver.trace),
        }

    def connections(self, given: Params) -> list[dict[str, Any]]:
        """Each open TCP/TLS connection (accepted or opened, its handshake done), oldest first."""
        params(given, {})
        now = self.driver.loop.time()
        self.watch.sample(now)
        return [
            _connection(conn, self.watch.idle_seconds(conn_id, now))
            for conn_id, conn in sorted(self.driver.connections.items())
            if conn.flow is not None
        ]

    def routes(self, given: Params) -> list[dict[str, Any]]:
        """Each route's candidates in the order a request tries them now (routes.candidates.order)."""
        params(given, {})
        driver, liveness = self.driver, self.driver.liveness
        now = driver.loop.time()
        out = []
        for name, route in driver.routes.items():
            known = liveness.known.get(name)
            entry: dict[str, Any] = {
                "route": name,
                "match_uri": route.match_uri,
                "resolve": route.resolve,
                "health_checks": name in liveness.probers,
                "candidates": [],
            }
            if route.resolve and not known:
                entry["note"] = f"resolves {route.resolve} by DNS when a request needs it; not looked up yet"
                known = []
            candidates = known or list(route.static_candidates)
            # Seeded: within one priority a request draws its own order by weight (RFC 2782); this shows one.
            for position, candidate in enumerate(driver.failover.ranked(candidates, now, random.Random(0)), 1):
                entry["candidates"].append(_candidate(position, candidate, liveness.probers.get(name), driver, now))
            out.append(entry)
        return out

    def subscriptions(self, given: Params) -> dict[str, Any]:
        """Active subscription dialogs by the subscriber's trusted peer (null: none) and event package."""
        params(given, {})
        counts = Counter((peer or "", event) for event, _, peer in self.driver.proxy.subscriptions.active.values())
        return {
            "total": sum(counts.values()),
            "counts": [
                {"peer": peer or None, "event": event, "count": n} for (peer, event), n in sorted(counts.items())
            ],
        }

    def reload(self, given: Params) -> dict[str, Any]:
        """The same as SIGHUP; a refused reload is a RELOAD_REFUSED error listing the problems."""
        params(given, {})
        outcome = self.server.reload()
        if outcome.problems:
            raise RpcError(
                RELOAD_REFUSED,
                f"reload refused, the running config stays: {len(outcome.problems)} problem(s) in {outcome.file}",
                {"file": outcome.file, "problems": list(outcome.problems)},
            )
        return {"file": outcome.file, **outcome.changes}

    def trace(self, given: Params) -> dict[str, Any]:
        """Turn the message trace on (replacing the one running: file, filter, rotation) or off."""
        params(given, TRACE_PARAMS)
        driver, old = self.driver, self.driver.trace
        if given.get("on") is None:
            raise RpcError(INVALID_PARAMS, "parameter 'on' is required: true or false")
        if not given["on"]:
            driver.trace = None
            if old is not None:
                old.close()
                log.info("trace off: %s (%d messages written)", old.path, old.written)
            return {"on": False, "file": str(old.path) if old else None, "written": old.written if old else 0}
        only = TraceFilter(given.get("peer"), given.get("call_id"))
        trust = self.server.config.trust
        if only.peer is not None and trust.peer(only.peer) is None:
            names = ", ".join(p.name for p in trust.peers) or "none is configured"
            raise RpcError(INVALID_PARAMS, f"no [[peers]] entry is named {only.peer!r} (peers: {names})")
        file = given.get("file") or (str(old.path) if old is not None else None)
        if file is None or not Path(file).is_absolute():
            raise RpcError(
                INVALID_PARAMS, f"parameter 'file': an absolute path is required when no trace is on, got {file!r}"
            )
        max_bytes, files = given.get("max_bytes", DEFAULT_MAX_BYTES), given.get("files", DEFAULT_FILES)
        if not 65536 <= max_bytes <= 1 << 40 or not 0 <= files <= 100:
            raise RpcError(INVALID_PARAMS, f"max_bytes {max_bytes} must be 65536 to 2^40, files {files} 0 to 100")
        try:
            new = Trace(Path(file), max_bytes=max_bytes, files=files, only=only, peer_of=driver.peer_at)
        except OSError as exc:
            raise RpcError(FAILED, f"cannot open the trace file {file}: {exc.strerror or exc}") from None
        if old is not None:
            old.close()
        driver.trace = new
        log.info("trace on: %s (%s)", file, only.describe())
        return _trace_state(new)

    def log_level(self, given: Params) -> dict[str, str]:
        """The root logger's level (every sipfed.* logger inherits it), until the next restart."""
        params(given, {"level": str})
        level = str(given.get("level") or "").lower()
        if level not in LOG_LEVELS:
            raise RpcError(INVALID_PARAMS, f"parameter 'level': {level!r} must be one of {', '.join(LOG_LEVELS)}")
        previous, root = _log_level(), logging.getLogger()
        quieter = logging.getLevelName(level.upper()) > root.getEffectiveLevel()
        if quieter:  # said while the chattier level still holds, so the change is in the log either way
            log.info("log level %s (was %s), set by sipfed ctl", level, previous)
        root.setLevel(level.upper())
        if not quieter:
            log.info("log level %s (was %s), set by sipfed ctl", level, previous)
        return {"level": level, "previous": previous}


def _connection(conn: StreamConnection, idle: float) -> dict[str, Any]:
    flow = conn.flow
    assert flow is not None
    cert = (
        conn.session.obj.getpeercert()
        if conn.session is not None
        else (conn.transport.get_extra_info("peercert") if conn.transport is not None else None)
    )
    not_after = cert.get("notAfter") if cert else None
    local = conn.transport.get_extra_info("sockname") if conn.transport is not None else None
    return {
        "id": flow.conn_id,
        "listener": conn.listener,
        "transport": conn.transport_name,
        "direction": "out" if conn.outbound else "in",
        "remote": _address(flow.remote),
        "local": _address(local) if local else None,
        "peer": flow.peer,
        "subject": ",".join(f"{k.upper()}={v}" for k, v in flow.identity.subject) or None,
        "names": list(flow.identity.names),
        "not_after": _iso(ssl.cert_time_to_seconds(not_after)) if isinstance(not_after, str) else None,
        "route": conn.hop.route if conn.hop is not None else None,
        "idle_seconds": round(idle, 1),
    }


def _candidate(
    position: int, candidate: Candidate, prober: Prober | None, driver: Driver, now: float
) -> dict[str, Any]:
    probe = prober.state(candidate) if prober is not None else None
    until = driver.failover.down_until(candidate, now)
    up = until is None and (probe is None or probe.up)
    why = driver.failover.reason(candidate) if until is not None else probe.last_result if probe is not None else ""
    return {
        "position": position,
        "destination": str(candidate),
        "tls_name": candidate.tls_name or None,
        "priority": candidate.priority,
        "weight": candidate.weight,
        "source": candidate.source,
        "up": up,
        "health_checked": probe is not None,
        "why": why,
        "down_for_seconds": None if until is None or math.isinf(until) else round(until - now, 1),
    }


def _trace_state(trace: Trace | None) -> dict[str, Any]:
    if trace is None or not trace.active:
        return {"on": False}
    return {
        "on": True,
        "file": str(trace.path),
        "peer": trace.only.peer,
        "call_id": trace.only.call_id,
        "filter": trace.only.describe(),
        "max_bytes": trace.max_bytes,
        "files": trace.files,
        "written": trace.written,
    }


def _log_level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()


def _address(address: tuple[str, int] | Any) -> str:
    host, port = str(address[0]), int(address[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
