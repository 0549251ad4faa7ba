"""ms-diagnostics-public ([MS-OCER] §2.2.1.2) on sipfed's own error responses to a Microsoft peer, from the table
alone and through the sans-IO core: which answers get it, which code, and that nothing internal crosses."""

from __future__ import annotations

import re

import pytest

from acl.config import parse_trust
from acl.peers import Trust, TrustedPeer
from acl.subjects import CertIdentity, parse_subject
from proxy.relay.core import Proxy, RelaySettings
from proxy.relay.forwarding import RelayPolicy
from proxy.relay.ms_diagnostics import FALLBACK_ID, HEADER, TABLE, ms_diagnostics_public
from proxy.relay.types import Flow, Identity, Output, SendOnFlow, SendToHop
from proxy.sip.message import Response, parse_message
from routes import RouteTable, StaticRoute

LYNC_IN = Flow("tls", "lync", ("127.0.0.3", 40001), 1, CertIdentity(dns_names=("lync01.tomt.it",)), "lync")
CUPS_IN = Flow("tls", "cisco", ("127.0.0.2", 40002), 3, CertIdentity(dns_names=("cups.tomt.local",)), "cups")
ROUTES = RouteTable(
    [
        StaticRoute("cisco", "tomt.local", "10.1.1.5", 5062, "tls", "cups.tomt.local", "cisco"),
        StaticRoute("lync", "tomt.it", "10.2.2.7", 5061, "tls", "lync01.tomt.it", "lync"),
    ]
)
#: ErrorId ; reason="..." and nothing else: no source parameter (§2.2.1.2 forbids it).
SHAPE = re.compile(r'\d+;reason="[^"\\]*"')


def make_proxy(*, microsoft: bool = True) -> Proxy:
    identities = [
        Identity("cisco", "tls", "127.0.0.1", 5071, "sipfed.tomt.local", "sipfed.tomt.local", "refuse"),
        Identity("lync", "tls", "127.0.0.1", 5072, "sipfed.tomt.it", "sipfed.tomt.it", "refuse"),
    ]
    trust = Trust(
        peers=(
            TrustedPeer(
                "lync",
                (parse_subject("lync01.tomt.it"),),
                domains=("tomt.it",),
                answers_digest=False,
                microsoft=microsoft,
            ),
            TrustedPeer("cups", (parse_subject("cups.tomt.local"),), domains=("tomt.local",)),
        )
    )
    return Proxy(
        RelayPolicy.build(identities, ROUTES, {}, frozenset()), RelaySettings(transaction_timeout_seconds=2), trust
    )


def request(uri: str = "sip:alice@tomt.local", *, from_host: str = "tomt.it", method: str = "MESSAGE") -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bKms1",
        f"From: <sip:bob@{from_host}>;tag=f1",
        f"To: <{uri}>",
        "Call-ID: ms1@tomt.it",
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def replies(outputs: list[Output], flow: Flow = LYNC_IN) -> list[Response]:
    out = []
    for output in outputs:
        if isinstance(output, SendOnFlow) and output.flow == flow:
            message = parse_message(output.data)
            assert isinstance(message, Response)
            out.append(message)
    return out


def final(px: Proxy, data: bytes, flow: Flow = LYNC_IN, now: float = 0.0) -> Response:
    px.receive(flow, data, now)
    answers = [r for r in replies(px.take_outputs(), flow) if r.status >= 200]
    assert len(answers) == 1, answers
    return answers[0]


def diagnostics(response: Response) -> list[str]:
    return [value for key, _, value in response.headers.items if key == HEADER]


# -- the table ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "error_id"),
    [
        (404, "Not Found (no route for domain nowhere.example)", 1005),
        (503, "Service Unavailable (connection refused (nothing listens there))", 1007),
        (503, "Service Unavailable (no candidate of route pool answered: tls:10.1.1.5:5062: connect timed out)", 1007),
        (503, "Service Unavailable (certificate name mismatch: the route expects 'cups.tomt.local' but …)", 1010),
        (503, "Service Unavailable (TLS handshake failed: WRONG_VERSION_NUMBER)", 1010),
        (503, "Service Unavailable (sipfed is shutting down)", 52003),
        (503, "Service Unavailable (overloaded: 10000 transactions in flight)", 52002),
        (503, "Service Unavailable (rate limit for peer lync)", 52002),
        (408, "Request Timeout (no answer from 10.1.1.5 in 16 s)", 52001),
        (403, "Forbidden (peer lync may not speak for domain evil.example)", 52010),
        (403, "Forbidden (next hop 10.9.9.9:5061 is not a configured destination)", 52011),
        (403, "Forbidden (next hop demanded digest authentication the sender cannot answer: realm x)", 52012),
        (403, "Forbidden (not a trusted peer, not exempt, no credentials)", 52013),
        (404, "Not Found (request addressed to the proxy itself)", 52014),
        (482, "Loop Detected", FALLBACK_ID),
    ],
)
def test_each_answer_gets_its_code_and_a_fixed_reason(status: int, reason: str, error_id: int) -> None:
    ((name, value),) = ms_diagnostics_public(status, reason)
    assert name == "ms-diagnostics-public"
    assert SHAPE.fullmatch(value), value
    assert value.startswith(f"{error_id};")
    assert "source=" not in value
    assert not re.search(r"\d+\.\d+\.\d+\.\d+|lync|cups|pool|realm", value.split(";", 1)[1]), value


def test_the_fallback_keeps_the_status_phrase_without_sipfeds_detail() -> None:
    assert ms_diagnostics_public(420, "Bad Extension") == ((HEADER, f'{FALLBACK_ID};reason="Bad Extension"'),)
    assert ms_diagnostics_public(400, 'Bad Request (malformed header line "X: \\"10.0.0.1")') == (
        (HEADER, f'{FALLBACK_ID};reason="Bad Request"'),
    )


@pytest.mark.parametrize("status", [100, 180, 200, 302, 487])
def test_no_header_on_success_progress_or_a_cancelled_invite(status: int) -> None:
    assert ms_diagnostics_public(status, "Request Terminated") == ()


def test_every_row_is_documented_with_a_quotable_reason() -> None:
    ids = [row.error_id for row in TABLE]
    assert len(ids) == len(set(ids))
    for row in TABLE:
        assert '"' not in row.reason
        assert "\\" not in row.reason
        assert row.error_id in range(1000, 2000) or row.error_id in range(52000, 52100)


# -- through the core ------------------------------------------------------------------------------


def test_no_route_to_the_microsoft_peer_carries_1005() -> None:
    answer = final(make_proxy(), request("sip:carol@nowhere.example"))
    assert answer.status == 404
    assert diagnostics(answer) == ['1005;reason="Cannot route to destination domain"']


def test_a_domain_the_peer_may_not_speak_for_carries_52010() -> None:
    answer = final(make_proxy(), request(from_host="evil.example"))
    assert answer.status == 403
    assert diagnostics(answer) == ['52010;reason="The sending server may not send requests for this From domain"']


def test_an_unreachable_next_hop_carries_1007_without_its_address() -> None:
    px = make_proxy()
    px.receive(LYNC_IN, request(), 0.0)
    (send,) = [o for o in px.take_outputs() if isinstance(o, SendToHop)]
    px.hop_failed(send.token, "connection refused (nothing listens there)", 0.1, "connect_refused")
    (answer,) = replies(px.take_outputs())
    assert answer.status == 503
    assert diagnostics(answer) == ['1007;reason="Temporarily cannot route"']


def test_a_silent_next_hop_carries_52001_while_the_reason_phrase_names_it() -> None:
    px = make_proxy()
    px.receive(LYNC_IN, request(), 0.0)
    px.take_outputs()
    px.handle_timer(2.0)
    (answer,) = [r for r in replies(px.take_outputs()) if r.status >= 200]
    assert answer.status == 408
    assert "10.1.1.5" in answer.reason  # sipfed's reason phrase is unchanged ...
    assert diagnostics(answer) == ['52001;reason="The next hop did not answer in time"']  # ... the header is not it


def test_the_drain_refusal_carries_52003() -> None:
    px = make_proxy()
    px.start_drain()
    answer = final(px, request())
    assert answer.status == 503
    assert diagnostics(answer) == ['52003;reason="The federation proxy is shutting down; retry later"']


def test_a_peer_not_marked_microsoft_gets_none() -> None:
    assert diagnostics(final(make_proxy(microsoft=False), request("sip:carol@nowhere.example"))) == []
    cups = request("sip:carol@nowhere.example", from_host="tomt.local").replace(b"lync01.tomt.it", b"cups.tomt.local")
    assert diagnostics(final(make_proxy(), cups, CUPS_IN)) == []


def test_the_100_trying_and_the_options_200_get_none() -> None:
    px = make_proxy()
    px.receive(LYNC_IN, request(method="INVITE"), 0.0)
    (trying,) = replies(px.take_outputs())
    assert trying.status == 100
    assert diagnostics(trying) == []
    ours = final(make_proxy(), request("sip:sipfed.tomt.it:5072", method="OPTIONS"))
    assert ours.status == 200
    assert diagnostics(ours) == []


# -- configuration ---------------------------------------------------------------------------------


def test_peers_microsoft_key_is_read_and_checked() -> None:
    problems: list[str] = []
    trust = parse_trust(
        {
            "peers": [
                {"name": "lync", "subjects": ["lync01.tomt.it"], "microsoft": True},
                {"name": "cups", "subjects": ["cups.tomt.local"]},
            ]
        },
        problems,
        [],
        set(),
    )
    assert problems == []
    assert [p.microsoft for p in trust.peers] == [True, False]
    parse_trust({"peers": [{"name": "lync", "subjects": ["lync01.tomt.it"], "microsoft": "yes"}]}, problems, [], set())
    assert problems == ["peers[0].microsoft: must be true or false"]
