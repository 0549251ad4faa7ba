"""examples/alerts.yml as Prometheus runs it: promtool checks it and runs tests/data/alerts_test.yml on it, and
Debian's Prometheus, scraping the real sipfed whose listener certificate expires in 10 days, fires the expiry
alert; sipfed's gauge carries each certificate's real not-after time (ours, a trusted peer's, a route's)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from proxy.admin.certs import issue_leaf
from tests.integration.conftest import ROOT, Sipfed, lab_config
from tests.integration.metrics_scrape import Prometheus, metric_reaches, scrape
from tests.integration.waiting import async_wait_until
from tests.peers.sippeer import Peer

pytestmark = pytest.mark.integration

ALERTS = ROOT / "examples" / "alerts.yml"
SERIES = "sipfed_certificate_expiry_timestamp_seconds"
EXPIRY = "SipfedCertificateExpiresSoon"
PEERS = """
[[peers]]
name = "lync"
subjects = ["lync01.tomt.it"]

[[peers]]
name = "cisco"
subjects = ["cups.tomt.local"]
"""
HEALTH = "health = { interval_seconds = 0.5, timeout_seconds = 0.4, failures_to_down = 2, successes_to_up = 1 }"
FIRING_SECONDS = 60.0  # Prometheus starts, scrapes each second and evaluates each second: a deadline, not a pause


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path is not None, "promtool not installed: make test installs Debian's prometheus package"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_runs_the_rules_tests() -> None:
    """Each alert fires on series shaped as sipfed exports them, not before its ``for``, with its words."""
    result = promtool("test", "rules", "tests/data/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def without_waiting(rules: Path) -> Path:
    """A copy of examples/alerts.yml whose every ``for`` is 0s: the real expressions and words, firing at once."""
    text = ALERTS.read_text()
    copy, count = re.subn(r"^( +for: )\S+$", r"\g<1>0s", text, flags=re.MULTILINE)
    assert count == 7
    changed = [(a, b) for a, b in zip(text.splitlines(), copy.splitlines(), strict=True) if a != b]
    assert all(b.strip() == "for: 0s" for _, b in changed)
    rules.write_text(copy)
    return rules


def not_after(pem: Path) -> float:
    return x509.load_pem_x509_certificate(pem.read_bytes()).not_valid_after_utc.timestamp()


def expiries(text: str) -> dict[tuple[str, str], float]:
    """Every series of the gauge in sipfed's /metrics, by (role, name); its ``name`` label is ``sample``'s
    own parameter name, hence this reader."""
    out = {}
    for block, value in re.findall(rf"^{SERIES}{{(.*)}} (\S+)$", text, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', block))
        out[labels["role"], labels["name"]] = float(value)
    return out


def alerts(prometheus: Prometheus) -> list[dict[str, Any]]:
    """Prometheus's active alerts (pending and firing); none while it is still starting."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{prometheus.port}/api/v1/alerts", timeout=3) as reply:
            found: list[dict[str, Any]] = json.load(reply)["data"]["alerts"]
    except OSError:
        return []
    return found


def firing(prometheus: Prometheus, **labels: str) -> dict[str, Any] | None:
    """The firing alert with these labels, if any."""
    for alert in alerts(prometheus):
        if alert["state"] == "firing" and all(alert["labels"].get(k) == v for k, v in labels.items()):
            return alert
    return None


async def fires(prometheus: Prometheus, **labels: str) -> dict[str, Any]:
    """Wait (Prometheus asked off the event loop: the peers keep answering) until that alert fires."""
    found: list[dict[str, Any] | None] = []

    async def check() -> dict[str, Any] | None:
        found.append(await asyncio.to_thread(firing, prometheus, **labels))
        return found[-1]

    await async_wait_until(
        check,
        FIRING_SECONDS,
        lambda: f"{labels} not firing; alerts: {alerts(prometheus)}\n{prometheus.log.read_text()[-2000:]}",
    )
    alert = found[-1]
    assert alert is not None
    return alert


def test_a_certificate_expiring_in_10_days_fires_the_alert(
    tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(certs, pki)
    # Our certificate, reissued by the lab CA for the same names, ending in 10 days.
    ours = issue_leaf(
        pki,
        ["sipfed.tomt.local", "sipfed.tomt.it"],
        days=10,
        key_type="ec",
        ip_addresses=["127.0.0.1", "127.0.0.2", "127.0.0.3"],
    )
    assert ours.chain == pki / "sipfed.tomt.local.pem"  # what lab_config's [tls] cert_chain names

    async def main() -> None:
        cups = Peer("cups.tomt.local", "127.0.0.2", pki)
        lync = Peer("lync01.tomt.it", "127.0.0.3", pki)
        await cups.start()
        await lync.start()
        config = lab_config(tmp_path / "alerts.toml", pki, cups_port=cups.port, lync_port=lync.port, extra=PEERS)
        # Route cisco is health-checked: its next hop's connection is the first check's, which requests reuse.
        config.write_text(config.read_text().replace('listener = "cisco"\n', f'listener = "cisco"\n{HEALTH}\n', 1))
        sipfed = start_sipfed(config)
        await metric_reaches(sipfed, "sipfed_health_checks_total", 1, route="cisco", result="pass")
        # Peer lync connects in; its MESSAGE goes out on route cisco. Peer cisco's goes out on route lync.
        for peer, port, name, uri in (
            (lync, sipfed.ports["lync"], "sipfed.tomt.it", "sip:alice@tomt.local"),
            (cups, sipfed.ports["cisco"], "sipfed.tomt.local", "sip:bob@tomt.it"),
        ):
            conn = await peer.connect("127.0.0.1", port, name)
            await conn.send(peer.request("MESSAGE", uri, to=f"<{uri}>"))
            what = f"no 200 to the MESSAGE to {uri}"
            await async_wait_until(
                lambda peer=peer: _answered(peer), 10, lambda what=what: f"{what}:\n{sipfed.log_text()}"
            )
        text = await asyncio.to_thread(scrape, sipfed.ports["metrics"])
        assert expiries(text) == {
            ("ours", "cisco"): not_after(ours.cert),
            ("ours", "lync"): not_after(ours.cert),
            ("peer", "lync"): not_after(pki / "lync01.tomt.it.crt"),
            ("peer", "cisco"): not_after(pki / "cups.tomt.local.crt"),
            ("route", "cisco"): not_after(pki / "cups.tomt.local.crt"),
            ("route", "lync"): not_after(pki / "lync01.tomt.it.crt"),
        }, text
        assert abs(not_after(ours.cert) - (time.time() + 10 * 86400)) < 3600  # the 10-day certificate

        rules = without_waiting(tmp_path / "rules.yml")
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{sipfed.ports['metrics']}", rules)
        try:
            alert = await fires(prometheus, alertname=EXPIRY, severity="warning", role="ours", name="lync")
            await fires(prometheus, alertname=EXPIRY, severity="warning", role="ours", name="cisco")
            active = {
                (
                    a["labels"]["alertname"],
                    a["labels"].get("severity"),
                    a["labels"].get("role"),
                    a["labels"].get("name"),
                )
                for a in await asyncio.to_thread(alerts, prometheus)
            }
            # 10 days left: not critical (7); the peers' and routes' certificates (825 days), a healthy lab: silent.
            assert active == {(EXPIRY, "warning", "ours", "lync"), (EXPIRY, "warning", "ours", "cisco")}
            summary = r"sipfed 127\.0\.0\.1:\d+: our lync certificate expires in 9d 23h \d+m \d+s"
            assert re.fullmatch(summary, alert["annotations"]["summary"]), alert
            assert "[tls] cert_chain, shown on listener lync" in alert["annotations"]["description"]
            await cups.stop()  # route cisco's only destination goes away: its health checks fail
            down = await fires(prometheus, alertname="SipfedDestinationDown", route="cisco")
            assert down["labels"]["destination"] == f"tls:127.0.0.2:{cups.port}"
        finally:
            await asyncio.to_thread(prometheus.stop)

    asyncio.run(asyncio.wait_for(main(), 2 * FIRING_SECONDS + 30))


def _answered(peer: Peer) -> bool:
    """A 200 has reached ``peer`` (its queue also holds the requests it answered itself)."""
    while not peer.received.empty():
        message, _ = peer.received.get_nowait()
        if not message.is_request and message.status == 200:
            return True
    return False
