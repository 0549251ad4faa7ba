"""The XMPP authentication matrix against a real Prosody (issue 15), its config swapped between tests:

| Prosody                              | sipfed partner setting          | expected                            |
|--------------------------------------|---------------------------------|-------------------------------------|
| trusts sipfed's CA, its cert trusted | tls required, sasl optional     | SASL EXTERNAL both ways, over TLS   |
| its own CA only                      | tls required, sasl optional     | dialback both ways over TLS, each   |
|                                      |                                 | side calling the other back         |
| encryption not required              | tls, sasl not_supported         | dialback both ways without TLS      |
| its own CA                           | sasl required                   | refused: Prosody bounces the message|
| a domain that is no partner          | (not configured)                | refused: Prosody bounces the message|
| reads nothing for 2 s, then acts     | keepalive                       | the streams stay up, idle           |

The SIP side is a route to a port where nothing listens: a message from juliet@xmpp.test to alice@tomt.local
comes back as sipfed's error stanza ("SIP 503 ..."), which proves both streams authenticated (in to deliver
the message, out to send the error back); a Prosody bounce (``by='xmpp.test'``, no SIP text) proves a refusal.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port, lab_config
from tests.integration.waiting import wait_until
from tests.integration.xmpp_lab import (
    LabDns,
    Prosody,
    ProsodyConfig,
    ReceivedMessage,
    XmppPki,
    XmppUser,
    host_record,
    srv,
    xmpp_certs,
)

pytestmark = pytest.mark.integration

XMPP = "xmpp.test"
PROSODY = "127.0.32.3"
DNS = "127.0.32.53"
WAIT = 15.0


@dataclass
class Domain:
    """The XMPP side: lab DNS, Prosody, the PKIs (``ours``: sipfed's CA; ``theirs``: one sipfed never trusts)."""

    dns: LabDns
    prosody: Prosody
    ours: XmppPki
    theirs: XmppPki
    xmpp_port: int
    base: ProsodyConfig
    clients_ca: Path
    """Both CAs: the XMPP users trust Prosody whichever certificate it presents."""

    def configure(self, **changes: object) -> None:
        self.prosody.restart(**{**_fields(self.base), **changes})


def _fields(config: ProsodyConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[Domain]:
    workdir = tmp_path_factory.mktemp("xmpp-auth")
    ours = xmpp_certs(workdir / "ours", names=("tomt.local,tomt.it", XMPP, "rogue.test"), issuer=certs)
    theirs = xmpp_certs(workdir / "theirs", names=(XMPP,))
    xmpp_port, s2s, c2s = free_port("127.0.0.1"), free_port(PROSODY), free_port(PROSODY)
    records = [
        host_record("gw.tomt.local", "127.0.0.1"),
        host_record(XMPP, PROSODY),
        srv("_xmpp-server._tcp.tomt.local", "gw.tomt.local", xmpp_port),
        srv("_xmpp-server._tcp.tomt.it", "gw.tomt.local", xmpp_port),
        srv(f"_xmpp-server._tcp.{XMPP}", XMPP, s2s),
    ]
    with LabDns(DNS, free_port(DNS, socket.SOCK_DGRAM), records, ["tomt.local", "tomt.it", "test"]) as dns:
        base = ProsodyConfig(
            cert=ours.chain(XMPP),
            key=ours.key(XMPP),
            cafile=ours.ca,
            address=PROSODY,
            c2s_port=c2s,
            s2s_port=s2s,
            dns=dns.forward,
            s2s_timeout_seconds=8,
        )
        with Prosody(workdir, base) as prosody:
            prosody.register("juliet", "pw")
            both = workdir / "clients-ca.pem"
            both.write_bytes(ours.ca.read_bytes() + theirs.ca.read_bytes())
            yield Domain(dns, prosody, ours, theirs, xmpp_port, base, both)


def sipfed_config(path: Path, certs: Path, domain: Domain, **partner: object) -> Path:
    settings = {"name": "jabber", "primary_domain": XMPP, **partner}
    lines = "\n".join(
        f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v).replace(chr(39), chr(34))}"
        for k, v in settings.items()
    )
    extra = f"""
[dns]
nameservers = ["{DNS}"]
port = {domain.dns.port}

[xmpp]
listen = "127.0.0.1:{domain.xmpp_port}"
domains = ["tomt.local", "tomt.it"]
cert_chain = "{domain.ours.chain("tomt.local")}"
key = "{domain.ours.key("tomt.local")}"
ca_bundle = "{domain.ours.ca}"
store = ":memory:"
keepalive_seconds = 1
idle_timeout_seconds = 30

[[xmpp.partners]]
{lines}
"""
    # The SIP side: routes to ports where nothing listens (sipfed answers 503 itself).
    return lab_config(path, certs, cups_port=free_port("127.0.0.2"), lync_port=free_port("127.0.0.3"), extra=extra)


def juliet_writes_alice(domain: Domain, address: str = f"juliet@{XMPP}", password: str = "pw") -> ReceivedMessage:
    """juliet's message to alice@tomt.local, and the error that comes back (sipfed's, or Prosody's bounce)."""
    with XmppUser(
        address, password, address=PROSODY, port=domain.prosody.config.c2s_port, cafile=domain.clients_ca
    ) as user:
        user.connect()
        user.send_message("alice@tomt.local", "Wherefore art thou?")
        return user.wait_for_message(lambda m: m.type == "error", WAIT)


def from_sipfed(error: ReceivedMessage) -> bool:
    """sipfed's own error stanza: it names the SIP answer (RFC 7247 §7.2)."""
    return "SIP 503" in error.xml


def test_sasl_external_both_ways_when_each_trusts_the_other(
    domain: Domain, certs: Path, tmp_path: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    domain.configure()
    sipfed = start_sipfed(sipfed_config(tmp_path / "s.toml", certs, domain, tls="required", sasl="optional"))
    error = juliet_writes_alice(domain)
    assert from_sipfed(error), error
    sipfed.wait_for_log(f"XMPP stream from {XMPP} (127.0.0.1:")
    log = sipfed.wait_for_log(f"tomt.local -> {XMPP}")
    assert "authenticated for tomt.local by SASL EXTERNAL, over TLSv1." in log
    assert f"tomt.local -> {XMPP} (" in log
    assert "ready, authenticated by SASL EXTERNAL, over TLSv1." in log


def test_dialback_over_tls_when_nobody_trusts_the_others_ca(
    domain: Domain, certs: Path, tmp_path: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    """Prosody presents a certificate of a CA sipfed does not know and trusts only that CA: each side verifies the
    other's dialback key with its Authoritative Server (XEP-0220) - Prosody calls sipfed back, and sipfed Prosody."""
    domain.configure(cert=domain.theirs.chain(XMPP), key=domain.theirs.key(XMPP), cafile=domain.theirs.ca)
    sipfed = start_sipfed(sipfed_config(tmp_path / "s.toml", certs, domain, tls="required", sasl="optional"))
    error = juliet_writes_alice(domain)
    assert from_sipfed(error), error
    log = sipfed.wait_for_log("ready, authenticated by dialback, over TLSv1.")
    assert "authenticated for tomt.local by dialback, over TLSv1." in log
    assert "dialback" in domain.prosody.wait_for_log("verified dialback key")  # Prosody called sipfed back


def test_dialback_without_tls_for_a_partner_that_does_not_support_it(
    domain: Domain, certs: Path, tmp_path: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    domain.configure(s2s_require_encryption=False)
    sipfed = start_sipfed(
        sipfed_config(tmp_path / "s.toml", certs, domain, tls="not_supported", sasl="not_supported", dialback=True)
    )
    error = juliet_writes_alice(domain)
    assert from_sipfed(error), error
    log = sipfed.wait_for_log("ready, authenticated by dialback, without TLS")
    assert "authenticated for tomt.local by dialback, without TLS" in log


def test_a_sasl_required_partner_without_a_valid_certificate_is_refused(
    domain: Domain, certs: Path, tmp_path: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    domain.configure(cert=domain.theirs.chain(XMPP), key=domain.theirs.key(XMPP), cafile=domain.theirs.ca)
    sipfed = start_sipfed(
        sipfed_config(tmp_path / "s.toml", certs, domain, tls="required", sasl="required", dialback=False)
    )
    error = juliet_writes_alice(domain)
    assert not from_sipfed(error), error  # Prosody's own bounce: the message never reached the SIP side
    log = sipfed.wait_for_log("requires SASL EXTERNAL")
    assert "does not verify against our ca_bundle" in log


def test_a_domain_that_is_no_partner_is_refused(
    domain: Domain, certs: Path, tmp_path: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    rogue = replace(
        domain.base,
        domain="rogue.test",
        cert=domain.ours.chain("rogue.test"),
        key=domain.ours.key("rogue.test"),
        c2s_port=free_port(PROSODY),
        s2s_port=free_port(PROSODY),
    )
    sipfed = start_sipfed(sipfed_config(tmp_path / "s.toml", certs, domain))
    with Prosody(tmp_path, rogue) as server:
        server.register("iago", "pw")
        with XmppUser("iago@rogue.test", "pw", address=PROSODY, port=rogue.c2s_port, cafile=domain.clients_ca) as iago:
            iago.connect()
            iago.send_message("alice@tomt.local", "I am not what I am")
            bounce = iago.wait_for_message(lambda m: m.type == "error", WAIT)
    assert not from_sipfed(bounce), bounce
    sipfed.wait_for_log("rogue.test is not an XMPP allowed partner of tomt.local; add it under [[xmpp.partners]]")


def test_idle_streams_stay_up_with_keepalives(
    domain: Domain, certs: Path, tmp_path: Path, start_sipfed: Callable[..., Sipfed]
) -> None:
    """Prosody acts on a connection that reads nothing for 2 s; sipfed keeps its streams busy with whitespace
    (RFC 6120 §4.6.1) and, idle for several of those periods, the next message uses the same streams."""
    domain.configure(read_timeout_seconds=2)
    sipfed = start_sipfed(sipfed_config(tmp_path / "s.toml", certs, domain, keepalive=True))
    assert from_sipfed(juliet_writes_alice(domain))
    metrics = f"http://127.0.0.1:{sipfed.ports['metrics']}/metrics"

    def keepalives() -> float:
        with urllib.request.urlopen(metrics, timeout=5) as page:
            for line in page.read().decode().splitlines():
                if line.startswith('sipfed_xmpp_keepalives_total{partner="jabber"}'):
                    return float(line.split()[-1])
        return 0.0

    wait_until(lambda: keepalives() >= 6, 30, "sipfed sent no keep-alives on its idle streams")
    assert from_sipfed(juliet_writes_alice(domain))
    assert sipfed.log_text().count(f"tomt.local -> {XMPP}") == 1  # no new stream was needed
