"""The methods ``sipfed ctl`` calls on the running Server (README: "Control socket"): status, connections,
routes, subscriptions, reload, trace, log_level; with ``ActivityWatch`` (when each connection last carried
anything) and ``Reloaded`` (what one reload did, for SIGHUP's log line and ``sipfed ctl reload``).

Apart from the socket that serves them (proxy/net/control.py, which re-exports these names): each method is a
plain callable from named parameters to a JSON-able result, raising ``RpcError`` (proxy/net/control_rpc.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy import __version__
from proxy.config import Config
from proxy.net.control_rpc import FAILED, INVALID_PARAMS, RELOAD_REFUSED, Method, Params, RpcError, params
from proxy.net.trace import DEFAULT_FILES, DEFAULT_MAX_BYTES, Trace, TraceFilter
from routes import Candidate

if TYPE_CHECKING:
    from proxy.net.connection import StreamConnection
    from proxy.net.driver import Driver
    from proxy.server import Server
    from routes.probe import Prober

log = logging.getLogger("sipfed.control")


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
