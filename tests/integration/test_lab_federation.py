"""The two-domain lab end to end (issue 4): Kamailio as tomt.local (a CUP stand-in) and as tomt.it (a
Lync pool stand-in), sipfed between them, baresip users in each domain, SIPp where baresip cannot
say something. Every assertion reads what the users' own software reported (baresip's console and
log, SIPp's exit code and log) or what a Kamailio answered, never sipfed's logs.

The lab itself (``start_lab``, ``sipp``) is tests/integration/lab_harness.py, shared with the other test_lab_*
files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.lab_harness import WAIT, Lab, sipp, start_lab

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def the_lab(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[Lab]:
    running = start_lab(tmp_path_factory.mktemp("lab"), certs)
    yield running
    running.stop()


def test_message_each_way(the_lab: Lab) -> None:
    alice, bob = the_lab.users["alice"], the_lab.users["bob"]
    since = alice.mark()
    bob.command("/message Hello Alice, this is Bob on tomt.it")
    assert alice.wait_view(r'sip:bob@tomt.it: "Hello Alice, this is Bob on tomt.it"', WAIT, since=since)
    since = bob.mark()
    alice.command("/message Hi Bob, Alice here on tomt.local")
    assert bob.wait_view(r'sip:alice@tomt.local: "Hi Bob, Alice here on tomt.local"', WAIT, since=since)


def test_presence_each_way(the_lab: Lab) -> None:
    """Each watches the other from start-up (baresip contacts with presence=p2p, server-side presence
    in each domain); a PUBLISH in one domain reaches the other domain's watcher as a NOTIFY."""
    alice, bob = the_lab.users["alice"], the_lab.users["bob"]
    assert "Online" in bob.contact_presence("alice@tomt.local", "Online", WAIT)
    assert "Online" in alice.contact_presence("bob@tomt.it", "Online", WAIT)
    for user, watcher, aor in ((alice, bob, "alice@tomt.local"), (bob, alice, "bob@tomt.it")):
        since = watcher.mark()
        user.command("/presence_offline")
        watcher.wait_view(rf"<sip:{aor}> changed status from Online to Offline", WAIT, since=since)
        since = watcher.mark()
        user.command("/presence_online")
        watcher.wait_view(rf"<sip:{aor}> changed status from Offline to Online", WAIT, since=since)


def test_refresh_and_termination_follow_the_record_route_set(the_lab: Lab, tmp_path: Path) -> None:
    """A tomt.it watcher (SIPp, through the pool's Kamailio) subscribes to alice@tomt.local, refreshes
    in-dialog and ends with Expires: 0; each step's 200 and NOTIFY come back through sipfed."""
    p = the_lab.ports
    code, report = sipp(
        "lab_uac_subscribe_refresh.xml",
        (p.lync, p.lync_users),
        tmp_path,
        "domain",
        "tomt.local",
        "from_domain",
        "tomt.it",
    )
    assert code == 0, report
    assert re.findall(r"notify;(\d);", report) == ["1", "2", "3"], report


def test_next_notify_arrives_after_the_pool_restarts(the_lab: Lab) -> None:
    """Restart tomt.it's Kamailio mid-subscription (bob watches alice): sipfed's connection to it is
    gone; the next NOTIFY for bob makes sipfed connect again, and bob's baresip shows the change."""
    alice, bob = the_lab.users["alice"], the_lab.users["bob"]
    assert "Online" in bob.contact_presence("alice@tomt.local", "Online", WAIT)
    the_lab.kamailio["tomt.it"].restart()
    since = bob.mark()
    alice.command("/presence_offline")
    bob.wait_view(r"<sip:alice@tomt.local> changed status from Online to Offline", WAIT, since=since)
    since = bob.mark()
    alice.command("/presence_online")
    bob.wait_view(r"<sip:alice@tomt.local> changed status from Offline to Online", WAIT, since=since)
