"""Microsoft-flavoured presence through sipfed, replayed with SIPp from the message shapes of
[MS-SIP] 3.5/4.4 and [MS-PRES]: SIPp plays the Lync pool (over TLS via stunnel, with the pool's
certificate), the tomt.local side is the lab's real Kamailio presence server.

1. The pool subscribes for bob to alice@tomt.local with the msrtc Accept list, Supported:
   ms-benotify, ms-piggyback-first-notify, Proxy-Require: ms-benotify (tolerated: no 420) and a
   Record-Route entry with opaque/ms-key-info/ms-route-sig; Kamailio must see the headers as sent,
   and the pool must get its entry back intact in the 200's Record-Route and the NOTIFY's Route.
2. carol@tomt.local subscribes to bob@tomt.it; the pool answers and sends a BENOTIFY, which reaches
   carol and is answered by nobody: not by carol, and not by a proxy on the way (no 408 within the
   pool's wait, though sipfed's transaction timeout is shorter than that wait).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.lab_harness import SIPP, Lab, lab, sipp, start_lab
from tests.integration.sipp import stunnel

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"  # stunnel.py's tunnels accept and connect on 127.0.0.1 only


class PoolTunnels:
    """The pool's TLS edge: a client tunnel toward sipfed's lync listener, and server tunnels in
    front of the two SIPp instances that play the pool (its subscriber side and its notifier)."""

    def __init__(self, workdir: Path, certs: Path) -> None:
        self.subscriber_sipp, self.subscriber_tls = lab.free_port(LOOPBACK), lab.free_port(LOOPBACK)
        self.notifier_sipp, self.notifier_tls = lab.free_port(LOOPBACK), lab.free_port(LOOPBACK)
        self.to_sipfed = lab.free_port(LOOPBACK)
        pool = {
            "cert_chain": certs / "lync01.tomt.it.pem",
            "key": certs / "lync01.tomt.it.key",
            "ca_file": certs / "ca.crt",
        }
        self.tunnels = [
            stunnel.start_server_tunnel(
                workdir, accept_port=self.subscriber_tls, connect_port=self.subscriber_sipp, **pool
            ),
            stunnel.start_server_tunnel(
                workdir, accept_port=self.notifier_tls, connect_port=self.notifier_sipp, **pool
            ),
        ]
        self.workdir, self.pool = workdir, pool

    def connect_to_sipfed(self, sipfed_lync_port: int) -> None:
        self.tunnels.append(
            stunnel.start_client_tunnel(
                self.workdir,
                accept_port=self.to_sipfed,
                connect_port=sipfed_lync_port,
                check_host="sipfed.tomt.it",
                **self.pool,
            )
        )

    def stop(self) -> None:
        for tunnel in self.tunnels:
            tunnel.stop()


@pytest.fixture
def ms_lab(tmp_path: Path, certs: Path) -> Iterator[tuple[Lab, PoolTunnels]]:
    tunnels = PoolTunnels(tmp_path, certs)
    try:
        # sipfed's route "lync" points at the pool's notifier; its transaction timeout (2 s) is
        # shorter than the notifier's wait after the BENOTIFY (4 s). alice (baresip) publishes her
        # presence at tomt.local, so the NOTIFYs carry a PIDF.
        # The pool's two roles sit on one address, two ports; its Record-Route names the subscriber's port,
        # which no route names: the documented opt-in lets in-dialog requests go there (still over TLS).
        running = start_lab(
            tmp_path,
            certs,
            domains=("tomt.local",),
            users=("alice",),
            lync_route=(LOOPBACK, tunnels.notifier_tls),
            transaction_timeout_seconds=2,
            in_dialog_networks=(f"{LOOPBACK}/32",),
        )
    except BaseException:
        tunnels.stop()
        raise
    tunnels.connect_to_sipfed(running.ports.lync_listener)
    yield running, tunnels
    running.stop()
    tunnels.stop()


def test_ms_subscribe_shapes_pass_intact_to_the_cisco_side(ms_lab: tuple[Lab, PoolTunnels], tmp_path: Path) -> None:
    the_lab, tunnels = ms_lab
    code, report = sipp(
        "lab_ms_pool_subscribe.xml",
        (LOOPBACK, tunnels.to_sipfed),
        tmp_path,
        "pool_port",
        str(tunnels.subscriber_tls),
        local_ip=LOOPBACK,
        transport="t1",
        local_port=tunnels.subscriber_sipp,
    )
    assert code == 0, report
    assert report.count("notify;") == 1, report
    cups = the_lab.kamailio["tomt.local"].log_text()
    seen = re.search(r"SUBSCRIBE from sip:bob@tomt.it: (.*)", cups)
    assert seen is not None, cups[-3000:]
    assert seen.group(1) == (
        "Accept [application/msrtc-event-categories+xml, text/xml+msrtc.pidf, "
        "application/pidf+xml] Supported [ms-benotify, ms-piggyback-first-notify] "
        "Proxy-Require [ms-benotify]"
    )


def test_benotify_reaches_the_watcher_and_nobody_answers_it(ms_lab: tuple[Lab, PoolTunnels], tmp_path: Path) -> None:
    the_lab, tunnels = ms_lab
    notifier = subprocess.Popen(
        [
            "sipp",
            "-sf",
            str(SIPP / "lab_ms_pool_notifier.xml"),
            "-t",
            "t1",
            "-i",
            LOOPBACK,
            "-p",
            str(tunnels.notifier_sipp),
            "-m",
            "1",
            "-nostdin",
            "-key",
            "pool_port",
            str(tunnels.notifier_tls),
            "-timeout",
            "25s",
            "-timeout_error",
            "-trace_err",
            "-error_file",
            str(tmp_path / "notifier.err"),
            "-trace_logs",
            "-log_file",
            str(tmp_path / "notifier.log"),
            "-trace_msg",
            "-message_file",
            str(tmp_path / "notifier.msg"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        p = the_lab.ports
        code, report = sipp(
            "lab_ms_cisco_watcher.xml",
            (p.cups, p.cups_users),
            tmp_path,
            "domain",
            "tomt.it",
            "from_domain",
            "tomt.local",
            local_ip="127.0.0.7",
            service="bob",
            auth=("carol", lab.PASSWORDS["carol"]),
        )
        assert code == 0, report
        assert "benotify;received" in report, report
        notifier_code = notifier.wait(25)
    finally:
        if notifier.poll() is None:
            notifier.kill()
            notifier.wait(5)
    logged = "\n".join(f.read_text(errors="replace")[-3000:] for f in tmp_path.glob("notifier.*"))
    assert notifier_code == 0, logged
    # [MS-SIP] 3.5: a BENOTIFY is never answered; the pool must not get a response for it.
    answered = re.search(r"benotify_answered;.*", logged)
    assert answered is None, f"the pool got an answer to its BENOTIFY: {answered.group(0) if answered else ''}"
