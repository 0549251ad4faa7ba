"""The S2S stream state machines (proxy/xmpp/inbound.py, outbound.py) against each other in memory: sipfed's
outbound stream plays the partner's initiating server, its inbound stream the receiving server, and the test
plays the edge (TLS by hand with ``PeerCert``s, dialback verification by recomputing the key). Every policy of
the Lync partner settings, and every refusal, with the stream error the other side sees."""

from __future__ import annotations

from dataclasses import replace
from xml.etree.ElementTree import Element

import pytest

from proxy.xmpp.dialback import dialback_key, key_is_valid
from proxy.xmpp.inbound import InboundStream
from proxy.xmpp.outbound import OutboundStream
from proxy.xmpp.policy import Partner, XmppConfig
from proxy.xmpp.stream import (
    Authenticated,
    DialbackAnswer,
    DialbackRequest,
    Failed,
    Incoming,
    PeerCert,
    Ready,
    StartTls,
    StreamEvent,
    names_domain,
)
from proxy.xmpp.xml import NS_SERVER, XmlStream, element, to_bytes

OURS = "tomt.local"
THEIRS = "xmpp.test"
SECRET = "their-dialback-secret"
GOOD_CERT = PeerCert(True, True, (THEIRS,))
OUR_CERT = PeerCert(True, True, (OURS,))
UNTRUSTED = PeerCert(True, False, (THEIRS,), "unable to get local issuer certificate")


def config(**partner: object) -> XmppConfig:
    p = Partner("jabber", THEIRS, **partner)  # type: ignore[arg-type]
    return XmppConfig(("127.0.0.1", 5269), (OURS, "tomt.it"), (p,), by_domain={THEIRS: p})


class Pair:
    """A partner's outbound stream talking to our inbound one; the test is both edges."""

    def __init__(
        self,
        ours: XmppConfig,
        theirs: Partner | None = None,
        *,
        their_cert: PeerCert = GOOD_CERT,
        our_cert: PeerCert = OUR_CERT,
        tls: bool = True,
        authoritative_ok: bool = True,
    ) -> None:
        self.inbound = InboundStream(config=ours, stream_id="S1D", secret="ours", tls_available=tls)
        partner = theirs or Partner("sipfed", OURS)
        self.outbound = OutboundStream(local=THEIRS, remote=OURS, partner=partner, secret=SECRET, tls_available=tls)
        self.their_cert, self.our_cert = their_cert, our_cert
        self.authoritative_ok = authoritative_ok
        self.in_events: list[StreamEvent] = []
        self.out_events: list[StreamEvent] = []

    def run(self, rounds: int = 20) -> None:
        self.outbound.start()
        for _ in range(rounds):  # bounded: each round moves whatever is waiting, once
            moved = self._step()
            if not moved:
                return

    def _step(self) -> bool:
        a, b = self.outbound.take_data(), None
        if a:
            self.inbound.receive(a)
        in_events = self.inbound.take_events()
        b = self.inbound.take_data()
        if b:
            self.outbound.receive(b)
        out_events = self.outbound.take_events()
        self.in_events += in_events
        self.out_events += out_events
        for event in in_events:
            if isinstance(event, DialbackRequest):
                valid = self.authoritative_ok and key_is_valid(
                    SECRET, event.receiving, event.originating, event.stream_id, event.key
                )
                self.inbound.dialback_verified(event.originating, event.receiving, valid)
        if any(isinstance(e, StartTls) for e in out_events):  # both sides' TLS handshake, done by hand
            self.inbound.tls_started(self.their_cert)
            self.outbound.tls_started(self.our_cert)
        return bool(a or b or in_events or out_events)

    def inbound_failure(self) -> Failed:
        return next(e for e in self.in_events if isinstance(e, Failed))


def message(frm: str = f"romeo@{THEIRS}/phone", to: str = f"alice@{OURS}") -> bytes:
    return to_bytes(
        element(
            f"{{{NS_SERVER}}}message",
            {"from": frm, "to": to, "type": "chat"},
            None,
            element(f"{{{NS_SERVER}}}body", None, "hi"),
        )
    )


def test_sasl_external_after_starttls_with_a_valid_certificate() -> None:
    pair = Pair(config(tls="required", sasl="optional"))
    pair.run()
    assert Authenticated(OURS, THEIRS, "sasl") in pair.in_events
    assert Ready(THEIRS, OURS, "sasl") in pair.out_events
    assert pair.inbound.secure
    pair.inbound.receive(message())
    [incoming] = [e for e in pair.inbound.take_events() if isinstance(e, Incoming)]
    assert (incoming.local, incoming.remote, incoming.stanza.get("to")) == (OURS, THEIRS, f"alice@{OURS}")


def test_dialback_over_tls_when_their_certificate_does_not_verify() -> None:
    pair = Pair(config(tls="required", sasl="optional", dialback=True), their_cert=UNTRUSTED)
    pair.run()
    assert Authenticated(OURS, THEIRS, "dialback") in pair.in_events
    assert Ready(THEIRS, OURS, "dialback") in pair.out_events


def test_dialback_without_tls_for_a_not_supported_partner() -> None:
    theirs = Partner("sipfed", OURS, tls="optional", sasl="not_supported")
    pair = Pair(config(tls="not_supported", sasl="not_supported", dialback=True), theirs)
    pair.run()
    assert not pair.inbound.secure
    assert Authenticated(OURS, THEIRS, "dialback") in pair.in_events


def test_sasl_required_partner_without_a_valid_certificate_is_refused() -> None:
    pair = Pair(config(tls="required", sasl="required", dialback=True), their_cert=UNTRUSTED)
    pair.run()
    failure = pair.inbound_failure()
    assert failure.condition == "not-authorized"
    assert "requires SASL EXTERNAL" in failure.reason
    assert "unable to get local issuer" in failure.reason
    assert not any(isinstance(e, Ready) for e in pair.out_events)
    assert any(isinstance(e, Failed) and not e.ours for e in pair.out_events)  # they saw our stream error


def test_tls_required_partner_must_starttls_first() -> None:
    theirs = Partner("sipfed", OURS, tls="not_supported", sasl="not_supported")
    pair = Pair(config(tls="required", sasl="not_supported"), theirs)
    pair.run()
    assert any(isinstance(e, Failed) for e in pair.out_events)  # its own policy: we require TLS, it may not
    assert "tls" in next(e for e in pair.out_events if isinstance(e, Failed)).reason.lower()


def test_a_bad_dialback_key_ends_the_stream() -> None:
    pair = Pair(config(tls="optional", sasl="not_supported"), authoritative_ok=False)
    pair.run()
    assert pair.inbound_failure().condition == "not-authorized"
    assert not any(isinstance(e, Authenticated) for e in pair.in_events)


def test_dialback_disabled_and_no_sasl_leaves_the_partner_nowhere() -> None:
    pair = Pair(config(tls="required", sasl="optional", dialback=False), their_cert=UNTRUSTED)
    pair.run()
    failure = next(e for e in pair.out_events if isinstance(e, Failed))
    assert "no way to authenticate" in failure.reason


def feed(stream: InboundStream, *chunks: bytes) -> list[StreamEvent]:
    for chunk in chunks:
        stream.receive(chunk)
    return stream.take_events()


HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
    "xmlns:db='jabber:server:dialback' version='1.0' from='{frm}' to='{to}'>"
)


@pytest.mark.parametrize(
    ("frm", "to", "condition", "words"),
    [
        ("evil.example", OURS, "policy-violation", "not an XMPP allowed partner"),
        ("", OURS, "policy-violation", "names no 'from'"),
        (THEIRS, "elsewhere.example", "host-unknown", "not a domain of this server"),
    ],
)
def test_streams_from_strangers_are_refused(frm: str, to: str, condition: str, words: str) -> None:
    stream = InboundStream(config=config(), stream_id="X", secret="s")
    events = feed(stream, HEADER.format(frm=frm, to=to).encode())
    [failed] = [e for e in events if isinstance(e, Failed)]
    assert failed.condition == condition
    assert words in failed.reason
    assert f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>".encode() in stream.take_data()


def test_stanzas_before_authentication_are_not_authorized() -> None:
    stream = InboundStream(config=config(tls="optional", sasl="not_supported"), stream_id="X", secret="s")
    events = feed(stream, HEADER.format(frm=THEIRS, to=OURS).encode(), message())
    [failed] = [e for e in events if isinstance(e, Failed)]
    assert failed.condition == "not-authorized"


def test_a_stanza_from_another_domain_than_the_authenticated_one_is_invalid_from() -> None:
    pair = Pair(config(tls="required", sasl="optional"))
    pair.run()
    pair.inbound.receive(message(frm="mallory@other.example/x"))
    [failed] = [e for e in pair.inbound.take_events() if isinstance(e, Failed)]
    assert failed.condition == "not-authorized"  # other.example never authenticated on this stream


@pytest.mark.parametrize(
    ("junk", "condition"),
    [
        (b"<!DOCTYPE x [<!ENTITY a 'b'>]>", "not-well-formed"),  # inside the stream: expat refuses it outright
        (b"<message><body>&lol;</body></message>", "not-well-formed"),
        (b"<message>" + b"<a>" * 40, "policy-violation"),
        (b"<!-- hello -->", "restricted-xml"),
        (b"</oops>", "not-well-formed"),
    ],
)
def test_malformed_xml_gets_the_right_stream_error(junk: bytes, condition: str) -> None:
    stream = InboundStream(config=config(), stream_id="X", secret="s")
    events = feed(stream, HEADER.format(frm=THEIRS, to=OURS).encode(), junk)
    [failed] = [e for e in events if isinstance(e, Failed)]
    assert failed.condition == condition
    assert stream.ended
    assert stream.take_data().endswith(b"</stream:stream>")


def test_a_dtd_before_the_stream_header_is_restricted_xml() -> None:
    stream = InboundStream(config=config(), stream_id="X", secret="s")
    events = feed(stream, b"<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY x 'y'>]>")
    [failed] = [e for e in events if isinstance(e, Failed)]
    assert failed.condition == "restricted-xml"


def test_we_answer_db_verify_as_the_authoritative_server() -> None:
    stream = InboundStream(config=config(tls="optional"), stream_id="X", secret="ours")
    feed(stream, HEADER.format(frm=THEIRS, to=OURS).encode())
    stream.take_data()
    good = dialback_key("ours", THEIRS, OURS, "THEIR-ID")
    for key, verdict in ((good, "valid"), ("0" * 64, "invalid")):
        stream.receive(f"<db:verify from='{THEIRS}' to='{OURS}' id='THEIR-ID'>{key}</db:verify>".encode())
        reply = XmlStream()
        reply.feed(HEADER.format(frm="a", to="b").encode())
        [answer] = reply.feed(stream.take_data())
        assert answer.element.get("type") == verdict  # type: ignore[union-attr]


def test_outbound_verify_only_asks_and_reports() -> None:
    partner = Partner("jabber", THEIRS, tls="optional", sasl="not_supported")
    stream = OutboundStream(
        local=OURS, remote=THEIRS, partner=partner, secret="ours", verify_only=True, tls_available=False
    )
    stream.ask(OURS, THEIRS, "IN-ID", "abc")
    stream.start()
    stream.take_data()
    stream.receive(
        (HEADER.format(frm=THEIRS, to=OURS).replace("version='1.0' from", "id='T1' version='1.0' from")).encode()
    )
    stream.receive(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
    assert b"<db:verify from='tomt.local' to='xmpp.test' id='IN-ID'>abc</db:verify>" in (stream.take_data())
    stream.receive(f"<db:verify from='{THEIRS}' to='{OURS}' id='IN-ID' type='valid'/>".encode())
    assert DialbackAnswer(OURS, THEIRS, "IN-ID", True) in stream.take_events()


def test_xep_0185_example_key() -> None:
    key = dialback_key("s3cr3tf0rd14lb4ck", "xmpp.example.com", "example.org", "D60000229F")
    assert key == "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
    assert key_is_valid("s3cr3tf0rd14lb4ck", "xmpp.example.com", "example.org", "D60000229F", key.upper())
    assert not key_is_valid("other", "xmpp.example.com", "example.org", "D60000229F", key)


@pytest.mark.parametrize(
    ("names", "domain", "ok"),
    [
        (("xmpp.test",), "xmpp.test", True),
        (("*.xmpp.test",), "chat.xmpp.test", True),
        (("*.xmpp.test",), "a.b.xmpp.test", False),
        (("*.xmpp.test",), "xmpp.test", False),
        (("other.test",), "xmpp.test", False),
    ],
)
def test_rfc_6125_names(names: tuple[str, ...], domain: str, ok: bool) -> None:
    assert names_domain(names, domain) is ok


def test_peer_cert_explains_itself() -> None:
    assert "presented no certificate" in PeerCert().why_not(THEIRS)
    assert "unable to get local issuer" in UNTRUSTED.why_not(THEIRS)
    assert "names other.test, not xmpp.test" in replace(GOOD_CERT, names=("other.test",)).why_not(THEIRS)
    assert isinstance(Element("x"), Element)
