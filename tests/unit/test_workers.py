"""Worker mode's parts with no I/O (proxy/workers.py), its config rules, its Via, and ``sipfed ctl``'s view of the
supervisor's answers. The processes themselves: tests/integration/test_workers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from proxy.cli import describe
from proxy.config import ConfigError, load_config
from proxy.ctl import format_log_level, format_workers, is_fanned_out
from proxy.net.control_methods import ServerMethods
from proxy.relay.forwarding import RelayPolicy, via_value
from proxy.relay.types import Identity
from proxy.supervisor import FANNED_OUT
from proxy.workers import (
    WORKER_ENV,
    RestartBudget,
    SlotError,
    WorkerSlot,
    merge_metrics,
    merge_ready,
    parse_ready,
    ready_message,
)
from routes import RouteTable
from tests.unit.config_files import write_config

BASE = """
[proxy]
fqdn = "sipfed.tomt.local"
{proxy}

[[listeners]]
name = "plain"
transport = "udp"
address = "127.0.0.1"
port = 5060
{rest}
"""


def config_with(tmp_path: Path, proxy: str, rest: str = "") -> Path:
    return write_config(tmp_path, BASE.format(proxy=proxy, rest=rest), certs=False)


# -- the slot ------------------------------------------------------------------------------------------------


def test_a_slot_travels_through_the_environment() -> None:
    slot = WorkerSlot(1, 2, {"lync": 7, "plain": 8, "plain/out": 9}, 10, 4242)
    assert WorkerSlot.from_environ({WORKER_ENV: slot.encode()}) == slot
    assert WorkerSlot.from_environ({}) is None
    assert slot.suffixed("/run/sipfed/ctl.sock") == "/run/sipfed/ctl.sock.1"


@pytest.mark.parametrize(
    "text", ["not json", '{"index": 0}', '{"index": 2, "count": 2, "sockets": {}, "ready_fd": 3, "supervisor": 1}']
)
def test_a_slot_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(SlotError, match=r"SIPFED_WORKER"):
        WorkerSlot.from_environ({WORKER_ENV: text})


def test_the_ready_message_round_trips_and_nothing_is_not_ready() -> None:
    ready = parse_ready(ready_message(99, "sipfed ready lync=tls:127.0.0.1:5062", 40001))
    assert ready is not None
    assert (ready.pid, ready.line, ready.metrics_port) == (99, "sipfed ready lync=tls:127.0.0.1:5062", 40001)
    assert parse_ready(b"") is None  # the worker exited before it was ready
    assert parse_ready(b'{"pid": 1}\n') is None


def test_the_restart_budget_is_spent_within_its_window_and_comes_back() -> None:
    budget = RestartBudget(limit=3, window=60.0)
    assert [budget.allow(t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert budget.allow(61.0)  # the first restart has left the window


# -- merging the workers' answers ---------------------------------------------------------------------------


def exposition(relayed: int, latency: float) -> str:
    registry = CollectorRegistry()
    counter = Counter("sipfed_requests_relayed", "Requests forwarded", ["method"], registry=registry)
    counter.labels("MESSAGE").inc(relayed)
    Histogram("sipfed_relay_latency_seconds", "Latency", registry=registry).observe(latency)
    return generate_latest(registry).decode()


class Merged(Collector):
    def __init__(self, texts: list[tuple[int, str]]) -> None:
        self.texts = texts

    def collect(self):  # type: ignore[no-untyped-def]
        yield from merge_metrics(self.texts)


def test_the_workers_metrics_are_one_exposition_labelled_by_worker() -> None:
    registry = CollectorRegistry()
    registry.register(Merged([(0, exposition(3, 0.001)), (1, exposition(5, 0.002))]))
    text = generate_latest(registry).decode()
    assert 'sipfed_requests_relayed_total{method="MESSAGE",worker="0"} 3.0' in text
    assert 'sipfed_requests_relayed_total{method="MESSAGE",worker="1"} 5.0' in text
    assert text.count("# TYPE sipfed_requests_relayed_total counter") == 1  # one family, not one per worker
    families = {f.name: f for f in text_string_to_metric_families(text)}  # and it parses back
    counts = [s for s in families["sipfed_relay_latency_seconds"].samples if s.name.endswith("_count")]
    assert sorted((s.labels["worker"], s.value) for s in counts) == [("0", 1.0), ("1", 1.0)]


def test_ready_only_when_every_worker_is() -> None:
    assert merge_ready([(0, 200, "ready\nroute a: 1 of 1 up\n"), (1, 200, "ready\n")]) == (
        True,
        ["worker 0: ready", "worker 0: route a: 1 of 1 up", "worker 1: ready"],
    )
    ready, lines = merge_ready([(0, 200, "ready\n"), (1, 503, "not ready\nroute a: no destination up\n")])
    assert not ready
    assert "worker 1: route a: no destination up" in lines
    ready, lines = merge_ready([(0, 200, "ready\n"), (1, None, "connection refused")])
    assert not ready
    assert "worker 1: not answering (connection refused)" in lines
    assert merge_ready([]) == (False, [])


# -- the Via of a worker's requests ------------------------------------------------------------------------------


def test_a_worker_names_its_own_udp_port_in_via_and_keeps_the_listener_in_record_route() -> None:
    own = Identity("plain", "udp", "127.0.0.1", 5060, "sipfed.tomt.local", "sipfed.tomt.local", via_port=40123)
    assert via_value(own, "udp", "z9hG4bK1") == "SIP/2.0/UDP 127.0.0.1:40123;branch=z9hG4bK1;rport"
    alone = Identity("plain", "udp", "127.0.0.1", 5060, "sipfed.tomt.local", "sipfed.tomt.local")
    assert via_value(alone, "udp", "z9hG4bK1") == "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;rport"
    policy = RelayPolicy.build([own], RouteTable(()), {}, frozenset())
    assert {("127.0.0.1", 5060), ("127.0.0.1", 40123)} <= policy.own_addresses  # loops through either are ours


# -- the config ------------------------------------------------------------------------------------------------


def test_workers_is_one_by_default_and_read_when_given(tmp_path: Path) -> None:
    alone = load_config(config_with(tmp_path, ""))
    assert alone.workers == 1
    assert "\nworkers: " not in describe(alone)
    four = load_config(config_with(tmp_path, "workers = 4"))
    assert four.workers == 4
    assert "workers: 4 processes share every listener (SO_REUSEPORT)" in describe(four)  # sipfed check-config


@pytest.mark.parametrize("value", ["0", "65", "1.5", '"2"', "true"])
def test_workers_out_of_range_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config_with(tmp_path, f"workers = {value}"))
    assert any(p.startswith("proxy.workers: ") and "from 1 to 64" in p for p in info.value.problems)


def test_workers_cannot_share_xmpp(tmp_path: Path) -> None:
    xmpp = '\n[xmpp]\nlisten = "127.0.0.1:5269"\ndomains = ["tomt.local"]\n'
    with pytest.raises(ConfigError) as info:
        load_config(config_with(tmp_path, "workers = 2", xmpp))
    assert any(p.startswith("proxy.workers: 2 processes cannot share [xmpp]") for p in info.value.problems)


def test_a_control_socket_too_long_for_the_workers_suffix_is_refused(tmp_path: Path) -> None:
    name = "c" * (107 - len(str(tmp_path)) - 1)  # fits alone, not with ".1"
    control = f'\n[control]\nsocket = "{tmp_path}/{name}"\n'
    assert load_config(config_with(tmp_path, "workers = 1", control)).control is not None
    with pytest.raises(ConfigError) as info:
        load_config(config_with(tmp_path, "workers = 2", control))
    assert any(p.startswith("control.socket: with workers = 2") for p in info.value.problems)


# -- sipfed ctl on the supervisor's answers ------------------------------------------------------------------


def test_the_supervisor_answers_every_control_method_a_worker_has() -> None:
    methods = ServerMethods.__new__(ServerMethods).table()  # the names only: nothing is called
    assert set(FANNED_OUT) == set(methods)


def test_ctl_shows_each_workers_answer_under_its_number() -> None:
    status = {"level": "debug", "previous": "info"}
    answers = {
        "workers": [
            {"worker": 0, "pid": 11, "result": status},
            {"worker": 1, "pid": 12, "error": {"code": -32001, "message": "no answer from /run/ctl.sock.1"}},
        ]
    }
    assert is_fanned_out(answers)
    assert not is_fanned_out(status)
    shown = format_workers(answers["workers"], format_log_level)
    assert shown.startswith("== worker 0 (pid 11)\n" + format_log_level(status))
    assert "== worker 1 (pid 12)\nnot answered: no answer from /run/ctl.sock.1" in shown
