"""``sipfed doctor --live``, step 5: an OPTIONS to the route's next hop, and what its answer says.

Over a stream (TCP, or the TLS connection sipfed's own handshake made) it is sent once; over UDP it is
retransmitted as RFC 3261 §17.1.2.2 Timer E. sipfed's own framer and parser read the answer.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import time

from proxy import __version__
from proxy.admin.findings import Finding, bracketed, route_address, route_subject
from proxy.admin.live_failures import connect_failure, refusal, refused
from proxy.config import Config
from proxy.net.tls import describe_failure
from proxy.sip.errors import SipError
from proxy.sip.message import Response, parse_message
from proxy.sip.parser import FramingError, StreamFramer
from routes import StaticRoute

MAX_ANSWER_BYTES = 65535
MAX_READS = 1000
T1_SECONDS, T2_SECONDS = 0.5, 4.0


class NotSip(Exception):
    """The peer answered with something that is not a SIP message."""


def ask_options(sock: socket.socket, route: StaticRoute, fqdn: str, timeout: float, early: bytes) -> Finding:
    """Step 5 on a stream: send OPTIONS from ``fqdn``, wait for its final answer until ``timeout``; ``early`` is
    what the peer already sent."""
    call_id = f"{secrets.token_hex(8)}@{fqdn}"
    started = time.monotonic()
    try:
        sock.sendall(options_request(route, fqdn, sock.getsockname()[:2], call_id))
        answer = read_final(sock, call_id, early, started + timeout)
    except TimeoutError:
        return _no_answer(route, timeout)
    except NotSip as exc:
        return _not_sip(route, exc)
    except (ssl.SSLError, OSError) as exc:
        alert = refusal(exc)
        if alert is not None:
            return refused(route, alert)
        return Finding(
            "warning",
            "live.sip",
            route_subject(route),
            f"the connection failed before an answer to OPTIONS: {describe_failure(exc, route.tls_name)}",
            "read the peer's log for why it dropped sipfed",
        )
    if answer is None:
        return Finding(
            "warning",
            "live.sip",
            route_subject(route),
            "the peer closed the connection without answering OPTIONS",
            "read the peer's SIP log: it may refuse requests from sipfed (CUP: incoming ACL, TLS peer "
            "subjects; Lync: trusted application pool)",
        )
    return _answer_finding(route, answer, time.monotonic() - started)


def read_final(sock: socket.socket, call_id: str, early: bytes, deadline: float) -> tuple[int, str] | None:
    """The final response to our OPTIONS (provisionals and strangers skipped); None when the peer closes.

    sipfed's own framer and parser read it: an answer sipfed could not parse is reported as such.
    """
    framer, data = StreamFramer(), early
    for _ in range(MAX_READS):
        for frame in framer.feed(data):
            if isinstance(frame, FramingError):
                raise NotSip(str(frame.error))
            answer = answer_to(frame, call_id) if isinstance(frame, bytes) else None
            if answer is not None and answer[0] >= 200:
                return answer
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        data = sock.recv(MAX_ANSWER_BYTES)
        if not data:
            return None
    raise TimeoutError


def udp_options(route: StaticRoute, fqdn: str, timeout: float) -> Finding:
    """Step 5 alone over UDP, retransmitted (Timer E: T1 doubling up to T2) until ``timeout``."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            route.destination.strip("[]"), route.port, type=socket.SOCK_DGRAM
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        return connect_failure(route, exc, timeout)
    with sock:
        try:
            sock.connect(address)
            return _udp_exchange(sock, route, fqdn, timeout)
        except NotSip as exc:
            return _not_sip(route, exc)
        except ConnectionRefusedError:
            return Finding(
                "error",
                "live.sip",
                route_subject(route),
                f"nothing listens on {route_address(route)} (udp): ICMP port unreachable",
                "is the static route pointing at the right listener and transport? (CUP's peer-auth "
                "listener is TLS 5062, Lync's TLS 5061)",
            )
        except OSError as exc:
            return connect_failure(route, exc, timeout)


def _udp_exchange(sock: socket.socket, route: StaticRoute, fqdn: str, timeout: float) -> Finding:
    call_id = f"{secrets.token_hex(8)}@{fqdn}"
    request = options_request(route, fqdn, sock.getsockname()[:2], call_id)
    started = time.monotonic()
    deadline, next_send, interval = started + timeout, started, T1_SECONDS
    for _ in range(MAX_READS):
        now = time.monotonic()
        if now >= deadline:
            break
        if now >= next_send:
            sock.send(request)
            next_send, interval = now + interval, min(interval * 2, T2_SECONDS)
        sock.settimeout(max(0.01, min(next_send, deadline) - now))
        try:
            answer = answer_to(sock.recv(MAX_ANSWER_BYTES), call_id, datagram=True)
        except TimeoutError:
            continue
        if answer is not None and answer[0] >= 200:
            return _answer_finding(route, answer, time.monotonic() - started)
    return Finding(
        "warning",
        "live.sip",
        route_subject(route),
        f"no SIP answer to OPTIONS over UDP from {route_address(route)} within {timeout:g} s: nothing "
        "listens, or a firewall drops it (UDP gives no other sign)",
        "check the destination and port, and that the peer accepts SIP over UDP from this host",
    )


def _answer_finding(route: StaticRoute, answer: tuple[int, str], seconds: float) -> Finding:
    status, reason = answer
    line = f"SIP/2.0 {status} {reason}".rstrip()
    if status in (401, 407):
        return Finding(
            "warning",
            "live.sip",
            route_subject(route),
            f"the peer answers OPTIONS with {line}: it challenges sipfed, so relayed requests will be challenged too",
            "have the peer trust sipfed (CUP: TLS peer subject and incoming ACL; Lync: "
            "trusted application pool), or give sipfed credentials for this route ([[acl.credentials]])",
        )
    return Finding("ok", "live.sip", route_subject(route), f"SIP answers OPTIONS: {line} ({seconds * 1000:.0f} ms)")


def _not_sip(route: StaticRoute, exc: NotSip) -> Finding:
    return Finding(
        "error",
        "live.sip",
        route_subject(route),
        f"{route_address(route)} answers, but not in SIP sipfed can parse: {exc}",
        "point the route at the peer's SIP port (CUP's peer-auth listener 5062, Lync's 5061); if it is the "
        "SIP port, report the answer as a sipfed interop bug",
    )


def _no_answer(route: StaticRoute, timeout: float) -> Finding:
    return Finding(
        "warning",
        "live.sip",
        route_subject(route),
        f"no SIP answer to OPTIONS within {timeout:g} s: the connection works but nothing answered",
        "read the peer's SIP log: some servers stay silent to sources they do not trust (CUP: "
        "incoming ACL, TLS peer subjects; Lync: trusted application pool)",
    )


def options_request(route: StaticRoute, fqdn: str, local: tuple[str, int], call_id: str) -> bytes:
    """RFC 3261 §11.1: an OPTIONS to the route's next hop, with every mandatory header (§8.1.1)."""
    sent_by = f"{bracketed(local[0])}:{local[1]}"
    target = bracketed(route.tls_name)
    lines = [
        f"OPTIONS sip:{target}:{route.port};transport={route.transport} SIP/2.0",
        f"Via: SIP/2.0/{route.transport.upper()} {sent_by};branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70",
        f"From: <sip:sipfed-doctor@{fqdn}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{target}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 OPTIONS",
        "Accept: application/sdp",
        f"User-Agent: sipfed-doctor/{__version__}",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def answer_to(message: bytes, call_id: str, *, datagram: bool = False) -> tuple[int, str] | None:
    """(status, reason) when ``message`` answers our OPTIONS; None for a request or another transaction's
    response; NotSip when sipfed's parser refuses it."""
    try:
        parsed = parse_message(message, datagram=datagram)
    except SipError as exc:
        first = message.split(b"\r\n", 1)[0].decode("utf-8", "replace")[:80]
        raise NotSip(f"{first!r} ({exc})") from None
    if not isinstance(parsed, Response) or parsed.call_id != call_id:
        return None
    return parsed.status, parsed.reason


def our_fqdn(route: StaticRoute, config: Config) -> str:
    """The name OPTIONS comes from: the fqdn of the listener the route is bound to, else the proxy's."""
    listener = next((lst for lst in config.listeners if lst.name == route.listener), None)
    return listener.fqdn if listener is not None else config.fqdn
