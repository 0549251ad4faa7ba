"""Issue 14 row 6 against the real process: sipfed's own digest (RFC 7616 §3.3, §3.4, §5).

The clients are ``tests.peers.sippeer`` endpoints with a CA-valid certificate that no ``[[peers]]`` entry
trusts, on the ``cisco`` listener (default policy with ``[auth]``: challenge); the MESSAGEs go to
``sip:bob@tomt.it``, which the ``lync`` route sends to a peer that answers 200. Their digest answers are
computed by ``digest_answer`` from the RFC, not by sipfed's code.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Sipfed, lab_config
from tests.integration.metrics_scrape import reading
from tests.peers.sippeer import Conn, Msg, Peer, digest_answer

pytestmark = pytest.mark.integration

REALM = "tomt.local"
TARGET = "sip:bob@tomt.it"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}


def auth_section(extra: str = "") -> str:
    """Users in realm tomt.local with no From keys: each may use its own sip:user@tomt.local only."""
    users = "".join(
        f'\n[[auth.users]]\nusername = "{user}"\n'
        f'ha1_md5 = "{hashlib.md5(f"{user}:{REALM}:{pw}".encode()).hexdigest()}"\n'
        f'ha1_sha256 = "{hashlib.sha256(f"{user}:{REALM}:{pw}".encode()).hexdigest()}"\n'
        for user, pw in PASSWORDS.items()
    )
    return (
        f'\n[auth]\nrealm = "{REALM}"\nsecret = "a secret shared by restarts"\nnonce_ttl_seconds = 60\n{extra}{users}'
    )


def run(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(factory(), 60))


def message(client: Peer, from_uri: str, cseq: int = 1, authorization: str | None = None) -> Msg:
    """An out-of-dialog MESSAGE from a UA behind ``client`` (a fresh branch and Call-ID every time)."""
    headers = [
        ("Via", f"SIP/2.0/TLS {client.host}:5061;branch=z9hG4bK{uuid.uuid4().hex}"),
        ("Max-Forwards", "70"),
        ("From", f"<{from_uri}>;tag={uuid.uuid4().hex[:8]}"),
        ("To", f"<{TARGET}>"),
        ("Call-ID", f"{uuid.uuid4().hex}@{client.host}"),
        ("CSeq", f"{cseq} MESSAGE"),
        *([("Proxy-Authorization", authorization)] if authorization else []),
    ]
    return Msg(f"MESSAGE {TARGET} SIP/2.0", headers, "hello")


def md5_challenge(answer: Msg) -> str:
    assert answer.status == 407, answer.start
    return next(c for c in answer.all("proxy-authenticate") if "algorithm=MD5" in c)


def nonce_of(challenge: str) -> str:
    found = re.search(r'nonce="([^"]+)"', challenge)
    assert found is not None, challenge
    return found.group(1)


def credentials(challenge: str, user: str, nc: int = 1, password: str | None = None) -> str:
    return digest_answer(challenge, "MESSAGE", TARGET, user, PASSWORDS[user] if password is None else password, nc=nc)


async def ask(client: Peer, conn: Conn, msg: Msg) -> Msg:
    await conn.send(msg)
    answer, _ = await client.next()
    return answer


async def relayed(lync: Peer, sent: Msg | None = None) -> Msg:
    """The next request tomt.it received; with ``sent``: it must be that one (nothing came first)."""
    got, _ = await lync.next()
    assert got.method == "MESSAGE"
    assert got.get("proxy-authorization") is None  # consumed (RFC 3261 §22.3)
    if sent is not None:
        assert got.get("call-id") == sent.get("call-id"), "tomt.it got a request sipfed should have answered itself"
    return got


async def nothing_relayed_before(lab: Lab, client: Peer, conn: Conn, user: str, cseq: int) -> None:
    """A fresh challenge, answered right: its MESSAGE is the first thing tomt.it gets. Anything sipfed relayed
    earlier would have gone the same path before it."""
    challenge = md5_challenge(await ask(client, conn, message(client, f"sip:{user}@tomt.local", cseq)))
    legit = message(client, f"sip:{user}@tomt.local", cseq + 1, credentials(challenge, user))
    assert (await ask(client, conn, legit)).status == 200
    await relayed(lab.lync, legit)


class Lab:
    """The route target and two clients on their own loopback addresses."""

    def __init__(self, certs: Path) -> None:
        self.lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        self.cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        self.one = Peer("wrong.example", "127.0.0.4", certs)
        self.two = Peer("wrong.example", "127.0.0.5", certs)

    async def start(self, path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed], extra: str = "") -> Sipfed:
        for peer in (self.lync, self.cups, self.one, self.two):
            await peer.start()
        lab_config(path, certs, cups_port=self.cups.port, lync_port=self.lync.port, extra=auth_section(extra))
        return start_sipfed(path)


async def connect(client: Peer, sipfed: Sipfed) -> Conn:
    return await client.connect("127.0.0.1", sipfed.ports["cisco"], "sipfed.tomt.local")


def test_two_clients_challenged_in_the_same_second_get_their_own_nonces(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """RFC 7616 §3.3: a fresh nonce per challenge; the old one was the second's, shared by both, and the
    second client's nc=00000001 was '403 nonce count replayed'."""

    async def main() -> None:
        lab = Lab(certs)
        sipfed = await lab.start(tmp_path / "d.toml", certs, start_sipfed)
        one, two = await connect(lab.one, sipfed), await connect(lab.two, sipfed)
        await one.send(message(lab.one, "sip:alice@tomt.local"))  # both sent before either answer is read:
        await two.send(message(lab.two, "sip:bob@tomt.local"))  # well within one second
        first, second = md5_challenge((await lab.one.next())[0]), md5_challenge((await lab.two.next())[0])
        assert nonce_of(first) != nonce_of(second)
        for client, conn, challenge, user in ((lab.one, one, first, "alice"), (lab.two, two, second, "bob")):
            retry = message(client, f"sip:{user}@tomt.local", 2, credentials(challenge, user))
            answer = await ask(client, conn, retry)
            assert (answer.status, answer.reason) == (200, "OK")
            await relayed(lab.lync)

    run(main)


def test_one_clients_nc_ffffffff_does_not_lock_out_another(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """RFC 7616 §3.4: the nonce-count belongs to one nonce; one client's count is nobody else's business."""

    async def main() -> None:
        lab = Lab(certs)
        sipfed = await lab.start(tmp_path / "d.toml", certs, start_sipfed)
        one, two = await connect(lab.one, sipfed), await connect(lab.two, sipfed)
        await one.send(message(lab.one, "sip:alice@tomt.local"))
        await two.send(message(lab.two, "sip:bob@tomt.local"))
        first, second = md5_challenge((await lab.one.next())[0]), md5_challenge((await lab.two.next())[0])
        huge = await ask(
            lab.one, one, message(lab.one, "sip:alice@tomt.local", 2, credentials(first, "alice", 0xFFFFFFFF))
        )
        assert huge.status == 200
        await relayed(lab.lync)
        other = await ask(lab.two, two, message(lab.two, "sip:bob@tomt.local", 2, credentials(second, "bob", 1)))
        assert (other.status, other.reason) == (200, "OK")
        await relayed(lab.lync)
        again = await ask(lab.one, one, message(lab.one, "sip:alice@tomt.local", 3, credentials(first, "alice", 1)))
        assert again.status == 403  # alice's own nonce is used up, nobody else's
        assert "replayed" in again.reason

    run(main)


def test_credentials_captured_before_a_restart_do_not_relay_after_it(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """RFC 7616 §5.5: the nonce-count table lives in memory; a nonce issued before a restart (same config,
    same secret, well within its lifetime) is stale after it, never a first use of nc=00000001 again."""

    async def main() -> None:
        lab = Lab(certs)
        path = tmp_path / "d.toml"
        sipfed = await lab.start(path, certs, start_sipfed)
        conn = await connect(lab.one, sipfed)
        challenge = md5_challenge(await ask(lab.one, conn, message(lab.one, "sip:alice@tomt.local")))
        captured = credentials(challenge, "alice")
        answer = await ask(lab.one, conn, message(lab.one, "sip:alice@tomt.local", 2, captured))
        assert answer.status == 200
        await relayed(lab.lync)
        conn.close()
        sipfed.stop()

        restarted = start_sipfed(path)
        conn = await connect(lab.one, restarted)
        replay = await ask(lab.one, conn, message(lab.one, "sip:alice@tomt.local", 3, captured))
        assert replay.status in (403, 407), replay.start
        if replay.status == 407:  # §3.3: stale=true, with a fresh nonce the real client can answer
            fresh = md5_challenge(replay)
            assert "stale=true" in fresh
            assert nonce_of(fresh) != nonce_of(challenge)
        await nothing_relayed_before(lab, lab.one, conn, "alice", 4)  # sipfed answered the replay itself

    run(main)


def test_burst_of_wrong_passwords_locks_the_user_out_even_with_the_right_one(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """RFC 7616 §5.7 (online dictionary attacks): past the failure limit the password is not even checked;
    3,000 guesses no longer take a second. The lockout outlasts the test, so nothing here depends on timing."""
    throttle = "max_failures_per_user = 3\nlockout_seconds = 600\nmax_lockout_seconds = 600\n"

    async def main() -> None:
        lab = Lab(certs)
        sipfed = await lab.start(tmp_path / "d.toml", certs, start_sipfed, throttle)
        conn = await connect(lab.one, sipfed)
        challenge = md5_challenge(await ask(lab.one, conn, message(lab.one, "sip:alice@tomt.local")))
        for n in range(3):
            guess = credentials(challenge, "alice", n + 1, password=f"guess{n}")
            wrong = await ask(lab.one, conn, message(lab.one, "sip:alice@tomt.local", n + 2, guess))
            assert (wrong.status, wrong.reason) == (403, f"Forbidden (wrong credentials for realm {REALM})")
        right = await ask(lab.one, conn, message(lab.one, "sip:alice@tomt.local", 9, credentials(challenge, "alice")))
        assert right.status == 403
        assert right.reason.startswith("Forbidden (too many failed digest attempts "), right.reason
        # The guesses were for alice: from another source, with a nonce of its own, she is still locked out.
        other = await connect(lab.two, sipfed)
        fresh = md5_challenge(await ask(lab.two, other, message(lab.two, "sip:alice@tomt.local")))
        elsewhere = await ask(lab.two, other, message(lab.two, "sip:alice@tomt.local", 2, credentials(fresh, "alice")))
        assert elsewhere.status == 403
        assert "too many failed digest attempts" in elsewhere.reason
        await nothing_relayed_before(lab, lab.two, other, "bob", 3)  # bob is not alice: his password still works
        assert reading(sipfed, "sipfed_digest_throttled_total") == 2

    run(main)


def test_digest_user_may_not_use_a_from_it_was_not_given(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """A password proves who sends, not whom the request claims to be from (issue 14 rows 6 and 10)."""

    async def main() -> None:
        lab = Lab(certs)
        sipfed = await lab.start(tmp_path / "d.toml", certs, start_sipfed)
        conn = await connect(lab.one, sipfed)
        challenge = md5_challenge(await ask(lab.one, conn, message(lab.one, "sip:ceo@tomt.local")))
        forged = await ask(lab.one, conn, message(lab.one, "sip:ceo@tomt.local", 2, credentials(challenge, "alice")))
        assert (forged.status, forged.reason) == (403, "Forbidden (user alice may not use From sip:ceo@tomt.local)")
        own = message(lab.one, "sip:alice@tomt.local", 3, credentials(challenge, "alice", 2))
        answer = await ask(lab.one, conn, own)
        assert (answer.status, answer.reason) == (200, "OK")
        await relayed(lab.lync, own)  # the first thing tomt.it got: the forged one never went on

    run(main)
