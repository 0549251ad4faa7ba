"""The real process's UDP listener asks the kernel for a large receive buffer (proxy/net/connection.py
UDP_RECEIVE_BUFFER), so a burst that comes while the event loop is busy waits in the socket instead of being
dropped. Read from outside, as an operator would: ``ss -m`` (iproute2) shows the socket's ``rb``."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.net.connection import UDP_RECEIVE_BUFFER
from tests.integration.conftest import UDP_LISTENER, Sipfed, free_port, lab_config

pytestmark = pytest.mark.integration


def receive_buffer(port: int) -> int:
    """The ``rb`` (bytes the kernel lets queue) of the UDP socket listening on 127.0.0.1:``port``."""
    shown = subprocess.run(
        ["ss", "-u", "-a", "-n", "-m", f"sport = :{port}"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found = re.search(r"skmem:\(r\d+,rb(\d+),", shown)
    assert found, f"ss shows no socket on udp port {port}:\n{shown}"
    return int(found.group(1))


def test_the_udp_listener_gets_the_large_receive_buffer(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    config = lab_config(
        tmp_path / "sipfed.toml", certs, cups_port=free_port("127.0.0.2"), lync_port=free_port(), extra=UDP_LISTENER
    )
    sipfed = start_sipfed(config)
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    rmem_default = int(Path("/proc/sys/net/core/rmem_default").read_text())
    # socket(7): the kernel doubles the value asked for, capped at net.core.rmem_max first.
    expected = 2 * min(UDP_RECEIVE_BUFFER, rmem_max)
    assert receive_buffer(sipfed.ports["lab-udp"]) == expected
    if rmem_max > rmem_default:  # else the kernel allows no more than the default, and both figures agree
        assert expected > 2 * rmem_default
