"""RFC 4475 torture messages through the real sipfed, over UDP, TCP and TLS (issue 5, "Malformed input").

Every file of ``tests/data/rfc4475`` is sent to a live sipfed on each transport, and the outcome
is held to what RFC 4475 says a *proxy* does with it: valid requests are relayed (a stdlib sink behind a
catch-all static route receives them with sipfed's Via on top and Max-Forwards decremented, and its 200
comes back to the sender); invalid ones are answered with the RFC's status and a reason phrase naming
the fault; responses are dropped (nothing comes back, nothing is sent on). After each message sipfed
must still be running and relay an ordinary OPTIONS on the same transport.

``CASES`` is the expectations table: each row carries the RFC's own words for its section (as quoted
in reSIProcate's ``TestRFC4475.cxx`` and 0xInfection/SIPTorch, both copies of the RFC text), and, where
RFC 4475 leaves the element a choice, ``why`` says what a proxy should choose. RFC 3261 §16.3 step 1
decides most choices: a proxy checks what it uses to route and match transactions, and "any other
components, well-formed or not, SHOULD be ignored and remain unchanged when the message is forwarded".

The one change made to the corpus bytes: the Call-ID of each request gets a prefix naming the file and
transport, and an RFC 3261 branch (``z9hG4bK`` plus an identifier) the same infix, so that the three sends
of one file are three transactions rather than retransmissions of one (§17.2.3), and files that share a
branch and sent-by (cparam01/cparam02, unkscm/novelsc, ...) stay apart too. ``badbranch`` keeps its bare
``z9hG4bK``: its sends differ by Call-ID, as different requests do, and must not be matched together.
Bodies are never touched, so every Content-Length keeps its meaning.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.corpus import CORPUS, IN_REPO, corpus_files
from tests.integration.conftest import Sipfed, free_port
from tests.integration.metrics_scrape import reading
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

TRANSPORTS = ("udp", "tcp", "tls")
FQDN = "sipfed.tomt.local"
#: mpart01's Route header names this next hop; the sink listens there too when the port is free.
#: How long a stream may hold an incomplete message before sipfed must have closed it (default 10 s + margin).
STREAM_BOUND_SECONDS = 15.0
ANSWER_SECONDS = 3.0

CONTENT_LENGTH_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)", re.IGNORECASE | re.MULTILINE)
CALL_ID_RE = re.compile(rb"^((?:call-id|i)[ \t]*:[ \t]*)(?=\S)", re.IGNORECASE | re.MULTILINE)
VIA_LINE_RE = re.compile(rb"^(?:via|v)[ \t]*:(?:[^\r\n]|\r\n[ \t])*", re.IGNORECASE | re.MULTILINE)
COOKIE_BRANCH_RE = re.compile(rb"(branch[ \t]*=[ \t]*z9hG4bK)(?=[^;,\s])")


# -- the expectations table -------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What a proxy must do with one message on one kind of transport."""

    outcome: str
    """relay, reject, drop, or close (a stream left waiting for a body that never comes)."""
    status: int = 0
    """reject: the status the sender must get."""
    reason: str = ""
    """reject: a regex (case-insensitive) the reason phrase must match: it names the fault."""
    closes: bool = False
    """The connection must be closed by sipfed (an unrecoverable framing error on a stream)."""
    forwarded: tuple[bytes, ...] = ()
    """relay: byte strings the relayed request must carry unchanged."""
    absent: tuple[bytes, ...] = ()
    """relay: byte strings the relayed request must not carry."""
    every_message: bool = False
    """relay: every request in the bytes is relayed (dblreq on a stream is two messages)."""
    route_host: str = ""
    """relay: the request's own Route header sends it to this host instead of the sink."""
    counted: bool = False
    """drop: the malformed-message counter goes up (issue 5: "dropped and counted")."""


def relay(
    *forwarded: bytes, absent: tuple[bytes, ...] = (), every_message: bool = False, route_host: str = ""
) -> Expect:
    return Expect("relay", forwarded=forwarded, absent=absent, every_message=every_message, route_host=route_host)


def reject(status: int, reason: str, closes: bool = False) -> Expect:
    return Expect("reject", status, reason, closes=closes)


def drop(counted: bool = False) -> Expect:
    return Expect("drop", counted=counted)


@dataclass(frozen=True)
class Case:
    """One corpus file, its RFC 4475 section, the RFC's words, and what a proxy must do."""

    file: str
    section: str
    says: str
    """The key sentence(s) of RFC 4475 for this section."""
    datagram: Expect
    stream: Expect | None = None
    """When TCP/TLS differ from UDP."""
    why: str = ""
    """Where the RFC leaves a choice: what a proxy should do, and why."""

    def expect(self, transport: str) -> Expect:
        return self.stream if transport != "udp" and self.stream is not None else self.datagram


# The responses below reach sipfed as answers to nothing it sent. RFC 3261 §18.1.2: "If the value of the
# "sent-by" parameter in that header field value does not correspond to a value that the client transport
# is configured to insert into requests, the response MUST be silently discarded."
STRAY_RESPONSE = "a response to a request sipfed never sent: RFC 3261 §18.1.2 discards it silently"

CASES = [
    # §3.1.1 valid messages ------------------------------------------------------------------
    Case(
        "wsinv",
        "3.1.1.1",
        "All elements should treat this as a well-formed request. ... "
        "Proxies would forward this header field unchanged.",
        relay(b"UnknownHeaderWithUnusualValue: ;;,,;;,;", b"NewFangledHeader:", route_host="services.example.com"),
        why="Its Route header (loose, ;lr) sends it to services.example.com, not to the sink; the lab cannot "
        "resolve that name, so the relay is observed in sipfed's --trace, and the sender's connection must "
        "stay open whatever becomes of that next hop.",
    ),
    Case(
        "intmeth",
        "3.1.1.2",
        "If this unusual URI has been defined at a proxy, the proxy will forward this "
        "request normally.  Otherwise, a proxy will generate a 404.",
        relay(b"!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:"),
        why="The catch-all route defines every URI here, so the request is forwarded.",
    ),
    Case(
        "esc01",
        "3.1.1.3",
        "A parser must accept this as a well-formed message.  The application using the "
        "message must treat the % HEX HEX expansions as equivalent to the character being encoded.",
        relay(
            b"INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
            b"<sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
        ),
    ),
    Case(
        "escnull",
        "3.1.1.4",
        "The message is well formed - parsers must accept this message.  Implementations "
        "must take special care when unescaping the Address-of-Record (AOR) in this request so as to not "
        "prematurely shorten the username.",
        relay(b"sip:null-%00-null@example.com", b"<sip:%00@host5.example.com>", b"<sip:%00%00@host5.example.com>"),
    ),
    Case(
        "esc02",
        "3.1.1.5",
        "A parser should accept this message as well formed.  A proxy would forward or reject "
        "the message depending on what the Request-URI meant to it.",
        relay(b"RE%47IST%45R sip:registrar.example.com SIP/2.0", b"C%6Fntact: <sip:alias2@host2.example.com>"),
        why="The catch-all route gives the Request-URI a meaning: forward.",
    ),
    Case(
        "lwsdisp",
        "3.1.1.6",
        "Elements should accept this request as well formed.",
        relay(b"caller<sip:caller@example.com>;tag=323"),
    ),
    Case(
        "longreq",
        "3.1.1.7",
        "This well-formed request contains header fields with many values and values that are very long.",
        relay(b"longreq.onereallyreally", b"sip33.example.com", b"sip1.example.com"),
    ),
    Case(
        "dblreq",
        "3.1.1.8",
        "A SIP element receiving this datagram would handle the REGISTER request normally "
        "and ignore the extra bits that look like an INVITE request.  If the element is a proxy choosing to "
        "forward the REGISTER, the INVITE octets would not appear in the forwarded request.",
        relay(absent=(b"INVITE sip:joe@example.com",)),
        relay(every_message=True),
        why="On a stream Content-Length frames the REGISTER (0) and the octets after it are the next message "
        "(RFC 3261 §18.3): a complete INVITE, relayed like any other.",
    ),
    Case(
        "semiuri",
        "3.1.1.9",
        "Receiving elements will accept this as a well-formed message.",
        relay(b"OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0"),
    ),
    Case(
        "transports",
        "3.1.1.10",
        "Parsers must accept this message as well formed.  Elements receiving this "
        "message would process it exactly as if the 2nd and subsequent header field values specified UDP (or "
        "other transport).",
        relay(b"SIP/2.0/SCTP t2.example.com", b"SIP/2.0/UNKNOWN t4.example.com"),
    ),
    Case(
        "mpart01",
        "3.1.1.11",
        "Parsers must accept this message as well formed, even if the application above "
        "the parser does not support multipart/signed. ... Receivers must take care to frame the received "
        "message properly.",
        relay(b"boundary=7a9cbec02ceef655"),
        why="Its Route header (127.0.0.1:5080) is pointed at the sink by the test; the relayed body must be "
        "the 553 octets sent, NULs and all.",
    ),
    Case(
        "unreason",
        "3.1.1.12",
        "This response is well formed.  A parser must accept this message.",
        drop(),
        why=STRAY_RESPONSE,
    ),
    Case(
        "noreason",
        "3.1.1.13",
        "This well-formed response contains no reason phrase.  A parser must accept this message.",
        drop(),
        why=STRAY_RESPONSE,
    ),
    # §3.1.2 invalid messages ----------------------------------------------------------------
    Case(
        "badinv01",
        "3.1.2.1",
        "This message is syntactically invalid.  An element receiving this request should "
        "respond with a 400 Bad Request error.",
        reject(400, r"\bVia\b|Contact|separator|param"),
    ),
    Case(
        "clerr",
        "3.1.2.2",
        "When sent over UDP (as this message ostensibly was), the receiving element should "
        "respond with a 400 Bad Request error.  If this message arrived over a stream-based transport, such as "
        "TCP, there's not much the receiving party could do but wait for more data on the stream and close the "
        "connection if none is forthcoming within a reasonable period of time.",
        reject(400, r"Content-Length"),
        Expect("close", closes=True),
        why="On a stream: closed (or answered) within 15 s, never held forever; sent when the module starts, "
        "so the wait overlaps the other cases.",
    ),
    Case(
        "ncl",
        "3.1.2.3",
        "An element receiving this message should respond with an error.  This request appeared "
        "over UDP, so the remainder of the datagram can simply be discarded.  If a request like this arrives "
        "over TCP, the framing error is not recoverable, and the connection should be closed.",
        reject(400, r"Content-Length"),
        reject(400, r"Content-Length", closes=True),
    ),
    Case(
        "scalar02",
        "3.1.2.4",
        "An element receiving this request should respond with a 400 Bad Request due to the CSeq error.",
        reject(400, r"CSeq"),
    ),
    Case("scalarlg", "3.1.2.5", "An element receiving this response will simply discard it.", drop(counted=True)),
    Case(
        "quotbal",
        "3.1.2.6",
        "An element receiving this request should return a 400 Bad Request error.",
        reject(400, r"\bTo\b|quot"),
    ),
    Case(
        "ltgtruri",
        "3.1.2.7",
        "It is reasonable always to reject a request with this error with a 400 Bad "
        "Request. ... If the element forwards the request, it must not include the brackets in the messages it "
        "sends.",
        reject(400, r"Request-URI|Request-Line|\bURI\b"),
        why="sipfed forwards the Request-URI as written, so leniency would pass the brackets on: reject.",
    ),
    Case(
        "lwsruri",
        "3.1.2.8",
        "An element receiving this request should respond with a 400 Bad Request.",
        reject(400, r"Request-URI|Request-Line|\bURI\b"),
    ),
    Case(
        "lwsstart",
        "3.1.2.9",
        "It is acceptable to reject this request as malformed.  An element that is liberal "
        "in what it accepts may ignore these extra SP characters when processing the request.",
        reject(400, r"Request-Line"),
        why="A federation edge keeps the start line strict (RFC 3261 §7.1: single SP): two parsers that split "
        "it differently are how requests get smuggled past a hop.",
    ),
    Case(
        "trws",
        "3.1.2.10",
        "It is acceptable to reject this request as malformed.  An element that is liberal "
        "in what it accepts may ignore these extra SP characters when processing the request.",
        reject(400, r"Request-Line"),
        why="As lwsstart: strict start line at the edge.",
    ),
    Case(
        "escruri",
        "3.1.2.11",
        "It is acceptable for an element to reject this request with a 400 Bad Request. "
        "... If the element is a proxy, the escaped headers must not appear in the Request-URI of the forwarded "
        "request (and most certainly must not be translated into the actual header of the forwarded request).",
        reject(400, r"Request-URI|\bURI\b|header|escaped|\?"),
        why="The escaped header is a Route: an injection attempt at a routing proxy. Stripping it would change "
        "the request the sender signed off; refuse instead.",
    ),
    Case(
        "baddate",
        "3.1.2.12",
        "It is acceptable to reject this request as malformed (though an element shouldn't "
        "do that unless the contents of the Date header field were actually important to its processing).",
        relay(b"Date: Fri, 01 Jan 2010 16:00:00 EST"),
        why="A proxy does not use Date: forward it unchanged (RFC 3261 §16.3 step 1).",
    ),
    Case(
        "regbadct",
        "3.1.2.13",
        "It is reasonable for an element receiving this request to respond with a 400 Bad "
        "Request.  An element choosing to be liberal in what it accepts could infer the angle brackets since "
        "there is no ambiguity in this example.",
        relay(b"Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
        why="The Contact of a REGISTER is the registrar's business, not the proxy's: forward it unchanged "
        "(RFC 3261 §16.3 step 1) and let the registrar answer 400.",
    ),
    Case(
        "badaspec",
        "3.1.2.14",
        "It is reasonable to reject this request with a 400 Bad Request response.  "
        "Elements attempting to be liberal may ignore the spaces.",
        reject(400, r"\bTo\b|addr-spec|\bURI\b"),
        why="To is a field a stateful proxy interprets (tags for matching and loop detection, RFC 3261 §16.3 "
        "step 4, §17.2.3), and an edge should not hand a malformed identity header to another domain.",
    ),
    Case(
        "baddn",
        "3.1.2.15",
        "It is reasonable always to reject this kind of error with a 400 Bad Request "
        "response. ... If this element were a proxy, it must not propagate the error into the request it "
        "forwards.",
        reject(400, r"\bTo\b|\bFrom\b|display"),
        why="sipfed forwards From/To as written, so it cannot be liberal without propagating the error: reject.",
    ),
    Case(
        "badvers",
        "3.1.2.16",
        "The element should respond to the request with a 505 Version Not Supported error.",
        reject(505, r"version|SIP/7\.0"),
    ),
    Case(
        "mismatch01",
        "3.1.2.17",
        "Any element receiving this request will respond with a 400 Bad Request.",
        reject(400, r"CSeq|method"),
    ),
    Case(
        "mismatch02",
        "3.1.2.18",
        "Any element receiving this response should respond with a 501 Not Implemented.  "
        "A 400 Bad Request is also acceptable, but choosing a 501 (particularly at proxies) has better "
        "future-proof characteristics.",
        reject(501, r"CSeq|method|NEWMETHOD|implemented"),
        why="The RFC prefers 501 at proxies in so many words.",
    ),
    Case("bigcode", "3.1.2.19", "An element receiving this response should simply drop it.", drop(counted=True)),
    # §3.2 transaction layer -----------------------------------------------------------------
    Case(
        "badbranch",
        "3.2.1",
        "An element receiving this request could reject the request with a 400 Response "
        "(preferably statelessly, as other requests from the source are likely also to have a malformed branch "
        "parameter), or it could fall back to the RFC 2543-style transaction identifier.",
        relay(b"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK"),
        why="Fall back to RFC 2543 matching and relay: sipfed already serves RFC 2543 peers (inv2543), and the "
        "request is otherwise well formed. Either RFC choice keeps requests that differ only in Call-ID "
        "apart; taking the bare cookie as a transaction id does not.",
    ),
    # §3.3 application layer -----------------------------------------------------------------
    Case(
        "insuf",
        "3.3.1",
        "An element receiving this message must not break because of the missing information.  "
        "Ideally, it will respond with a 400 Bad Request error.",
        reject(400, r"Call-ID|From|\bTo\b|missing"),
    ),
    Case(
        "unkscm",
        "3.3.2",
        "An element receiving this request will reject it with a 416 Unsupported URI Scheme response.",
        reject(416, r"scheme"),
    ),
    Case(
        "novelsc",
        "3.3.3",
        "If an element will never accept this scheme as meaningful in a Request-URI, it is "
        "appropriate to treat it as unknown and return a 416 Unsupported URI Scheme response.",
        reject(416, r"scheme"),
        why="sipfed routes only sip: and sips: Request-URIs.",
    ),
    Case(
        "unksm2",
        "3.3.4",
        "Proxies should treat this message as they would any other request for this URI.",
        relay(b"To: isbn:2983792873", b"From: <http://www.example.com>;tag=3234233", b"<name:John_Smith>"),
    ),
    Case(
        "bext01",
        "3.3.5",
        "Any element receiving this request will respond with a 420 Bad Extension response, "
        "containing an Unsupported header field listing these features from either the Require or "
        "Proxy-Require header field, depending on the role in which the element is responding.",
        reject(420, r"extension|Proxy-Require"),
    ),
    Case(
        "invut",
        "3.3.6",
        "A proxy receiving this request would process it just as it would any other INVITE.",
        relay(b"Content-Type: application/unknownformat"),
    ),
    Case(
        "regaut01",
        "3.3.7",
        "A proxy will treat this request as it would any other REGISTER.  If it forwards the "
        "request, it will include this Authorization header field unmodified in the forwarded messages.",
        relay(b"Authorization: NoOneKnowsThisScheme opaque-data=here"),
    ),
    Case(
        "multi01",
        "3.3.8",
        "An element receiving this request would respond with a 400 Bad Request error.",
        reject(400, r"multiple|Call-ID|CSeq|From|\bTo\b|Max-Forwards"),
    ),
    Case(
        "mcl01",
        "3.3.9",
        "Multiple conflicting Content-Length header field values appear in this request. ... If "
        "a request like this arrives over TCP, the framing error is not recoverable, and the connection should "
        "be closed.",
        reject(400, r"Content-Length"),
        reject(400, r"Content-Length", closes=True),
    ),
    Case(
        "bcast",
        "3.3.10",
        "If a proxy followed normal response processing rules blindly, it would forward this "
        "response to the broadcast address.  To protect against this as an avenue of attack, proxies should "
        "drop such responses.",
        drop(),
    ),
    Case(
        "zeromf",
        "3.3.11",
        "A proxy should not forward the request and should respond 483 (Too Many Hops).",
        reject(483, r"hops|Max-Forwards"),
    ),
    Case(
        "cparam01",
        "3.3.12",
        'This REGISTER should succeed.  The response must not include "unknownparam" as a '
        "url-parameter for this binding.",
        relay(b"Contact: sip:+19725552222@gw1.example.net;unknownparam"),
        why="Registrar semantics: a proxy forwards the Contact unchanged.",
    ),
    Case(
        "cparam02",
        "3.3.13",
        "The register should succeed, and a subsequent retrieval of the registration must "
        'include "unknownparam" as a url-parameter.',
        relay(b"Contact: <sip:+19725552222@gw1.example.net;unknownparam>"),
        why="Registrar semantics: a proxy forwards the Contact unchanged.",
    ),
    Case(
        "regescrt",
        "3.3.14",
        "The register should succeed, and a subsequent retrieval of the registration must "
        "include the escaped Route header in the contact URI for this binding.",
        relay(b"M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>"),
        why="Registrar semantics: the escaped header is in a Contact, which a proxy forwards unchanged.",
    ),
    Case(
        "sdp01",
        "3.3.15",
        "The recipient of this request could respond with a 406 Not Acceptable ... It is also "
        "appropriate to respond with a 400 Bad Request, since all SIP User-Agents (UAs) supporting INVITE are "
        "required to support application/sdp.",
        relay(b"Accept: text/nobodyKnowsThis"),
        why="That is the UAS's answer; Accept means nothing to a proxy, which forwards it (RFC 3261 §16.3).",
    ),
    # §3.4 backward compatibility ------------------------------------------------------------
    Case(
        "inv2543",
        "3.4.1",
        "This is a legal message per RFC 2543 (and several bis versions) that should be "
        "accepted by RFC 3261 elements that want to maintain backwards compatibility.",
        relay(b"Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>", b"m=audio 49217 RTP/AVP 0"),
        reject(400, r"Content-Length", closes=True),
        why='It has no Content-Length, which is fine in a datagram but not on a stream (RFC 3261 §18.3: "The '
        'Content-Length header field MUST be used with stream oriented transports"). On TCP/TLS the SDP '
        "after the headers cannot be framed: relaying a body-less INVITE would silently cut it, so answer "
        "400 and close.",
    ),
]
CASES_BY_FILE = {case.file: case for case in CASES}


# -- corpus bytes -----------------------------------------------------------------------------


def header_blocks(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each message's header block, following Content-Length (two in dblreq)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos < len(data):
        while data[pos : pos + 2] == b"\r\n":
            pos += 2
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        spans.append((pos, end))
        lengths = CONTENT_LENGTH_RE.findall(data[pos:end])
        if len(lengths) != 1 or not lengths[0].isdigit():
            break
        pos = end + 4 + int(lengths[0])
    return spans


def personalise(data: bytes, tag: str) -> bytes:
    """Prefix each Call-ID and tag the top Via's RFC 3261 branch with ``tag``, in the header blocks only."""
    if data.startswith(b"SIP/"):
        return data  # responses stay byte-exact: there is no transaction to keep apart
    out, last = bytearray(), 0
    for start, end in header_blocks(data):
        head = CALL_ID_RE.sub(lambda m: m.group(1) + tag.encode() + b"-", data[start:end])
        via = VIA_LINE_RE.search(head)
        if via is not None:
            tagged = COOKIE_BRANCH_RE.sub(lambda m: m.group(1) + tag.encode() + b"-", via.group(0), count=1)
            head = head[: via.start()] + tagged + head[via.end() :]
        out += data[last:start] + head
        last = end
    return bytes(out + data[last:])


def unfolded_headers(head: bytes) -> list[tuple[str, str]]:
    """(lower-case name, value) of a header block, continuation lines joined (RFC 3261 §7.3.1)."""
    text = re.sub(r"\r\n[ \t]+", " ", head.decode("utf-8", "surrogateescape"))
    out = []
    for line in text.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        out.append((name.strip().lower(), value.strip()))
    return out


def values(headers: list[tuple[str, str]], *names: str) -> list[str]:
    return [v for n, v in headers if n in names]


def call_ids(data: bytes) -> list[str]:
    """The Call-ID of each request in the bytes (None-free: a block without one is skipped)."""
    out = []
    for start, end in header_blocks(data):
        found = values(unfolded_headers(data[start:end]), "call-id", "i")
        if found:
            out.append(found[0])
    return out


# -- SIP on the wire --------------------------------------------------------------------------


@dataclass
class Reply:
    """A response sipfed sent to the test's sender."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes) -> Reply:
        head = raw.split(b"\r\n\r\n", 1)[0]
        start = head.split(b"\r\n", 1)[0].decode("utf-8", "replace")
        match = re.match(r"SIP/2\.0 (\d{3}) ?(.*)", start)
        assert match is not None, f"sipfed sent something that is not a response: {raw[:200]!r}"
        return cls(int(match.group(1)), match.group(2), unfolded_headers(head), raw)

    def header(self, *names: str) -> str | None:
        found = values(self.headers, *names)
        return found[0] if found else None


def cut_messages(buffer: bytearray) -> Iterator[bytes]:
    """Whole messages off the front of a stream buffer, framed by Content-Length."""
    while True:
        while buffer[:2] == b"\r\n":
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lengths = CONTENT_LENGTH_RE.findall(bytes(buffer[:end]))
        length = int(lengths[0]) if lengths and lengths[0].isdigit() else 0
        if len(buffer) < end + 4 + length:
            return
        message = bytes(buffer[: end + 4 + length])
        del buffer[: end + 4 + length]
        yield message


class Sender:
    """A peer of sipfed on one transport: a UDP socket, or a TCP or mutual-TLS connection."""

    def __init__(self, lab: Lab, transport: str) -> None:
        self.transport = transport
        self.closed = False
        self._buffer = bytearray()
        target = ("127.0.0.1", lab.sipfed.ports[transport])
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.connect(target)
            return
        raw = socket.create_connection(target, timeout=5)
        if transport == "tls":
            context = ssl.create_default_context(cafile=str(lab.certs / "ca.crt"))
            context.load_cert_chain(lab.certs / "lync01.tomt.it.pem", lab.certs / "lync01.tomt.it.key")
            raw = context.wrap_socket(raw, server_hostname=FQDN)
        self.sock = raw

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, seconds: float, done: Callable[[list[Reply]], bool] = lambda _: False) -> list[Reply]:
        """Responses until ``done`` says so, the connection closes, or ``seconds`` pass."""
        got: list[Reply] = []
        deadline = time.monotonic() + seconds
        while not done(got) and not self.closed and (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(min(left, 0.2))
            try:
                chunk = self.sock.recv(65535)
            except TimeoutError:
                continue
            except (ssl.SSLError, ConnectionError, OSError):
                chunk = b""
            if not chunk and self.transport != "udp":
                self.closed = True
            elif self.transport == "udp":
                got.append(Reply.parse(chunk))
            else:
                self._buffer += chunk
                got.extend(Reply.parse(m) for m in cut_messages(self._buffer))
        return got

    def close(self) -> None:
        self.sock.close()


def finals(replies: list[Reply]) -> list[Reply]:
    return [r for r in replies if r.status >= 200]


# -- the sink behind the catch-all route ------------------------------------------------------


class Sink:
    """A stdlib SIP endpoint on TCP: answers every request but ACK with 200 and keeps what it received."""

    def __init__(self, ports: list[int]) -> None:
        self.received: list[bytes] = []
        self._cond = threading.Condition()
        self._sockets: list[socket.socket] = []
        for port in ports:
            listener = socket.create_server(("127.0.0.1", port))
            self._sockets.append(listener)
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        self.port = self._sockets[0].getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self._sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = bytearray()
        while True:
            try:
                chunk = conn.recv(65535)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            for message in cut_messages(buffer):
                with self._cond:
                    self.received.append(message)
                    self._cond.notify_all()
                if not message.startswith((b"SIP/", b"ACK ")):
                    conn.sendall(self._ok(message))

    @staticmethod
    def _ok(request: bytes) -> bytes:
        """RFC 3261 §8.2.6.2: the response copies Via, From, To, Call-ID and CSeq."""
        lines = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
        keep = {b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"}
        copied = [line for line in lines if line.partition(b":")[0].strip().lower() in keep]
        return b"\r\n".join([b"SIP/2.0 200 OK", *copied, b"Server: rfc4475-sink", b"Content-Length: 0", b"", b""])

    def wait_for(self, call_id: str, seconds: float) -> bytes | None:
        deadline = time.monotonic() + seconds
        with self._cond:
            while True:
                for message in self.received:
                    if call_id in call_ids(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


# -- the lab: one sipfed for the module -------------------------------------------------------


@dataclass
class StreamProbe:
    """clerr on a stream, sent when the module starts: when did sipfed close or answer it?"""

    transport: str
    call_id: str
    started: float = field(default_factory=time.monotonic)
    replies: list[Reply] = field(default_factory=list)
    closed_after: float | None = None
    answered_after: float | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Lab:
    sipfed: Sipfed
    sink: Sink
    certs: Path
    trace: Path
    probes: dict[str, StreamProbe] = field(default_factory=dict)

    def metric(self, name: str) -> float:
        return reading(self.sipfed, name)

    def sent(self, needle: str) -> list[tuple[str, str]]:
        """(remote, message) of every message sipfed's --trace shows it sending that contains ``needle``."""
        text = self.trace.read_bytes().decode("utf-8", "replace")  # keep CRLF: read_text would fold it
        parts = re.split(r"^\S+ (SEND|RECV) \S+ (\S+) (?:<-|->) \S+\n", text, flags=re.MULTILINE)
        return [
            (parts[i + 1], parts[i + 2])
            for i in range(1, len(parts) - 2, 3)
            if parts[i] == "SEND" and needle in parts[i + 2]
        ]


def write_config(path: Path, certs: Path, sink_port: int) -> Path:
    listeners = "".join(
        f"""
[[listeners]]
name = "{t}"
transport = "{t}"
address = "127.0.0.1"
port = 0
"""
        for t in TRANSPORTS
    )
    path.write_text(f"""
[proxy]
fqdn = "{FQDN}"
transaction_timeout_seconds = 2
connect_timeout_seconds = 2

[metrics]
listen = "127.0.0.1:0"

[tls]
cert_chain = "{certs}/sipfed.tomt.local.pem"
key = "{certs}/sipfed.tomt.local.key"
ca_bundle = "{certs}/ca.crt"
{listeners}
[[routes]]
name = "sink"
match_uri = "*"
destination = "127.0.0.1"
port = {sink_port}
transport = "tcp"
listener = "tcp"
""")
    return path


@pytest.fixture(scope="module")
def lab(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    corpus_files()  # fails, never skips, when the corpus is missing
    workdir = tmp_path_factory.mktemp("rfc4475")
    sink = Sink([free_port()])
    trace = workdir / "trace.log"
    sipfed = Sipfed(write_config(workdir / "sipfed.toml", certs, sink.port), args=("--trace", str(trace)))
    the_lab = Lab(sipfed, sink, certs, trace)
    try:
        for transport in ("tcp", "tls"):
            the_lab.probes[transport] = start_clerr_probe(the_lab, transport)
        yield the_lab
    finally:
        sipfed.stop()
        sink.close()


def start_clerr_probe(lab: Lab, transport: str) -> StreamProbe:
    data = personalise((CORPUS / "clerr.dat").read_bytes(), f"{transport}.clerr")
    probe = StreamProbe(transport, call_ids(data)[0])
    sender = Sender(lab, transport)
    sender.send(data)

    def watch() -> None:
        try:
            probe.replies = sender.replies(STREAM_BOUND_SECONDS, lambda got: bool(finals(got)))
            elapsed = time.monotonic() - probe.started
            if finals(probe.replies):
                probe.answered_after = elapsed
                sender.replies(max(0.0, STREAM_BOUND_SECONDS - elapsed))
            if sender.closed:
                probe.closed_after = time.monotonic() - probe.started
        finally:
            sender.close()
            probe.done.set()

    threading.Thread(target=watch, daemon=True).start()
    return probe


# -- checks -----------------------------------------------------------------------------------
#
# An absence (not relayed, not answered, not sent on) is read after a later OPTIONS went the same way, never
# after a pause: sipfed takes a sender's messages in order and relays to the sink on one connection, so had it
# relayed, answered or sent an earlier message, that would have reached the sink, the sender or the trace first.


def options(transport: str) -> tuple[str, bytes]:
    """An ordinary OPTIONS through sipfed to the sink: (its Call-ID, its bytes)."""
    call_id = f"alive-{uuid.uuid4().hex}"
    return call_id, (
        f"OPTIONS sip:alive@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:9;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:probe@example.org>;tag=1\r\nTo: <sip:alive@example.com>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def options_through(lab: Lab, sender: Sender) -> list[Reply]:
    """An OPTIONS on ``sender`` after what it sent before; every reply up to the OPTIONS' final one. Once that
    is back, the sink holds it and sipfed's trace shows it sent: whatever came before it is there too."""
    call_id, data = options(sender.transport)
    sender.send(data)
    replies = sender.replies(ANSWER_SECONDS, lambda got: any(r.header("call-id", "i") == call_id for r in finals(got)))
    mine = [r.status for r in finals(replies) if r.header("call-id", "i") == call_id]
    assert mine[:1] == [200], (
        f"no 200 for an OPTIONS over {sender.transport}: {[(r.status, r.reason) for r in replies]}"
    )
    wait_until(lambda: lab.sent(call_id), ANSWER_SECONDS, f"sipfed's trace shows the OPTIONS {call_id} sent")
    return [r for r in replies if r.header("call-id", "i") != call_id]


def relayed_so_far(lab: Lab, transport: str) -> None:
    """An OPTIONS from a new sender, relayed to the sink and answered: the sink has what sipfed relayed before."""
    sender = Sender(lab, transport)
    try:
        options_through(lab, sender)
    finally:
        sender.close()


def check_relayed(lab: Lab, case: Case, sent: bytes, relayed: bytes, expect: Expect) -> None:
    """sipfed's Via on top, the sender's below it, Max-Forwards one less, the listed bytes untouched."""
    original = unfolded_headers(sent.lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0])
    out = unfolded_headers(relayed.split(b"\r\n\r\n", 1)[0])
    vias = [v.strip() for value in values(out, "via", "v") for v in value.split(",")]
    before = [v.strip() for value in values(original, "via", "v") for v in value.split(",")]
    top = re.match(r"SIP/2\.0/\w+ ([\w.-]+):(\d+);branch=(z9hG4bK[^;\s]+)", vias[0] if vias else "")
    ours = {FQDN, "127.0.0.1"}
    assert top is not None, f"{case.file}: the relayed request's top Via is not sipfed's: {vias[:1]}"
    assert top.group(1) in ours, f"{case.file}: the relayed request's top Via is not sipfed's: {vias[:1]}"
    assert int(top.group(2)) in lab.sipfed.ports.values(), f"{case.file}: top Via port is not sipfed's: {vias[:1]}"
    assert len(vias) == len(before) + 1, f"{case.file}: {len(before)} Via values in, {len(vias)} out"
    mf_in = values(original, "max-forwards")
    mf_out = values(out, "max-forwards")
    wanted = int(mf_in[0]) - 1 if mf_in else 70  # RFC 3261 §16.6 step 3
    assert [int(v) for v in mf_out[:1]] == [wanted], f"{case.file}: Max-Forwards {mf_in} in, {mf_out} out"
    for needle in expect.forwarded:
        assert needle in relayed, f"{case.file}: the relayed request lost {needle!r} ({case.says})"
    for needle in expect.absent:
        assert needle not in relayed, f"{case.file}: the relayed request carries {needle!r} ({case.says})"


def describe(message: bytes) -> str:
    """The start line, the header lines that matter here, and the body size of a relayed message."""
    head, _, body = message.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    keep = ("from", "to", "f", "t", "content-length", "l")
    shown = [lines[0], *(line for line in lines[1:] if line.partition(":")[0].strip().lower() in keep)]
    return "\n".join(f"    {line}" for line in shown) + f"\n    ({len(body)} body octets)"


def expect_relay(lab: Lab, case: Case, sender: Sender, sent: bytes, expect: Expect) -> None:
    ids = call_ids(sent)
    relayed_ids = ids if expect.every_message else ids[:1]
    if expect.route_host:
        expect_relay_via_route(lab, case, sender, sent, expect, ids[0])
        return
    deadline = time.monotonic() + ANSWER_SECONDS
    replies = sender.replies(ANSWER_SECONDS, lambda got: len(finals(got)) >= len(relayed_ids))
    for call_id in relayed_ids:
        relayed = lab.sink.wait_for(call_id, max(0.2, deadline - time.monotonic()))
        assert relayed is not None, (
            f"{case.file} over {sender.transport}: not relayed; sipfed answered "
            f"{[(r.status, r.reason) for r in replies]} — RFC 4475 §{case.section}: "
            f"{case.says}"
        )
        block = next(sent[s : e + 4] for s, e in header_blocks(sent) if call_id in call_ids(sent[s : e + 4]))
        check_relayed(lab, case, block, relayed, expect)
        answer = [r for r in finals(replies) if r.header("call-id", "i") == call_id]
        got = [(r.status, r.header("server")) for r in answer[:1]]
        assert got == [(200, "rfc4475-sink")], (
            f"{case.file}: the sender did not get the sink's 200 for "
            f"{call_id}: {[(r.status, r.reason) for r in replies]}"
        )
    assert not sender.closed, f"{case.file} over {sender.transport}: sipfed closed the sender's connection"
    if ids[len(relayed_ids) :]:
        relayed_so_far(lab, sender.transport)
    for call_id in ids[len(relayed_ids) :]:
        assert lab.sink.wait_for(call_id, 0) is None, f"{case.file}: {call_id} was relayed ({case.says})"
    if case.file == "mpart01":
        body = sent.split(b"\r\n\r\n", 1)[1]
        relayed_body = (lab.sink.wait_for(ids[0], 0) or b"").split(b"\r\n\r\n", 1)[1]
        assert relayed_body == body, "mpart01: the multipart body was not relayed octet for octet"


def expect_relay_via_route(lab: Lab, case: Case, sender: Sender, sent: bytes, expect: Expect, call_id: str) -> None:
    """The request's own Route header picks the next hop; sipfed's --trace shows what it sent there."""
    replies = sender.replies(1.0, lambda got: bool(finals(got)))
    refused = [r for r in finals(replies) if 400 <= r.status < 500]
    assert not refused, f"{case.file}: refused {[(r.status, r.reason) for r in refused]} — {case.says}"
    out = wait_until(
        lambda: [m for r, m in lab.sent(call_id) if r.startswith(expect.route_host + ":")],
        ANSWER_SECONDS,
        f"{case.file}: sent toward {expect.route_host} — {case.says}",
    )
    check_relayed(lab, case, sent, out[0].encode("utf-8", "surrogateescape"), expect)
    # Whatever becomes of the next hop, the sender's connection is not the one to pay for it: it still serves.
    if sender.transport != "udp":
        later = options_through(lab, sender)
        assert not sender.closed, (
            f"{case.file} over {sender.transport}: sipfed closed the sender's connection "
            f"after {[(r.status, r.reason) for r in replies + later]} while relaying toward "
            f"{expect.route_host}"
        )


def expect_reject(lab: Lab, case: Case, sender: Sender, sent: bytes, expect: Expect) -> None:
    replies = sender.replies(ANSWER_SECONDS, lambda got: bool(finals(got)))
    answered = finals(replies)
    ids = call_ids(sent)
    relayed_so_far(lab, sender.transport)
    relayed = [m for i in ids if (m := lab.sink.wait_for(i, 0)) is not None]
    assert not relayed, (
        f"{case.file} over {sender.transport}: relayed, expected {expect.status} — "
        f"RFC 4475 §{case.section}: {case.says}\nsipfed answered "
        f"{[(r.status, r.reason) for r in answered]} and relayed:\n{describe(relayed[0])}"
    )
    assert answered, (
        f"{case.file} over {sender.transport}: no final response in {ANSWER_SECONDS:g} s "
        f"(closed={sender.closed}), expected {expect.status} — RFC 4475 §{case.section}: {case.says}"
    )
    final = answered[0]
    named = re.search(expect.reason, final.reason, re.IGNORECASE) is not None
    assert (final.status, named) == (expect.status, True), (
        f"{case.file} over {sender.transport}: got {final.status} {final.reason!r}, expected {expect.status} "
        f"with a reason naming the fault (/{expect.reason}/) — RFC 4475 §{case.section}: {case.says}"
    )
    if case.file == "bext01":
        unsupported = final.header("unsupported") or ""
        tags = {t.strip() for t in unsupported.split(",")}
        assert tags == {"noProxiesSupportThis", "norDoAnyProxiesSupportThis"}, (
            f"bext01: Unsupported must list the Proxy-Require tags (a proxy's role): {unsupported!r}"
        )
    if expect.closes:
        sender.replies(STREAM_BOUND_SECONDS)
        assert sender.closed, (
            f"{case.file} over {sender.transport}: connection still open after "
            f"{STREAM_BOUND_SECONDS:g} s — RFC 4475 §{case.section}: {case.says}"
        )


def expect_drop(lab: Lab, case: Case, sender: Sender, sent: bytes, expect: Expect, counted_before: float) -> None:
    replies = options_through(lab, sender)  # an answer to the dropped one would have come before the OPTIONS'
    assert not replies, f"{case.file}: sipfed answered a response: {[(r.status, r.reason) for r in replies]}"
    call_id = values(unfolded_headers(sent.split(b"\r\n\r\n", 1)[0]), "call-id", "i")[0]
    assert not lab.sent(call_id), f"{case.file}: sipfed sent it on: {lab.sent(call_id)[0][0]} — {case.says}"
    if expect.counted:
        assert lab.metric("sipfed_malformed_messages_total") > counted_before, (
            f"{case.file} over {sender.transport}: dropped but not counted in sipfed_malformed_messages_total "
            f"(issue 5: invalid responses are dropped and counted)"
        )


def expect_stream_close(lab: Lab, case: Case, transport: str) -> None:
    probe = lab.probes[transport]
    assert probe.done.wait(STREAM_BOUND_SECONDS + 5), f"{case.file} over {transport}: the probe never finished"
    print(
        f"\n{case.file} over {transport}: answered after {probe.answered_after}, closed after "
        f"{probe.closed_after} s; replies {[(r.status, r.reason) for r in probe.replies]}"
    )
    relayed_so_far(lab, transport)
    assert lab.sink.wait_for(probe.call_id, 0) is None, f"{case.file} over {transport}: relayed a partial message"
    assert probe.closed_after is not None or probe.answered_after is not None, (
        f"{case.file} over {transport}: connection neither closed nor answered within {STREAM_BOUND_SECONDS:g} s "
        f"— RFC 4475 §{case.section}: {case.says}"
    )


def assert_alive(lab: Lab, transport: str) -> None:
    """The process still runs and relays an ordinary OPTIONS on the same transport."""
    assert lab.sipfed.proc.poll() is None, "sipfed exited:\n" + lab.sipfed.log_text()
    _, data = options(transport)
    sender = Sender(lab, transport)
    try:
        sender.send(data)
        answer = finals(sender.replies(ANSWER_SECONDS, lambda got: bool(finals(got))))
    finally:
        sender.close()
    assert [r.status for r in answer[:1]] == [200], f"sipfed no longer relays OPTIONS over {transport}: {answer}"


# -- the test ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "transport"),
    [(c.file, t) for c in CASES for t in TRANSPORTS],
    ids=[f"{c.file}-{t}" for c in CASES for t in TRANSPORTS],
)
def test_rfc4475(lab: Lab, name: str, transport: str) -> None:
    case = CASES_BY_FILE[name]
    expect = case.expect(transport)
    if expect.outcome == "close":
        expect_stream_close(lab, case, transport)
        assert_alive(lab, transport)
        return
    sent = personalise((CORPUS / f"{name}.dat").read_bytes(), f"{transport}.{name}")
    if name == "mpart01":  # its Route names 127.0.0.1:5080: point it at the sink (a header edit; the body is kept)
        sent = sent.replace(b"<sip:127.0.0.1:5080>", f"<sip:127.0.0.1:{lab.sink.port}>".encode())
    counted_before = lab.metric("sipfed_malformed_messages_total")
    sender = Sender(lab, transport)
    try:
        sender.send(sent)
        if expect.outcome == "relay":
            expect_relay(lab, case, sender, sent, expect)
        elif expect.outcome == "reject":
            expect_reject(lab, case, sender, sent, expect)
        else:
            expect_drop(lab, case, sender, sent, expect, counted_before)
    finally:
        sender.close()
    assert_alive(lab, transport)


def test_every_corpus_file_has_an_expectation() -> None:
    assert sorted(p.stem for p in corpus_files()) == sorted(CASES_BY_FILE)


def _outcome(expect: Expect) -> str:
    if expect.outcome == "reject":
        return f"reject {expect.status}" + (", close" if expect.closes else "")
    if expect.outcome == "drop":
        return "drop" + (" (counted)" if expect.counted else "")
    return expect.outcome


def test_the_corpus_index_matches_the_expectations() -> None:
    """tests/data/rfc4475/README.md maps each file to its section and outcome; it must say what CASES asserts."""
    index = (IN_REPO / "README.md").read_text()
    rows = {
        m[1]: (m[2], m[3], m[4])
        for m in re.finditer(r"^\| (\w+)\.dat \| §(\S+) \| [^|]+ \| ([^|]+?) \| ([^|]+?) \|$", index, re.MULTILINE)
    }
    assert sorted(rows) == sorted(CASES_BY_FILE)
    for name, case in CASES_BY_FILE.items():
        stream = case.stream if case.stream is not None else case.datagram
        assert rows[name] == (case.section, _outcome(case.datagram), _outcome(stream)), name


def test_no_internal_error_logged(lab: Lab) -> None:
    """After the whole corpus: no message made the core raise (the driver logs it and carries on)."""
    log = lab.sipfed.log_text()
    for marker in ("internal error", "Traceback"):
        at = log.find(marker)
        assert at < 0, "sipfed logged an exception:\n" + log[max(0, log.rfind("\n", 0, at - 200)) : at + 2500]
