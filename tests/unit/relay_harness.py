"""The relay core (``proxy.relay.core.Proxy``) driven by hand for unit tests: the lab's listener identities and
flows, a proxy with the lab's routes (``make_proxy``), requests and answers as bytes, and the core's outputs
sorted into what went to a next hop and what went back on a flow. Shared by test_relay and the unit tests of
limits, health checks and trust."""

from __future__ import annotations

from acl.subjects import CertIdentity
from proxy.relay.core import Proxy, RelaySettings
from proxy.relay.forwarding import RelayPolicy
from proxy.relay.types import Flow, Identity, NextHop, Output, SendOnFlow, SendToHop
from proxy.sip.message import Request, Response, parse_message
from routes import RouteTable, StaticRoute
from tests.unit.edge import BoundProxy

CISCO = Identity("cisco", "tls", "127.0.0.1", 5071, "sipfed.tomt.local", "sipfed.tomt.local")
LYNC = Identity("lync", "tls", "127.0.0.1", 5072, "sipfed.tomt.it", "sipfed.tomt.it")
UDP = Identity("udp", "udp", "127.0.0.1", 5060, "sipfed.tomt.local", "sipfed.tomt.local")

LYNC_IN = Flow("tls", "lync", ("127.0.0.3", 40001), 1, CertIdentity(dns_names=("lync01.tomt.it",)))
CISCO_OUT = Flow("tls", "cisco", ("127.0.0.2", 5062), 2, CertIdentity(dns_names=("cups.tomt.local",)))
CISCO_IN = Flow("tls", "cisco", ("127.0.0.2", 40002), 3, CertIdentity(dns_names=("cups.tomt.local",)))
UDP_IN = Flow("udp", "udp", ("127.0.0.5", 5060), 0)
UDP_OUT = Flow("udp", "udp", ("127.0.0.9", 5060), 0)
TO_CUPS = NextHop("tls", "127.0.0.2", 5062, "cups.tomt.local", "cisco", "cisco")


def make_proxy(*extra_routes: StaticRoute) -> Proxy:
    routes = RouteTable(
        [
            StaticRoute("cisco", "tomt.local", "127.0.0.2", 5062, "tls", "cups.tomt.local", "cisco"),
            StaticRoute("lync", "tomt.it", "127.0.0.3", 5061, "tls", "lync01.tomt.it", "lync"),
            StaticRoute("udp", "udp.example", "127.0.0.9", 5060, "udp", "127.0.0.9", "udp"),
            StaticRoute("same", "same.example", "127.0.0.8", 5061, "tls", "same.example", None),
            *extra_routes,
        ]
    )
    policy = RelayPolicy.build([CISCO, LYNC, UDP], routes, {"127.0.0.2": "cups.tomt.local"}, frozenset({"ms-benotify"}))
    return BoundProxy(policy, RelaySettings(transaction_timeout_seconds=16, invite_timeout_seconds=180))


def request(
    method: str = "MESSAGE",
    uri: str = "sip:alice@tomt.local",
    *,
    branch: str = "z9hG4bKlync1",
    headers: tuple[str, ...] = (),
    body: bytes = b"",
    max_forwards: str | None = "70",
    cseq: str | None = None,
    to_tag: str | None = None,
    via: str = "SIP/2.0/TLS lync01.tomt.it:5061",
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via};branch={branch}",
        "From: <sip:bob@tomt.it>;tag=from1",
        "To: <sip:alice@tomt.local>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: call1@tomt.it",
        f"CSeq: {cseq or '1 ' + method}",
        *([f"Max-Forwards: {max_forwards}"] if max_forwards is not None else []),
        *headers,
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answer(sent: bytes, status: int, reason: str, *, to_tag: str = "cup1", headers: tuple[str, ...] = ()) -> bytes:
    """The response a peer builds for ``sent`` (RFC 3261 §8.2.6.2: Via, From, To, Call-ID, CSeq copied)."""
    copied = []
    for line in sent.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]:
        name = line.split(":")[0].strip().lower()
        if name == "to" and status > 100 and ";tag=" not in line:
            line += f";tag={to_tag}"
        if name in ("via", "from", "to", "call-id", "cseq"):
            copied.append(line)
    return ("\r\n".join([f"SIP/2.0 {status} {reason}", *copied, *headers, "Content-Length: 0"]) + "\r\n\r\n").encode()


def hops(outputs: list[Output]) -> list[SendToHop]:
    return [o for o in outputs if isinstance(o, SendToHop)]


def replies(outputs: list[Output], flow: Flow) -> list[Response]:
    out = []
    for o in outputs:
        if isinstance(o, SendOnFlow) and o.flow == flow:
            message = parse_message(o.data)
            assert isinstance(message, Response)
            out.append(message)
    return out


def forwarded(outputs: list[Output]) -> tuple[SendToHop, Request]:
    sends = hops(outputs)
    assert len(sends) == 1, outputs
    message = parse_message(sends[0].data)
    assert isinstance(message, Request)
    return sends[0], message


def only_reply(outputs: list[Output], flow: Flow = LYNC_IN) -> Response:
    assert hops(outputs) == []
    answers = replies(outputs, flow)
    assert len(answers) == 1, outputs
    return answers[0]


def send(px: Proxy, data: bytes, flow: Flow = LYNC_IN, now: float = 0.0) -> list[Output]:
    px.receive(flow, data, now)
    return px.take_outputs()
