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

This module holds the socket. The JSON-RPC framing is proxy/net/control_rpc.py (pure, shared with the client),
the methods served on the running Server proxy/net/control_methods.py; their names are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

from proxy.config import ControlConfig
from proxy.net.control_methods import LOG_LEVELS, TRACE_PARAMS, ActivityWatch, Reloaded, ServerMethods
from proxy.net.control_rpc import (
    FAILED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RELOAD_REFUSED,
    Method,
    Params,
    RpcError,
    _error,
    answer,
    answer_line,
    call,
    encode,
    params,
    request,
    result_of,
)

if TYPE_CHECKING:
    from proxy.server import Server

__all__ = [
    "FAILED",
    "IDLE_SECONDS",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LOG_LEVELS",
    "MAX_CLIENTS",
    "MAX_REQUEST_BYTES",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "RELOAD_REFUSED",
    "TRACE_PARAMS",
    "ActivityWatch",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "Method",
    "Params",
    "Reloaded",
    "RpcError",
    "ServerMethods",
    "answer",
    "answer_line",
    "bind_unix",
    "call",
    "encode",
    "open_control",
    "params",
    "remove_stale",
    "request",
    "result_of",
]

log = logging.getLogger("sipfed.control")

MAX_REQUEST_BYTES = 65536
IDLE_SECONDS = 30.0
MAX_CLIENTS = 16


class ControlError(Exception):
    """The control socket cannot be set up: one line for the admin (sipfed does not start)."""


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


# -- on the running Server -----------------------------------------------------------------------------------


async def open_control(server: Server, control: ControlConfig) -> ControlServer:
    """Start ``sipfed ctl``'s socket on the running Server, once its listeners are bound."""
    watch = ActivityWatch(server.driver)
    control_server = ControlServer(control.socket, ServerMethods(server, watch).table(), server.loop)
    await control_server.start(control.mode)
    watch.start()
    control_server.closing.append(watch.close)
    return control_server
