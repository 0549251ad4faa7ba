"""The control socket's JSON-RPC framing, the socket's own rules, ``sipfed ctl``'s tables, ``[control]`` in the
config, and the trace's filter and rotation. The socket tests use a real Unix socket in tmp_path with
stand-in methods; tests/integration/test_ctl.py asks the real process."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from proxy import ctl
from proxy.config import ConfigError, load_config
from proxy.net import control
from proxy.net.control import (
    FAILED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    ControlError,
    ControlServer,
    Reloaded,
    RpcError,
    answer_line,
    params,
    request,
    result_of,
)
from proxy.net.trace import Trace, TraceFilter, call_id_of


def echo(given: dict[str, Any]) -> Any:
    return params(given, {"text": str})


def broken(given: dict[str, Any]) -> Any:
    raise KeyError("oops")


def refusing(given: dict[str, Any]) -> Any:
    raise RpcError(FAILED, "cannot open the trace file /x: Permission denied")


METHODS = {"echo": echo, "broken": broken, "refusing": refusing}


def answered(line: bytes) -> Any:
    out = answer_line(line, METHODS)
    assert out is not None
    assert out.endswith(b"\n")
    assert out.count(b"\n") == 1
    return json.loads(out)


# -- framing ---------------------------------------------------------------------------------------------


def test_a_request_gets_its_result_with_its_id() -> None:
    line = request("echo", {"text": "hi"}, 7)
    assert line.endswith(b"\n")
    assert b"\n" not in line[:-1]
    assert answered(line) == {"jsonrpc": "2.0", "result": {"text": "hi"}, "id": 7}
    assert result_of(answer_line(line, METHODS) or b"", 7) == {"text": "hi"}


def test_not_json_is_a_parse_error_with_a_null_id() -> None:
    got = answered(b'{"jsonrpc": "2.0", "method": ')
    assert got["id"] is None
    assert got["error"]["code"] == PARSE_ERROR
    assert got["error"]["message"].startswith("parse error: not JSON")


@pytest.mark.parametrize("line", [b"[" * 60000, b'{"id": ' + b"1" * 5000 + b"}", b"\xff\xfe{}"])
def test_hostile_lines_are_parse_errors_too(line: bytes) -> None:
    assert answered(line)["error"]["code"] == PARSE_ERROR


@pytest.mark.parametrize(
    "line",
    [
        b'{"method": "echo", "id": 1}',
        b'{"jsonrpc": "2.0", "method": 3, "id": 1}',
        b"42",
        b'{"jsonrpc": "2.0", "method": "echo", "id": [1]}',
    ],
)
def test_json_that_is_no_request_is_an_invalid_request(line: bytes) -> None:
    assert answered(line)["error"]["code"] == INVALID_REQUEST


def test_an_unknown_method_names_the_known_ones() -> None:
    error = answered(request("stauts"))["error"]
    assert error["code"] == METHOD_NOT_FOUND
    assert error["message"] == "no method 'stauts' (methods: broken, echo, refusing)"


def test_params_are_named_and_typed() -> None:
    positional = b'{"jsonrpc": "2.0", "method": "echo", "params": ["hi"], "id": 1}'
    assert answered(positional)["error"]["code"] == INVALID_PARAMS
    unknown = answered(request("echo", {"txt": "hi"}))["error"]
    assert (unknown["code"], unknown["message"]) == (INVALID_PARAMS, "unknown parameter 'txt' (known: text)")
    wrong = answered(request("echo", {"text": 5}))["error"]
    assert wrong["message"] == "parameter 'text': 5 must be str"
    with pytest.raises(RpcError, match="must be int"):
        params({"files": True}, {"files": int})  # a bool is no count


def test_a_method_error_is_answered_as_is_and_a_bug_as_an_internal_error() -> None:
    assert answered(request("refusing"))["error"] == {
        "code": FAILED,
        "message": "cannot open the trace file /x: Permission denied",
    }
    error = answered(request("broken"))["error"]
    assert error["code"] == INTERNAL_ERROR
    assert "KeyError('oops')" in error["message"]
    assert "log" in error["message"]


def test_notifications_are_not_answered_and_batches_are_answered_by_arrays() -> None:
    assert answer_line(request("echo", {"text": "x"}, None), METHODS) is None
    batch = (
        b"["
        + request("echo", {"text": "a"}, 1).strip()
        + b","
        + request("echo", {}, None).strip()
        + b","
        + request("nope", {}, 2).strip()
        + b"]"
    )
    got = answered(batch)
    assert [a["id"] for a in got] == [1, 2]
    assert got[0]["result"] == {"text": "a"}
    assert got[1]["error"]["code"] == METHOD_NOT_FOUND
    assert answered(b"[]")["error"]["code"] == INVALID_REQUEST


def test_the_client_raises_the_error_with_its_data() -> None:
    line = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "error": {"code": -32000, "message": "reload refused", "data": {"problems": ["routes[0].port: 0"]}},
        }
    ).encode()
    with pytest.raises(RpcError) as caught:
        result_of(line, 1)
    assert (caught.value.code, caught.value.data) == (-32000, {"problems": ["routes[0].port: 0"]})
    assert ctl.format_error(caught.value) == "reload refused\n  - routes[0].port: 0"
    with pytest.raises(RpcError, match="not the response to this request"):
        result_of(b'{"jsonrpc": "2.0", "id": 2, "result": 1}', 1)
    with pytest.raises(RpcError, match="not JSON"):
        result_of(b"<html>", 1)


# -- the socket ------------------------------------------------------------------------------------------


def on_socket(tmp_path: Path, scenario: Callable[[Path], Awaitable[None]], mode: int = 0o600) -> None:
    async def main() -> None:
        server = ControlServer(tmp_path / "ctl.sock", METHODS, asyncio.get_running_loop())
        await server.start(mode)
        try:
            await asyncio.wait_for(scenario(server.path), 10)
        finally:
            server.close()
        assert not server.path.exists()

    asyncio.run(main())


def test_a_malformed_line_leaves_the_connection_usable(tmp_path: Path) -> None:
    async def scenario(path: Path) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"this is not json\n" + request("echo", {"text": "after"}, 2))
        assert json.loads(await reader.readline())["error"]["code"] == PARSE_ERROR
        assert json.loads(await reader.readline())["result"] == {"text": "after"}
        writer.close()

    on_socket(tmp_path, scenario)


def test_a_request_past_the_size_limit_is_refused_and_the_connection_closed(tmp_path: Path) -> None:
    async def scenario(path: Path) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(
            b'{"jsonrpc": "2.0", "method": "echo", "params": {"text": "' + b"x" * (control.MAX_REQUEST_BYTES + 10)
        )
        error = json.loads(await reader.readline())["error"]
        assert error["code"] == INVALID_REQUEST
        assert "longer than 65536 bytes" in error["message"]
        assert await reader.read() == b""  # closed
        writer.close()

    on_socket(tmp_path, scenario)


def test_a_silent_client_is_closed_after_the_idle_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "IDLE_SECONDS", 0.2)

    async def scenario(path: Path) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

    on_socket(tmp_path, scenario)


@pytest.mark.parametrize("mode", [0o600, 0o660])
def test_the_socket_file_has_its_mode(tmp_path: Path, mode: int) -> None:
    async def scenario(path: Path) -> None:
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == mode

    on_socket(tmp_path, scenario, mode)


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays; nothing listens on it
    control.bind_unix(path, 0o600).close()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        path.unlink()
        live.bind(str(path))
        live.listen(1)
        with pytest.raises(ControlError, match="another process listens on the control socket"):
            control.bind_unix(path, 0o600)
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        control.bind_unix(path, 0o600)
    with pytest.raises(ControlError, match=r"directory .*/missing does not exist; create it"):
        control.bind_unix(tmp_path / "missing" / "ctl.sock", 0o600)


# -- tables ----------------------------------------------------------------------------------------------


def test_a_table_pads_columns_and_marks_empty_cells() -> None:
    assert ctl.table(["A", "LONGER"], [["x", None], ["wide cell", 3]]).splitlines() == [
        "A          LONGER",
        "x          -",
        "wide cell  3",
    ]


def test_connections_table() -> None:
    rows = [
        {
            "id": 3,
            "listener": "lync",
            "direction": "in",
            "transport": "tls",
            "remote": "127.0.0.3:40001",
            "peer": "lync",
            "subject": "CN=lync01.tomt.it",
            "names": ["lync01.tomt.it", "127.0.0.3"],
            "not_after": "2027-12-03T08:00:00Z",
            "idle_seconds": 75.2,
        }
    ]
    lines = ctl.format_connections(rows).splitlines()
    assert lines[0].split() == [
        "ID",
        "LISTENER",
        "DIR",
        "TRANSPORT",
        "REMOTE",
        "PEER",
        "SUBJECT",
        "NAMES",
        "NOT",
        "AFTER",
        "IDLE",
    ]
    assert lines[1].split() == [
        "3",
        "lync",
        "in",
        "tls",
        "127.0.0.3:40001",
        "lync",
        "CN=lync01.tomt.it",
        "lync01.tomt.it,127.0.0.3",
        "2027-12-03T08:00:00Z",
        "1m15s",
    ]
    assert ctl.format_connections([]) == "no open connections"


def test_routes_table_says_why_a_candidate_is_down() -> None:
    result = [
        {
            "route": "pool",
            "match_uri": "tomt.local",
            "health_checks": True,
            "candidates": [
                {
                    "position": 1,
                    "destination": "tls:10.0.0.2:5061",
                    "up": True,
                    "priority": 0,
                    "weight": 10,
                    "tls_name": "cups.tomt.local",
                    "source": "static",
                    "why": "200 OK",
                    "down_for_seconds": None,
                    "health_checked": True,
                },
                {
                    "position": 2,
                    "destination": "tls:10.0.0.1:5061",
                    "up": False,
                    "priority": 0,
                    "weight": 10,
                    "tls_name": "cups.tomt.local",
                    "source": "static",
                    "why": "connection refused",
                    "down_for_seconds": 12.5,
                    "health_checked": True,
                },
                {
                    "position": 3,
                    "destination": "tls:10.0.0.3:5061",
                    "up": False,
                    "priority": 1,
                    "weight": 0,
                    "tls_name": "cups.tomt.local",
                    "source": "static",
                    "why": "health check: no answer in 2 s",
                    "down_for_seconds": None,
                    "health_checked": True,
                },
            ],
        }
    ]
    lines = ctl.format_routes(result).splitlines()
    assert lines[0] == "route pool (tomt.local), health checks on:"
    assert lines[2].split()[:3] == ["1", "tls:10.0.0.2:5061", "up"]
    assert lines[3].split()[:3] == ["2", "tls:10.0.0.1:5061", "DOWN"]
    assert lines[3].endswith("connection refused (tried last for 12s more)")
    assert lines[4].endswith("health check: no answer in 2 s (until health checks pass)")


def test_reload_and_subscription_and_small_answers() -> None:
    changes = {
        "file": "/etc/sipfed.toml",
        "routes": {"added": ["new"], "removed": [], "changed": ["lync"]},
        "peers": {"added": [], "removed": ["old"], "changed": []},
        "settings": ["limits"],
        "connections": {"rebound": 1, "closed": 2, "kept": 3},
        "warnings": ["w"],
    }
    assert ctl.format_reload(changes).splitlines() == [
        "reloaded /etc/sipfed.toml",
        "  routes added: new",
        "  routes changed: lync",
        "  peers removed: old",
        "  settings changed: limits",
        "  open connections: 1 re-bound, 2 closed (no longer bound to their peer), 3 kept",
        "  warning: w",
    ]
    subs = ctl.format_subscriptions({"total": 2, "counts": [{"peer": None, "event": "presence", "count": 2}]})
    assert subs.splitlines()[0] == "2 active subscription(s)"
    assert subs.splitlines()[2].split() == ["(no", "trusted", "peer)", "presence", "2"]
    assert ctl.format_log_level({"level": "debug", "previous": "info"}) == "log level debug (was info)"
    assert [ctl.duration(s) for s in (5.9, 185, 7380, 90000)] == ["5s", "3m05s", "2h03m", "1d01h"]
    assert [ctl.size(n) for n in (512, 65536, 50 << 20, 3 << 29)] == ["512 bytes", "64 KiB", "50 MiB", "1.5 GiB"]


def test_trace_arguments_become_params_with_an_absolute_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(
        ctl_command="trace", state="on", peer=None, call_id="abc", file="t.log", max_bytes=None, files=2
    )
    assert ctl.call_of(args) == ("trace", {"on": True, "call_id": "abc", "files": 2, "file": str(tmp_path / "t.log")})
    assert ctl.call_of(argparse.Namespace(ctl_command="log-level", level="warning")) == (
        "log_level",
        {"level": "warning"},
    )


def test_the_client_says_why_it_cannot_ask(tmp_path: Path) -> None:
    with pytest.raises(ctl.CtlError, match=r"no control socket at .*is sipfed running"):
        ctl.ask(tmp_path / "none.sock", "status", {}, 1.0)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    with pytest.raises(ctl.CtlError, match="nothing listens on"):
        ctl.ask(tmp_path / "stale.sock", "status", {}, 1.0)


# -- [control] in the config -----------------------------------------------------------------------------

BASE = """
[proxy]
fqdn = "sipfed.example"

[[listeners]]
name = "a"
transport = "tcp"
address = "127.0.0.1"
port = 0
"""


def config_with(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "sipfed.toml"
    path.write_text(BASE + section)
    return path


def test_control_section_defaults_and_relative_paths(tmp_path: Path) -> None:
    assert load_config(config_with(tmp_path, "")).control is None
    config = load_config(config_with(tmp_path, '[control]\nsocket = "run/ctl.sock"\n'))
    assert config.control is not None
    assert (config.control.socket, config.control.mode) == (tmp_path / "run" / "ctl.sock", 0o600)
    assert load_config(config_with(tmp_path, '[control]\nsocket = "/s"\nmode = 0o660\n')).control.mode == 0o660  # type: ignore[union-attr]
    assert load_config(config_with(tmp_path, '[control]\nsocket = "/s"\nmode = "0640"\n')).control.mode == 0o640  # type: ignore[union-attr]
    open_to_all = load_config(config_with(tmp_path, '[control]\nsocket = "/s"\nmode = 0o666\n'))
    assert any("every local user" in w for w in open_to_all.warnings)
    assert ctl.socket_path(None, str(config_with(tmp_path, '[control]\nsocket = "c.sock"\n'))) == tmp_path / "c.sock"


def test_every_control_problem_is_reported_by_key(tmp_path: Path) -> None:
    long = "/" + "x" * 120
    with pytest.raises(ConfigError) as caught:
        load_config(config_with(tmp_path, f'[control]\nsocket = "{long}"\nmode = 0o400\nowner = "sipfed"\n'))
    problems = caught.value.problems
    assert "control.owner: unknown key (known: mode, socket)" in problems
    assert any(
        p.startswith(f"control.socket: '{long}' is longer than a Unix socket path may be (107 bytes)") for p in problems
    )
    assert any(p.startswith("control.mode: 0o400 must let the owner read and write") for p in problems)
    for section, expected in (
        ("[control]\nmode = 0o600\n", "control.socket: missing (required)"),
        ('[control]\nsocket = "/s"\nmode = "rw"\n', "control.mode: 'rw' must be permission"),
        ('[control]\nsocket = "/s"\nmode = 0o1777\n', "control.mode: 0o1777 must be permission"),
        ('control = "/s"\n', "control: must be a table"),
    ):
        path = config_with(tmp_path, "")
        path.write_text(section + BASE if section.startswith("control =") else BASE + section)
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems


# -- the trace ---------------------------------------------------------------------------------------------


def message(call_id: str, body: str = "") -> bytes:
    return (f"MESSAGE sip:a@b SIP/2.0\r\nCall-ID: {call_id}\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


def test_call_id_comes_from_the_header_section_only() -> None:
    assert call_id_of(message("abc@host")) == "abc@host"
    assert call_id_of(b"SIP/2.0 200 OK\r\ni:  compact \r\n\r\n") == "compact"
    assert call_id_of(b"MESSAGE sip:a@b SIP/2.0\r\nTo: x\r\n\r\nCall-ID: in-body") is None


def test_a_call_id_filter_keeps_only_that_call_in_a_0600_file(tmp_path: Path) -> None:
    trace = Trace(tmp_path / "t.log", only=TraceFilter(call_id="keep"))
    for call_id in ("keep", "drop", "keep"):
        trace.message("RECV", "tls", ("127.0.0.3", 5061), "lync", message(call_id))
    trace.close()
    text = (tmp_path / "t.log").read_text()
    assert text.count("Call-ID: keep") == 2
    assert "drop" not in text
    assert stat.S_IMODE(os.stat(tmp_path / "t.log").st_mode) == 0o600


def test_a_peer_filter_follows_the_peers_calls_to_their_other_leg(tmp_path: Path) -> None:
    peers = {("127.0.0.3", 5061): "lync"}
    trace = Trace(tmp_path / "t.log", only=TraceFilter(peer="lync"), peer_of=lambda t, remote: peers.get(remote))
    cups, lync = ("127.0.0.2", 5062), ("127.0.0.3", 5061)
    trace.message("RECV", "tls", cups, "cisco", message("from-cups"))  # not known yet to concern lync ...
    trace.message("RECV", "tls", cups, "cisco", message("other"))
    trace.message("SEND", "tls", lync, "lync", message("from-cups"))  # ... it does: the request above first
    trace.message("RECV", "tls", lync, "lync", message("from-lync"))
    trace.message("SEND", "tls", cups, "cisco", message("from-lync"))  # the other leg of lync's call
    trace.close()
    heads = [line for line in (tmp_path / "t.log").read_text().splitlines() if " -> " in line or " <- " in line]
    calls = [line for line in (tmp_path / "t.log").read_text().splitlines() if line.startswith("Call-ID")]
    assert calls == ["Call-ID: from-cups", "Call-ID: from-cups", "Call-ID: from-lync", "Call-ID: from-lync"]
    assert [h.split()[1] for h in heads] == ["RECV", "SEND", "RECV", "SEND"]


def test_the_trace_rotates_and_keeps_so_many_files(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    trace = Trace(path, max_bytes=1000, files=2)
    for i in range(30):
        trace.message("RECV", "tcp", ("127.0.0.1", 1), "a", message(f"call-{i}", "x" * 100))
    trace.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.log", "t.log.1", "t.log.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    kept = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"Call-ID: call-29\r\n" in path.read_bytes()  # the newest in the current file
    assert b"Call-ID: call-0\r\n" not in kept  # the oldest dropped with the third rotated file
    assert b"Call-ID: call-27\r\n" in kept


# -- reload outcome --------------------------------------------------------------------------------------


def test_reload_outcome_lists_what_changed(tmp_path: Path) -> None:
    routes = """
[[routes]]
name = "{name}"
match_uri = "{name}.example"
destination = "127.0.0.2"
port = {port}
transport = "tcp"
"""
    old = load_config(
        config_with(tmp_path, routes.format(name="kept", port=5060) + routes.format(name="gone", port=5060))
    )
    new = load_config(
        config_with(
            tmp_path,
            routes.format(name="kept", port=5070)
            + routes.format(name="new", port=5060)
            + "[limits]\nmax_headers = 100\n",
        )
    )
    outcome = Reloaded.applied(old, new, ["kept", "rebound", "kept"])
    assert outcome.changes["routes"] == {"added": ["new"], "removed": ["gone"], "changed": ["kept"]}
    assert outcome.changes["settings"] == ["limits"]
    assert outcome.changes["connections"] == {"rebound": 1, "closed": 0, "kept": 2}
    assert Reloaded.refused("/x.toml", ["a: b"]).problems == ("a: b",)
