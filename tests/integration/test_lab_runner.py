"""``make lab`` (examples/lab/run.py) as a user runs it, with ``--once`` as CI does: the three scenarios
pass (the third over XMPP with Prosody), the ladder shows the flow through sipfed, the metrics URL is
printed, and every process the runner started is gone when it returns. Plus what the lab found when its
fixed ports were taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT
from tests.integration.lab_harness import lab

pytestmark = pytest.mark.integration


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (read from /proc; nothing is signalled)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_make_lab_once(tmp_path: Path) -> None:
    workdir = tmp_path / "lab"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "lab" / "run.py"),
            "--once",
            "--free-ports",
            "--workdir",
            str(workdir),
            "--python",
            sys.executable,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Scenarios: 3 of 3 passed." in out
    assert "bob's baresip: <sip:alice@tomt.local> changed status from Online to Offline" in out
    assert 'alice\'s baresip: sip:bob@tomt.it: "Hello Alice, this is Bob on tomt.it"' in out
    # the ladder: bob's MESSAGE enters on the lync listener and leaves toward tomt.local
    assert "|-- MESSAGE alice@tomt.local" in out
    assert "|<-- SUBSCRIBE bob@tomt.it" in out
    # the third domain: romeo on Prosody writes to alice, bob to romeo, through the gateway
    assert 'alice\'s baresip: sip:romeo@xmpp.test: "Buongiorno Alice, Romeo da xmpp.test"' in out
    assert "romeo's client: bob@tomt.it" in out
    assert "alice's baresip: <sip:romeo@xmpp.test> changed status from Online to Busy" in out
    assert "== Metrics: http://127.0.0.1:" in out
    assert 'sipfed_xmpp_streams_total{direction="in",outcome="sasl",partner="jabber"}' in out
    assert processes_mentioning(str(workdir)) == []


def test_sipfed_says_which_port_is_busy(tmp_path: Path, certs: Path) -> None:
    """Found by the lab when ``make run`` held 5061/5062/9561: sipfed then died with a Python
    traceback (OSError: [Errno 98] from uvloop's create_server, or from prometheus_client's
    start_http_server for [metrics]). Expected: one plain line naming the listener and address, as
    sipfed does for every other start-up problem, and a non-zero exit."""
    ports = lab.Ports.free()
    config = lab.write_sipfed(tmp_path / "sipfed.toml", ports, certs)
    with socket.socket() as squatter:
        squatter.bind((ports.sipfed, ports.cisco_listener))
        squatter.listen()
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "run", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
    assert f"{ports.sipfed}:{ports.cisco_listener}" in result.stderr
