"""The real sipfed process between two stdlib-ssl SIP peers over mutual TLS on loopback.

'cups' (tomt.local, 127.0.0.2) and 'lync' (tomt.it, 127.0.0.3) are the two domains' servers;
sipfed listens on 127.0.0.1 with a 'cisco' and a 'lync' listener, as in examples/lab.toml.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port, lab_config
from tests.integration.metrics_scrape import metric_equals, metric_reaches
from tests.integration.waiting import async_wait_until
from tests.peers.sippeer import Msg, Peer

pytestmark = pytest.mark.integration

Scenario = Callable[[Sipfed, Peer, Peer], Awaitable[None]]


def run_lab(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed], scenario: Scenario, extra: str = ""
) -> Sipfed:
    """Start both peers and sipfed, run the scenario (bounded to 30 s), stop everything."""

    async def main() -> Sipfed:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        config = lab_config(tmp_path / "sipfed.toml", certs, cups_port=cups.port, lync_port=lync.port, extra=extra)
        sipfed = start_sipfed(config)
        try:
            await asyncio.wait_for(scenario(sipfed, cups, lync), 30)
        finally:
            await cups.stop()
            await lync.stop()
        return sipfed

    return asyncio.run(main())


async def lync_to_sipfed(sipfed: Sipfed, lync: Peer):  # type: ignore[no-untyped-def]
    return await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")


def test_message_both_ways(tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer) -> None:
        conn = await lync_to_sipfed(sipfed, lync)
        await conn.send(
            lync.request(
                "MESSAGE",
                "sip:alice@tomt.local",
                to="<sip:alice@tomt.local>",
                extra=[("Content-Type", "text/plain"), ("X-Lync-Thing", "kept ;as=is")],
                body="hello from tomt.it",
            )
        )
        got, _ = await cups.next()
        assert got.method == "MESSAGE"
        assert got.body == "hello from tomt.it"
        assert got.get("max-forwards") == "69"
        vias = got.all("via")
        assert len(vias) == 2
        assert vias[0].startswith("SIP/2.0/TLS sipfed.tomt.local:")
        assert re.search(r"branch=z9hG4bK", vias[0])
        assert got.get("x-lync-thing") == "kept ;as=is"
        assert got.get("record-route") is None  # MESSAGE does not create a dialog
        answer, _ = await lync.next()
        assert answer.status == 200
        assert len(answer.all("via")) == 1

        conn2 = await cups.connect("127.0.0.1", sipfed.ports["cisco"], "sipfed.tomt.local")
        await conn2.send(
            cups.request(
                "MESSAGE",
                "sip:bob@tomt.it",
                to="<sip:bob@tomt.it>",
                from_user="alice",
                extra=[("Content-Type", "text/plain")],
                body="hello from tomt.local",
            )
        )
        got, _ = await lync.next()
        assert (got.method, got.body) == ("MESSAGE", "hello from tomt.local")
        assert got.all("via")[0].startswith("SIP/2.0/TLS sipfed.tomt.it:")
        answer, _ = await cups.next()
        assert answer.status == 200

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_a_burst_in_one_write_is_relayed_whole_and_in_order(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """25 MESSAGEs in one TLS write: sipfed writes them on in batches as it relays them (PIPELINE_BATCH) and the
    rest when the read is done; every one arrives, in order, and every 200 comes back."""

    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer) -> None:
        conn = await lync_to_sipfed(sipfed, lync)
        burst = [
            lync.request(
                "MESSAGE",
                "sip:alice@tomt.local",
                to="<sip:alice@tomt.local>",
                call_id=f"burst-{i}",
                body=f"message {i}",
            )
            for i in range(25)
        ]
        conn.writer.write("".join(m.text() for m in burst).encode())
        await conn.writer.drain()
        got = [(await cups.next())[0] for _ in burst]
        assert [m.get("call-id") for m in got] == [f"burst-{i}" for i in range(25)]
        assert [m.body for m in got] == [f"message {i}" for i in range(25)]
        answers = [(await lync.next())[0] for _ in burst]
        assert sorted(a.get("call-id") or "" for a in answers) == sorted(f"burst-{i}" for i in range(25))
        assert {a.status for a in answers} == {200}

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_subscribe_notify_through_route_set(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """SUBSCRIBE tomt.it -> tomt.local; the NOTIFY comes back via sipfed's Record-Route; the
    cups side's own Record-Route maddr (127.0.0.2) is shown to tomt.it as cups.tomt.local and
    mapped back on the in-dialog un-SUBSCRIBE."""

    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer) -> None:
        cups.auto_answer = False
        conn = await lync_to_sipfed(sipfed, lync)
        lync_rr = f"<sip:127.0.0.3:{lync.port};transport=tls;lr;ms-fe=lync01.tomt.it;ms-role-rs-to>"
        await conn.send(
            lync.request(
                "SUBSCRIBE",
                "sip:alice@tomt.local",
                to="<sip:alice@tomt.local>",
                extra=[
                    ("Event", "presence"),
                    ("Expires", "600"),
                    ("Record-Route", lync_rr),
                    ("Accept", "application/pidf+xml"),
                ],
            )
        )
        subscribe, cups_conn = await cups.next()
        rr = subscribe.all("record-route")
        cisco, lyncside = sipfed.ports["cisco"], sipfed.ports["lync"]
        # RFC 5658 double Record-Route: top faces tomt.local, the next faces tomt.it.
        assert rr[0] == f"<sip:sipfed.tomt.local:{cisco};transport=tls;lr;maddr=sipfed.tomt.local>"
        assert rr[1] == f"<sip:sipfed.tomt.it:{lyncside};transport=tls;lr;maddr=sipfed.tomt.it>"
        assert rr[2] == lync_rr  # Lync's ms-* parameters pass untouched
        cups_rr = f"<sip:127.0.0.2:{cups.port};transport=tls;lr;maddr=127.0.0.2>"
        ok = cups.answer(subscribe, 200, "OK")
        ok.headers.insert(0, ("Record-Route", cups_rr))
        await cups_conn.send(ok)
        answer, _ = await lync.next()
        assert answer.status == 200
        answer_rr = answer.all("record-route")
        assert answer_rr[0] == f"<sip:127.0.0.2:{cups.port};transport=tls;lr;maddr=cups.tomt.local>"

        # The notifier sends NOTIFY along the route set (its own entry first, which it skips).
        notify = cups.in_dialog(
            "NOTIFY",
            ok,
            uas=True,
            cseq=1,
            request=subscribe,
            body="<presence>open</presence>",
            extra=[
                ("Event", "presence"),
                ("Subscription-State", "active;expires=600"),
                ("Content-Type", "application/pidf+xml"),
            ],
        )
        notify.headers = [h for h in notify.headers if not (h[0] == "Route" and "127.0.0.2" in h[1])]
        notify_conn = await cups.connect("127.0.0.1", cisco, "sipfed.tomt.local")
        await notify_conn.send(notify)
        got, _lync_conn = await lync.next()
        assert got.method == "NOTIFY"
        assert got.body == "<presence>open</presence>"
        assert got.all("route") == [lync_rr]  # sipfed popped both of its entries
        notify_ok, _ = await cups.next()
        assert notify_ok.status == 200

        # The subscriber ends the subscription in-dialog; sipfed maps maddr back to 127.0.0.2.
        unsubscribe = lync.in_dialog(
            "SUBSCRIBE", answer, uas=False, cseq=2, extra=[("Event", "presence"), ("Expires", "0")]
        )
        unsubscribe.headers = [h for h in unsubscribe.headers if not (h[0] == "Route" and h[1] == lync_rr)]
        await conn.send(unsubscribe)
        got, got_conn = await cups.next()
        assert got.method == "SUBSCRIBE"
        assert got.get("expires") == "0"
        assert got.all("route") == [f"<sip:127.0.0.2:{cups.port};transport=tls;lr;maddr=127.0.0.2>"]
        await got_conn.send(cups.answer(got, 200, "OK"))
        final, _ = await lync.next()
        assert final.status == 200

    run_lab(tmp_path, certs, start_sipfed, scenario)


@pytest.mark.parametrize(
    ("uri", "max_forwards", "extra", "status", "reason"),
    [
        ("sip:carol@nowhere.example", 70, [], 404, "no route for domain nowhere.example"),
        ("sip:alice@tomt.local", 0, [], 483, "Too Many Hops"),
        ("sip:alice@tomt.local", 70, [("Proxy-Require", "x-unknown")], 420, "Bad Extension"),
    ],
)
def test_refusals(
    tmp_path: Path,
    certs: Path,
    start_sipfed: Callable[[Path], Sipfed],
    uri: str,
    max_forwards: int,
    extra: list[tuple[str, str]],
    status: int,
    reason: str,
) -> None:
    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer) -> None:
        conn = await lync_to_sipfed(sipfed, lync)
        await conn.send(lync.request("MESSAGE", uri, to=f"<{uri}>", max_forwards=max_forwards, extra=extra))
        answer, _ = await lync.next()
        assert answer.status == status
        assert reason in answer.reason
        if status == 420:
            assert answer.get("unsupported") == "x-unknown"
        # Nothing was relayed: it would reach tomt.local before a MESSAGE sent after the answer on the same path.
        await conn.send(
            lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", body="after the refusal")
        )
        got, _ = await cups.next()
        assert got.body == "after the refusal"

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_tolerated_proxy_require_and_unknown_method(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer) -> None:
        conn = await lync_to_sipfed(sipfed, lync)
        await conn.send(
            lync.request(
                "BENOTIFY",
                "sip:alice@tomt.local",
                to="<sip:alice@tomt.local>",
                extra=[("Proxy-Require", "ms-benotify")],
            )
        )
        got, _ = await cups.next()
        assert got.method == "BENOTIFY"
        assert got.get("proxy-require") == "ms-benotify"

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_loop_detected(tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    """A route that points back at sipfed itself: the request returns with our Via -> 482."""
    cisco = free_port()
    extra = f"""
[[routes]]
name = "loop"
match_uri = "loop.test"
destination = "127.0.0.1"
port = {cisco}
tls_name = "sipfed.tomt.local"
listener = "cisco"
"""

    async def main() -> None:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        config = lab_config(
            tmp_path / "loop.toml", certs, cups_port=cups.port, lync_port=lync.port, extra=extra, cisco_port=cisco
        )
        sipfed = start_sipfed(config)
        conn = await lync_to_sipfed(sipfed, lync)
        await conn.send(lync.request("MESSAGE", "sip:x@loop.test", to="<sip:x@loop.test>"))
        answer, _ = await lync.next()
        assert (answer.status, answer.reason) == (482, "Loop Detected")

    asyncio.run(asyncio.wait_for(main(), 30))


def test_certificate_name_mismatch_is_refused_and_logged(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """The route expects cups.tomt.local but the server at the destination shows wrong.example."""

    async def main() -> Sipfed:
        impostor = Peer("wrong.example", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await impostor.start()
        await lync.start()
        config = lab_config(tmp_path / "mismatch.toml", certs, cups_port=impostor.port, lync_port=lync.port)
        sipfed = start_sipfed(config)
        conn = await lync_to_sipfed(sipfed, lync)
        await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
        answer, _ = await lync.next()
        assert answer.status == 503
        assert "certificate name mismatch" in answer.reason
        # sipfed gave up in the handshake (the 503 says so), so no TLS session ever carried a request to it.
        assert impostor.received.empty()
        return sipfed

    sipfed = asyncio.run(asyncio.wait_for(main(), 30))
    sipfed.wait_for_log(
        re.compile(
            r"next hop 127\.0\.0\.2:\d+;transport=tls \(route cisco\) unreachable: "
            r"certificate name mismatch: the route expects 'cups\.tomt\.local'"
        )
    )


def test_unreachable_next_hop_gives_503(tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    async def main() -> None:
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await lync.start()
        config = lab_config(tmp_path / "down.toml", certs, cups_port=free_port("127.0.0.2"), lync_port=lync.port)
        sipfed = start_sipfed(config)
        conn = await lync_to_sipfed(sipfed, lync)
        await conn.send(
            lync.request(
                "SUBSCRIBE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", extra=[("Event", "presence")]
            )
        )
        answer, _ = await lync.next()
        assert answer.status == 503
        assert "connection refused" in answer.reason

    asyncio.run(asyncio.wait_for(main(), 30))


def test_silent_next_hop_gives_408(tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer) -> None:
        cups.auto_answer = False  # cups takes the MESSAGE and never answers; the lab config waits 2 s
        conn = await lync_to_sipfed(sipfed, lync)
        await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
        await cups.next()
        answer, _ = await lync.next(timeout=6)
        assert answer.status == 408
        assert "no answer from 127.0.0.2" in answer.reason

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_response_opens_a_new_connection_when_the_senders_closed(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """RFC 3261 §18.2.2: the request's connection closed before the answer came; the response goes on a new
    TLS connection to the Via address (received IP, sent-by port), checked against the sender's certificate."""

    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer) -> None:
        cups.auto_answer = False
        conn = await lync_to_sipfed(sipfed, lync)
        await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", body="bye"))
        message, cups_conn = await cups.next()
        conn.close()
        await metric_equals(sipfed, "sipfed_open_connections", 0, listener="lync")  # sipfed has seen the close
        await cups_conn.send(cups.answer(message, 200, "OK"))
        try:
            answer, new_conn = await lync.next()
        except TimeoutError:
            raise AssertionError("no 200 on a new connection; sipfed's log:\n" + sipfed.log_text()) from None
        assert answer.status == 200
        assert new_conn is not conn
        await sipfed.async_wait_for_log("sent on a new connection to 127.0.0.3")

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_keepalive_options_and_client_certificate(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    """CRLFCRLF gets a CRLF pong (RFC 5626 §4.4.1); OPTIONS to sipfed itself gets 200; a TLS
    client without a certificate never gets to speak SIP on a mutual-TLS listener."""

    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer) -> None:
        conn = await lync_to_sipfed(sipfed, lync)
        conn.writer.write(b"\r\n\r\n")
        await async_wait_until(lambda: conn.pongs, 5, "a CRLF pong")
        await conn.send(
            lync.request(
                "OPTIONS", f"sip:sipfed.tomt.it:{sipfed.ports['lync']};transport=tls", to="<sip:sipfed.tomt.it>"
            )
        )
        answer, _ = await lync.next()
        assert answer.status == 200
        assert conn.pongs == 1  # one pong: a second one would have come before the answer on this connection
        assert "MESSAGE" in (answer.get("allow") or "")

        anonymous = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", sipfed.ports["lync"], ssl=anonymous, server_hostname="sipfed.tomt.it"
        )
        writer.write(Msg("OPTIONS sip:sipfed.tomt.it SIP/2.0", []).text().encode())
        try:
            data = await asyncio.wait_for(reader.read(100), 5)
        except (ssl.SSLError, ConnectionError):
            data = b""
        assert data == b""  # refused at the TLS layer: no SIP answer ever comes back

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_invite_im_session(tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    """INVITE-based IM: INVITE (100 from sipfed, 200 from the callee), ACK for the 2xx along the
    route set, an in-dialog MESSAGE and BYE, all through sipfed's Record-Route."""

    async def scenario(sipfed: Sipfed, cups: Peer, lync: Peer) -> None:
        conn = await lync_to_sipfed(sipfed, lync)
        await conn.send(
            lync.request(
                "INVITE",
                "sip:alice@tomt.local",
                to="<sip:alice@tomt.local>",
                extra=[("Content-Type", "application/sdp")],
                body="v=0\r\nm=message 0 TCP\r\n",
            )
        )
        trying, _ = await lync.next()
        assert trying.status == 100
        invite, _ = await cups.next()
        assert invite.method == "INVITE"
        assert len(invite.all("record-route")) == 2
        ok, _ = await lync.next()
        assert ok.status == 200
        assert ok.get("contact") == cups.contact("alice")
        for cseq, method in ((1, "ACK"), (2, "MESSAGE"), (3, "BYE")):
            await conn.send(
                lync.in_dialog(
                    method,
                    ok,
                    uas=False,
                    cseq=cseq if method != "ACK" else 1,
                    body="in-dialog" if method == "MESSAGE" else "",
                )
            )
            got, _ = await cups.next()
            assert got.method == method
            assert got.uri == cups.contact("alice").strip("<>")
            assert got.all("route") == []  # sipfed popped its own two entries
            if method != "ACK":
                answer, _ = await lync.next()
                assert answer.status == 200

    run_lab(tmp_path, certs, start_sipfed, scenario)


def test_tcp_listeners(tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]) -> None:
    """The same relay over plain TCP listeners and routes, for labs."""

    async def main() -> None:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs, transport="tcp")
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs, transport="tcp")
        await cups.start()
        await lync.start()
        config = lab_config(tmp_path / "tcp.toml", certs, cups_port=cups.port, lync_port=lync.port, transport="tcp")
        sipfed = start_sipfed(config)
        conn = await lync.connect("127.0.0.1", sipfed.ports["lync"], "sipfed.tomt.it")
        await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>", body="tcp"))
        got, _ = await cups.next()
        assert got.all("via")[0].startswith("SIP/2.0/TCP sipfed.tomt.local:")
        answer, _ = await lync.next()
        assert answer.status == 200

    asyncio.run(asyncio.wait_for(main(), 30))


def test_trace_file_and_json_logs(tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]) -> None:
    """--trace writes every message whole; --log-format json gives one object per event with the Call-ID."""
    trace = tmp_path / "sip.trace"

    async def main() -> Sipfed:
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await lync.start()
        config = lab_config(tmp_path / "trace.toml", certs, cups_port=free_port("127.0.0.2"), lync_port=lync.port)
        sipfed = start_sipfed(config, "--trace", str(trace), "--log-format", "json")
        conn = await lync_to_sipfed(sipfed, lync)
        await conn.send(
            lync.request("MESSAGE", "sip:x@nowhere.example", to="<sip:x@nowhere.example>", call_id="trace-call-1")
        )
        answer, _ = await lync.next()
        assert answer.status == 404
        return sipfed

    sipfed = asyncio.run(asyncio.wait_for(main(), 30))
    text = trace.read_text()
    assert re.search(r"RECV tls 127\.0\.0\.3:\d+ -> lync\nMESSAGE sip:x@nowhere\.example SIP/2\.0\r?\n", text)
    assert re.search(r"SEND tls 127\.0\.0\.3:\d+ <- lync\nSIP/2\.0 404 ", text)
    log = sipfed.wait_for_log("trace-call-1")
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    refused = [e for e in events if e.get("call_id") == "trace-call-1"]
    assert refused, sipfed.log_text()
    assert refused[0]["peer"] == "none"
    assert "404" in refused[0]["msg"]


def test_sighup_reload_and_sigterm_drain(tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]) -> None:
    """SIGHUP applies a new route; a broken file is refused and the running config stays;
    SIGTERM lets the transaction in flight finish, then sipfed exits 0."""

    async def main() -> Sipfed:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        path = lab_config(tmp_path / "reload.toml", certs, cups_port=cups.port, lync_port=lync.port)
        sipfed = start_sipfed(path)
        conn = await lync_to_sipfed(sipfed, lync)

        async def message(domain: str) -> int:
            await conn.send(lync.request("MESSAGE", f"sip:x@{domain}", to=f"<sip:x@{domain}>"))
            answer, _ = await lync.next()
            return answer.status

        assert await message("partner.example") == 404
        good = path.read_text()
        path.write_text(
            good + '\n[[routes]]\nname = "partner"\nmatch_uri = "partner.example"\n'
            f'destination = "127.0.0.2"\nport = {cups.port}\ntls_name = "cups.tomt.local"\n'
        )
        sipfed.proc.send_signal(signal.SIGHUP)
        await metric_reaches(sipfed, "sipfed_config_reloads_total", 1, outcome="applied")
        assert await message("partner.example") == 200
        await cups.next()
        path.write_text(good + "\n[[routes]]\nmatch_uri = 'broken'\nport = 70000\n")
        sipfed.proc.send_signal(signal.SIGHUP)
        await metric_reaches(sipfed, "sipfed_config_reloads_total", 1, outcome="refused")
        assert await message("partner.example") == 200  # the running config stayed
        await cups.next()

        cups.auto_answer = False
        await conn.send(lync.request("MESSAGE", "sip:alice@tomt.local", to="<sip:alice@tomt.local>"))
        held, held_conn = await cups.next()
        sipfed.proc.send_signal(signal.SIGTERM)
        await sipfed.async_wait_for_log("stopping: draining transactions in flight")
        assert sipfed.proc.poll() is None  # still draining: the held transaction is in flight
        await held_conn.send(cups.answer(held, 200, "OK"))
        answer, _ = await lync.next()
        assert answer.status == 200
        return sipfed

    sipfed = asyncio.run(asyncio.wait_for(main(), 30))
    assert sipfed.proc.wait(10) == 0
    log = sipfed.wait_for_log("routes[2].port: 70000")
    assert "reloaded" in log
    assert "reload refused, the running config stays" in log
    assert "routes[2].port: 70000" in log


def test_pool_failover_within_the_transaction(tmp_path: Path, certs: Path, start_sipfed: Callable[..., Sipfed]) -> None:
    """A route to a pool (RFC 2782 priorities): the preferred member refuses, the request is retried on
    the next one in the same transaction (RFC 3263 §4.3), and the failed member stays marked down."""

    async def main() -> Sipfed:
        cups = Peer("cups.tomt.local", "127.0.0.2", certs)
        lync = Peer("lync01.tomt.it", "127.0.0.3", certs)
        await cups.start()
        await lync.start()
        dead = free_port("127.0.0.4")
        config = lab_config(
            tmp_path / "pool.toml",
            certs,
            cups_port=cups.port,
            lync_port=lync.port,
            extra=f"""
[[routes]]
name = "pool"
match_uri = "pool.tomt.local"
tls_name = "cups.tomt.local"
listener = "cisco"
down_seconds = 60
destinations = [
    {{ host = "127.0.0.4", port = {dead}, priority = 10 }},
    {{ host = "127.0.0.2", port = {cups.port}, priority = 20 }},
]
""",
        )
        sipfed = start_sipfed(config)
        conn = await lync_to_sipfed(sipfed, lync)
        for i in range(2):
            await conn.send(
                lync.request("MESSAGE", "sip:alice@pool.tomt.local", to="<sip:alice@pool.tomt.local>", body=f"pool {i}")
            )
            got, _ = await cups.next()
            assert got.body == f"pool {i}"
            answer, _ = await lync.next()
            assert answer.status == 200
        return sipfed

    sipfed = asyncio.run(asyncio.wait_for(main(), 30))
    sipfed.stop()  # the whole log: the failed member must show once, not again for the second MESSAGE
    log = sipfed.log_text()
    assert len(re.findall(r"route pool: candidate tls:127\.0\.0\.4:\d+ failed \(connection refused", log)) == 1, log
    assert "marked down for 60 s" in log
