"""JSON-RPC 2.0 for the control socket: the error codes, ``RpcError``, and the framing as pure functions
(rules 1, 2, 5 and 6 of proxy/net/control.py): a request line in, its answer line out; and the client's side
(``request``, ``result_of``).

Apart from the socket (proxy/net/control.py, which re-exports these names) because ``sipfed ctl``
(proxy/ctl.py) shares it, and because it does no I/O: unit tests feed it lines.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("sipfed.control")

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
