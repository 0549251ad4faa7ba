"""The field notes' "Lync client signs out when searching for federated user", in the lab: tomt.local
(Kamailio with auth, the CUP stand-in) does not list sipfed in its Incoming ACL, so it answers the
pool's traffic with an MD5 challenge. A tomt.it user must never see that 401/407: sipfed answers it
with [[acl.credentials]], or refuses with 403 (README "Trust and authentication", rule 5).

Asserted from the tomt.it user's SIPp (a 401/407 is an unexpected message: exit 1), from what the
pool's Kamailio got back from sipfed, and from alice's baresip on tomt.local."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.lab_harness import WAIT, Lab, sipp, start_lab

pytestmark = pytest.mark.integration


@pytest.fixture(params=[True, False], ids=["with-credentials", "without-credentials"])
def md5_lab(request: pytest.FixtureRequest, tmp_path: Path, certs: Path) -> Iterator[tuple[Lab, bool]]:
    """tomt.local without sipfed in its Incoming ACL; sipfed with or without [[acl.credentials]]."""
    running = start_lab(tmp_path, certs, users=("alice",), exempt_sipfed=False, credentials=request.param)
    yield running, request.param
    running.stop()


def test_md5_challenge_never_reaches_the_pool_side(md5_lab: tuple[Lab, bool], tmp_path: Path) -> None:
    the_lab, credentials = md5_lab
    p, alice = the_lab.ports, the_lab.users["alice"]
    since = alice.mark()
    code, report = sipp(
        "lab_uac_message_status.xml", (p.lync, p.lync_users), tmp_path, "domain", "tomt.local", "from_domain", "tomt.it"
    )
    assert code == 0, report  # no 401/407 reached dave
    final = re.search(r"final;(\d+);(.*)", report)
    assert final is not None, report
    cups_log = the_lab.kamailio["tomt.local"].log_text()
    assert re.search(rf"ACL: challenging MESSAGE from {re.escape(p.sipfed)}:\d+ \(MD5", cups_log), cups_log[-3000:]
    pool_log = the_lab.kamailio["tomt.it"].log_text()
    assert not re.search(r"REPLY 40[17]", pool_log), pool_log[-3000:]
    if credentials:
        assert final.group(1) == "200", report
        assert alice.wait_view(r'sip:dave@tomt.it: "Hello from dave, who cannot answer MD5', WAIT, since=since)
    else:
        assert final.group(1) == "403", report
        assert "next hop demanded digest authentication" in final.group(2), report
        assert "Hello from dave" not in alice.console()[since[1] :]
