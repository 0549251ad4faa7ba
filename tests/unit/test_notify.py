"""sd_notify(3) over $NOTIFY_SOCKET: a path, an @abstract name, nothing at all, and a socket nobody reads."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.net.notify import notify, reloading


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket where systemd's would be; its path as NOTIFY_SOCKET says it."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, str(path)


def test_ready_and_status_go_as_one_datagram(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    assert notify("READY=1", "STATUS=relaying: 2 listener(s)", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=relaying: 2 listener(s)"


def test_an_abstract_name_starts_with_at() -> None:
    name = f"sipfed-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_outside_systemd_nothing_is_sent() -> None:
    assert not notify("READY=1", environ={})
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": ""})


def test_a_socket_nobody_listens_on_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "sipfed"):
        assert not notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert "could not notify systemd" in caplog.text
    assert "READY=1" in caplog.text


def test_vsock_is_refused_in_words(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "sipfed"):
        assert not notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"})
    assert "only Unix socket paths and @abstract names" in caplog.text


def test_reloading_carries_the_monotonic_stamp(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    before = time.monotonic_ns() // 1000
    assert notify(*reloading("reloading /etc/sipfed/sipfed.toml"), environ={"NOTIFY_SOCKET": path})
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[2] == "STATUS=reloading /etc/sipfed/sipfed.toml"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= time.monotonic_ns() // 1000
