"""The transaction-stateful proxy core (RFC 3261 §16, §17) driven with bytes and hand-made time."""

import gc
import ipaddress
from dataclasses import replace

import pytest

from proxy.relay.core import RelaySettings, hop_for_uri
from proxy.relay.forwarding import reply_hop
from proxy.relay.types import NextHop, RegisterAlias, SendOnFlow, SendToHop
from proxy.sip.errors import SipError
from proxy.sip.message import parse_message
from proxy.sip.transaction import DeadlineQueue, TimerQueue
from proxy.sip.uri import parse_uri
from routes import StaticRoute
from tests.corpus import CORPUS
from tests.unit.relay_harness import (
    CISCO_IN,
    CISCO_OUT,
    LYNC_IN,
    TO_CUPS,
    UDP_IN,
    UDP_OUT,
    answer,
    forwarded,
    hops,
    make_proxy,
    only_reply,
    replies,
    request,
    send,
)

RR_CISCO = "<sip:sipfed.tomt.local:5071;transport=tls;lr;maddr=sipfed.tomt.local>"
RR_LYNC = "<sip:sipfed.tomt.it:5072;transport=tls;lr;maddr=sipfed.tomt.it>"
LYNC_POOL_RR = "<sip:lyncpool.tomt.it:5061;transport=tls;opaque=state:T:F:Ci.R5d00;lr;ms-route-sig=aaGzpPFm3nD>"
CUPS_RR_INTERNAL = "<sip:cups.tomt.local:5062;transport=tls;lr;maddr=127.0.0.2>"
CUPS_RR_EXTERNAL = "<sip:cups.tomt.local:5062;transport=tls;lr;maddr=cups.tomt.local>"


# -- forwarding (§16.6) -----------------------------------------------------------------------


def test_message_forwarded_with_one_via_and_decremented_max_forwards() -> None:
    px = make_proxy()
    sent = request(headers=("X-Lync-Thing: a;b,,c", "Content-Type: text/plain"), body=b"hello \xe2\x9c\x93")
    outputs = send(px, sent)
    assert replies(outputs, LYNC_IN) == []  # no 100 Trying for a non-INVITE (§16.2)
    hop, fwd = forwarded(outputs)
    assert hop.hop == TO_CUPS
    original = parse_message(sent)
    vias = fwd.headers.get_all("via")
    assert len(vias) == 2
    top = fwd.vias[0]
    assert (top.transport, top.host, top.port) == ("TLS", "sipfed.tomt.local", 5071)
    assert top.branch is not None
    assert top.branch.startswith("z9hG4bK")
    assert vias[1].startswith(original.headers.get("via") or "")  # ;received= may be added (§18.2.1)
    assert fwd.headers.get("max-forwards") == "69"
    assert fwd.uri == "sip:alice@tomt.local"
    assert fwd.body == b"hello \xe2\x9c\x93"
    assert fwd.headers.get("x-lync-thing") == "a;b,,c"
    assert "record-route" not in fwd.headers  # MESSAGE creates no dialog


def test_absent_max_forwards_becomes_70() -> None:
    _, fwd = forwarded(send(make_proxy(), request(max_forwards=None)))
    assert fwd.headers.get("max-forwards") == "70"


def test_200_goes_back_on_inbound_flow_without_our_via() -> None:
    px = make_proxy()
    hop, fwd = forwarded(send(px, request()))
    response = only_reply(send(px, answer(hop.data, 200, "OK"), CISCO_OUT))
    assert response.status == 200
    assert response.headers.get_all("via") == fwd.headers.get_all("via")[1:]
    assert response.to.param("tag") == "cup1"


def test_unknown_method_forwarded() -> None:
    hop, fwd = forwarded(send(make_proxy(), request("BENOTIFY", headers=("Event: presence",))))
    assert fwd.method == "BENOTIFY"
    assert fwd.cseq == (1, "BENOTIFY")
    assert hop.hop == TO_CUPS


# -- Record-Route (§16.6 step 4, RFC 5658) and maddr rewrite ------------------------------------


def test_subscribe_across_listeners_gets_two_record_routes() -> None:
    _, fwd = forwarded(send(make_proxy(), request("SUBSCRIBE", headers=(f"Record-Route: {LYNC_POOL_RR}",))))
    assert fwd.headers.get_all("record-route") == [RR_CISCO, RR_LYNC, LYNC_POOL_RR]


def test_subscribe_on_same_listener_gets_one_record_route() -> None:
    hop, fwd = forwarded(send(make_proxy(), request("SUBSCRIBE", "sip:x@same.example")))
    assert hop.hop.listener == "lync"
    assert fwd.headers.get_all("record-route") == [RR_LYNC]


def test_peer_record_route_maddr_rewritten_in_request() -> None:
    sent = request(
        "SUBSCRIBE",
        "sip:bob@tomt.it",
        headers=(f"Record-Route: {CUPS_RR_INTERNAL}",),
        via="SIP/2.0/TLS cups.tomt.local:5062",
    )
    hop, fwd = forwarded(send(make_proxy(), sent, CISCO_IN))
    assert hop.hop.host == "127.0.0.3"
    assert fwd.headers.get_all("record-route") == [RR_LYNC, RR_CISCO, CUPS_RR_EXTERNAL]


def test_record_route_in_200_rewritten_and_ms_params_kept() -> None:
    px = make_proxy()
    hop, fwd = forwarded(send(px, request("SUBSCRIBE", headers=(f"Record-Route: {LYNC_POOL_RR}",))))
    assert LYNC_POOL_RR in fwd.headers.get_all("record-route")
    rrs = (CUPS_RR_INTERNAL, *fwd.headers.get_all("record-route"))
    ok = answer(hop.data, 200, "OK", headers=tuple(f"Record-Route: {v}" for v in rrs))
    response = only_reply(send(px, ok, CISCO_OUT))
    assert response.headers.get_all("record-route") == [CUPS_RR_EXTERNAL, RR_CISCO, RR_LYNC, LYNC_POOL_RR]


def test_in_dialog_route_maddr_reversed_to_internal() -> None:
    routes = (f"Route: {RR_LYNC}", f"Route: {RR_CISCO}", f"Route: {CUPS_RR_EXTERNAL}")
    sent = request("NOTIFY", "sip:alice@10.1.1.1:5061;transport=tls", headers=routes, to_tag="cup1")
    hop, fwd = forwarded(send(make_proxy(), sent))
    assert fwd.headers.get_all("route") == [CUPS_RR_INTERNAL]
    assert (hop.hop.host, hop.hop.port, hop.hop.transport, hop.hop.listener) == ("127.0.0.2", 5062, "tls", "cisco")
    assert fwd.uri == "sip:alice@10.1.1.1:5061;transport=tls"


@pytest.mark.parametrize(
    "ours",
    [
        "<sip:sipfed.tomt.local:5071;transport=tls;lr>",  # by FQDN
        "<sip:cups-facing.example;transport=tls;lr;maddr=sipfed.tomt.local>",  # by maddr
        "<sip:127.0.0.1:5071;transport=tls;lr>",  # by IP address and port
    ],
)
@pytest.mark.parametrize("next_route", [None, "<sip:lyncpool.tomt.it:5061;transport=tls;lr;ms-route-sig=xy>"])
def test_in_dialog_notify_pops_our_routes(ours: str, next_route: str | None) -> None:
    routes = (f"Route: {ours}", f"Route: {RR_LYNC}", *([f"Route: {next_route}"] if next_route else []))
    sent = request(
        "NOTIFY",
        "sip:bob@127.0.0.3:5061;transport=tls",
        headers=(*routes, "Event: presence"),
        to_tag="lync9",
        via="SIP/2.0/TLS cups.tomt.local:5062",
    )
    hop, fwd = forwarded(send(make_proxy(), sent, CISCO_IN))
    assert fwd.uri == "sip:bob@127.0.0.3:5061;transport=tls"
    if next_route:
        assert fwd.headers.get_all("route") == [next_route]
        assert (hop.hop.host, hop.hop.port, hop.hop.transport) == ("lyncpool.tomt.it", 5061, "tls")
    else:
        assert "route" not in fwd.headers
        assert (hop.hop.host, hop.hop.port, hop.hop.transport) == ("127.0.0.3", 5061, "tls")


# -- requests refused (§16.3) ----------------------------------------------------------------


def test_no_route_is_404_naming_the_domain() -> None:
    response = only_reply(send(make_proxy(), request(uri="sip:carol@unknown.example")))
    assert response.status == 404
    assert "unknown.example" in response.reason


def test_max_forwards_zero_is_483() -> None:
    assert only_reply(send(make_proxy(), request(max_forwards="0"))).status == 483


def test_proxy_require_unknown_is_420_with_unsupported() -> None:
    response = only_reply(send(make_proxy(), request(headers=("Proxy-Require: foo, ms-benotify",))))
    assert response.status == 420
    assert response.headers.get("unsupported") == "foo"


def test_proxy_require_tolerated_tag_is_forwarded() -> None:
    _, fwd = forwarded(send(make_proxy(), request("BENOTIFY", headers=("Proxy-Require: ms-benotify",))))
    assert fwd.headers.get("proxy-require") == "ms-benotify"


@pytest.mark.parametrize("uri", ["tel:+15551234567", "nope:anything"])
def test_non_sip_request_uri_is_416(uri: str) -> None:
    assert only_reply(send(make_proxy(), request(uri=uri))).status == 416


def test_request_coming_back_unchanged_is_482() -> None:
    px = make_proxy()
    hop, _ = forwarded(send(px, request()))
    assert only_reply(send(px, hop.data, CISCO_IN), CISCO_IN).status == 482
    spiral = hop.data.replace(b"MESSAGE sip:alice@tomt.local", b"MESSAGE sip:bob@tomt.it", 1)
    again, _ = forwarded(send(px, spiral, CISCO_IN))  # §16.3 step 4: a changed Request-URI is a spiral
    assert again.hop.host == "127.0.0.3"


def test_malformed_request_answered_400() -> None:
    response = only_reply(send(make_proxy(), request(cseq="one MESSAGE")))
    assert response.status == 400
    assert response.headers.get("via") is not None
    assert response.headers.get("call-id") == "call1@tomt.it"


@pytest.mark.parametrize(
    "data",
    [
        b"SIP/2.0 200 OK\r\nVia: garbage\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS h;branch=z9hG4bKx\r\nCSeq: x\r\nContent-Length: 0\r\n\r\n",
        b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        (CORPUS / "scalarlg.dat").read_bytes(),
    ],
)
def test_malformed_response_dropped(data: bytes) -> None:
    assert send(make_proxy(), data, CISCO_OUT) == []


def test_options_to_the_proxy_answered_locally() -> None:
    px = make_proxy()
    for n, uri in enumerate(
        ["sip:sipfed.tomt.local:5071;transport=tls", "sip:127.0.0.1:5072;transport=tls", "sip:sipfed.tomt.it"]
    ):
        response = only_reply(send(px, request("OPTIONS", uri, branch=f"z9hG4bKopt{n}"), CISCO_IN), CISCO_IN)
        assert response.status == 200
        assert "MESSAGE" in (response.headers.get("allow") or "")


def test_options_to_the_proxy_answered_locally_despite_wildcard_route() -> None:
    """§16.4/§16.5: a Request-URI naming this proxy is ours, even when a route covers its domain."""
    px = make_proxy(StaticRoute("wild", "*.tomt.local", "127.0.0.2", 5062, "tls", "cups.tomt.local", "cisco"))
    response = only_reply(send(px, request("OPTIONS", "sip:sipfed.tomt.local:5071;transport=tls"), CISCO_IN), CISCO_IN)
    assert response.status == 200


# -- responses (§16.7) -----------------------------------------------------------------------


def test_503_from_next_hop_forwarded_as_500() -> None:
    px = make_proxy()
    hop, _ = forwarded(send(px, request()))
    assert only_reply(send(px, answer(hop.data, 503, "Service Unavailable"), CISCO_OUT)).status == 500


def test_next_hop_silent_is_408_after_16_seconds_not_before() -> None:
    px = make_proxy()
    hop, _ = forwarded(send(px, request()))
    assert px.get_timer() == 16.0
    px.handle_timer(15.99)
    assert px.take_outputs() == []
    px.handle_timer(16.0)
    assert only_reply(px.take_outputs()).status == 408
    assert send(px, answer(hop.data, 200, "OK"), CISCO_OUT, 17.0) == []  # too late: no second final


def test_timeouts_fire_in_deadline_order_when_the_setting_shrinks() -> None:
    """Non-INVITE timeouts share one queue in deadline order; a reload that shortens the timeout puts an
    earlier deadline behind later ones, which must still fire first, and an answered request never does."""
    px = make_proxy()
    first, _ = forwarded(send(px, request(branch="z9hG4bKa"), now=0.0))
    forwarded(send(px, request(branch="z9hG4bKb"), now=1.0))
    answered, _ = forwarded(send(px, request(branch="z9hG4bKc"), now=1.5))
    px.configure(RelaySettings(transaction_timeout_seconds=2, invite_timeout_seconds=180))
    forwarded(send(px, request(branch="z9hG4bKd"), now=2.0))  # deadline 4.0, before 16.0 and 17.0
    assert only_reply(send(px, answer(answered.data, 200, "OK"), CISCO_OUT, 3.0)).status == 200
    assert px.get_timer() == 4.0
    px.handle_timer(4.0)
    assert [r.headers.get("via") for r in replies(px.take_outputs(), LYNC_IN) if r.status == 408] == [
        "SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bKd;received=127.0.0.3"
    ]
    assert px.get_timer() == 16.0
    px.handle_timer(16.0)
    assert [r.status for r in replies(px.take_outputs(), LYNC_IN)] == [408]
    assert px.get_timer() == 17.0  # the answered request's deadline (17.5) never comes up
    px.handle_timer(17.0)
    assert [r.status for r in replies(px.take_outputs(), LYNC_IN)] == [408]
    assert px.get_timer() is None
    assert send(px, answer(first.data, 200, "OK"), CISCO_OUT, 18.0) == []


def test_hop_failed_is_503_with_reason() -> None:
    px = make_proxy()
    hop, _ = forwarded(send(px, request()))
    px.hop_failed(hop.token, "connection refused", 1.0)
    response = only_reply(px.take_outputs())
    assert response.status == 503
    assert "connection refused" in response.reason
    px.handle_timer(20.0)
    assert px.take_outputs() == []


# -- INVITE and CANCEL (§16.2, §16.10, §17.1.1.3) ---------------------------------------------


def test_invite_gets_100_trying_at_once() -> None:
    outputs = send(make_proxy(), request("INVITE", body=b"v=0\r\n", headers=("Content-Type: application/sdp",)))
    assert isinstance(outputs[0], SendOnFlow)
    trying = replies(outputs, LYNC_IN)
    assert [(r.status, r.reason) for r in trying] == [(100, "Trying")]
    _, fwd = forwarded(outputs)
    assert fwd.body == b"v=0\r\n"


def test_invite_non_2xx_final_is_acked_downstream_and_forwarded() -> None:
    px = make_proxy()
    hop, fwd = forwarded(send(px, request("INVITE")))
    outputs = send(px, answer(hop.data, 486, "Busy Here"), CISCO_OUT)
    ack_send, ack = forwarded(outputs)
    assert ack_send.hop == TO_CUPS
    assert ack.method == "ACK"
    assert ack.uri == fwd.uri
    assert ack.top_via.branch == fwd.top_via.branch
    assert ack.cseq == (1, "ACK")
    assert ack.to.param("tag") == "cup1"
    assert [r.status for r in replies(outputs, LYNC_IN)] == [486]
    upstream_ack = request("ACK", cseq="1 ACK", to_tag="cup1")  # same branch as the INVITE (§17.1.1.3)
    assert send(px, upstream_ack) == []  # the ACK for our forwarded non-2xx is absorbed (§16.7)


def test_cancel_before_provisional_waits_for_180() -> None:
    px = make_proxy()
    invite_hop, invite = forwarded(send(px, request("INVITE")))
    outputs = send(px, request("CANCEL", cseq="1 CANCEL"))
    assert [(r.status, r.cseq) for r in replies(outputs, LYNC_IN)] == [(200, (1, "CANCEL"))]
    assert hops(outputs) == []  # §9.1: no CANCEL before a provisional response
    outputs = send(px, answer(invite_hop.data, 180, "Ringing"), CISCO_OUT)
    assert [r.status for r in replies(outputs, LYNC_IN)] == [180]
    cancel_hop, cancel = forwarded(outputs)
    assert cancel.method == "CANCEL"
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.cseq == (1, "CANCEL")
    assert send(px, answer(cancel_hop.data, 200, "OK"), CISCO_OUT) == []
    outputs = send(px, answer(invite_hop.data, 487, "Request Terminated"), CISCO_OUT)
    assert forwarded(outputs)[1].method == "ACK"
    assert [r.status for r in replies(outputs, LYNC_IN)] == [487]


# -- retransmissions (§17) ----------------------------------------------------------------------


def test_retransmitted_invite_gets_last_response_again() -> None:
    px = make_proxy()
    first = send(px, request("INVITE"))
    again = send(px, request("INVITE"), now=0.5)
    assert hops(again) == []
    assert again == [o for o in first if isinstance(o, SendOnFlow)]


def test_retransmitted_udp_request_absorbed_then_answered_with_last_response() -> None:
    px = make_proxy()
    sent = request(via="SIP/2.0/UDP 127.0.0.5:5060", branch="z9hG4bKudp1;rport")
    hop, _ = forwarded(send(px, sent, UDP_IN))
    assert send(px, sent, UDP_IN, 0.5) == []  # §17.2.2 Trying state: absorbed, not forwarded again
    ok = send(px, answer(hop.data, 200, "OK"), CISCO_OUT, 1.0)
    assert [r.status for r in replies(ok, UDP_IN)] == [200]
    again = send(px, sent, UDP_IN, 2.0)
    assert again == ok
    assert send(px, sent, UDP_IN, 32.9) == ok  # §17.2.2: Timer J is 64*T1 = 32 s after the final
    px.handle_timer(33.1)
    late, _ = forwarded(send(px, sent, UDP_IN, 33.2))  # after Timer J the same branch is a new request
    assert late.hop.transport == "tls"


def test_udp_hop_retransmits_on_timer_e() -> None:
    px = make_proxy()
    hop, fwd = forwarded(send(px, request(uri="sip:x@udp.example")))
    assert (hop.hop.transport, hop.hop.host) == ("udp", "127.0.0.9")
    assert fwd.top_via.transport == "UDP"
    assert px.get_timer() == 0.5
    px.handle_timer(0.49)
    assert px.take_outputs() == []
    times = []
    for _ in range(5):
        deadline = px.get_timer()
        assert deadline is not None
        px.handle_timer(deadline)
        resent = hops(px.take_outputs())
        assert [s.data for s in resent] == [hop.data]
        times.append(deadline)
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5]  # T1, doubling, capped at T2 = 4 s (§17.1.2.2)
    assert replies(send(px, answer(hop.data, 200, "OK"), UDP_OUT, 12.0), LYNC_IN)[0].status == 200
    px.handle_timer(30.0)
    assert hops(px.take_outputs()) == []


def test_invite_2xx_and_its_retransmission_forwarded_then_ack_routed_statelessly() -> None:
    px = make_proxy()
    hop, _ = forwarded(send(px, request("INVITE", headers=(f"Record-Route: {LYNC_POOL_RR}",))))
    ok = answer(hop.data, 200, "OK", headers=("Contact: <sip:alice@10.1.1.1:5061;transport=tls>",))
    assert [r.status for r in replies(send(px, ok, CISCO_OUT, 1.0), LYNC_IN)] == [200]
    assert [r.status for r in replies(send(px, ok, CISCO_OUT, 1.5), LYNC_IN)] == [200]  # RFC 6026 §8.4
    ack = request(
        "ACK",
        "sip:alice@10.1.1.1:5061;transport=tls",
        branch="z9hG4bKack1",
        cseq="1 ACK",
        to_tag="cup1",
        headers=(f"Route: {RR_LYNC}", f"Route: {RR_CISCO}", f"Route: {CUPS_RR_EXTERNAL}"),
    )
    ack_hop, fwd = forwarded(send(px, ack, now=2.0))
    assert ack_hop.token == 0
    assert (ack_hop.hop.host, ack_hop.hop.port) == ("127.0.0.2", 5062)
    assert fwd.headers.get_all("route") == [CUPS_RR_INTERNAL]
    assert fwd.top_via.branch is not None
    assert fwd.top_via.branch.startswith("z9hG4bK")
    assert len(fwd.vias) == 2


def test_timer_c_cancels_a_ringing_invite() -> None:
    px = make_proxy()
    hop, _ = forwarded(send(px, request("INVITE")))
    assert replies(send(px, answer(hop.data, 180, "Ringing"), CISCO_OUT, 1.0), LYNC_IN)[0].status == 180
    px.handle_timer(180.9)
    assert px.take_outputs() == []
    px.handle_timer(181.0)  # §16.6 step 11: Timer C, restarted by the first provisional
    _, cancel = forwarded(px.take_outputs())
    assert cancel.method == "CANCEL"
    outputs = send(px, answer(hop.data, 487, "Request Terminated"), CISCO_OUT, 182.0)
    assert [r.status for r in replies(outputs, LYNC_IN)] == [487]


def test_cancel_without_invite_is_481() -> None:
    assert only_reply(send(make_proxy(), request("CANCEL", cseq="1 CANCEL"))).status == 481


def test_alias_registered_only_for_a_sent_by_the_certificate_names() -> None:
    px = make_proxy()
    outputs = send(px, request(via="SIP/2.0/TLS lync01.tomt.it:5061", branch="z9hG4bKa1;alias"))
    assert [o for o in outputs if isinstance(o, RegisterAlias)] == [RegisterAlias(LYNC_IN, "lync01.tomt.it", 5061)]
    outputs = send(px, request(via="SIP/2.0/TLS evil.example:5061", branch="z9hG4bKa2;alias"))
    assert [o for o in outputs if isinstance(o, RegisterAlias)] == []


def test_benotify_is_relayed_statelessly_and_never_answered() -> None:
    """[MS-SIP] §3.5: BENOTIFY gets no response, so sipfed keeps no transaction that could time out."""
    proxy = make_proxy()
    proxy.receive(LYNC_IN, request("BENOTIFY", headers=("Event: vnd-microsoft-roaming-contacts",)), 0.0)
    out = proxy.take_outputs()
    assert [type(o) for o in out] == [SendToHop]
    assert out[0].token == 0  # type: ignore[union-attr]
    assert b"BENOTIFY sip:alice@tomt.local SIP/2.0" in out[0].data  # type: ignore[union-attr]
    assert proxy.pending() == 0
    proxy.handle_timer(100.0)
    assert proxy.take_outputs() == []


def test_finished_transactions_leave_no_reference_cycles() -> None:
    """Everything a relayed MESSAGE + 200 created is freed by reference counting: the cyclic collector,
    whose passes over thousands of transactions stall the event loop, finds nothing."""
    px = make_proxy()
    gc.collect()
    gc.disable()
    try:
        for i in range(50):
            hop, _ = forwarded(send(px, request(branch=f"z9hG4bKcyc{i}"), now=i))
            send(px, answer(hop.data, 200, "OK"), CISCO_OUT, now=i)
            px.handle_timer(i + 0.5)
        px.handle_timer(1e6)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_route_lends_its_certificate_name_only_to_its_own_port() -> None:
    """Two servers behind one address (a NAT, a shared SBC): the one on the route's port is checked
    against the route's tls_name; one on another port is checked against the name in its URI."""
    px = make_proxy()
    same = hop_for_uri(parse_uri("sip:127.0.0.2:5062;transport=tls"), px.policy, "lync")
    assert (same.tls_name, same.listener, same.route) == ("cups.tomt.local", "cisco", "cisco")
    with pytest.raises(SipError, match=r"127\.0\.0\.2:7000 is not a configured destination") as refused:
        hop_for_uri(parse_uri("sip:127.0.0.2:7000;transport=tls"), px.policy, "lync")
    assert refused.value.status == 403  # issue 14: no open relay to a port nobody configured
    opted_in = replace(px.policy, dialog_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    other = hop_for_uri(parse_uri("sip:127.0.0.2:7000;transport=tcp"), opted_in, "lync")
    assert (other.transport, other.tls_name, other.listener, other.route) == ("tls", "127.0.0.2", "cisco", None)


def test_a_uri_transport_cannot_take_a_configured_hop_off_tls() -> None:
    """Issue 14 row 3: a Contact or Route with transport=tcp toward a TLS destination still goes over TLS."""
    px = make_proxy()
    hop = hop_for_uri(parse_uri("sip:127.0.0.2:5062;transport=tcp"), px.policy, "lync")
    assert (hop.transport, hop.tls_name, hop.listener) == ("tls", "cups.tomt.local", "cisco")
    named = hop_for_uri(parse_uri("sip:lyncpool.tomt.it;transport=udp"), px.policy, "cisco")
    assert (named.transport, named.port, named.tls_name, named.listener) == ("tls", 5061, "lyncpool.tomt.it", "lync")


def test_an_in_dialog_request_to_an_unconfigured_host_is_403() -> None:
    """Issue 14 row 2: a Request-URI with a To tag naming any host is no next hop unless configured."""
    sent = request("MESSAGE", "sip:x@127.0.22.99:7777;transport=tcp", to_tag="any")
    response = only_reply(send(make_proxy(), sent))
    assert (response.status, response.reason) == (
        403,
        "Forbidden (next hop 127.0.22.99:7777 is not a configured destination)",
    )
    routed = request("MESSAGE", "sip:alice@tomt.local", headers=("Route: <sip:127.0.22.99:7777;transport=tcp;lr>",))
    assert only_reply(send(make_proxy(), routed)).status == 403


def test_cancelled_timers_do_not_pile_up_until_their_deadline() -> None:
    """A refreshed subscription cancels an expiry hours away; the heap drops such timers as it grows."""
    queue = TimerQueue()
    live = [queue.schedule(10.0 + i, lambda now: None) for i in range(10)]
    for i in range(20_000):
        queue.schedule(3600.0 + i, lambda now: None).cancel()
    assert len(queue) < 2048
    fired: list[float] = []
    live.append(queue.schedule(5.0, fired.append))
    queue.run_due(100.0)
    assert fired == [100.0]
    assert queue.next_deadline() is None


@pytest.mark.parametrize(
    ("via", "expected"),
    [
        # A name in sent-by: that port, the received address, the name checked on the certificate.
        (
            "SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bKa;received=127.0.0.3",
            NextHop("tls", "127.0.0.3", 5061, "lync01.tomt.it", "lync", None),
        ),
        # An address in sent-by: the name the sender's certificate proved on the closed connection.
        (
            "SIP/2.0/TLS 127.0.0.3:40999;branch=z9hG4bKa",
            NextHop("tls", "127.0.0.3", 40999, "lync01.tomt.it", "lync", None),
        ),
        (
            "SIP/2.0/TLS lync01.tomt.it;branch=z9hG4bKa;received=127.0.0.3",
            NextHop("tls", "127.0.0.3", 5061, "lync01.tomt.it", "lync", None),
        ),  # §18.2.2: the transport's default port
        # Issue 14: the closed connection's own transport (TLS), whatever the Via says; its real source address,
        # never a received= the sender wrote.
        ("SIP/2.0/TCP 127.0.0.3;branch=z9hG4bKa", NextHop("tls", "127.0.0.3", 5061, "lync01.tomt.it", "lync", None)),
        ("SIP/2.0/UDP 127.0.0.3;branch=z9hG4bKa", NextHop("tls", "127.0.0.3", 5061, "lync01.tomt.it", "lync", None)),
        (
            "SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bKa;received=127.0.22.99",
            NextHop("tls", "127.0.0.3", 5061, "lync01.tomt.it", "lync", None),
        ),
        ("SIP/2.0/TLS bad host;branch=z9hG4bKa", None),
    ],
)
def test_reply_hop_for_a_closed_connection(via: str, expected: NextHop | None) -> None:
    assert reply_hop(LYNC_IN, via) == expected


def test_deadline_queue_keeps_order_and_skips_ended_transactions() -> None:
    queue = DeadlineQueue()
    assert queue.push(1.0, 1)
    assert queue.push(2.0, 2)
    assert queue.push(2.0, 3)
    assert not queue.push(1.5, 4)  # out of order: the caller puts it on the heap
    assert queue.next_deadline({2, 3}) == 2.0  # 1 has ended: dropped from the front
    assert list(queue.pop_due(1.99)) == []
    assert list(queue.pop_due(2.0)) == [2, 3]
    assert queue.next_deadline({2, 3}) is None
    assert len(queue) == 0
