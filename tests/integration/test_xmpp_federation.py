"""XMPP federation end to end (issue 15): the two-domain lab (Kamailio as tomt.local and tomt.it, baresip users
alice and bob) plus a third domain, xmpp.test, played by Debian's Prosody with a lab DNS (dnsmasq) that
publishes ``_xmpp-server._tcp`` SRV records for all three domains, and XMPP users played by slixmpp. sipfed is
the XMPP server of tomt.local and tomt.it. Assertions read what the users' own software shows: baresip's
console and log, the slixmpp clients' stanzas, Prosody's log.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.lab_harness import WAIT, Lab, lab, start_lab
from tests.integration.xmpp_lab import (
    LabDns,
    Prosody,
    ProsodyConfig,
    XmppPki,
    XmppUser,
    host_record,
    srv,
    xmpp_certs,
)

pytestmark = pytest.mark.integration

XMPP = lab.XMPP_DOMAIN
SIPFED = "127.0.0.1"
PROSODY = "127.0.30.3"
DNS = "127.0.30.53"
PASSWORD = "romeo-pw"


@dataclass
class XmppLab:
    """The three domains, running."""

    lab: Lab
    dns: LabDns
    prosody: Prosody
    pki: XmppPki
    xmpp_port: int
    c2s_port: int

    def user(self, name: str, **options: object) -> XmppUser:
        user = XmppUser(f"{name}@{XMPP}", PASSWORD, address=PROSODY, port=self.c2s_port, cafile=self.pki.ca, **options)  # type: ignore[arg-type]
        user.connect()
        return user


def start_xmpp_lab(workdir: Path, certs: Path, **partner: object) -> XmppLab:
    """DNS, Prosody (trusting the lab CA), then the SIP lab with sipfed serving XMPP for its domains."""
    pki = xmpp_certs(workdir / "xmpp-pki", names=("tomt.local,tomt.it", XMPP), issuer=certs)
    xmpp_port, s2s_port, c2s_port = free_port(SIPFED), free_port(PROSODY), free_port(PROSODY)
    records = [
        host_record("xmpp-gw.tomt.local", SIPFED),
        host_record(XMPP, PROSODY),
        srv("_xmpp-server._tcp.tomt.local", "xmpp-gw.tomt.local", xmpp_port),
        srv("_xmpp-server._tcp.tomt.it", "xmpp-gw.tomt.local", xmpp_port),
        srv(f"_xmpp-server._tcp.{XMPP}", XMPP, s2s_port),
    ]
    dns = LabDns(DNS, free_port(DNS, socket.SOCK_DGRAM), records, ["tomt.local", "tomt.it", "test"])
    try:
        prosody = Prosody(
            workdir,
            ProsodyConfig(
                cert=pki.chain(XMPP),
                key=pki.key(XMPP),
                cafile=pki.ca,
                address=PROSODY,
                c2s_port=c2s_port,
                s2s_port=s2s_port,
                dns=dns.forward,
            ),
        )
        for name in ("romeo", "juliet", "mercutio"):
            prosody.register(name, PASSWORD)
        section = lab.xmpp_section((SIPFED, xmpp_port), pki.directory, **partner)
        running = start_lab(workdir / "sip", certs, dns=(DNS, dns.port), xmpp=section, xmpp_contact=f"romeo@{XMPP}")
    except BaseException:
        dns.stop()
        raise
    return XmppLab(running, dns, prosody, pki, xmpp_port, c2s_port)


@pytest.fixture(scope="module")
def xlab(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[XmppLab]:
    running = start_xmpp_lab(tmp_path_factory.mktemp("xmpp-lab"), certs)
    yield running
    running.lab.stop()
    running.prosody.stop()
    running.dns.stop()


def to_romeo(user: lab.Baresip, command: str) -> None:
    """baresip's ``/message`` goes to its current contact: Romeo is the second (``/contact_next``)."""
    since = user.mark()
    user.command("/contact_next")
    user.wait_view(r"Romeo <sip:romeo@xmpp\.test>", WAIT, since=since)
    user.command(command)
    user.command("/contact_prev")


def test_im_from_xmpp_to_sip_with_non_ascii_text(xlab: XmppLab) -> None:
    alice = xlab.lab.users["alice"]
    with xlab.user("juliet") as juliet:
        since = alice.mark()
        juliet.send_message("alice@tomt.local", "Grüße aus Verona – 東京", lang="de")
        assert alice.wait_view(r'sip:juliet@xmpp\.test: "Grüße aus Verona – 東京"', WAIT, since=since)


def test_im_from_sip_to_xmpp(xlab: XmppLab) -> None:
    bob = xlab.lab.users["bob"]
    with xlab.user("romeo") as romeo:
        to_romeo(bob, "/message Ciao Romeo, è Bob da tomt.it")
        got = romeo.wait_for_message(lambda m: m.body == "Ciao Romeo, è Bob da tomt.it", WAIT)
        assert got.from_jid.split("/")[0] == "bob@tomt.it"
        assert got.type == "chat"


def test_a_message_to_an_unknown_sip_user_comes_back_as_an_error(xlab: XmppLab) -> None:
    with xlab.user("mercutio") as mercutio:
        mercutio.send_message("nobody@tomt.local", "anyone there?")
        error = mercutio.wait_for_message(lambda m: m.type == "error", WAIT)
        assert error.error == "item-not-found"  # Kamailio's 404, RFC 7247 §7.2
        assert error.from_jid == "nobody@tomt.local"


def test_sip_users_see_an_xmpp_contact_come_and_go(xlab: XmppLab) -> None:
    """RFC 8048 §5: alice's and bob's baresip SUBSCRIBE to romeo@xmpp.test (their contact lists); romeo's client
    approves the subscription requests sipfed sent on, and his presence reaches both as NOTIFYs."""
    alice, bob = xlab.lab.users["alice"], xlab.lab.users["bob"]
    romeo = xlab.user("romeo", auto_authorize=True)
    try:
        for user in (alice, bob):
            assert "Online" in user.contact_presence(f"romeo@{XMPP}", "Online", WAIT)
        since = alice.mark()
        romeo.set_presence(show="dnd", status="Balcony scene")
        alice.wait_view(rf"<sip:romeo@{XMPP}> changed status from Online to Busy", WAIT, since=since)
        since = bob.mark()
        romeo.disconnect()
        bob.wait_view(rf"<sip:romeo@{XMPP}> changed status from \w+ to Offline", WAIT, since=since)
    finally:
        romeo.close()


def test_an_xmpp_user_sees_a_sip_user_come_and_go(xlab: XmppLab) -> None:
    """RFC 8048 §4: juliet subscribes to bob@tomt.it; sipfed SUBSCRIBEs on her behalf through the pool's
    presence server (a federated partner needs no invitation) and turns its NOTIFYs into presence."""
    bob = xlab.lab.users["bob"]
    with xlab.user("juliet") as juliet:
        juliet.subscribe("bob@tomt.it")
        juliet.wait_for_presence(lambda p: p.from_jid == "bob@tomt.it" and p.type == "subscribed", WAIT)
        juliet.wait_for_presence(lambda p: p.from_jid.startswith("bob@tomt.it/") and p.type == "available", WAIT)
        since = len(juliet.presences)
        bob.command("/presence_offline")
        juliet.wait_for_presence(
            lambda p: p.from_jid.startswith("bob@tomt.it") and p.type == "unavailable", WAIT, since=since
        )
        since = len(juliet.presences)
        bob.command("/presence_online")
        juliet.wait_for_presence(
            lambda p: p.from_jid.startswith("bob@tomt.it/") and p.type == "available", WAIT, since=since
        )
        assert juliet.roster()["bob@tomt.it"].subscription in ("to", "both")
