"""Attacks on the relay against the live process (issue 14): one admission path for the stateless methods, no
open relay through Route or Request-URI, no downgrade of a TLS dialog, responses only from their own flow,
RFC 5923 aliases only after admission, ``received`` always ours, RFC 3325 identities screened, no UDP
amplification, rate-limited warnings.

The configuration is the README's style: mutual-TLS listeners ``cisco``/``lync`` with trusted peers bound by
certificate, plus, as a lab would have them, a TLS listener without client certificates, a TCP and a UDP
listener. The peers are tests/peers/sippeer.py (no sipfed code); the attacker is plain sockets."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Sipfed, lab_config
from tests.integration.metrics_scrape import metric_equals, metric_reaches, sample, scrape
from tests.peers.sippeer import Conn, Msg, Peer

pytestmark = pytest.mark.integration

TRUST = """
[[listeners]]
name = "anon-tls"
transport = "tls"
address = "127.0.0.1"
port = 0
require_client_cert = false

[[listeners]]
name = "lab-tcp"
transport = "tcp"
address = "127.0.0.1"
port = 0

[[listeners]]
name = "lab-udp"
transport = "udp"
address = "127.0.0.1"
port = 0

[[peers]]
name = "lync"
subjects = ["lync01.tomt.it"]
domains = ["tomt.it"]
answers_digest = false

[[peers]]
name = "cups"
subjects = ["cups.tomt.local"]
domains = ["tomt.local"]

[auth]
realm = "sipfed.tomt.local"
[[auth.users]]
username = "partner"
ha1_md5 = "{ha1}"
"""
DEADLINE = 5.0


def trust(extra: str = "") -> str:
    return TRUST.format(ha1=hashlib.md5(b"partner:sipfed.tomt.local:s3cret").hexdigest()) + extra


class Lab:
    def __init__(self, sipfed: Sipfed, cups: Peer, lync: Peer, stranger: Peer) -> None:
        self.sipfed, self.cups, self.lync, self.stranger = sipfed, cups, lync, stranger

    async def lync_conn(self) -> Conn:
        return await self.lync.connect("127.0.0.1", self.sipfed.ports["lync"], "sipfed.tomt.it")

    async def first_at_cups(self) -> Msg:
        """The next request tomt.local received (after an attack: must be the legitimate one)."""
        msg, _ = await self.cups.next(DEADLINE)
        return msg

    async def legit_message(self, body: str) -> Msg:
        """A MESSAGE from the trusted Lync side; returns what tomt.local received first."""
        conn = await self.lync_conn()
        await conn.send(self.lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", body=body))
        first = await self.first_at_cups()
        answer, _ = await self.lync.next(DEADLINE)
        assert answer.status == 200
        conn.close()
        return first


def run_lab(
    tmp_path: Path,
    certs: Path,
    start_sipfed: Callable[[Path], Sipfed],
    scenario: Callable[[Lab], Coroutine[Any, Any, None]],
    extra: str = "",
) -> None:
    async def main() -> None:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        stranger = Peer("wrong.example", "127.0.0.4", certs)  # CA-valid, in no [[peers]] entry
        for peer in (cups, lync, stranger):
            await peer.start()
        sipfed = start_sipfed(
            lab_config(tmp_path / "attack.toml", certs, cups_port=cups.port, lync_port=lync.port, extra=trust(extra))
        )
        try:
            await scenario(Lab(sipfed, cups, lync, stranger))
        finally:
            for peer in (cups, lync, stranger):
                await peer.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def raw_request(
    method: str,
    uri: str,
    *,
    transport: str,
    sent_by: str,
    from_: str = "<sip:eve@tomt.it>",
    to: str = "<sip:alice@tomt.local>",
    via_params: str = "",
    extra: tuple[str, ...] = (),
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {sent_by};branch=z9hG4bK{uuid.uuid4().hex[:16]}{via_params}",
        "Max-Forwards: 70",
        f"From: {from_};tag=atk{uuid.uuid4().hex[:6]}",
        f"To: {to}",
        f"Call-ID: {uuid.uuid4().hex}@attacker",
        f"CSeq: 1 {method}",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


async def open_plain(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.9", 0))


async def open_anon_tls(port: int, certs: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="sipfed.tomt.local", local_addr=("127.0.0.9", 0)
    )


async def read_status(reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    start = head.split(b"\r\n", 1)[0].decode()
    return int(start.split(" ")[1]), start.split(" ", 2)[2], head


# -- row 1: one admission path, the stateless methods too -----------------------------------------


@pytest.mark.parametrize("method", ["ACK", "BENOTIFY"])
def test_stateless_methods_pass_admission(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed], method: str
) -> None:
    """An out-of-dialog ACK/BENOTIFY from an anonymous TCP client, an anonymous TLS client, a CA-valid
    certificate in no [[peers]] entry, and the trusted peer speaking for a foreign domain: none reaches
    tomt.local; each is dropped and counted (nobody can be told)."""

    async def scenario(lab: Lab) -> None:
        ports = lab.sipfed.ports
        sent = 0
        _, tcp = await open_plain(ports["lab-tcp"])
        tcp.write(raw_request(method, "sip:alice@tomt.local", transport="TCP", sent_by="127.0.0.9:5060"))
        sent += 1
        _, anon = await open_anon_tls(ports["anon-tls"], certs)
        anon.write(raw_request(method, "sip:alice@tomt.local", transport="TLS", sent_by="127.0.0.9:5061"))
        sent += 1
        stranger = await lab.stranger.connect("127.0.0.1", ports["cisco"], "sipfed.tomt.local")
        await stranger.send(
            lab.stranger.request(method, "sip:alice@tomt.local", to="<sip:alice@tomt.local>", from_user="eve@tomt.it")
        )
        sent += 1
        lync = await lab.lync_conn()
        await lync.send(
            lab.lync.request(
                method, "sip:alice@tomt.local", to="<sip:alice@tomt.local>", from_user="mallory@evil.example"
            )
        )
        sent += 1
        await metric_reaches(lab.sipfed, "sipfed_security_drops_total", sent, reason="stateless_refused")
        first = await lab.legit_message("after the attack")
        assert (first.method, first.body) == ("MESSAGE", "after the attack"), "an attack request was relayed"
        log = await lab.sipfed.async_wait_for_log(f"{method} from 127.0.0.9")
        assert "no response to carry the refusal" in log
        for writer in (tcp, anon):
            writer.close()

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_stateless_methods_obey_the_rate_limit(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """1000 of 1000 BENOTIFYs passed a 5/s per-source limit: now the bucket's worth pass, the rest are dropped."""
    extra = (
        '[[listeners]]\nname = "open-tcp"\ntransport = "tcp"\naddress = "127.0.0.1"\nport = 0\n'
        'untrusted = "admit"\n\n[limits]\nper_source_requests_per_second = 5\nburst_seconds = 1\n'
    )

    async def scenario(lab: Lab) -> None:
        _, writer = await open_plain(lab.sipfed.ports["open-tcp"])
        count = 60
        writer.write(
            b"".join(
                raw_request(
                    "BENOTIFY",
                    "sip:alice@tomt.local",
                    transport="TCP",
                    sent_by="127.0.0.9:5060",
                    from_="<sip:eve@tomt.it>",
                )
                for _ in range(count)
            )
        )
        await writer.drain()
        refused = await metric_reaches(
            lab.sipfed, "sipfed_security_drops_total", count - 10, reason="stateless_refused"
        )
        relayed = 0
        while relayed + refused < count:  # bounded: each message is either relayed or refused
            msg, _ = await lab.cups.next(DEADLINE)
            assert msg.method == "BENOTIFY"
            relayed += 1
            refused = sample(
                await asyncio.to_thread(scrape, lab.sipfed.ports["metrics"]),
                "sipfed_security_drops_total",
                reason="stateless_refused",
            )
        assert relayed <= 10, f"{relayed} of {count} BENOTIFYs passed a 5/s limit"
        writer.close()

    run_lab(tmp_path, certs, start_sipfed, scenario, extra)


# -- row 2: no open relay ----------------------------------------------------------------------------


def test_route_or_request_uri_cannot_steer_sipfed_to_an_unconfigured_host(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    async def scenario(lab: Lab) -> None:
        trap = socket.create_server(("127.0.22.99", 0))
        trap.setblocking(False)
        port = trap.getsockname()[1]
        try:
            conn = await lab.lync_conn()
            await conn.send(
                lab.lync.request(
                    "MESSAGE",
                    "sip:alice@tomt.local",
                    to="<sip:alice@tomt.local>",
                    extra=[("Route", f"<sip:127.0.22.99:{port};transport=tcp;lr>")],
                )
            )
            answer, _ = await lab.lync.next(DEADLINE)
            assert answer.status == 403
            assert f"127.0.22.99:{port} is not a configured destination" in answer.reason
            await conn.send(
                lab.lync.request(
                    "MESSAGE", f"sip:x@127.0.22.99:{port};transport=tcp", to="<sip:alice@tomt.local>;tag=guessed"
                )
            )
            answer, _ = await lab.lync.next(DEADLINE)
            assert answer.status == 403
            with pytest.raises(BlockingIOError):
                trap.accept()  # nobody connected to the trap
        finally:
            trap.close()

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_in_dialog_networks_is_the_documented_opt_in(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """With ``[proxy] in_dialog_networks`` an in-dialog target no route names is allowed (a Contact straight
    at a client behind CUP), and still over TLS with its certificate checked: no downgrade."""

    async def scenario(lab: Lab) -> None:
        other = Peer("cups.tomt.local", "127.0.0.2", certs)  # another server on CUP's address, another port
        await other.start()
        try:
            conn = await lab.lync_conn()
            await conn.send(
                lab.lync.request(
                    "MESSAGE", f"sip:alice@127.0.0.2:{other.port};transport=tcp", to="<sip:alice@tomt.local>;tag=t1"
                )
            )
            got, _ = await other.next(DEADLINE)
            assert got.method == "MESSAGE"
            assert (got.get("via") or "").startswith("SIP/2.0/TLS sipfed.tomt.local:")
            answer, _ = await lab.lync.next(DEADLINE)
            assert answer.status == 200
        finally:
            await other.stop()

    def start(config: Path) -> Sipfed:
        body = config.read_text().replace("[proxy]\n", '[proxy]\nin_dialog_networks = ["127.0.0.2/32"]\n', 1)
        config.write_text(body)
        return start_sipfed(config)

    run_lab(tmp_path, certs, start, scenario)


def test_thousands_of_in_dialog_targets_neither_grow_nor_bend_the_verdict_cache(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """Issue 19 keeps each in-dialog host's ``in_dialog_networks`` verdict (proxy/relay/forwarding.py, at most
    4,096 hosts). A peer sending in-dialog requests to 4,200 hosts outside the networks fills it past its bound:
    every one is still refused, and afterwards a host inside the networks is still reached and one outside
    still refused, the same as on a fresh process (a full cache judges, it does not guess)."""
    hosts = 4200

    async def scenario(lab: Lab) -> None:
        other = Peer("cups.tomt.local", "127.0.0.2", certs)
        await other.start()
        try:
            conn = await lab.lync_conn()
            for i in range(hosts):
                target = f"sip:x@10.{i // 250}.{i % 250}.1:5060;transport=tcp"
                await conn.send(lab.lync.request("MESSAGE", target, to=f"<sip:alice@tomt.local>;tag=t{i}"))
            refused = 0
            for _ in range(hosts):  # bounded: one answer per request
                answer, _ = await lab.lync.next(DEADLINE)
                assert answer.status == 403, answer.reason
                assert "is not a configured destination" in answer.reason
                refused += 1
            assert refused == hosts
            inside = f"sip:alice@127.0.0.2:{other.port};transport=tcp"
            await conn.send(lab.lync.request("MESSAGE", inside, to="<sip:alice@tomt.local>;tag=in"))
            got, _ = await other.next(DEADLINE)
            assert got.method == "MESSAGE"
            answer, _ = await lab.lync.next(DEADLINE)
            assert answer.status == 200
            outside = "sip:x@10.99.99.99:5060;transport=tcp"
            await conn.send(lab.lync.request("MESSAGE", outside, to="<sip:alice@tomt.local>;tag=out"))
            answer, _ = await lab.lync.next(DEADLINE)
            assert answer.status == 403
            assert "10.99.99.99:5060 is not a configured destination" in answer.reason
        finally:
            await other.stop()

    def start(config: Path) -> Sipfed:
        body = config.read_text().replace("[proxy]\n", '[proxy]\nin_dialog_networks = ["127.0.0.2/32"]\n', 1)
        config.write_text(body)
        return start_sipfed(config)

    run_lab(tmp_path, certs, start, scenario)


# -- row 3: no downgrade --------------------------------------------------------------------------------


def test_a_tcp_contact_does_not_take_a_tls_dialog_off_tls(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """A dialog set up over TLS whose far end's Contact says transport=TCP: the un-SUBSCRIBE goes to CUP over
    TLS through the cisco listener, with the cisco side's identity in Via."""

    async def scenario(lab: Lab) -> None:
        lab.cups.extra_answer_headers = []
        conn = await lab.lync_conn()
        subscribe = lab.lync.request(
            "SUBSCRIBE",
            "sip:alice@tomt.local",
            to="<sip:alice@tomt.local>",
            extra=[("Event", "presence"), ("Expires", "600")],
        )
        await conn.send(subscribe)
        got, _ = await lab.cups.next(DEADLINE)
        assert got.method == "SUBSCRIBE"
        ok, _ = await lab.lync.next(DEADLINE)
        assert ok.status == 200
        # The far end's Contact, as a CUP that writes transport=TCP would have it.
        contact = f"<sip:alice@127.0.0.2:{lab.cups.port};transport=tcp>"
        ok.headers = [(k, contact if k.lower() == "contact" else v) for k, v in ok.headers]
        unsubscribe = lab.lync.in_dialog(
            "SUBSCRIBE", ok, uas=False, cseq=2, extra=[("Event", "presence"), ("Expires", "0")]
        )
        await conn.send(unsubscribe)
        got, _ = await lab.cups.next(DEADLINE)
        assert (got.method, got.get("expires")) == ("SUBSCRIBE", "0")
        via = got.get("via") or ""
        assert via.startswith(f"SIP/2.0/TLS sipfed.tomt.local:{lab.sipfed.ports['cisco']};"), via
        answer, _ = await lab.lync.next(DEADLINE)
        assert answer.status == 200

    run_lab(tmp_path, certs, start_sipfed, scenario)


# -- row 4: responses belong to their hop ------------------------------------------------------------------


def test_a_forged_response_on_another_connection_is_dropped(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """The attacker knows the branch exactly (the best case for it) and writes a 200 on an anonymous TCP
    connection: dropped; the trusted peer gets the real answer."""

    async def scenario(lab: Lab) -> None:
        lab.cups.auto_answer = False
        conn = await lab.lync_conn()
        await conn.send(lab.lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
        request, cups_conn = await lab.cups.next(DEADLINE)
        forged = lab.cups.answer(request, 200, "OK")
        _, writer = await open_plain(lab.sipfed.ports["lab-tcp"])
        writer.write(forged.text().encode())
        await writer.drain()
        await metric_reaches(lab.sipfed, "sipfed_security_drops_total", 1, reason="response_off_flow")
        await cups_conn.send(lab.cups.answer(request, 486, "Busy Here"))
        answer, _ = await lab.lync.next(DEADLINE)
        assert answer.status == 486, "the forged 200 was taken"
        writer.close()

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_branches_are_not_predictable(tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    """RFC 3261 §8.1.1.7: two identical requests get branches that share nothing past the loop hash."""

    async def scenario(lab: Lab) -> None:
        conn = await lab.lync_conn()
        branches = []
        for _ in range(2):
            await conn.send(
                lab.lync.request(
                    "MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", call_id="same@tomt.it", cseq=1
                )
            )
            got, _ = await lab.cups.next(DEADLINE)
            await lab.lync.next(DEADLINE)
            match = re.search(r"branch=(z9hG4bKsf[0-9a-f]+)\.([0-9a-f]+)", got.get("via") or "")
            assert match is not None
            branches.append(match.group(2))
        assert len(branches[0]) >= 17
        assert branches[0][:16] != branches[1][:16]

    run_lab(tmp_path, certs, start_sipfed, scenario)


# -- row 5: RFC 5923 aliases only after admission, only over TLS ---------------------------------------


def test_alias_from_a_refused_sender_is_not_registered(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    async def scenario(lab: Lab) -> None:
        reader, writer = await open_plain(lab.sipfed.ports["lab-tcp"])
        writer.write(
            raw_request(
                "MESSAGE",
                "sip:alice@tomt.local",
                transport="TCP",
                sent_by=f"127.0.0.2:{lab.cups.port}",
                via_params=";alias",
            )
        )
        status, _, _ = await read_status(reader)
        assert status in (403, 407)
        conn = await lab.lync_conn()
        await conn.send(
            lab.lync.request(
                "MESSAGE",
                f"sip:alice@127.0.0.2:{lab.cups.port};transport=tcp",
                to="<sip:alice@tomt.local>;tag=d1",
                body="for cups only",
            )
        )
        got = await lab.first_at_cups()
        assert got.body == "for cups only"  # the one copy went to CUP over TLS, not down the attacker's connection
        answer, _ = await lab.lync.next(DEADLINE)
        assert answer.status == 200
        writer.close()

    run_lab(tmp_path, certs, start_sipfed, scenario)


# -- row 10: asserted identities ---------------------------------------------------------------------------


def test_an_identity_the_peer_may_not_assert_is_removed(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    async def scenario(lab: Lab) -> None:
        conn = await lab.lync_conn()
        await conn.send(
            lab.lync.request(
                "MESSAGE",
                "sip:alice@tomt.local",
                to="<sip:alice@tomt.local>",
                from_user="bob@tomt.it",
                extra=[
                    ("P-Asserted-Identity", "<sip:ceo@tomt.local>, <sip:bob@tomt.it>"),
                    ("P-Preferred-Identity", "<sip:ceo@tomt.local>"),
                ],
            )
        )
        got = await lab.first_at_cups()
        assert got.all("p-asserted-identity") == ["<sip:bob@tomt.it>"]
        assert got.all("p-preferred-identity") == []
        await lab.lync.next(DEADLINE)
        await metric_reaches(lab.sipfed, "sipfed_security_drops_total", 1, reason="identity_removed")

    run_lab(tmp_path, certs, start_sipfed, scenario)


# -- row 11: received is ours ----------------------------------------------------------------------------


def test_a_received_the_sender_wrote_does_not_steer_the_response(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    async def scenario(lab: Lab) -> None:
        lab.cups.auto_answer = False
        conn = await lab.lync_conn()
        request = lab.lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>")
        request.headers = [
            (
                k,
                f"SIP/2.0/TLS lync01.tomt.it:{lab.lync.port};branch=z9hG4bK{uuid.uuid4().hex[:10]}"
                ";received=127.0.22.99",
            )
            if k == "Via"
            else (k, v)
            for k, v in request.headers
        ]
        await conn.send(request)
        got, cups_conn = await lab.cups.next(DEADLINE)
        vias = got.all("via")
        assert "received=127.0.0.3" in vias[1], vias
        assert "127.0.22.99" not in vias[1], vias
        conn.close()
        await metric_equals(lab.sipfed, "sipfed_open_connections", 0, listener="lync")  # sipfed has seen the close
        await cups_conn.send(lab.cups.answer(got, 200, "OK"))
        answer, _ = await lab.lync.next(DEADLINE)  # on a new connection to the real source, 127.0.0.3
        assert answer.status == 200

    run_lab(tmp_path, certs, start_sipfed, scenario)


# -- row 14: no amplification over UDP ---------------------------------------------------------------------


def test_a_refused_udp_invite_is_answered_once(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """A spoofable UDP source's INVITE that is never ACKed: one answer back, not Timer G's dozen. Absence can
    only be watched over a window: 2.5 s covers Timer G's first three firings (0.5, 1.5, 3.5 s would be four)."""

    async def scenario(lab: Lab) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.9", 0))
        sock.settimeout(0.2)
        port = sock.getsockname()[1]
        try:
            data = raw_request("INVITE", "sip:alice@tomt.local", transport="UDP", sent_by=f"127.0.0.9:{port}")
            sock.sendto(data, ("127.0.0.1", lab.sipfed.ports["lab-udp"]))
            answers: list[bytes] = []
            window = time.monotonic() + 2.5
            while time.monotonic() < window:  # bounded by the window
                try:
                    answers.append(sock.recv(65535))
                except TimeoutError:
                    continue
            assert len(answers) == 1, [a.split(b"\r\n", 1)[0] for a in answers]
            assert answers[0].startswith(b"SIP/2.0 407") or answers[0].startswith(b"SIP/2.0 403")
            assert len(answers[0]) < 3 * len(data)
        finally:
            sock.close()

    run_lab(tmp_path, certs, start_sipfed, scenario)


# -- row 15: rate-limited warnings ------------------------------------------------------------------------


def test_an_unreachable_next_hop_is_warned_once_with_a_count(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.cups.stop()  # tomt.local's next hop goes away: every request now fails to connect
        conn = await lab.lync_conn()
        for _ in range(30):  # bounded
            await conn.send(lab.lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
            answer, _ = await lab.lync.next(DEADLINE)
            assert answer.status == 503
        await asyncio.to_thread(lab.sipfed.stop)  # the whole log: a second warning is not still in the pipe
        log = lab.sipfed.log_text()
        assert log.count(") unreachable: ") == 1, log

    run_lab(tmp_path, certs, start_sipfed, scenario)
