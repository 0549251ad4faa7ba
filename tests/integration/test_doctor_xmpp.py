"""`sipfed doctor --live` for XMPP federation (issue 15) against a real partner: Debian's Prosody as xmpp.test
(it requires TLS and trusts our CA), a lab DNS (dnsmasq) with the ``_xmpp-server._tcp`` SRV records, and the
real sipfed serving tomt.local and tomt.it, all on 127.0.33.0/24 (no other test uses it). The doctor runs as the
real CLI (``python -m proxy doctor --live --json --config FILE``); the findings are read from its JSON.

Four configs share the running lab: the good one (sipfed runs on it), one whose DNS lacks
``_xmpp-server._tcp.tomt.it``, one whose partner ``address`` is a port where nothing listens, and one with
``tls = "not_supported"`` for the partner; then the good one again with sipfed stopped.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port
from tests.integration.xmpp_lab import (
    HostRecord,
    LabDns,
    Prosody,
    ProsodyConfig,
    SrvRecord,
    XmppPki,
    host_record,
    srv,
    xmpp_certs,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
XMPP = "xmpp.test"
SIPFED = "127.0.33.1"
PROSODY = "127.0.33.3"
NOBODY = "127.0.33.4"
DNS = "127.0.33.53"
GATEWAY = "gw.tomt.local"
SECRET = "doctor-lab-dialback-secret-0123456789"


@dataclass
class DoctorLab:
    """What every test reads: the lab's ports, and each config's doctor run."""

    xmpp_port: int
    s2s_port: int
    dead_port: int
    runs: dict[str, subprocess.CompletedProcess[str]]

    def findings(self, run: str) -> list[dict[str, str]]:
        result = self.runs[run]
        assert result.stdout, result.stderr
        parsed: list[dict[str, str]] = json.loads(result.stdout)
        return parsed

    def about(self, run: str, subject: str) -> list[dict[str, str]]:
        return [f for f in self.findings(run) if f["subject"] == subject and f["check"].startswith("live.xmpp.")]


def sipfed_config(path: Path, certs: Path, pki: XmppPki, dns_port: int, xmpp_port: int, partner: str = "") -> Path:
    path.write_text(f"""
[proxy]
fqdn = "sipfed.tomt.local"

[metrics]
listen = "127.0.0.1:0"

[tls]
cert_chain = "{certs}/sipfed.tomt.local.pem"
key = "{certs}/sipfed.tomt.local.key"
ca_bundle = "{certs}/ca.crt"

[[listeners]]
name = "cisco"
address = "127.0.0.1"
port = 0

[dns]
nameservers = ["{DNS}"]
port = {dns_port}

[xmpp]
listen = "{SIPFED}:{xmpp_port}"
domains = ["tomt.local", "tomt.it"]
cert_chain = "{pki.chain("tomt.local")}"
key = "{pki.key("tomt.local")}"
ca_bundle = "{pki.ca}"
dialback_secret = "{SECRET}"
store = ":memory:"
connect_timeout_seconds = 5

[[xmpp.partners]]
name = "jabber"
primary_domain = "{XMPP}"
{partner}
""")
    return path


def doctor(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "doctor", "--live", "--json", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[DoctorLab]:
    workdir = tmp_path_factory.mktemp("doctor-xmpp")
    pki = xmpp_certs(workdir / "pki", names=("tomt.local,tomt.it", XMPP), issuer=certs)
    xmpp_port, s2s, c2s, dead = free_port(SIPFED), free_port(PROSODY), free_port(PROSODY), free_port(NOBODY)
    ours = [srv(f"_xmpp-server._tcp.{domain}", GATEWAY, xmpp_port) for domain in ("tomt.local", "tomt.it")]
    theirs: list[HostRecord | SrvRecord] = [
        host_record(GATEWAY, SIPFED),
        host_record(XMPP, PROSODY),
        srv(f"_xmpp-server._tcp.{XMPP}", XMPP, s2s),
    ]
    zones = ["tomt.local", "tomt.it", "test"]
    with (
        LabDns(DNS, free_port(DNS, socket.SOCK_DGRAM), [*ours, *theirs], zones) as dns,
        LabDns(DNS, free_port(DNS, socket.SOCK_DGRAM), [ours[0], *theirs], zones) as lacking,
        Prosody(
            workdir,
            ProsodyConfig(
                cert=pki.chain(XMPP),
                key=pki.key(XMPP),
                cafile=pki.ca,
                address=PROSODY,
                c2s_port=c2s,
                s2s_port=s2s,
                dns=dns.forward,
            ),
        ),
    ):
        good = sipfed_config(workdir / "good.toml", certs, pki, dns.port, xmpp_port)
        no_srv = sipfed_config(workdir / "no-srv.toml", certs, pki, lacking.port, xmpp_port)
        unreachable = sipfed_config(
            workdir / "unreachable.toml", certs, pki, dns.port, xmpp_port, f'address = "{NOBODY}:{dead}"'
        )
        in_clear = sipfed_config(
            workdir / "in-clear.toml", certs, pki, dns.port, xmpp_port, 'tls = "not_supported"\nsasl = "not_supported"'
        )
        configs = {"good": good, "no_srv": no_srv, "unreachable": unreachable, "in_clear": in_clear}
        sipfed = Sipfed(good)
        try:
            runs = {name: doctor(path) for name, path in configs.items()}
        finally:
            sipfed.stop()
        runs["stopped"] = doctor(good)
        yield DoctorLab(xmpp_port, s2s, dead, runs)


def test_the_partner_is_reachable_and_its_features_are_reported(lab: DoctorLab) -> None:
    partner = {f["check"]: f for f in lab.about("good", "xmpp partner jabber")}
    assert {check: f["severity"] for check, f in partner.items()} == {
        "live.xmpp.dns": "ok",
        "live.xmpp.connect": "ok",
        "live.xmpp.tls": "ok",
        "live.xmpp.cert": "ok",
        "live.xmpp.auth": "ok",
    }
    assert f"_xmpp-server._tcp.{XMPP} -> {XMPP}:{lab.s2s_port} ({PROSODY})" in partner["live.xmpp.dns"]["cause"]
    reached = partner["live.xmpp.connect"]["cause"]
    assert f"{XMPP} is reachable at {PROSODY}:{lab.s2s_port} and offers STARTTLS (required)" in reached
    assert "after STARTTLS (TLSv1." in reached
    assert "SASL EXTERNAL" in reached.split("after STARTTLS")[1]
    assert "dialback" in reached.split("after STARTTLS")[1]
    assert "offers SASL EXTERNAL to tomt.local" in partner["live.xmpp.auth"]["cause"]


def test_our_srv_records_and_listener_are_ok(lab: DoctorLab) -> None:
    for domain in ("tomt.local", "tomt.it"):
        [record] = lab.about("good", f"xmpp domain {domain}")
        assert record["severity"] == "ok", record
        shown = f"_xmpp-server._tcp.{domain} -> {GATEWAY}:{lab.xmpp_port} ({SIPFED}): an address sipfed listens on"
        assert record["cause"] == shown
    [listener] = lab.about("good", "xmpp listener")
    assert listener["severity"] == "ok", listener
    assert (
        f"sipfed's XMPP listener {SIPFED}:{lab.xmpp_port} answers a stream from {XMPP} to tomt.local"
        in (listener["cause"])
    )


def test_the_good_setup_has_no_error(lab: DoctorLab) -> None:
    result = lab.runs["good"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [f for f in lab.findings("good") if f["severity"] == "error"]


def test_a_missing_srv_record_names_the_record_to_publish(lab: DoctorLab) -> None:
    [error] = lab.about("no_srv", "xmpp domain tomt.it")
    assert (error["severity"], error["check"]) == ("error", "live.xmpp.dns")
    assert "no SRV record _xmpp-server._tcp.tomt.it" in error["cause"]
    assert error["fix"] == f"publish: _xmpp-server._tcp.tomt.it. 3600 IN SRV 0 5 {lab.xmpp_port} {GATEWAY}."
    assert lab.about("no_srv", "xmpp domain tomt.local")[0]["severity"] == "ok"
    assert lab.runs["no_srv"].returncode == 1


def test_a_partner_address_where_nothing_listens_is_not_reachable(lab: DoctorLab) -> None:
    [error] = [f for f in lab.about("unreachable", "xmpp partner jabber") if f["severity"] != "ok"]
    assert (error["severity"], error["check"]) == ("error", "live.xmpp.connect")
    assert f"{XMPP} is not reachable: {NOBODY}:{lab.dead_port}: connection refused" in error["cause"]
    assert "firewalls" in error["fix"]
    assert lab.runs["unreachable"].returncode == 1


def test_a_partner_requiring_tls_with_our_setting_not_supported_is_an_error_naming_the_fix(lab: DoctorLab) -> None:
    [error] = [f for f in lab.about("in_clear", "xmpp partner jabber") if f["severity"] != "ok"]
    assert (error["severity"], error["check"]) == ("error", "live.xmpp.tls")
    assert (
        f'{XMPP} requires TLS (<starttls><required/>), and sipfed\'s setting for it is tls = "not_supported"'
        in (error["cause"])
    )
    assert error["fix"].startswith('set tls = "required" (Lync: TLS negotiation Required)')


def test_our_listener_not_answering_is_a_warning(lab: DoctorLab) -> None:
    [warning] = lab.about("stopped", "xmpp listener")
    assert warning["severity"] == "warning"
    assert f"sipfed's XMPP listener {SIPFED}:{lab.xmpp_port} does not answer: connection refused" in warning["cause"]
    assert "start sipfed" in warning["fix"]
