"""The metrics port's /ready verdict from the running state, and the server itself on a loop in another thread."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from proxy.net.health import DestinationState
from proxy.net.status import Readiness, StatusServer, readiness

UP = DestinationState("cisco", "tls:10.1.1.5:5062", True, True, "200 OK")
DOWN = DestinationState("cisco", "tls:10.1.1.6:5062", False, True, "health check: no answer in 2 s")
LYNC_DOWN = DestinationState("lync", "tls:10.2.2.7:5061", False, False, "connection refused")


def test_ready_with_one_destination_up_per_route() -> None:
    state = readiness(True, False, ["cisco"], [UP, DOWN])
    assert state == Readiness(True, ("route cisco: 1 of 2 destination(s) up",))


def test_a_route_with_every_destination_down_is_named_with_why() -> None:
    state = readiness(True, False, ["cisco", "lync"], [UP, LYNC_DOWN])
    assert not state.ready
    assert state.lines == ("route lync: no destination up: tls:10.2.2.7:5061 (connection refused)",)


def test_not_bound_and_draining_are_not_ready() -> None:
    assert readiness(False, False, [], []).lines == ("listeners: not bound yet",)
    assert readiness(True, True, ["cisco"], [UP]).lines == ("draining: sipfed is shutting down",)


def test_a_dns_route_with_nothing_checked_does_not_hold_readiness_back() -> None:
    state = readiness(True, False, ["partner"], [])
    assert state.ready
    assert state.lines == ("route partner: destinations found by DNS per request, none checked yet",)


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, as sipfed's runs beside the HTTP thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_endpoints_answer_from_the_loop(loop_thread: asyncio.AbstractEventLoop) -> None:
    registry = CollectorRegistry()
    Counter("sipfed_test_total", "a test series", registry=registry).inc()
    on_the_loop: list[bool] = []
    verdict = [Readiness(True, ("route cisco: 1 of 1 destination(s) up",))]

    def ready() -> Readiness:
        on_the_loop.append(asyncio.get_running_loop() is loop_thread)  # never the HTTP thread's own reading
        return verdict[0]

    server = StatusServer("127.0.0.1", 0, registry, loop_thread, ready)
    try:
        assert get(server.port, "/healthz") == (200, "ok\n")
        assert get(server.port, "/ready") == (200, "ready\nroute cisco: 1 of 1 destination(s) up\n")
        verdict[0] = Readiness(False, ("route cisco: no destination up: tls:10.1.1.5:5062",))
        assert get(server.port, "/ready") == (503, "not ready\nroute cisco: no destination up: tls:10.1.1.5:5062\n")
        assert on_the_loop == [True, True]
        status, page = get(server.port, "/metrics")
        assert status == 200
        assert "sipfed_test_total 1.0" in page
        assert get(server.port, "/nothing")[0] == 404
    finally:
        server.close()


def test_a_wedged_loop_is_503_not_a_hang(loop_thread: asyncio.AbstractEventLoop) -> None:
    release = threading.Event()
    loop_thread.call_soon_threadsafe(lambda: release.wait(10))  # the loop is busy until released
    server = StatusServer("127.0.0.1", 0, CollectorRegistry(), loop_thread, lambda: Readiness(True, ()))
    try:
        status, body = get(server.port, "/healthz")
        assert status == 503
        assert "event loop not answering" in body
    finally:
        release.set()
        server.close()
