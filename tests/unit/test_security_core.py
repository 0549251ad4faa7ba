"""Issue 14's rules in the sans-IO core, with hand-made flows and time: one admission path for the stateless
methods, CANCEL only from the INVITE's sender, responses only from their flow, aliases only over TLS after
admission, ``received`` always ours, RFC 3325 identities screened, no Timer G toward unbound UDP sources."""

from __future__ import annotations

from acl.peers import Trust, TrustedPeer
from acl.subjects import CertIdentity, parse_subject
from proxy.relay.core import Proxy, RelaySettings
from proxy.relay.forwarding import RelayPolicy, mark_received
from proxy.relay.identity import screen_identities
from proxy.relay.limits import WarnLimiter
from proxy.relay.observe import Observer
from proxy.relay.types import Flow, Identity, Output, RegisterAlias, SendOnFlow, SendToHop
from proxy.sip.message import Request, Response, parse_message
from routes import RouteTable, StaticRoute
from tests.unit.edge import BoundProxy

CERT = CertIdentity(dns_names=("lync01.tomt.it",))
LYNC_IN = Flow("tls", "lync", ("127.0.0.3", 40001), 1, CERT, "lync")
CISCO_OUT = Flow("tls", "cisco", ("127.0.0.2", 5062), 2, CertIdentity(dns_names=("cups.tomt.local",)), "cups")
ANON_TCP = Flow("tcp", "tcp", ("127.0.0.9", 40500), 7)
ANON_UDP = Flow("udp", "udp", ("127.0.0.9", 5060), 0)
ROUTES = RouteTable(
    [
        StaticRoute("cisco", "tomt.local", "127.0.0.2", 5062, "tls", "cups.tomt.local", "cisco"),
        StaticRoute("lync", "tomt.it", "127.0.0.3", 5061, "tls", "lync01.tomt.it", "lync"),
    ]
)


class Recorder(Observer):
    def __init__(self) -> None:
        self.drops: list[str] = []

    def security_drop(self, reason: str) -> None:
        self.drops.append(reason)


def make_proxy(untrusted: str = "refuse") -> tuple[Proxy, Recorder]:
    identities = [
        Identity("cisco", "tls", "127.0.0.1", 5071, "sipfed.tomt.local", "sipfed.tomt.local", untrusted),
        Identity("lync", "tls", "127.0.0.1", 5072, "sipfed.tomt.it", "sipfed.tomt.it", untrusted),
        Identity("tcp", "tcp", "127.0.0.1", 5060, "sipfed.tomt.local", "sipfed.tomt.local", untrusted),
        Identity("udp", "udp", "127.0.0.1", 5060, "sipfed.tomt.local", "sipfed.tomt.local", untrusted),
    ]
    peers = (
        TrustedPeer("lync", (parse_subject("lync01.tomt.it"),), domains=("tomt.it",)),
        TrustedPeer("cups", (parse_subject("cups.tomt.local"),), domains=("tomt.local",)),
    )
    recorder = Recorder()
    return BoundProxy(
        RelayPolicy.build(identities, ROUTES, {}, frozenset()), RelaySettings(), Trust(peers), recorder
    ), recorder


def request(
    method: str = "MESSAGE",
    *,
    from_: str = "<sip:bob@tomt.it>",
    via: str = "SIP/2.0/TLS lync01.tomt.it:5061",
    branch: str = "z9hG4bKa1",
    headers: tuple[str, ...] = (),
    cseq: str | None = None,
) -> bytes:
    lines = [
        f"{method} sip:alice@tomt.local SIP/2.0",
        f"Via: {via};branch={branch}",
        f"From: {from_};tag=f1",
        "To: <sip:alice@tomt.local>",
        "Call-ID: c1@tomt.it",
        f"CSeq: {cseq or '1 ' + method}",
        "Max-Forwards: 70",
        *headers,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send(px: Proxy, data: bytes, flow: Flow, now: float = 0.0) -> list[Output]:
    px.receive(flow, data, now)
    return px.take_outputs()


def statuses(outputs: list[Output]) -> list[int]:
    out = []
    for o in outputs:
        if isinstance(o, SendOnFlow):
            message = parse_message(o.data)
            assert isinstance(message, Response)
            out.append(message.status)
    return out


def test_stateless_methods_from_an_unbound_source_are_dropped_and_counted() -> None:
    for method in ("ACK", "BENOTIFY"):
        px, recorder = make_proxy()
        assert send(px, request(method, via="SIP/2.0/TCP 127.0.0.9:5060"), ANON_TCP) == []
        assert recorder.drops == ["stateless_refused"]


def test_a_stateless_method_cannot_be_challenged() -> None:
    """With untrusted = challenge a MESSAGE gets 407; an ACK would have nobody to answer it: dropped."""
    px, _ = make_proxy("challenge")
    assert send(px, request("BENOTIFY", via="SIP/2.0/TCP 127.0.0.9:5060"), ANON_TCP) == []


def test_a_trusted_peer_speaking_for_another_domain_is_dropped_statelessly_too() -> None:
    px, recorder = make_proxy()
    assert send(px, request("BENOTIFY", from_="<sip:mallory@evil.example>"), LYNC_IN) == []
    assert recorder.drops == ["stateless_refused"]
    sent = send(px, request("BENOTIFY", branch="z9hG4bKa2"), LYNC_IN)
    assert [type(o) for o in sent] == [SendToHop]  # its own domain: relayed


def test_cancel_only_from_the_invites_sender() -> None:
    px, _ = make_proxy()
    invite = send(px, request("INVITE", branch="z9hG4bKinv"), LYNC_IN)
    assert any(isinstance(o, SendToHop) for o in invite)
    other = Flow("tls", "lync", ("127.0.0.9", 40009), 9, CertIdentity(dns_names=("other.example",)))
    assert statuses(send(px, request("CANCEL", branch="z9hG4bKinv", cseq="1 CANCEL"), other)) == [481]
    assert statuses(send(px, request("CANCEL", branch="z9hG4bKinv", cseq="1 CANCEL"), LYNC_IN)) == [200]


def test_a_response_on_another_flow_is_dropped() -> None:
    px, recorder = make_proxy()
    [hop] = [o for o in send(px, request(), LYNC_IN) if isinstance(o, SendToHop)]
    sent = parse_message(hop.data)
    assert isinstance(sent, Request)
    lines = [f"{k}: {v}" for k, _, v in sent.headers.items if k in ("via", "from", "to", "call-id", "cseq")]
    ok = ("SIP/2.0 200 OK\r\n" + "\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()
    assert send(px, ok, ANON_TCP) == []
    assert recorder.drops == ["response_off_flow"]
    assert statuses(send(px, ok, CISCO_OUT)) == [200]  # the real flow (BoundProxy's connection 2)


def test_alias_only_over_tls_and_only_once_admitted() -> None:
    px, _ = make_proxy()
    tcp = send(px, request(via="SIP/2.0/TCP 127.0.0.2:5062", branch="z9hG4bKt;alias"), ANON_TCP)
    assert statuses(tcp) == [403]
    assert not any(isinstance(o, RegisterAlias) for o in tcp)
    tls = send(px, request(branch="z9hG4bKs;alias"), LYNC_IN)
    assert [o for o in tls if isinstance(o, RegisterAlias)] == [RegisterAlias(LYNC_IN, "lync01.tomt.it", 5061)]


def test_received_written_by_the_sender_is_replaced_or_removed() -> None:
    for via, expected in [
        (
            "SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bKa;received=127.0.22.99",
            "SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bKa;received=127.0.0.3",
        ),
        (
            "SIP/2.0/TLS 127.0.0.3:5061;received=127.0.22.99;branch=z9hG4bKa",
            "SIP/2.0/TLS 127.0.0.3:5061;branch=z9hG4bKa",
        ),
        (
            "SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bKa",
            "SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bKa;received=127.0.0.3",
        ),
    ]:
        message = parse_message(
            request().replace(b"Via: SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bKa1", f"Via: {via}".encode())
        )
        assert isinstance(message, Request)
        mark_received(message, LYNC_IN)
        assert message.headers.get("via") == expected


def test_identities_screened_by_the_peers_domains() -> None:
    message = parse_message(
        request(
            headers=(
                "P-Asserted-Identity: <sip:ceo@tomt.local>, <sip:bob@tomt.it>",
                "P-Preferred-Identity: <sip:bob@tomt.it>",
                "P-Asserted-Identity: <tel:+3902123>",
            )
        )
    )
    assert isinstance(message, Request)
    peer = TrustedPeer("lync", (parse_subject("lync01.tomt.it"),), domains=("tomt.it",))
    removed = screen_identities(message, peer)
    assert removed == ["<sip:ceo@tomt.local>", "<tel:+3902123>"]
    assert message.headers.get_all("p-asserted-identity") == ["<sip:bob@tomt.it>"]
    assert message.headers.get_all("p-preferred-identity") == ["<sip:bob@tomt.it>"]
    assert screen_identities(message, None) == ["<sip:bob@tomt.it>", "<sip:bob@tomt.it>"]  # no peer: none kept
    assert "p-asserted-identity" not in message.headers


def test_a_refused_udp_invite_is_not_retransmitted() -> None:
    px, _ = make_proxy()
    first = send(px, request("INVITE", via="SIP/2.0/UDP 127.0.0.9:5060"), ANON_UDP)
    assert statuses(first) == [403]  # no 100 Trying for a refused INVITE either
    for now in (0.6, 1.6, 3.6, 7.6, 15.6, 31.0):  # Timer G would fire at 0.5, 1.5, 3.5, 7.5, 11.5, ...
        px.handle_timer(now)
        assert px.take_outputs() == []
    again = send(px, request("INVITE", via="SIP/2.0/UDP 127.0.0.9:5060"), ANON_UDP, 2.0)
    assert statuses(again) == [403]  # a retransmitted INVITE: the same answer, one for one


def test_warn_limiter_counts_what_it_suppressed() -> None:
    limiter = WarnLimiter(every_seconds=10.0)
    assert limiter.allow("hop", 0.0) == 0
    assert [limiter.allow("hop", t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert limiter.allow("other", 5.0) == 0
    assert limiter.allow("hop", 10.0) == 3
