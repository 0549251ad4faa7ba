"""``sipfed ctl``: ask the running proxy over its control socket, as ``kamcmd`` asks Kamailio.

One JSON-RPC 2.0 request per run (proxy.net.control has the framing); a table for people, ``--json`` for
scripts. Exit status: 0 done; 1 the proxy answered with an error (a refused reload, a trace file it cannot
open); 2 it could not be asked (no socket, nothing listening, no answer in time).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from proxy.config import parse_control
from proxy.net.control import MAX_REQUEST_BYTES, RpcError, request, result_of

DEFAULT_SOCKET = Path("/run/sipfed/ctl.sock")
LEVELS = ("debug", "info", "warning", "error")


class CtlError(Exception):
    """The proxy could not be asked: one line for the admin, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--socket", help=f"the control socket (default: --config's [control] socket, else {DEFAULT_SOCKET})"
    )
    where.add_argument("--config", help="read the socket's path from this config file's [control] socket")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON, for scripts")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)")
    commands = parser.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    commands.add_parser("status", help="listeners, uptime, config file and when it was loaded, version")
    commands.add_parser("connections", help="each open TCP/TLS connection: peer, certificate, idle time")
    commands.add_parser("routes", help="each route's candidates in try order, up or down and why")
    commands.add_parser("subscriptions", help="active subscriptions by peer and event package")
    commands.add_parser("reload", help="re-read the config (as SIGHUP): the problems, or what changed")
    trace = commands.add_parser("trace", help="write SIP messages to a rotating file, or stop")
    trace.add_argument("state", choices=["on", "off"])
    trace.add_argument("--peer", help="only messages to or from this [[peers]] name (and the other leg of their calls)")
    trace.add_argument("--call-id", help="only messages with this Call-ID")
    trace.add_argument("--file", help="the trace file (default: the one already on)")
    trace.add_argument("--max-bytes", type=int, help="rotate past this size (default 50 MiB)")
    trace.add_argument("--files", type=int, help="rotated files kept (default 5)")
    level = commands.add_parser("log-level", help="change the log level until the next restart")
    level.add_argument("level", choices=LEVELS)


def run(args: argparse.Namespace) -> int:
    method, params = call_of(args)
    try:
        path = socket_path(args.socket, args.config)
        result = ask(path, method, params, args.timeout)
    except CtlError as exc:
        print(f"sipfed ctl: {exc}", file=sys.stderr)
        return 2
    except RpcError as exc:
        if args.json:
            print(json.dumps({"error": exc.to_json()}, indent=2))
        else:
            print(f"sipfed ctl {args.ctl_command}: {format_error(exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    elif is_fanned_out(result):
        print(format_workers(result["workers"], FORMATS[method]))
    else:
        print(FORMATS[method](result))
    return 0


def is_fanned_out(result: Any) -> bool:
    """Worker mode: the supervisor answers with every worker's answer (proxy/supervisor.py)."""
    return isinstance(result, dict) and list(result) == ["workers"] and isinstance(result["workers"], list)


def format_workers(answers: list[dict[str, Any]], form: Callable[[Any], str]) -> str:
    """Each worker's answer under its number, as one process's would be shown."""
    blocks = []
    for answer in answers:
        restarts = answer.get("restarts") or 0
        again = f", started again {restarts} time{'s' if restarts != 1 else ''}" if restarts else ""
        head = f"== worker {answer.get('worker')} (pid {answer.get('pid')}{again})"
        if "result" in answer:
            blocks.append(f"{head}\n{form(answer['result'])}")
        else:
            error = answer.get("error") or {}
            blocks.append(f"{head}\nnot answered: {error.get('message', 'no answer')}")
    return "\n\n".join(blocks)


def call_of(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The JSON-RPC method and params of a parsed ``sipfed ctl`` command line."""
    if args.ctl_command == "trace":
        params: dict[str, Any] = {"on": args.state == "on"}
        if args.state == "on":
            given = {
                "peer": args.peer,
                "call_id": args.call_id,
                "max_bytes": args.max_bytes,
                "files": args.files,
                # the proxy's working directory is not ours
                "file": os.path.abspath(args.file) if args.file else None,
            }
            params.update({k: v for k, v in given.items() if v is not None})
        return "trace", params
    if args.ctl_command == "log-level":
        return "log_level", {"level": args.level}
    return args.ctl_command, {}


def socket_path(given: str | None, config: str | None) -> Path:
    if given:
        return Path(given)
    if config is None:
        return DEFAULT_SOCKET
    try:
        raw = tomllib.loads(Path(config).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CtlError(f"cannot read {config}: {getattr(exc, 'strerror', None) or exc}") from None
    problems: list[str] = []
    control = parse_control(raw.get("control"), Path(config).parent, problems, [])
    if problems:
        raise CtlError(f"{config}: " + "; ".join(problems))
    if control is None:
        raise CtlError(f"{config} has no [control] socket: the proxy it configures has no control socket")
    return control.socket


def ask(path: Path, method: str, params: dict[str, Any], timeout: float) -> Any:
    """One request and its answer over the Unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except FileNotFoundError:
            raise CtlError(f"no control socket at {path}: is sipfed running, with [control] socket set?") from None
        except ConnectionRefusedError:
            raise CtlError(f"nothing listens on {path}: sipfed is not running (a stale socket file)") from None
        except PermissionError:
            raise CtlError(
                f"not allowed to connect to {path}: run as sipfed's user or root (see [control] mode)"
            ) from None
        except OSError as exc:
            raise CtlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(request(method, params, 1))
            line = read_line(sock)
        except TimeoutError:
            raise CtlError(f"no answer from {path} within {timeout:g} s") from None
        except OSError as exc:
            raise CtlError(f"the connection to {path} failed: {exc.strerror or exc}") from None
    return result_of(line, 1)


def read_line(sock: socket.socket, limit: int = 64 * MAX_REQUEST_BYTES) -> bytes:
    """One answer line; answers are bounded too (a long connection list is still far below the limit)."""
    data = bytearray()
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise CtlError("the proxy closed the connection without answering")
        data += chunk
        if len(data) > limit:
            raise CtlError(f"the answer is longer than {limit} bytes")
    return bytes(data[: data.index(b"\n")])


def format_error(exc: RpcError) -> str:
    lines = [exc.message]
    if isinstance(exc.data, dict):
        lines.extend(f"  - {p}" for p in exc.data.get("problems", []))
    return "\n".join(lines)


# -- tables for people ---------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart; empty cells show ``-``."""
    cells = [[str(h) for h in headers]] + [["-" if c is None or c == "" else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def format_status(result: dict[str, Any]) -> str:
    config, trace = result["config"], result["trace"]
    lines = [
        f"sipfed {result['version']}, pid {result['pid']}, up {duration(result['uptime_seconds'])} "
        f"(since {result['started']}){', draining' if result.get('draining') else ''}",
        f"config {config['file']}, loaded {config['loaded']}",
        f"{result['routes']} route(s), {result['peers']} peer(s), {result['connections']} connection(s), "
        f"{result['transactions_in_flight']} transaction(s) in flight, {result['subscriptions']} subscription(s)",
        f"log level {result['log_level']}; trace "
        + (f"on: {trace['file']} ({trace['filter']})" if trace["on"] else "off"),
        "",
        table(
            ["LISTENER", "TRANSPORT", "ADDRESS", "PORT", "FQDN"],
            [[x["name"], x["transport"], x["address"], x["port"], x["fqdn"]] for x in result["listeners"]],
        ),
    ]
    return "\n".join(lines)


def format_connections(result: list[dict[str, Any]]) -> str:
    if not result:
        return "no open connections"
    return table(
        ["ID", "LISTENER", "DIR", "TRANSPORT", "REMOTE", "PEER", "SUBJECT", "NAMES", "NOT AFTER", "IDLE"],
        [
            [
                c["id"],
                c["listener"],
                c["direction"],
                c["transport"],
                c["remote"],
                c["peer"],
                c["subject"],
                ",".join(c["names"]),
                c["not_after"],
                duration(c["idle_seconds"]),
            ]
            for c in result
        ],
    )


def format_routes(result: list[dict[str, Any]]) -> str:
    blocks = []
    for route in result:
        head = f"route {route['route']} ({route['match_uri']})" + (
            ", health checks on" if route["health_checks"] else ""
        )
        rows = [
            [
                c["position"],
                c["destination"],
                "up" if c["up"] else "DOWN",
                c["priority"],
                c["weight"],
                c["tls_name"],
                c["source"],
                why(c),
            ]
            for c in route["candidates"]
        ]
        body = (
            table(["#", "DESTINATION", "STATE", "PRIORITY", "WEIGHT", "CERT NAME", "FROM", "WHY"], rows)
            if rows
            else f"  {route.get('note', 'no candidates')}"
        )
        blocks.append(f"{head}:\n{body}")
    return "\n\n".join(blocks) or "no routes"


def why(candidate: dict[str, Any]) -> str:
    text = str(candidate.get("why") or "")
    seconds = candidate.get("down_for_seconds")
    if not candidate["up"] and seconds is not None:
        text += f" (tried last for {duration(seconds)} more)"
    elif not candidate["up"] and candidate.get("health_checked"):
        text += " (until health checks pass)"
    return text


def format_subscriptions(result: dict[str, Any]) -> str:
    rows = [[c["peer"] or "(no trusted peer)", c["event"], c["count"]] for c in result["counts"]]
    return f"{result['total']} active subscription(s)" + (
        "\n" + table(["PEER", "EVENT", "COUNT"], rows) if rows else ""
    )


def format_reload(result: dict[str, Any]) -> str:
    lines = [f"reloaded {result['file']}"]
    for kind in ("routes", "peers"):
        for what, names in result[kind].items():
            if names:
                lines.append(f"  {kind} {what}: {', '.join(names)}")
    if result["settings"]:
        lines.append(f"  settings changed: {', '.join(result['settings'])}")
    if len(lines) == 1:
        lines.append("  nothing changed in routes, peers or settings (TLS files were read again)")
    conns = result["connections"]
    lines.append(
        f"  open connections: {conns['rebound']} re-bound, {conns['closed']} closed (no longer bound to "
        f"their peer), {conns['kept']} kept"
    )
    lines.extend(f"  warning: {w}" for w in result.get("warnings", []))
    return "\n".join(lines)


def format_trace(result: dict[str, Any]) -> str:
    if not result["on"]:
        return (
            f"trace off ({result['file']}: {result['written']} message(s) written)"
            if result.get("file")
            else "trace off (it was not on)"
        )
    return (
        f"trace on: {result['file']} ({result['filter']}), rotated at {size(result['max_bytes'])}, "
        f"{result['files']} old file(s) kept"
    )


def format_log_level(result: dict[str, Any]) -> str:
    return f"log level {result['level']} (was {result['previous']})"


def size(count: int) -> str:
    """``512 bytes``, ``64 KiB``, ``50 MiB``, ``1.5 GiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{count} bytes"


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h03m``, ``4d02h``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


FORMATS: dict[str, Callable[[Any], str]] = {
    "status": format_status,
    "connections": format_connections,
    "routes": format_routes,
    "subscriptions": format_subscriptions,
    "reload": format_reload,
    "trace": format_trace,
    "log_level": format_log_level,
}
