"""The sans-IO SIP grammar: whole-message parsing (RFC 3261 §7, RFC 4475 torture messages),
stream framing (§18.3, RFC 5626 §4.4.1), URIs (§19.1) and header values (§20, §7.3.3)."""

import pytest

from proxy.relay.local import reply_to_unparsed
from proxy.sip.errors import MessageTooLarge, SipError, SipSyntaxError, UnsupportedVersion
from proxy.sip.headers import canonical, parse_name_addr, parse_via, split_commas, via_branch
from proxy.sip.message import Request, Response, parse_message
from proxy.sip.parser import FramingError, Ping, StreamFramer, content_length_by_grammar
from proxy.sip.uri import UnsupportedScheme, parse_uri
from tests.corpus import CORPUS

#: RFC 4475 §3.1.1: valid messages an element must parse.
VALID = [
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
]

#: RFC 4475 §3.1.2 / §3.3: invalid messages and the status a server answers (or SipError for a response).
INVALID = [
    ("badinv01", 400),  # §3.1.2.1 extraneous header field separators
    ("clerr", 400),  # §3.1.2.2 Content-Length larger than the message
    ("ncl", 400),  # §3.1.2.3 negative Content-Length
    ("scalar02", 400),  # §3.1.2.4 overlarge CSeq
    ("lwsstart", 400),  # §3.1.2.9 multiple SP in the Request-Line
    ("trws", 400),  # §3.1.2.10 SP at the end of the Request-Line
    ("badvers", 505),  # §3.1.2.16 SIP/7.0
    ("mismatch01", 400),  # §3.1.2.17 CSeq method mismatch
    ("bigcode", 400),  # §3.1.2.19 status code 4294967301
    ("insuf", 400),  # §3.3.1 missing From, To, Call-ID, Max-Forwards
    ("multi01", 400),  # §3.3.8 several values in single-value headers
    ("mcl01", 400),  # §3.3.9 two Content-Length values
]


def corpus(name: str) -> bytes:
    return (CORPUS / f"{name}.dat").read_bytes()


def message(method: str = "MESSAGE", extra: str = "", body: bytes = b"", *, compact: bool = False) -> bytes:
    """A small well-formed request; ``extra`` is inserted as header lines before Content-Length."""
    names = ("v", "f", "t", "i", "l") if compact else ("Via", "From", "To", "Call-ID", "Content-Length")
    via, from_, to, call_id, length = names
    head = (
        f"{method} sip:alice@tomt.local SIP/2.0\r\n"
        f"{via}: SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bK-{method.lower()}-1\r\n"
        f"{from_}: <sip:bob@tomt.it>;tag=a1\r\n"
        f"{to}: <sip:alice@tomt.local>\r\n"
        f"{call_id}: call-{method.lower()}@tomt.it\r\n"
        f"CSeq: 1 {method}\r\n"
        "Max-Forwards: 70\r\n"
        f"{extra}"
        f"{length}: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def triples(m: Request | Response) -> list[tuple[str, str, str]]:
    return list(m.headers)


# -- RFC 4475 §3.1.1: valid messages --------------------------------------------------------


@pytest.mark.parametrize("name", VALID)
def test_valid_torture_message_parses_and_round_trips(name: str) -> None:
    first = parse_message(corpus(name), datagram=True)
    second = parse_message(first.to_bytes(), datagram=True)
    assert second.start_line() == first.start_line()
    expected = triples(first)
    if "content-length" not in first.headers:  # to_bytes adds one (RFC 3261 §20.14)
        expected.append(("content-length", "Content-Length", str(len(first.body))))
    assert triples(second) == expected
    assert second.body == first.body


UNUSUAL_VIAS = [
    "SIP/2.0/TLS sipfed.tomt.local:5061;branch=z9hG4bKsf1.2",
    "SIP/2.0/UDP 10.0.0.1;received=10.0.0.9;branch=z9hG4bKx;rport=5060",
    "SIP/2.0/TCP h;branch=z9hG4bKy ;rport",
    "SIP/2.0/TCP h ; branch = z9hG4bKspaced ; rport",
    "SIP/2.0/TCP h;BRANCH=z9hG4bKupper",
    'SIP/2.0/TCP h;x=";branch=z9hG4bKdecoy";branch=z9hG4bKreal',
    "SIP/2.0/TCP h;xbranch=z9hG4bKnot;branch=z9hG4bKthis",
    "SIP/2.0/TCP h;rport",
]


@pytest.mark.parametrize("value", UNUSUAL_VIAS)
def test_via_branch_shortcut_agrees_with_the_full_parse(value: str) -> None:
    assert via_branch(value) == parse_via(value).branch


@pytest.mark.parametrize("name", VALID)
def test_via_branch_shortcut_agrees_on_every_torture_via(name: str) -> None:
    for value in parse_message(corpus(name), datagram=True).headers.get_all("via"):
        assert via_branch(value) == parse_via(value).branch, value


def test_wsinv_folded_and_compact_headers_are_unfolded() -> None:
    m = parse_message(corpus("wsinv"), datagram=True)
    assert isinstance(m, Request)
    assert m.method == "INVITE"
    assert m.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert m.headers.get("max-forwards") == "0068"
    assert m.cseq == (9, "INVITE")
    assert [v.transport for v in m.vias] == ["UDP", "TCP", "UDP"]
    assert m.vias[1].branch == "z9hG4bK9ikj8"
    assert len(m.body) == 150


def test_wsinv_from_with_escaped_quote_in_display_name() -> None:
    """RFC 4475 §3.1.1.1: the display name ``"J Rosenberg \\\\\\""`` holds an escaped backslash and quote."""
    m = parse_message(corpus("wsinv"), datagram=True)
    assert m.from_.uri.user == "jdrosen"
    assert m.from_.param("tag") == "98asjd8"


def test_intmeth_unusual_method_and_uri_characters() -> None:
    """RFC 4475 §3.1.1.2: '?' and ':' are legal in the user part (RFC 3261 §25.1 user-unreserved)."""
    m = parse_message(corpus("intmeth"), datagram=True)
    assert isinstance(m, Request)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.cseq[1] == m.method
    uri = m.request_uri
    assert uri.host == "example.com"
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"


def test_escaped_and_semicolon_user_parts() -> None:
    esc01 = parse_message(corpus("esc01"), datagram=True)
    assert isinstance(esc01, Request)
    assert esc01.request_uri.user == "sips%3Auser%40example.com"
    assert esc01.request_uri.host == "example.net"
    semi = parse_message(corpus("semiuri"), datagram=True)
    assert isinstance(semi, Request)
    assert semi.request_uri.user == "user;par=u%40example.net"
    assert semi.request_uri.host == "example.com"
    assert parse_message(corpus("escnull"), datagram=True).from_.uri.user == "null-%00-null"


def test_lwsdisp_display_name_without_space() -> None:
    assert parse_message(corpus("lwsdisp"), datagram=True).from_.display == "caller"


def test_transports_unknown_transports_kept() -> None:
    vias = parse_message(corpus("transports"), datagram=True).vias
    assert [v.transport for v in vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_dblreq_trailing_octets_dropped() -> None:
    m = parse_message(corpus("dblreq"), datagram=True)
    assert isinstance(m, Request)
    assert m.method == "REGISTER"
    assert m.body == b""
    assert b"INVITE" not in m.to_bytes()


def test_mpart01_multipart_body_kept() -> None:
    data = corpus("mpart01")
    m = parse_message(data, datagram=True)
    assert m.body == data.split(b"\r\n\r\n", 1)[1][: int(m.headers.get("content-length") or 0)]
    assert m.body.startswith(b"--")


def test_unusual_and_empty_reason_phrases() -> None:
    unreason = parse_message(corpus("unreason"), datagram=True)
    assert isinstance(unreason, Response)
    assert unreason.status == 200
    assert unreason.reason.startswith("= 2**3 * 5**2")
    noreason = parse_message(corpus("noreason"), datagram=True)
    assert isinstance(noreason, Response)
    assert (noreason.status, noreason.reason) == (100, "")


# -- RFC 4475 §3.1.2 and §3.3: invalid messages ----------------------------------------------


@pytest.mark.parametrize(("name", "status"), INVALID)
def test_invalid_torture_message_raises_with_status(name: str, status: int) -> None:
    with pytest.raises(SipError) as info:
        parse_message(corpus(name), datagram=True)
    assert info.value.status == status


def test_badvers_is_unsupported_version() -> None:
    with pytest.raises(UnsupportedVersion):
        parse_message(corpus("badvers"), datagram=True)


def test_message_without_blank_line_rejected() -> None:
    with pytest.raises(SipError) as info:
        parse_message(b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\n")
    assert info.value.status == 400


def test_bad_cseq_rejected() -> None:
    with pytest.raises(SipError) as info:
        parse_message(message().replace(b"CSeq: 1 MESSAGE", b"CSeq: one MESSAGE"))
    assert info.value.status == 400


# -- round trip of what the proxy does not understand ---------------------------------------


def test_unknown_headers_and_lync_ms_params_survive_byte_for_byte() -> None:
    extra = (
        "Record-Route: <sip:lyncpool.tomt.it:5061;transport=tls;opaque=state:F:Ci.R2f0e00;lr;"
        "ms-route-sig=gaE1pSnxQkHbN4Tqm>;tag=A1B2\r\n"
        "Contact: <sip:bob@lync01.tomt.it;transport=tls;ms-opaque=7f2b1c;ms-received-cid=2D00>;"
        '+sip.instance="<urn:uuid:2b5f-11>"\r\n'
        "ms-keep-alive: UAS; tcp=no; hop-hop=yes; end-end=no; timeout=300\r\n"
        "X-Weird:   spaced ;; value,,\r\n"
        "Content-Type: text/plain; charset=UTF-8\r\n"
    )
    raw = message(extra=extra, body=b"hello \xe2\x9c\x93")
    m = parse_message(raw)
    assert m.to_bytes() == raw.replace(b"X-Weird:   spaced", b"X-Weird: spaced")
    rr = parse_name_addr(m.headers.get("record-route") or "")
    assert rr.uri.param("ms-route-sig") == "gaE1pSnxQkHbN4Tqm"
    assert str(rr) == (
        "<sip:lyncpool.tomt.it:5061;transport=tls;opaque=state:F:Ci.R2f0e00;lr;ms-route-sig=gaE1pSnxQkHbN4Tqm>;tag=A1B2"
    )


def test_compact_forms_looked_up_by_canonical_name() -> None:
    m = parse_message(message(extra="m: <sip:bob@10.0.0.1>\r\n", body=b"hi", compact=True))
    assert m.headers.get("via") == "SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bK-message-1"
    assert m.call_id == "call-message@tomt.it"
    assert m.from_.param("tag") == "a1"
    assert m.to.uri.user == "alice"
    assert m.headers.get("content-length") == "2"
    assert m.headers.get("contact") == "<sip:bob@10.0.0.1>"
    assert m.body == b"hi"
    assert b"\r\nv: SIP/2.0" in m.to_bytes()  # the name is written back as it came


def test_canonical_names() -> None:
    pairs = {
        "v": "via",
        "I": "call-id",
        "f": "from",
        "t": "to",
        "l": "content-length",
        "m": "contact",
        "CALL-ID": "call-id",
        "X-Unknown": "x-unknown",
        "k": "supported",
        "o": "event",
    }
    assert {name: canonical(name) for name in pairs} == pairs


def test_via_line_with_several_values_is_split() -> None:
    m = parse_message(message(extra="Via: SIP/2.0/TCP a.example;branch=z9hG4bK2, SIP/2.0/UDP b.example\r\n"))
    assert [v.host for v in m.vias] == ["lync01.tomt.it", "a.example", "b.example"]


# -- header values ---------------------------------------------------------------------------


def test_parse_via() -> None:
    via = parse_via("SIP/2.0/tls sipfed.tomt.local:5061;branch=z9hG4bKabc;rport;received=10.0.0.1")
    assert (via.transport, via.host, via.port, via.branch) == ("TLS", "sipfed.tomt.local", 5061, "z9hG4bKabc")
    assert via.param("rport") == ""
    assert via.param("RECEIVED") == "10.0.0.1"
    assert via.sent_by == "sipfed.tomt.local:5061"
    v6 = parse_via("SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1")
    assert (v6.host, v6.port) == ("[2001:db8::1]", 5060)
    assert parse_via("SIP/2.0/TCP host.example").port is None


@pytest.mark.parametrize("value", ["SIP/3.0/UDP h;branch=z9hG4bK1", "SIP/2.0/UDP h:70000", "SIP/2.0 h", "junk", ""])
def test_parse_via_rejects(value: str) -> None:
    with pytest.raises(SipError) as info:
        parse_via(value)
    assert info.value.status == 400


def test_parse_name_addr_forms() -> None:
    full = parse_name_addr('"Bob Smith" <sip:bob@tomt.it;transport=tls>;tag=xyz;epid=1')
    assert full.display == '"Bob Smith"'
    assert full.uri.param("transport") == "tls"
    assert full.param("tag") == "xyz"
    assert full.angle
    bare = parse_name_addr("sip:bob@tomt.it;tag=abc")
    assert not bare.angle
    assert bare.uri.params == ()  # §20.10: without <> the parameters are the header's
    assert bare.param("tag") == "abc"
    assert parse_name_addr("<sip:a@b>").display == ""


def test_parse_name_addr_angle_bracket_inside_quoted_display_name() -> None:
    """RFC 3261 §25.1: a quoted-string may contain '<' and '>'."""
    na = parse_name_addr('"Bob <the boss>" <sip:bob@tomt.it>;tag=1')
    assert na.display == '"Bob <the boss>"'
    assert na.uri.user == "bob"


@pytest.mark.parametrize("value", ['"unterminated <sip:a@b>', "<sip:a@b", "<tel:+1>", "<sip:a@b>junk"])
def test_parse_name_addr_rejects(value: str) -> None:
    with pytest.raises(SipError):
        parse_name_addr(value)


def test_split_commas() -> None:
    assert split_commas("<sip:a@b>") == ["<sip:a@b>"]
    assert split_commas('"Doe, John" <sip:j@x;p=1,2>, <sip:k@y> ,sip:z@w') == [
        '"Doe, John" <sip:j@x;p=1,2>',
        "<sip:k@y>",
        "sip:z@w",
    ]
    assert split_commas(r'"a \", b" <sip:x@y>, <sip:z@w>') == [r'"a \", b" <sip:x@y>', "<sip:z@w>"]
    with pytest.raises(SipError):
        split_commas('"open, <sip:x@y>')


# -- URIs ------------------------------------------------------------------------------------


def test_parse_uri_parts() -> None:
    uri = parse_uri("sip:alice@tomt.local:5062;transport=TLS;lr;ms-opaque=ab12?Subject=hi")
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", "alice", "tomt.local", 5062)
    assert uri.params == (("transport", "TLS"), ("lr", None), ("ms-opaque", "ab12"))
    assert uri.headers == "Subject=hi"
    assert uri.transport == "tls"
    assert str(uri) == "sip:alice@tomt.local:5062;transport=TLS;lr;ms-opaque=ab12?Subject=hi"


def test_parse_uri_variants() -> None:
    assert parse_uri("SIPS:h.example").scheme == "sips"
    assert parse_uri("sips:h.example").transport == "tls"
    assert parse_uri("sip:h.example").transport == "udp"
    v6 = parse_uri("sip:[2001:db8::1]:5061;transport=tls")
    assert (v6.host, v6.port, v6.host_is_ip) == ("[2001:db8::1]", 5061, True)
    assert parse_uri("sip:a@h.example;maddr=10.0.0.9").target_host == "10.0.0.9"
    assert parse_uri("sip:user:secret@h.example").user == "user:secret"
    assert parse_uri("sip:h.example;maddr=x").with_param("MADDR", "y").param("maddr") == "y"


@pytest.mark.parametrize("text", ["tel:+15551234", "nope:whatever", "mailto:a@b"])
def test_parse_uri_unknown_scheme_is_416(text: str) -> None:
    with pytest.raises(UnsupportedScheme) as info:
        parse_uri(text)
    assert info.value.status == 416


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:@h.example",
        "sip:h.example:70000",
        "sip:h.example:0",
        "sip:a b@c",
        "no-scheme",
        "sip:h_x!.example",
        "sip:[::1",
    ],
)
def test_parse_uri_malformed_is_400(text: str) -> None:
    with pytest.raises(SipError) as info:
        parse_uri(text)
    assert info.value.status == 400


def test_parse_uri_enclosed_in_angle_brackets_is_400_not_416() -> None:
    """RFC 4475 §3.1.2.7: ``<sip:...>`` as Request-URI is a syntax error (400); '<sip' is no scheme at all."""
    with pytest.raises(SipError) as info:
        parse_uri("<sip:user@example.com>")
    assert info.value.status == 400


# -- stream framing --------------------------------------------------------------------------


def test_framer_byte_by_byte() -> None:
    raw = message(body=b"hello world")
    framer = StreamFramer()
    frames = [f for i in range(len(raw)) for f in framer.feed(raw[i : i + 1])]
    assert frames == [raw]
    assert framer.pending == 0


@pytest.mark.parametrize("cut", [1, 7, 50, 150, 299])
def test_framer_arbitrary_chunk_boundaries(cut: int) -> None:
    stream = message(body=b"x" * 40) + message("OPTIONS")
    framer = StreamFramer()
    frames = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
    assert frames == [message(body=b"x" * 40), message("OPTIONS")]


CONTENT_LENGTH_LINES = [
    b"Content-Length: 22",
    b"content-length:22",
    b"CONTENT-LENGTH \t:  7 ",
    b"Content-Length: 0022",
    b"Content-Length:\r\n 5",
    b"l: 4",
    b"Content-Length: 4\r\nl: 4",
    b"Content-Length: 4\r\nContent-Length: 5",
    b"Content-Length: -1",
    b"Content-Length: 1 2",
    b"Content-Length: 5\r",
    b"Content-Length: 5\r\r",
    b"Content-Lengthy: 5",
    b"Content-Length 5",
    b"Location: x\r\nContent-Length: 3",
    b"Content-Length: \xd9",
    b"Content-Length: 99999999999999999999",
    b"X-Content-Length: 5",
    b"Subject: a\nContent-Length: 6",
]


@pytest.mark.parametrize("line", CONTENT_LENGTH_LINES)
def test_framer_content_length_shortcut_agrees_with_the_grammar(line: bytes) -> None:
    head = message().replace(b"Content-Length: 0", line)
    head = head[: head.index(b"\r\n\r\n") + 4]
    got, want = StreamFramer()._content_length(head), content_length_by_grammar(head)
    assert repr(got) == repr(want)


@pytest.mark.parametrize("name", VALID + [name for name, _ in INVALID])
def test_framer_content_length_shortcut_agrees_on_torture_heads(name: str) -> None:
    data = corpus(name)
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return
    head = data[: end + 4]
    assert repr(StreamFramer()._content_length(head)) == repr(content_length_by_grammar(head))


def test_framer_two_messages_in_one_chunk() -> None:
    one, two = message(body=b"abc"), message("NOTIFY", body=b"<presence/>")
    assert StreamFramer().feed(one + two) == [one, two]


def test_framer_compact_content_length() -> None:
    raw = message(body=b"12345", compact=True)
    assert StreamFramer().feed(raw + message()) == [raw, message()]


def test_framer_folded_content_length() -> None:
    """RFC 3261 §7.3.1: a header value may continue on the next line (LWS), Content-Length too."""
    raw = message(body=b"hello").replace(b"Content-Length: 5", b"Content-Length:\r\n 5")
    assert StreamFramer().feed(raw + message()) == [raw, message()]


def test_framer_keepalive_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [Ping()]
    frames = [f for b in b"\r\n\r\n" for f in framer.feed(bytes([b]))]
    assert frames == [Ping()]
    assert framer.feed(b"\r\n\r\n" + message()) == [Ping(), message()]


def test_framer_lone_crlf_skipped() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(message()) == [message()]
    assert framer.feed(b"\r\n" + message("OPTIONS")) == [message("OPTIONS")]


def test_framer_oversized_message_skipped_then_next_frames() -> None:
    big = message(body=b"B" * 3000)
    after = message("OPTIONS")
    framer = StreamFramer(max_message_bytes=2000)
    frames = framer.feed(big + after)
    assert len(frames) == 2
    error = frames[0]
    assert isinstance(error, FramingError)
    assert isinstance(error.error, MessageTooLarge)
    assert error.status == 513
    assert not error.fatal
    assert error.head.startswith(b"MESSAGE sip:alice@tomt.local")
    assert frames[1] == after
    assert not framer.broken


def test_framer_oversized_message_in_small_chunks() -> None:
    stream = message(body=b"B" * 3000) + message("OPTIONS")
    framer = StreamFramer(max_message_bytes=2000)
    frames = [f for i in range(0, len(stream), 100) for f in framer.feed(stream[i : i + 100])]
    assert [type(f) for f in frames] == [FramingError, bytes]
    assert frames[1] == message("OPTIONS")


def test_framer_header_block_too_large_is_fatal() -> None:
    framer = StreamFramer(max_header_bytes=1024)
    frames = framer.feed(b"MESSAGE sip:a@b SIP/2.0\r\nX-Pad: " + b"a" * 2000)
    assert len(frames) == 1
    error = frames[0]
    assert isinstance(error, FramingError)
    assert error.fatal
    assert error.status == 513
    assert framer.broken
    assert framer.feed(message()) == []


def test_framer_header_block_too_large_whatever_the_chunking() -> None:
    """The cap must not depend on how TCP cut the stream: a whole oversized header block is refused too."""
    head = message(extra="X-Pad: " + "a" * 2000 + "\r\n")
    frames = StreamFramer(max_header_bytes=1024).feed(head)
    assert len(frames) == 1
    assert isinstance(frames[0], FramingError)
    assert frames[0].fatal


@pytest.mark.parametrize("value", [b"-5", b"abc", b"1 2"])
def test_framer_bad_content_length_is_fatal_400(value: bytes) -> None:
    raw = message().replace(b"Content-Length: 0", b"Content-Length: " + value)
    framer = StreamFramer()
    frames = framer.feed(raw + message())
    assert len(frames) == 1
    error = frames[0]
    assert isinstance(error, FramingError)
    assert error.fatal
    assert error.status == 400
    assert error.head.startswith(b"MESSAGE ")
    assert framer.broken


def test_framer_conflicting_content_lengths_fatal() -> None:
    raw = message().replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 4")
    frames = StreamFramer().feed(raw)
    assert isinstance(frames[0], FramingError)
    assert frames[0].fatal
    assert frames[0].status == 400


def test_framer_waits_for_body() -> None:
    raw = message(body=b"0123456789")
    framer = StreamFramer()
    assert framer.feed(raw[:-3]) == []
    assert framer.pending == len(raw) - 3
    assert framer.feed(raw[-3:]) == [raw]


# -- issue 14 row 12: one unescaped '@' per URI (RFC 3261 §25.1) ----------------------------


@pytest.mark.parametrize(
    "text",
    [
        "sip:ceo@tomt.local;x=@tomt.it",
        "sip:ceo@tomt.local?x=@tomt.it",
        "sip:ceo@tomt.local;x=a@b?y=@tomt.it",
        "sips:a@b@tomt.it",
        "sip:@@tomt.it",
    ],
)
def test_parse_uri_second_unescaped_at_is_400(text: str) -> None:
    """userinfo ends at the only '@'; paramchar and hvalue have no '@' (escaped %40 only), so a second is 400."""
    with pytest.raises(SipSyntaxError) as info:
        parse_uri(text)
    assert info.value.status == 400


def test_parse_uri_escaped_at_in_userinfo_and_params_still_parses() -> None:
    """RFC 4475 §3.1.1.9 semiuri and §3.1.1.1 esc01: '%40' is no '@'."""
    assert parse_uri("sip:user;par=u%40example.net@example.com").host == "example.com"
    assert parse_uri("sip:ceo@tomt.local;x=%40tomt.it?y=%40tomt.it").host == "tomt.local"
    # With one '@', what stands before it is userinfo, ';' and '=' included (user-unreserved): domain tomt.it.
    assert (parse_uri("sip:tomt.local;x=@tomt.it").user, parse_uri("sip:tomt.local;x=@tomt.it").host) == (
        "tomt.local;x=",
        "tomt.it",
    )


@pytest.mark.parametrize("value", ["<sip:ceo@tomt.local;x=@tomt.it>;tag=1", "<sip:ceo@tomt.local?x=@tomt.it>;tag=1"])
def test_from_with_second_at_sign_is_400_not_another_domain(value: str) -> None:
    raw = message().replace(b"From: <sip:bob@tomt.it>;tag=a1", b"From: " + value.encode())
    with pytest.raises(SipSyntaxError) as info:
        parse_message(raw, datagram=True).from_  # noqa: B018
    assert info.value.status == 400
    with pytest.raises(SipSyntaxError):
        parse_name_addr(value)


# -- issue 14 row 13: an oversized header block on a stream is answered 513 ------------------


def oversized_error(stream: bytes, chunk: int = 0, max_header_bytes: int = 1024) -> FramingError:
    framer = StreamFramer(max_header_bytes=max_header_bytes)
    step = chunk or len(stream)
    frames = [f for i in range(0, len(stream), step) for f in framer.feed(stream[i : i + step])]
    assert len(frames) == 1
    error = frames[0]
    assert isinstance(error, FramingError)
    assert isinstance(error.error, MessageTooLarge)
    assert error.fatal
    assert framer.broken
    return error


@pytest.mark.parametrize("chunk", [0, 1, 100, 1000])
@pytest.mark.parametrize(
    "extra", ["X-Pad: " + "a" * 2000 + "\r\n", "X-H: 1\r\n" * 10000], ids=["long-line", "many-lines"]
)
def test_framer_oversized_head_keeps_its_readable_lines(extra: str, chunk: int) -> None:
    """The head of a FramingError for a header block over the cap: its whole lines within the cap,
    the same whatever the chunking, and enough to address the 513 (RFC 3261 §21.5.14, §8.2.6.2)."""
    raw = message(extra=extra)
    error = oversized_error(raw, chunk)
    assert raw.startswith(error.head)
    assert len(error.head) <= 1024
    assert error.head.endswith(b"\r\n")
    assert b"\nX-Pad" not in error.head  # the line cut by the cap is not passed on
    reply, dropped = reply_to_unparsed(error.head, error)
    assert reply is not None, dropped
    answer = parse_message(reply, datagram=True)
    assert isinstance(answer, Response)
    assert answer.status == 513
    assert answer.call_id == "call-message@tomt.it"
    assert answer.headers.get("via") == "SIP/2.0/TLS lync01.tomt.it:5061;branch=z9hG4bK-message-1"
    assert answer.headers.get("cseq") == "1 MESSAGE"
    assert answer.headers.get("from") == "<sip:bob@tomt.it>;tag=a1"


def test_framer_oversized_head_stops_before_a_folded_value_cut_by_the_cap() -> None:
    """§7.3.1: a line starting with SP/HT continues the value above; a value cut by the cap is dropped whole."""
    raw = message().replace(b"CSeq: 1 MESSAGE\r\n", b"CSeq: 1 MESSAGE\r\nSubject: a\r\n" + b" b\r\n" * 300)
    error = oversized_error(raw)
    assert error.head.endswith(b"CSeq: 1 MESSAGE\r\n")


def test_framer_oversized_head_without_addressing_headers_is_not_answered() -> None:
    """A first header line longer than the cap leaves nothing to address a reply with: closed unanswered."""
    error = oversized_error(b"MESSAGE sip:a@b SIP/2.0\r\nX-Pad: " + b"a" * 2000)
    assert error.head == b"MESSAGE sip:a@b SIP/2.0\r\n"
    reply, dropped = reply_to_unparsed(error.head, error)
    assert reply is None
    assert "no Via" in dropped
