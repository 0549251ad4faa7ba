"""Trust against the live process: trusted peers by certificate, digest for the others, and a
far side (Kamailio with the auth module) whose MD5 challenge never reaches the Lync side."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port, lab_config
from tests.integration.kamailio import Kamailio
from tests.peers.sippeer import Peer, digest_answer

pytestmark = pytest.mark.integration

TRUST = """
[[peers]]
name = "lync"
subjects = ["lync01.tomt.it"]
domains = ["tomt.it"]
treat_as_authenticated = true
answers_digest = false

[[peers]]
name = "cups"
subjects = ["CN=cups.tomt.local"]
domains = ["tomt.local"]

[auth]
realm = "sipfed.tomt.local"
nonce_ttl_seconds = 60
[[auth.users]]
username = "partner"
ha1_md5 = "{ha1_md5}"
ha1_sha256 = "{ha1_sha256}"
from_domains = ["partner.example"]
"""


def trust_section(extra: str = "") -> str:
    import hashlib

    text = "partner:sipfed.tomt.local:s3cret"
    return (
        TRUST.format(
            ha1_md5=hashlib.md5(text.encode()).hexdigest(), ha1_sha256=hashlib.sha256(text.encode()).hexdigest()
        )
        + extra
    )


def run(coro_factory: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(coro_factory(), 40))  # type: ignore[arg-type]


def test_trusted_untrusted_and_foreign_domain(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    async def main() -> None:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        stranger = Peer("wrong.example", "127.0.0.4", certs)  # a valid certificate, but no trusted peer
        for peer in (cups, lync, stranger):
            await peer.start()
        sipfed = start_sipfed(
            lab_config(tmp_path / "t.toml", certs, cups_port=cups.port, lync_port=lync.port, extra=trust_section())
        )
        # 1. The trusted Lync pool subscribes: relayed, never challenged.
        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        await conn.send(
            lync.request(
                "SUBSCRIBE",
                "sip:alice@tomt.local",
                to="<sip:alice@tomt.local>",
                from_user="bob@tomt.it",
                extra=[("Event", "presence")],
            )
        )
        got, _ = await cups.next()
        assert got.method == "SUBSCRIBE"
        answer, _ = await lync.next()
        assert answer.status == 200

        # 2. The same trusted peer speaking for a domain that is not its own: 403.
        await conn.send(
            lync.request(
                "MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", from_user="mallory@evil.example"
            )
        )
        answer, _ = await lync.next()
        assert answer.status == 403
        assert "may not speak for domain evil.example" in answer.reason

        # 3. A stranger with a valid certificate: 407, then 200 with credentials, 403 with wrong ones.
        sconn = await stranger.connect("127.0.0.1", sipfed.ports["cisco"], "sipfed.tomt.local")
        first = stranger.request("MESSAGE", "sip:bob@tomt.it", to="<sip:bob@tomt.it>", from_user="eve@partner.example")
        await sconn.send(first)
        challenge, _ = await stranger.next()
        assert challenge.status == 407
        offers = challenge.all("proxy-authenticate")
        assert any("algorithm=MD5" in o for o in offers)
        assert any("algorithm=SHA-256" in o for o in offers)
        md5 = next(o for o in offers if "algorithm=MD5" in o)
        good = digest_answer(md5, "MESSAGE", "sip:bob@tomt.it", "partner", "s3cret", nc=1)
        retry = stranger.request(
            "MESSAGE",
            "sip:bob@tomt.it",
            to="<sip:bob@tomt.it>",
            from_user="eve@partner.example",
            cseq=2,
            extra=[("Proxy-Authorization", good)],
        )
        await sconn.send(retry)
        relayed, _ = await lync.next()
        assert relayed.method == "MESSAGE"
        assert relayed.get("proxy-authorization") is None  # consumed by sipfed (RFC 3261 §22.3)
        answer, _ = await stranger.next()
        assert answer.status == 200

        # The same nonce-count again is a replay: 403.
        replay = stranger.request(
            "MESSAGE",
            "sip:bob@tomt.it",
            to="<sip:bob@tomt.it>",
            from_user="eve@partner.example",
            cseq=3,
            extra=[("Proxy-Authorization", good)],
        )
        await sconn.send(replay)
        answer, _ = await stranger.next()
        assert answer.status == 403
        assert "replayed" in answer.reason

        wrong = digest_answer(md5, "MESSAGE", "sip:bob@tomt.it", "partner", "guess", nc=2)
        await sconn.send(
            stranger.request(
                "MESSAGE",
                "sip:bob@tomt.it",
                to="<sip:bob@tomt.it>",
                from_user="eve@partner.example",
                cseq=4,
                extra=[("Proxy-Authorization", wrong)],
            )
        )
        answer, _ = await stranger.next()
        assert answer.status == 403
        assert "wrong credentials" in answer.reason
        # Nothing but the authenticated MESSAGE reached tomt.it: a fresh, right answer to a fresh challenge is
        # the next thing it gets, and the replay or the wrong guess would have gone the same path before it.
        await sconn.send(
            stranger.request(
                "MESSAGE", "sip:bob@tomt.it", to="<sip:bob@tomt.it>", from_user="eve@partner.example", cseq=5
            )
        )
        challenge, _ = await stranger.next()
        assert challenge.status == 407
        md5 = next(o for o in challenge.all("proxy-authenticate") if "algorithm=MD5" in o)
        last = stranger.request(
            "MESSAGE",
            "sip:bob@tomt.it",
            to="<sip:bob@tomt.it>",
            from_user="eve@partner.example",
            cseq=6,
            extra=[
                ("Proxy-Authorization", digest_answer(md5, "MESSAGE", "sip:bob@tomt.it", "partner", "s3cret", nc=1))
            ],
        )
        await sconn.send(last)
        relayed, _ = await lync.next()
        assert (relayed.method, relayed.get("call-id")) == ("MESSAGE", last.get("call-id"))
        answer, _ = await stranger.next()
        assert answer.status == 200

    run(main)


KAMAILIO_CHALLENGES = """
    if (is_method("ACK")) { exit; }
    if (!pv_proxy_authenticate("tomt.local", "cupspass", "0")) {
        proxy_challenge("tomt.local", "1");
        exit;
    }
    consume_credentials();
    sl_send_reply("200", "OK authenticated as $au");
    exit;
"""


@pytest.mark.parametrize("with_credentials", [True, False])
def test_far_side_md5_challenge_never_reaches_lync(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed], with_credentials: bool
) -> None:
    """Kamailio on the tomt.local side challenges every request with MD5 (as CUP does for sources
    outside its Incoming ACL). The Lync peer cannot answer digest: sipfed answers with its own
    credentials for the route, or refuses with 403 and the cause. The Lync peer never sees 407."""
    port = free_port("127.0.0.2")
    kamailio = Kamailio(
        tmp_path, certs, name="cups.tomt.local", host="127.0.0.2", port=port, routing=KAMAILIO_CHALLENGES
    )
    credentials = (
        """
[[acl.credentials]]
route = "cisco"
username = "sipfed"
password = "cupspass"
realm = "tomt.local"
"""
        if with_credentials
        else ""
    )

    async def main() -> None:
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await lync.start()
        sipfed = start_sipfed(
            lab_config(
                tmp_path / "k.toml", certs, cups_port=port, lync_port=lync.port, extra=trust_section(credentials)
            )
        )
        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        request = lync.request(
            "SUBSCRIBE",
            "sip:alice@tomt.local",
            to="<sip:alice@tomt.local>",
            from_user="bob@tomt.it",
            cseq=7,
            extra=[("Event", "presence")],
        )
        await conn.send(request)
        answer, _ = await lync.next()
        if with_credentials:
            assert answer.status == 200
            assert answer.reason == "OK authenticated as sipfed"
            assert answer.get("cseq") == "7 SUBSCRIBE"  # the sender's own CSeq, though sipfed re-sent as 8
        else:
            assert answer.status == 403
            assert "next hop demanded digest authentication" in answer.reason
        # Exactly one answer, and it was not a 401/407: the answer to a later OPTIONS (sipfed's own) is the next
        # thing on this connection, and a second answer to the SUBSCRIBE would have come before it.
        options = lync.request(
            "OPTIONS",
            f"sip:sipfed.tomt.it:{sipfed.ports['lync']};transport=tls",
            to="<sip:sipfed.tomt.it>",
            from_user="bob@tomt.it",
        )
        await conn.send(options)
        after, _ = await lync.next()
        assert (after.is_request, after.get("call-id")) == (False, options.get("call-id")), after.start

    try:
        run(main)
    finally:
        kamailio.stop()
