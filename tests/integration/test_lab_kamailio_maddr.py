"""An interop quirk the lab found: Kamailio's rr module honours the ``maddr`` of sipfed's Record-Route
entry but rebuilds the next hop as ``sip:MADDR:PORT``, dropping ``transport=tls`` (rr/loose.c,
get_maddr_uri). RFC 3261 §19.1.1: maddr overrides only the host; the transport parameter still
applies. So a Kamailio (or OpenSIPS, same code) next to sipfed sends in-dialog requests (refreshing
SUBSCRIBEs, BYE, ...) toward sipfed over UDP to its TLS port, and they never arrive.

examples/lab/*.cfg put the transport back (route MADDR_TRANSPORT); this test runs the lab without
that fix and asserts what a user needs: the in-dialog refresh gets through. It fails today and is
marked strict xfail, so it turns red when either side changes (a sipfed option to leave maddr out
of its Record-Route when it equals the host, or a Kamailio fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.lab_harness import sipp, start_lab

pytestmark = pytest.mark.integration


@pytest.mark.xfail(
    strict=True,
    reason="Kamailio rr drops transport=tls from a Route with maddr (rr/loose.c get_maddr_uri); RFC 3261 §19.1.1",
)
def test_in_dialog_refresh_from_a_kamailio_without_the_workaround(tmp_path: Path, certs: Path) -> None:
    # alice publishes, so the NOTIFYs carry a PIDF; a short transaction timeout keeps sipfed's drain short
    the_lab = start_lab(tmp_path, certs, users=("alice",), maddr_fix=False, transaction_timeout_seconds=2)
    try:
        p = the_lab.ports
        code, report = sipp(
            "lab_uac_subscribe_refresh.xml",
            (p.lync, p.lync_users),
            tmp_path,
            "domain",
            "tomt.local",
            "from_domain",
            "tomt.it",
            recv_timeout_seconds=4,
        )
        pool_log = the_lab.kamailio["tomt.it"].log_text()
    finally:
        the_lab.stop()
    mismatch = "\n".join(line for line in pool_log.splitlines() if "mismatch" in line)
    assert code == 0, report + "\n--- tomt.it Kamailio ---\n" + mismatch
