"""The XMPP lab harness (tests/integration/xmpp_lab.py) against the real programs: dnsmasq answers what it was
given, Prosody 0.12 loads its certificate and serves two slixmpp users over STARTTLS, and Prosody's s2s finds a
remote domain through the lab DNS, connects to what the SRV record names, and bounces the stanza back.

Addresses in 127.0.40.0/24 (this module's own), ports from ``free_port``."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.resolver
import pytest

from tests.integration.conftest import free_port
from tests.integration.waiting import wait_until
from tests.integration.xmpp_lab import (
    HostRecord,
    LabDns,
    Prosody,
    ProsodyConfig,
    RosterItem,
    SrvRecord,
    StreamHeaderRecorder,
    XmppConnectError,
    XmppPki,
    XmppUser,
    host_record,
    srv,
    unbound_table,
    xmpp_certs,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DOMAIN = "xmpp.test"
DNS_IP = "127.0.40.53"
PROSODY_IP = "127.0.40.3"
# Remote XMPP domains whose SRV records point at a StreamHeaderRecorder: both SIP domains' TLDs, and one under
# libunbound's built-in test. zone, which the Prosody config makes transparent.
REMOTE = {"tomt.local": "127.0.40.4", "tomt.it": "127.0.40.5", "peer.test": "127.0.40.6"}
LUNCH = "Mittagspause – 午餐"
GREETING = "Grüße aus Köln – 你好 👋"
WAIT = 10.0  # seconds one effect may take to show: a deadline, not a pause


@dataclass(frozen=True)
class Lab:
    dns: LabDns
    prosody: Prosody
    pki: XmppPki
    recorders: dict[str, StreamHeaderRecorder]
    ports: dict[str, int]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """dnsmasq, a header recorder per remote domain, and Prosody for xmpp.test with alice, bob, carol, dave."""
    workdir = tmp_path_factory.mktemp("xmpp-lab")
    pki = xmpp_certs(workdir / "pki", [DOMAIN])
    ports = {"c2s": free_port(PROSODY_IP), "s2s": free_port(PROSODY_IP)}
    ports |= {domain: free_port(ip) for domain, ip in REMOTE.items()}
    records: list[HostRecord | SrvRecord] = [host_record(DOMAIN, PROSODY_IP)]
    records.append(srv(f"_xmpp-server._tcp.{DOMAIN}", DOMAIN, ports["s2s"]))
    for domain, ip in REMOTE.items():
        records += [host_record(f"gw.{domain}", ip), srv(f"_xmpp-server._tcp.{domain}", f"gw.{domain}", ports[domain])]
    recorders: dict[str, StreamHeaderRecorder] = {}
    started: list[LabDns | Prosody] = []
    try:
        for domain, ip in REMOTE.items():
            recorders[domain] = StreamHeaderRecorder(ip, ports[domain])
        lab_dns = LabDns(DNS_IP, free_port(DNS_IP, socket.SOCK_DGRAM), records, [DOMAIN, *REMOTE])
        started.append(lab_dns)
        config = ProsodyConfig(
            cert=pki.chain(DOMAIN),
            key=pki.key(DOMAIN),
            cafile=pki.ca,
            domain=DOMAIN,
            address=PROSODY_IP,
            c2s_port=ports["c2s"],
            s2s_port=ports["s2s"],
            dns=lab_dns.forward,
            s2s_timeout_seconds=5,
            modules=("ping",),
        )
        prosody = Prosody(workdir, config)
        started.append(prosody)
        for name in ("alice", "bob", "carol", "dave"):
            prosody.register(name, f"{name}-pw")
        yield Lab(lab_dns, prosody, pki, recorders, ports)
    finally:
        for process in reversed(started):
            process.stop()
        for recorder in recorders.values():
            recorder.close()


@pytest.fixture
def user(lab: Lab) -> Iterator[Callable[..., XmppUser]]:
    """Makes connected users of xmpp.test; each is closed (session and thread) when the test ends."""
    made: list[XmppUser] = []

    def make(name: str, password: str | None = None, **options: bool) -> XmppUser:
        xmpp_user = XmppUser(
            f"{name}@{DOMAIN}",
            password or f"{name}-pw",
            address=PROSODY_IP,
            port=lab.ports["c2s"],
            cafile=lab.pki.ca,
            **options,
        )
        made.append(xmpp_user)
        xmpp_user.connect()
        return xmpp_user

    yield make
    for xmpp_user in made:
        xmpp_user.close()


def test_lab_dns_answers_its_records_and_nxdomain_in_its_zones(lab: Lab) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [DNS_IP]
    resolver.port = lab.dns.port
    resolver.lifetime = 5
    for domain, ip in REMOTE.items():
        (record,) = resolver.resolve(f"_xmpp-server._tcp.{domain}", "SRV")
        assert (record.target.to_text(), record.port, record.priority, record.weight) == (
            f"gw.{domain}.",
            lab.ports[domain],
            0,
            5,
        )
        assert [a.to_text() for a in resolver.resolve(f"gw.{domain}", "A")] == [ip]
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve(f"unknown.{domain}", "A")
    assert [a.to_text() for a in resolver.resolve(DOMAIN, "A")] == [PROSODY_IP]
    lab.dns.wait_for_query("unknown.tomt.it", "A")


def test_prosody_loads_its_certificate_and_refuses_a_wrong_password(lab: Lab, user: Callable[..., XmppUser]) -> None:
    lab.prosody.wait_for_log("Certificates loaded")
    with pytest.raises(XmppConnectError, match="authentication failed"):
        user("alice", "not-her-password")


def test_two_users_subscribe_see_presence_and_exchange_messages(user: Callable[..., XmppUser]) -> None:
    alice = user("alice")
    bob = user("bob", auto_authorize=True)

    alice.subscribe(f"bob@{DOMAIN}")
    alice.wait_for_presence(lambda p: p.from_jid == f"bob@{DOMAIN}" and p.type == "subscribed")
    first = alice.wait_for_presence(lambda p: p.from_jid.startswith(f"bob@{DOMAIN}/") and p.type == "available")
    assert first.show == ""
    assert alice.roster()[f"bob@{DOMAIN}"].subscription == "to"
    assert bob.roster()[f"alice@{DOMAIN}"].subscription == "from"

    bob.set_presence(show="away", status=LUNCH)
    away = alice.wait_for_presence(lambda p: p.show == "away")
    assert (away.from_jid, away.type, away.status) == (first.from_jid, "available", LUNCH)

    sent = alice.send_message(f"bob@{DOMAIN}", GREETING, lang="de")
    got = bob.wait_for_message(lambda m: m.id == sent)
    assert (got.type, got.body, got.lang, got.error) == ("chat", GREETING, "de", None)
    assert got.from_jid.startswith(f"alice@{DOMAIN}/")

    bob.disconnect()
    alice.wait_for_presence(lambda p: p.from_jid == first.from_jid and p.type == "unavailable")


def test_mutual_subscription_unavailable_status_and_unsubscribe(user: Callable[..., XmppUser]) -> None:
    carol = user("carol")
    dave = user("dave", auto_authorize=True, auto_subscribe=True)

    carol.subscribe(f"dave@{DOMAIN}")
    carol.wait_for_presence(lambda p: p.from_jid == f"dave@{DOMAIN}" and p.type == "subscribe")
    carol.authorize(f"dave@{DOMAIN}")  # dave asked back (auto_subscribe); carol approves by hand
    wait_until(lambda: both_ways(carol, dave), WAIT, "carol and dave subscribed both ways")

    seen = len(carol.presences)
    dave.set_presence(available=False, status="Feierabend")
    gone = carol.wait_for_presence(lambda p: p.type == "unavailable", since=seen)
    assert gone.from_jid.startswith(f"dave@{DOMAIN}/")
    assert gone.status == "Feierabend"

    carol.unsubscribe(f"dave@{DOMAIN}")
    wait_until(lambda: carol.roster()[f"dave@{DOMAIN}"].subscription == "from", WAIT, "carol's roster: dave 'from'")


def both_ways(carol: XmppUser, dave: XmppUser) -> bool:
    return (carol.roster().get(f"dave@{DOMAIN}"), dave.roster().get(f"carol@{DOMAIN}")) == (
        RosterItem("both", None, None),
        RosterItem("both", None, None),
    )


@pytest.mark.parametrize("domain", list(REMOTE))
def test_s2s_finds_the_remote_domain_through_the_lab_dns(lab: Lab, user: Callable[..., XmppUser], domain: str) -> None:
    alice = user("alice")
    sent = alice.send_message(f"nobody@{domain}", "hello over s2s")

    lab.dns.wait_for_query(f"_xmpp-server._tcp.{domain}", "SRV")
    lab.dns.wait_for_query(f"gw.{domain}", "A")
    header = lab.recorders[domain].wait_for_header(to=domain)
    assert header.tag == "{http://etherx.jabber.org/streams}stream"
    assert header.default_ns == "jabber:server"
    assert header.attrib.get("from") == DOMAIN
    bounce = alice.wait_for_message(lambda m: m.id == sent and m.type == "error")
    assert bounce.from_jid == f"nobody@{domain}"
    assert bounce.error == "remote-server-not-found"


def test_a_client_that_trusts_another_ca_gets_no_session(tmp_path: Path, lab: Lab) -> None:
    other = xmpp_certs(tmp_path / "other", [DOMAIN])
    assert other.ca.read_bytes() != lab.pki.ca.read_bytes()
    with XmppUser(f"alice@{DOMAIN}", "alice-pw", address=PROSODY_IP, port=lab.ports["c2s"], cafile=other.ca) as alice:
        with pytest.raises(XmppConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            alice.connect()
        assert not alice.online


def test_restart_swaps_certificate_and_options_and_keeps_accounts(tmp_path: Path, lab: Lab, certs: Path) -> None:
    """A leaf issued by the sipfed lab CA (the ``certs`` fixture) replaces the domain's own on restart."""
    address = "127.0.40.7"
    ports = {"c2s": free_port(address), "s2s": free_port(address)}
    config = ProsodyConfig(
        cert=lab.pki.chain(DOMAIN),
        key=lab.pki.key(DOMAIN),
        cafile=lab.pki.ca,
        address=address,
        c2s_port=ports["c2s"],
        s2s_port=ports["s2s"],
        dns=lab.dns.forward,
    )
    shared = xmpp_certs(tmp_path / "shared", [DOMAIN], issuer=certs)
    assert shared.ca.read_bytes() == (certs / "ca.crt").read_bytes()
    prosody = Prosody(tmp_path, config)
    try:
        prosody.register("carol", "carol-pw")
        prosody.restart(
            cert=shared.chain(DOMAIN),
            key=shared.key(DOMAIN),
            cafile=certs / "ca.crt",
            s2s_require_encryption=False,
            s2s_secure_auth=True,
            s2s_timeout_seconds=3,
        )
        rendered = prosody.config_file.read_text()
        for line in ("s2s_require_encryption = false", "s2s_secure_auth = true", "s2s_timeout = 3"):
            assert line in rendered
        with XmppUser(f"carol@{DOMAIN}", "carol-pw", address=address, port=ports["c2s"], cafile=certs / "ca.crt") as c:
            c.connect()
            assert c.online
    finally:
        assert prosody.stop() == 0


def test_unbound_table_unblocks_at_most_two_builtin_zones() -> None:
    two = unbound_table("127.0.40.53@5353", ("test", "invalid."))
    assert '["local-zone:"] = "test. transparent"' in two
    assert '["local-zone"] = "invalid. transparent"' in two
    with pytest.raises(ValueError, match="at most two"):
        unbound_table("127.0.40.53@5353", ("test", "invalid", "onion"))
    assert "unbound =" not in unbound_table(None, ("test",))
