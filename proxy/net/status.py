"""The metrics port: ``/metrics`` for Prometheus, ``/healthz`` and ``/ready`` for systemd, load balancers, k8s.

A stdlib ``ThreadingHTTPServer`` in a daemon thread, as prometheus-client's own ``start_http_server`` runs.
The proxy's state lives on the event loop and is read only there: a health request hands a function to
the loop (``call_soon_threadsafe``) and waits for its result with a deadline, so the HTTP thread never
touches the Driver or the core, and a wedged loop shows as ``/healthz`` 503 instead of a hung probe.

- ``GET /healthz``: 200 ``ok`` while the process runs and its event loop answers; else 503.
- ``GET /ready``: 200 when the listeners are bound, a config is loaded, sipfed is not draining and every
  route has a destination up (``sipfed_destination_up`` = 1); else 503, each reason on a line of its own.
  A route whose destinations are found by DNS per request and not health-checked has none to judge yet:
  it is listed, and does not hold readiness back.
- ``GET /metrics`` (and ``/``): the registry, as prometheus-client serves it (gzip, OpenMetrics, ``name[]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

from proxy.net.health import DestinationState

T = TypeVar("T")
LOOP_TIMEOUT_SECONDS = 2.0
"""How long a health request waits for the event loop before it answers 503."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``/ready`` answers, computed on the event loop."""

    ready: bool
    lines: tuple[str, ...]
    """What is not ready (or, when ready, what each route has up), one fact per line."""


def readiness(listening: bool, draining: bool, routes: Iterable[str], states: Iterable[DestinationState]) -> Readiness:
    """``/ready`` from the running state: listeners bound, not draining, a destination up per route."""
    problems: list[str] = []
    if not listening:
        problems.append("listeners: not bound yet")
    if draining:
        problems.append("draining: sipfed is shutting down")
    by_route: dict[str, list[DestinationState]] = {}
    for state in states:
        by_route.setdefault(state.route, []).append(state)
    notes: list[str] = []
    for route in routes:
        found = by_route.get(route, [])
        up = [s for s in found if s.up]
        if not found:
            notes.append(f"route {route}: destinations found by DNS per request, none checked yet")
        elif up:
            notes.append(f"route {route}: {len(up)} of {len(found)} destination(s) up")
        else:
            down = "; ".join(f"{s.destination} ({s.detail})" if s.detail else s.destination for s in found)
            problems.append(f"route {route}: no destination up: {down}")
    return Readiness(not problems, tuple(problems or notes))


def on_loop(loop: asyncio.AbstractEventLoop, compute: Callable[[], T], timeout: float = LOOP_TIMEOUT_SECONDS) -> T:
    """``compute()`` run on ``loop`` from another thread; TimeoutError when the loop does not get to it."""
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            result.set_result(compute())
        except Exception as exc:  # handed to the HTTP thread, which answers 503 with it
            result.set_exception(exc)

    loop.call_soon_threadsafe(run)  # RuntimeError once the loop is closed: the caller's 503 too
    return result.result(timeout)


class StatusServer:
    """``/metrics``, ``/healthz``, ``/ready`` on one port, served from a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        loop: asyncio.AbstractEventLoop,
        ready: Callable[[], Readiness],
        health: Callable[[], str | None] | None = None,
    ) -> None:
        """``health`` (worker mode's supervisor): ``/healthz`` and ``/ready`` are computed in the HTTP thread, by
        ``health()`` (None: healthy, else why not) and ``ready()``, which ask the workers; without it both are
        computed on ``loop``."""
        handler = type(
            "StatusHandler",
            (_Handler,),
            {
                "registry": registry,
                "loop": loop,
                "ready": staticmethod(ready),
                "health": staticmethod(health) if health is not None else None,
            },
        )
        self.httpd = _HTTPServer.bound(host, port, handler)
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="sipfed-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving (blocks up to the server's 0.5 s poll: call it off the event loop)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a probe stuck on a slow client never holds up the exit

    @classmethod
    def bound(cls, host: str, port: int, handler: type[_Handler]) -> _HTTPServer:
        """Bound to ``host`` in its own address family (``[metrics] listen = "[::1]:9561"`` is IPv6)."""
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("StatusHTTPServer", (cls,), {"address_family": family})
        server: _HTTPServer = server_class((host, port), handler)
        return server


class _Handler(MetricsHandler):
    loop: asyncio.AbstractEventLoop
    ready: Callable[[], Readiness]
    health: Callable[[], str | None] | None

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._health()
        elif path == "/ready":
            self._ready()
        elif path in ("/", "/metrics"):
            super().do_GET()
        else:
            self._text(404, "not found: this port serves /metrics, /healthz and /ready\n")

    def _health(self) -> None:
        try:
            on_loop(self.loop, lambda: None)
        except (TimeoutError, RuntimeError):
            self._text(503, f"event loop not answering within {LOOP_TIMEOUT_SECONDS:g} s\n")
            return
        problem = self.health() if self.health is not None else None
        self._text(503 if problem else 200, f"{problem}\n" if problem else "ok\n")

    def _ready(self) -> None:
        try:
            state = self.ready() if self.health is not None else on_loop(self.loop, self.ready)
        except (TimeoutError, RuntimeError) as exc:
            self._text(
                503, f"not ready\nevent loop not answering within {LOOP_TIMEOUT_SECONDS:g} s ({exc or 'timeout'})\n"
            )
            return
        except Exception as exc:  # a bug in computing it: say so rather than drop the connection
            self._text(503, f"not ready\ninternal error computing readiness: {type(exc).__name__}\n")
            return
        body = "\n".join(("ready" if state.ready else "not ready", *state.lines)) + "\n"
        self._text(200 if state.ready else 503, body)

    def _text(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are not log lines."""
