"""XMPP federation end to end (issue 15): the two-domain lab (Kamailio as tomt.local and tomt.it, baresip users
alice and bob) plus a third domain, xmpp.test, played by Debian's Prosody with a lab DNS (dnsmasq) that
publishes ``_xmpp-server._tcp`` SRV records for all three domains, and XMPP users played by slixmpp. sipfed is
the XMPP server of tomt.local and tomt.it. Assertions read what the users' own software shows: baresip's
console and log, the slixmpp clients' stanzas, Prosody's log.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port
from tests.integration.lab_harness import WAIT, Lab, lab, start_lab
from tests.integration.waiting import wait_until
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
    workdir: Path

    def reconfigure(self, **partner: object) -> None:
        """sipfed's [[xmpp.partners]] entry rewritten and reloaded (SIGHUP), as an admin would."""
        sipfed = self.lab.sipfed
        assert sipfed is not None
        section = lab.xmpp_section(
            (SIPFED, self.xmpp_port), self.pki.directory, store=str(self.workdir / "xmpp.sqlite3"), **partner
        )
        assert self.lab.certs is not None
        lab.write_sipfed(sipfed.config, self.lab.ports, self.lab.certs, dns=(DNS, self.dns.port), xmpp=section)
        reloads = sipfed.log_text().count("reloaded ")
        os.kill(sipfed.proc.pid, signal.SIGHUP)
        wait_until(lambda: sipfed.log_text().count("reloaded ") > reloads, WAIT, "sipfed did not reload")

    def restart_sipfed(self) -> None:
        """Stop sipfed (SIGTERM) and start it again on the same config and store."""
        old = self.lab.sipfed
        assert old is not None
        old.stop()
        self.lab.sipfed = Sipfed(old.config, args=("--trace", str(self.lab.trace)))

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
        store = str(workdir / "xmpp.sqlite3")
        section = lab.xmpp_section((SIPFED, xmpp_port), pki.directory, store=store, **partner)
        running = start_lab(
            workdir / "sip",
            certs,
            dns=(DNS, dns.port),
            xmpp=section,
            xmpp_contact=f"romeo@{XMPP}",
            xmpp_others=(f"nobody@{XMPP}",),
        )
    except BaseException:
        dns.stop()
        raise
    return XmppLab(running, dns, prosody, pki, xmpp_port, c2s_port, workdir)


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


def test_a_message_to_an_unknown_xmpp_user_comes_back_to_the_sip_sender_in_words(xlab: XmppLab) -> None:
    """Prosody answers a message for nobody@xmpp.test with service-unavailable (RFC 6121 §8.5.2.2.1); the SIP
    sender had its 200 when the stanza left, so sipfed tells it as a MESSAGE from that address (RFC 7247 §7)."""
    bob = xlab.lab.users["bob"]
    since = bob.mark()
    bob.command("/contact_next")
    bob.command("/contact_next")
    bob.wait_view(rf"Nobody <sip:nobody@{XMPP}>", WAIT, since=since)
    bob.command("/message are you there?")
    bob.command("/contact_prev")
    bob.command("/contact_prev")
    bob.wait_view(
        rf"sip:nobody@{XMPP}: \"sipfed: your message to nobody@{XMPP} was not delivered "
        r"\(service-unavailable",
        WAIT,
        since=since,
    )


def test_public_unverified_partners_need_an_invitation(xlab: XmppLab) -> None:
    """Lync's Public unverified: an XMPP contact may subscribe to a SIP user only after that user invited it.
    bob's baresip SUBSCRIBEd to romeo (an invitation); nobody at tomt.it ever contacted mercutio."""
    xlab.reconfigure(partner_type="public_unverified")
    try:
        with xlab.user("mercutio") as mercutio:
            mercutio.subscribe("bob@tomt.it")
            mercutio.wait_for_presence(lambda p: p.from_jid == "bob@tomt.it" and p.type == "unsubscribed", WAIT)
        assert xlab.lab.sipfed is not None
        xlab.lab.sipfed.wait_for_log("partner jabber is public_unverified and sip:bob@tomt.it has not invited")
        with xlab.user("romeo", auto_authorize=True) as romeo:
            romeo.subscribe("bob@tomt.it")
            romeo.wait_for_presence(lambda p: p.from_jid == "bob@tomt.it" and p.type == "subscribed", WAIT)
    finally:
        xlab.reconfigure()


def test_presence_flows_after_a_restart_without_anyone_subscribing_again(xlab: XmppLab) -> None:
    """The standing subscriptions are in sipfed's store: after a restart, juliet (who watches alice) and alice
    (who watches romeo) see each other's changes with no new subscription request from anyone."""
    alice = xlab.lab.users["alice"]
    romeo = xlab.user("romeo", auto_authorize=True)
    try:
        with xlab.user("juliet") as juliet:
            juliet.subscribe("alice@tomt.local")
            juliet.wait_for_presence(
                lambda p: p.from_jid.startswith("alice@tomt.local/") and p.type == "available", WAIT
            )
            assert "Online" in alice.contact_presence(f"romeo@{XMPP}", "Online", WAIT)
            xlab.restart_sipfed()
            since = len(juliet.presences)
            alice.command("/presence_offline")
            juliet.wait_for_presence(
                lambda p: p.from_jid.startswith("alice@tomt.local") and p.type == "unavailable", WAIT, since=since
            )
            alice.command("/presence_online")
            mark = alice.mark()
            romeo.set_presence(show="dnd", status="Gone to Mantua")  # baresip shows dnd as Busy (RPID busy)
            alice.wait_view(rf"<sip:romeo@{XMPP}> changed status from \w+ to Busy", WAIT, since=mark)
            subscribes = [p for p in juliet.presences[since:] if p.type in ("subscribe", "subscribed")]
            assert not subscribes, subscribes  # nobody had to subscribe again
    finally:
        romeo.close()


def test_a_returning_xmpp_user_gets_the_sip_users_presence_by_probe(xlab: XmppLab) -> None:
    """RFC 6121 §4.3: juliet logs in again after alice changed her presence; her server probes
    alice@tomt.local and sipfed answers with alice's current presence."""
    alice = xlab.lab.users["alice"]
    with xlab.user("juliet") as juliet:
        juliet.subscribe("alice@tomt.local")
        juliet.wait_for_presence(lambda p: p.from_jid.startswith("alice@tomt.local/"), WAIT)
    alice.command("/presence_offline")
    with xlab.user("juliet") as juliet:
        juliet.wait_for_presence(lambda p: p.from_jid.startswith("alice@tomt.local") and p.type == "unavailable", WAIT)
    alice.command("/presence_online")
    with xlab.user("juliet") as juliet:
        juliet.wait_for_presence(lambda p: p.from_jid.startswith("alice@tomt.local/") and p.type == "available", WAIT)
