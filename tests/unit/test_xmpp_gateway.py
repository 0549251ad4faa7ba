"""The SIP <-> XMPP gateway, sans-IO: proxy/xmpp/gateway.py and proxy/xmpp/subscriptions.py driven with plain calls.

Stanzas go in as an authenticated stream would hand them over, SIP messages as sipfed's proxy core delivers them on
the partner's flow; the gateway's own SIP requests are answered with ``make_response`` through the same entry. Time
is a parameter: a test moves ``Harness.now`` and calls ``handle_timer``, it never sleeps."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from xml.etree.ElementTree import Element

import pytest

from proxy.sip.message import Request, Response, make_response, parse_message
from proxy.xmpp.gateway import BOUNCE_SECONDS, Gateway
from proxy.xmpp.outbox import ANSWER_SECONDS, GatewayOutput, SendSip, SendStanza
from proxy.xmpp.policy import Partner, PartnerType, XmppConfig
from proxy.xmpp.presence import NS_PIDF, NS_RPID
from proxy.xmpp.store import MemoryStore
from proxy.xmpp.subscriptions import RETRY_SECONDS
from proxy.xmpp.xml import NS_DISCO_INFO, NS_PING, NS_SERVER, NS_STANZAS, XML_LANG, element

T0 = 1_700_000_000.0
"""Wall-clock seconds: the store keeps deadlines that must mean the same after a restart."""
OURS = ("tomt.local", "tomt.it")
ALICE, BOB = "sip:alice@tomt.local", "sip:bob@tomt.it"
ALICE_JID = "alice@tomt.local"
ROMEO = "romeo@xmpp.test"
ALICE_CONTACT = "sip:alice@192.0.2.20:5061;transport=tls"
RECORD_ROUTE = ("<sip:core.tomt.local;lr;transport=tls>", "<sip:edge.tomt.local;lr;transport=tls>")
_M = f"{{{NS_SERVER}}}"
_P = f"{{{NS_PIDF}}}"


def config(partner_type: PartnerType = "federated") -> XmppConfig:
    """Our two domains and one partner, as ``parse_xmpp`` would build them (SUBSCRIBEs for an hour)."""
    jabber = Partner("jabber", "xmpp.test", partner_type=partner_type)
    return XmppConfig(("127.0.0.1", 0), OURS, (jabber,), by_domain={"xmpp.test": jabber})


# -- what one call hands back ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Out:
    """The outputs of one call, in order, SIP parsed."""

    items: tuple[SendStanza | Request | Response, ...]
    """Stanzas as handed back; ``SendSip`` data parsed (all of it for partner ``jabber``)."""

    @property
    def stanzas(self) -> list[SendStanza]:
        return [item for item in self.items if isinstance(item, SendStanza)]

    @property
    def requests(self) -> list[Request]:
        return [item for item in self.items if isinstance(item, Request)]

    @property
    def responses(self) -> list[Response]:
        return [item for item in self.items if isinstance(item, Response)]

    @property
    def stanza(self) -> Element:
        """The one output, a stanza."""
        assert len(self.items) == 1, self.items
        assert isinstance(self.items[0], SendStanza)
        return self.items[0].stanza

    @property
    def request(self) -> Request:
        """The one output, a SIP request."""
        assert len(self.items) == 1, self.items
        assert isinstance(self.items[0], Request)
        return self.items[0]

    @property
    def response(self) -> Response:
        """The one output, a SIP response."""
        assert len(self.items) == 1, self.items
        assert isinstance(self.items[0], Response)
        return self.items[0]


def _parsed(output: GatewayOutput) -> SendStanza | Request | Response:
    if isinstance(output, SendStanza):
        return output
    assert isinstance(output, SendSip)
    assert output.partner == "jabber"
    return parse_message(output.data)


@dataclass
class Harness:
    """One gateway, its clock, and the calls the edge and the proxy core make."""

    gateway: Gateway
    now: float = T0

    @classmethod
    def new(cls, partner_type: PartnerType = "federated", store: MemoryStore | None = None) -> Harness:
        return cls(Gateway(config(partner_type), store if store is not None else MemoryStore()))

    def take(self) -> Out:
        return Out(tuple(_parsed(output) for output in self.gateway.take_outputs()))

    def xmpp(self, stanza: Element, local: str = "tomt.local") -> Out:
        self.gateway.stanza_in(stanza, local, "xmpp.test", self.now)
        return self.take()

    def sip(self, data: bytes) -> Out:
        self.gateway.sip_in("jabber", data, self.now)
        return self.take()

    def answer(
        self, request: Request, status: int, reason: str = "", to_tag: str = "", extra: Iterable[tuple[str, str]] = ()
    ) -> Out:
        """The proxy core hands back the answer to one of the gateway's requests."""
        response = make_response(request, status, reason or "Whatever", to_tag=to_tag or None, extra=extra)
        return self.sip(response.to_bytes())

    def later(self, seconds: float) -> Out:
        self.now += seconds
        self.gateway.handle_timer(self.now)
        return self.take()


# -- stanzas -----------------------------------------------------------------------------------------------------------


def message(
    *bodies: Element, kind: str = "chat", lang: str | None = None, sender: str = ROMEO + "/orchard", to: str = ALICE_JID
) -> Element:
    attrs = {"type": kind, "id": "m1", "from": sender, "to": to} | ({XML_LANG: lang} if lang else {})
    return element(_M + "message", attrs, None, *bodies)


def body(text: str, lang: str | None = None) -> Element:
    return element(_M + "body", {XML_LANG: lang} if lang else None, text)


def presence(kind: str | None = None, *children: Element, sender: str = ROMEO, to: str = ALICE_JID) -> Element:
    attrs = {"from": sender, "to": to} | ({"type": kind} if kind else {})
    return element(_M + "presence", attrs, None, *children)


def available(resource: str, show: str | None = None, status: str | None = None, to: str = ALICE_JID) -> Element:
    children = [element(_M + tag, None, text) for tag, text in (("show", show), ("status", status)) if text]
    return presence(None, *children, sender=f"{ROMEO}/{resource}", to=to)


def iq(kind: str, *payload: Element) -> Element:
    attrs = {"type": kind, "id": "iq-7", "from": "xmpp.test", "to": "tomt.local"}
    return element(_M + "iq", attrs, None, *payload)


def condition(stanza: Element) -> tuple[str, str]:
    """(error type, defined condition) of an error stanza."""
    assert stanza.get("type") == "error"
    error = stanza.find(_M + "error")
    assert error is not None
    names = [child.tag.removeprefix(f"{{{NS_STANZAS}}}") for child in error if child.tag != f"{{{NS_STANZAS}}}text"]
    assert len(names) == 1
    return error.get("type") or "", names[0]


def texts(stanza: Element, tag: str) -> list[str]:
    return [child.text or "" for child in stanza.findall(_M + tag)]


# -- SIP as the proxy core delivers it ---------------------------------------------------------------------------------


def sip_request(
    method: str,
    uri: str = "sip:" + ROMEO,
    *,
    sender: str = BOB,
    from_tag: str = "b-tag",
    to: str = "sip:" + ROMEO,
    to_tag: str = "",
    call_id: str = "call-1@tomt.it",
    cseq: int = 1,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bKcore{cseq}{method}",
        f"Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKua{cseq}{method}",
        "Max-Forwards: 69",
        f'From: "Someone" <{sender}>;tag={from_tag}',
        f"To: <{to}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *[f"{name}: {value}" for name, value in headers],
        f"Content-Length: {len(body)}",
    ]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def sip_message(
    text: bytes,
    content_type: str = "text/plain; charset=UTF-8",
    *,
    sender: str = BOB,
    uri: str = "sip:" + ROMEO,
    call_id: str = "call-1@tomt.it",
    cseq: int = 1,
    to_tag: str = "",
) -> bytes:
    """A page-mode MESSAGE from Bob (Lync) to Romeo."""
    headers = [("Content-Type", content_type), ("Content-Language", "de")]
    return sip_request(
        "MESSAGE", uri, sender=sender, call_id=call_id, cseq=cseq, to_tag=to_tag, headers=headers, body=text
    )


def parse_request(data: bytes) -> Request:
    request = parse_message(data)
    assert isinstance(request, Request)
    return request


def header(message: Request | Response, name: str) -> str:
    value = message.headers.get(name)
    assert value is not None, f"no {name} in {message.start_line()}"
    return value


def pidf(basic: str, note: str = "") -> bytes:
    note_xml = f"<note>{note}</note>" if note else ""
    return (
        f"<?xml version='1.0' encoding='UTF-8'?><presence xmlns='{NS_PIDF}' entity='{ALICE}'>"
        f"<tuple id='t1'><status><basic>{basic}</basic></status>{note_xml}</tuple></presence>"
    ).encode()


# -- 1. XMPP message -> SIP MESSAGE (RFC 7572) -------------------------------------------------------------------------

GREETING = "Ciao Alice, è già là? ☕"


def relayed_message(harness: Harness) -> Request:
    out = harness.xmpp(message(body(GREETING), lang="it"))
    return out.request


def test_chat_becomes_a_message() -> None:
    request = relayed_message(Harness.new())
    assert (request.method, request.uri) == ("MESSAGE", ALICE)
    assert str(request.to.uri) == ALICE
    assert request.to.param("tag") is None
    assert str(request.from_.uri) == "sip:" + ROMEO
    assert request.from_.param("tag")
    assert request.cseq == (1, "MESSAGE")
    assert header(request, "content-type") == "text/plain;charset=UTF-8"
    assert header(request, "content-language") == "it"
    assert request.body == GREETING.encode("utf-8")
    assert int(header(request, "content-length")) == len(GREETING.encode("utf-8"))


def test_message_answered_200_gives_no_stanza() -> None:
    harness = Harness.new()
    request = relayed_message(harness)
    assert harness.answer(request, 200, "OK", to_tag="al").items == ()
    assert harness.later(ANSWER_SECONDS + 1).items == ()  # and no timeout later


@pytest.mark.parametrize(
    ("status", "error_type", "defined"),
    [
        (404, "cancel", "item-not-found"),
        (480, "wait", "recipient-unavailable"),
        (408, "wait", "remote-server-timeout"),
        (503, "cancel", "service-unavailable"),
        (302, "modify", "redirect"),
        (699, "cancel", "service-unavailable"),  # unknown: read as 600
    ],
)
def test_message_error_answer_becomes_an_error_stanza(status: int, error_type: str, defined: str) -> None:
    harness = Harness.new()
    request = relayed_message(harness)
    assert harness.answer(request, 100, "Trying").items == ()  # provisional: still waiting
    out = harness.answer(request, status, "Nope", to_tag="al")
    [sent] = out.stanzas
    assert (sent.local, sent.remote, sent.token) == ("tomt.local", "xmpp.test", 0)
    error = sent.stanza
    assert condition(error) == (error_type, defined)
    assert (error.get("from"), error.get("to"), error.get("id")) == (ALICE_JID, ROMEO + "/orchard", "m1")
    assert texts(error, "body") == [GREETING]
    words = error.findtext(f"{_M}error/{{{NS_STANZAS}}}text")
    assert words == f"SIP {status} Nope"
    assert harness.later(ANSWER_SECONDS + 1).items == ()  # answered once


def test_message_never_answered_is_remote_server_timeout() -> None:
    harness = Harness.new()
    relayed_message(harness)
    assert harness.later(ANSWER_SECONDS - 1).items == ()
    error = harness.later(2).stanza
    assert condition(error) == ("wait", "remote-server-timeout")
    assert error.findtext(f"{_M}error/{{{NS_STANZAS}}}text") == "SIP 408 Request Timeout"


def test_an_answer_after_the_timeout_is_ignored() -> None:
    harness = Harness.new()
    request = relayed_message(harness)
    harness.later(ANSWER_SECONDS + 1)
    assert harness.answer(request, 404, to_tag="al").items == ()


# -- 2. which messages -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "children",
    [
        (),  # a chat state alone (XEP-0085) carries no body
        (element("{http://jabber.org/protocol/chatstates}composing"),),
        (body("   \n"),),
    ],
)
def test_message_without_text_gives_nothing(children: tuple[Element, ...]) -> None:
    assert Harness.new().xmpp(message(*children)).items == ()


def test_groupchat_is_not_implemented() -> None:
    sent = Harness.new().xmpp(message(body("hi all"), kind="groupchat")).stanzas
    assert [(s.local, s.remote) for s in sent] == [("tomt.local", "xmpp.test")]
    assert condition(sent[0].stanza) == ("cancel", "feature-not-implemented")
    assert sent[0].stanza.get("to") == ROMEO + "/orchard"


@pytest.mark.parametrize(
    ("lang", "bodies", "text", "language"),
    [
        ("en", (body("Hallo", "de"), body("Hello"), body("Salut", "fr")), "Hello", "en"),
        ("fr", (body("Hallo", "de"), body("Salut", "fr")), "Salut", "fr"),
        (None, (body("Hallo", "de"), body("Salut", "fr")), "Hallo", "de"),  # none in the stanza's: the first
        ("it", (body("Hallo", "de"), body("Salut", "fr")), "Hallo", "de"),
        (None, (body("plain"),), "plain", None),
    ],
)
def test_several_bodies_the_one_in_the_stanzas_language(
    lang: str | None, bodies: tuple[Element, ...], text: str, language: str | None
) -> None:
    request = Harness.new().xmpp(message(*bodies, lang=lang)).request
    assert request.body == text.encode()
    assert request.headers.get("content-language") == language


def test_message_to_our_other_domain() -> None:
    request = Harness.new().xmpp(message(body("ciao"), to="bob@tomt.it/desk"), local="tomt.it").request
    assert (request.uri, str(request.to.uri)) == (BOB, BOB)  # the resource is no SIP address (RFC 7247 §5)


def test_stanzas_from_a_domain_of_no_partner_are_ignored() -> None:
    harness = Harness.new()
    harness.gateway.stanza_in(message(body("x")), "tomt.local", "evil.example", harness.now)
    assert harness.take().items == ()


# -- 3. iq (XEP-0199, XEP-0030) ----------------------------------------------------------------------------------------


def test_ping_gets_an_empty_result() -> None:
    sent = Harness.new().xmpp(iq("get", element(f"{{{NS_PING}}}ping"))).stanzas
    assert [(s.local, s.remote) for s in sent] == [("tomt.local", "xmpp.test")]
    reply = sent[0].stanza
    assert (reply.tag, dict(reply.attrib)) == (
        _M + "iq",
        {"type": "result", "id": "iq-7", "from": "tomt.local", "to": "xmpp.test"},
    )
    assert len(reply) == 0


def test_disco_info_gives_identity_and_features() -> None:
    reply = Harness.new().xmpp(iq("get", element(f"{{{NS_DISCO_INFO}}}query"))).stanza
    assert (reply.get("type"), reply.get("id"), reply.get("to")) == ("result", "iq-7", "xmpp.test")
    query = reply.find(f"{{{NS_DISCO_INFO}}}query")
    assert query is not None
    identities = [dict(i.attrib) for i in query.findall(f"{{{NS_DISCO_INFO}}}identity")]
    assert identities == [{"category": "gateway", "type": "sip", "name": "sipfed"}]
    features = {f.get("var") for f in query.findall(f"{{{NS_DISCO_INFO}}}feature")}
    assert features == {NS_DISCO_INFO, NS_PING}


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("get", (element("{vcard-temp}vCard"),)),
        ("get", (element("{http://jabber.org/protocol/disco#items}query"),)),
        ("get", ()),
        ("set", (element(f"{{{NS_PING}}}ping"),)),
        ("set", (element("{jabber:iq:roster}query"),)),
    ],
)
def test_other_iq_is_service_unavailable(kind: str, payload: tuple[Element, ...]) -> None:
    reply = Harness.new().xmpp(iq(kind, *payload)).stanza
    assert condition(reply) == ("cancel", "service-unavailable")
    assert (reply.get("id"), reply.get("from"), reply.get("to")) == ("iq-7", "tomt.local", "xmpp.test")


@pytest.mark.parametrize("kind", ["result", "error", None])
def test_iq_results_and_errors_give_nothing(kind: str | None) -> None:
    stanza = iq(kind or "get", element(f"{{{NS_PING}}}ping"))
    if kind is None:
        del stanza.attrib["type"]
    assert Harness.new().xmpp(stanza).items == ()


# -- 4. SIP MESSAGE -> <message type='chat'> ---------------------------------------------------------------------------

HELLO = "Grüße aus Mailand"


def chat_out(harness: Harness, data: bytes | None = None) -> SendStanza:
    """A MESSAGE in; its chat stanza out, the MESSAGE not answered yet."""
    out = harness.sip(data if data is not None else sip_message(HELLO.encode()))
    [sent] = out.stanzas
    assert out.responses == []
    return sent


def test_message_becomes_chat() -> None:
    sent = chat_out(Harness.new())
    assert (sent.local, sent.remote) == ("tomt.it", "xmpp.test")
    assert sent.token > 0
    chat = sent.stanza
    assert chat.tag == _M + "message"
    assert (chat.get("type"), chat.get("from"), chat.get("to")) == ("chat", "bob@tomt.it/sip", ROMEO)
    assert chat.get(XML_LANG) == "de"
    assert len(chat.get("id") or "") >= 8
    assert texts(chat, "body") == [HELLO]
    assert chat.find(_M + "thread") is None  # page mode: no session


def test_message_from_our_first_domain() -> None:
    sent = chat_out(Harness.new(), sip_message(b"hi", sender=ALICE))
    assert (sent.local, sent.stanza.get("from")) == ("tomt.local", "alice@tomt.local/sip")


def test_message_answered_200_once_the_stanza_is_written() -> None:
    harness = Harness.new()
    sent = chat_out(harness)
    harness.gateway.sent(sent.token, harness.now)
    ok = harness.take().response
    assert (ok.status, ok.reason) == (200, "OK")
    assert (ok.call_id, ok.cseq) == ("call-1@tomt.it", (1, "MESSAGE"))
    assert len(ok.vias) == 2
    assert ok.to.param("tag")
    harness.gateway.sent(sent.token, harness.now)  # told twice: answered once
    assert harness.take().items == ()


@pytest.mark.parametrize(
    ("defined", "status", "phrase"),
    [
        ("remote-server-not-found", 404, "Not Found"),
        ("remote-server-timeout", 408, "Request Timeout"),
        ("service-unavailable", 503, "Service Unavailable"),
        ("not-authorized", 401, "Unauthorized"),
    ],
)
def test_message_unsent_gets_the_mapped_error(defined: str, status: int, phrase: str) -> None:
    harness = Harness.new()
    sent = chat_out(harness)
    harness.gateway.unsent(sent.token, defined, "cannot look up xmpp.test", harness.now)
    answer = harness.take().response
    assert (answer.status, answer.reason) == (status, f"{phrase} (cannot look up xmpp.test)")
    assert answer.cseq == (1, "MESSAGE")
    harness.gateway.sent(sent.token, harness.now)  # too late: the MESSAGE has its answer
    assert harness.take().items == ()


def test_typing_notice_is_answered_and_dropped() -> None:
    notice = b"<?xml version='1.0'?><isComposing xmlns='urn:ietf:params:xml:ns:im-iscomposing'/>"
    answer = Harness.new().sip(sip_message(notice, "application/im-iscomposing+xml")).response
    assert answer.status == 200


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (sip_message(b"<b>hi</b>", "text/html"), 415, "Unsupported Media Type"),
        (sip_message(b"hi", sender="sip:eve@evil.example"), 403, "Forbidden (evil.example is not one of the"),
        (sip_message(b"hi", uri="sip:romeo@other.example"), 404, "Not Found (other.example is not an XMPP partner"),
        (sip_message(b"\xff\xfehi"), 400, "Bad Request (the body is not UTF-8 text)"),
        (sip_request("PUBLISH", headers=[("Event", "presence")]), 405, "Method Not Allowed"),
    ],
)
def test_message_refused(data: bytes, status: int, words: str) -> None:
    answer = Harness.new().sip(data).response
    assert answer.status == status
    assert answer.reason.startswith(words)
    assert answer.to.param("tag")
    if status == 415:
        assert header(answer, "accept") == "text/plain"
    if status == 405:
        assert "MESSAGE" in header(answer, "allow")


def test_message_without_content_type_is_text() -> None:
    sent = chat_out(Harness.new(), sip_request("MESSAGE", body=b"plain"))
    assert texts(sent.stanza, "body") == ["plain"]
    assert sent.stanza.get(XML_LANG) is None


@pytest.mark.parametrize("method", ["OPTIONS", "INFO", "CANCEL"])
def test_other_methods_answered_200(method: str) -> None:
    answer = Harness.new().sip(sip_request(method)).response
    assert (answer.status, answer.cseq) == (200, (1, method))
    assert "SUBSCRIBE" in header(answer, "allow")


def test_what_the_core_should_never_hand_over_is_dropped() -> None:
    harness = Harness.new()
    assert harness.sip(b"NOT SIP AT ALL\r\n\r\n").items == ()
    assert harness.sip(sip_request("ACK")).items == ()
    harness.gateway.sip_in("nobody", sip_message(b"hi"), harness.now)  # a partner not configured
    assert harness.take().items == ()
    assert harness.answer(parse_request(sip_message(b"hi")), 200, to_tag="x").items == ()  # an answer to no request


# -- 5. late errors for relayed messages -------------------------------------------------------------------------------


def error_for(stanza_id: str, defined: str = "service-unavailable", words: str = "") -> Element:
    details = [element(f"{{{NS_STANZAS}}}{defined}")]
    if words:
        details.append(element(f"{{{NS_STANZAS}}}text", {XML_LANG: "en"}, words))
    bounce = element(_M + "message", {"type": "error", "id": stanza_id, "from": ROMEO, "to": "bob@tomt.it/sip"})
    bounce.append(body(HELLO))
    bounce.append(element(_M + "error", {"type": "cancel"}, None, *details))
    return bounce


def test_late_error_reaches_the_sip_sender_in_words() -> None:
    harness = Harness.new()
    sent = chat_out(harness)
    harness.gateway.sent(sent.token, harness.now)
    harness.take()
    notice = harness.xmpp(error_for(sent.stanza.get("id") or "", words="No such user"), local="tomt.it").request
    assert (notice.method, notice.uri, str(notice.to.uri)) == ("MESSAGE", BOB, BOB)
    assert str(notice.from_.uri) == "sip:" + ROMEO
    assert header(notice, "content-type") == "text/plain;charset=UTF-8"
    assert notice.body == (
        b"sipfed: your message to romeo@xmpp.test was not delivered (service-unavailable: No such user)"
    )
    assert harness.answer(notice, 200, to_tag="b").items == ()
    # the same error again: told once
    assert harness.xmpp(error_for(sent.stanza.get("id") or ""), local="tomt.it").items == ()


def test_late_error_without_text_names_the_condition() -> None:
    harness = Harness.new()
    stanza_id = chat_out(harness).stanza.get("id") or ""
    notice = harness.xmpp(error_for(stanza_id, "item-not-found"), local="tomt.it").request
    assert notice.body.endswith(b"not delivered (item-not-found)")


def test_error_for_an_unknown_id_gives_nothing() -> None:
    harness = Harness.new()
    chat_out(harness)
    assert harness.xmpp(error_for("not-ours"), local="tomt.it").items == ()


def test_error_after_the_bounce_window_gives_nothing() -> None:
    harness = Harness.new()
    sent = chat_out(harness)
    harness.gateway.sent(sent.token, harness.now)
    harness.later(BOUNCE_SECONDS + 1)
    assert harness.xmpp(error_for(sent.stanza.get("id") or ""), local="tomt.it").items == ()


# -- 6. Lync's INVITE-based IM session ([MS-SIP] §3.7) -----------------------------------------------------------------

LYNC_SDP = b"v=0\r\no=- 0 0 IN IP4 10.0.0.5\r\ns=session\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=message 5060 sip null\r\n"
BOB_CONTACT = ("Contact", "<sip:bob@10.0.0.5:5061;transport=tls>")


def invite(first: str = "", sdp: bytes = LYNC_SDP, sender: str = BOB) -> bytes:
    headers = [BOB_CONTACT, ("Content-Type", "application/sdp")]
    if first:
        encoded = base64.b64encode(first.encode()).decode()
        headers.append(("Ms-Text-Format", f"text/plain; charset=UTF-8; ms-body={encoded}"))
    return sip_request("INVITE", sender=sender, call_id="im-1@tomt.it", headers=headers, body=sdp)


def test_invite_for_an_im_session_is_accepted_with_sdp() -> None:
    harness = Harness.new()
    ok = harness.sip(invite()).response
    assert (ok.status, ok.cseq) == (200, (1, "INVITE"))
    tag = ok.to.param("tag")
    assert tag
    assert header(ok, "contact") == f"<sip:{ROMEO}>"
    assert header(ok, "content-type") == "application/sdp"
    assert ok.body.startswith(b"v=0\r\n")
    assert b"\r\nm=message 5061 sip sip:romeo@xmpp.test\r\n" in ok.body
    assert int(header(ok, "content-length")) == len(ok.body)
    assert "im-1@tomt.it" in harness.gateway.sessions


def test_invite_first_message_rides_in_ms_text_format() -> None:
    sent = Harness.new().sip(invite("Hallo Romeo, hast du kurz Zeit?")).stanzas
    assert [(s.local, s.remote, s.token) for s in sent] == [("tomt.it", "xmpp.test", 0)]  # the 200 answers it
    chat = sent[0].stanza
    assert (chat.get("type"), chat.get("from"), chat.get("to")) == ("chat", "bob@tomt.it/sip", ROMEO)
    assert texts(chat, "body") == ["Hallo Romeo, hast du kurz Zeit?"]
    assert texts(chat, "thread") == ["im-1@tomt.it"]


def test_messages_inside_the_session_carry_its_thread_until_bye() -> None:
    harness = Harness.new()
    tag = harness.sip(invite()).response.to.param("tag") or ""
    inside = sip_message(b"second", call_id="im-1@tomt.it", cseq=2, to_tag=tag)
    assert texts(chat_out(harness, inside).stanza, "thread") == ["im-1@tomt.it"]
    bye = harness.sip(sip_request("BYE", call_id="im-1@tomt.it", cseq=3, to_tag=tag)).response
    assert (bye.status, bye.cseq, bye.to.param("tag")) == (200, (3, "BYE"), tag)
    assert harness.gateway.sessions == {}
    after = sip_message(b"after", call_id="im-1@tomt.it", cseq=4, to_tag=tag)
    assert chat_out(harness, after).stanza.find(_M + "thread") is None


def test_invite_without_message_media_is_488() -> None:
    audio = LYNC_SDP.replace(b"m=message 5060 sip null", b"m=audio 49170 RTP/AVP 0")
    answer = Harness.new().sip(invite(sdp=audio)).response
    assert answer.status == 488
    assert "m=message" in answer.reason


def test_invite_without_contact_is_400() -> None:
    data = sip_request("INVITE", headers=[("Content-Type", "application/sdp")], body=LYNC_SDP)
    answer = Harness.new().sip(data).response
    assert answer.status == 400


def test_bye_for_no_session_is_200() -> None:
    answer = Harness.new().sip(sip_request("BYE", to_tag="gone")).response
    assert (answer.status, answer.to.param("tag")) == (200, "gone")


def test_invite_from_a_domain_not_ours() -> None:
    """Rule 1 before any answer: a single 403, no session, no stanza (a MESSAGE from it gets 403 too)."""
    out = Harness.new().sip(invite("hi", sender="sip:eve@evil.example"))
    assert [r.status for r in out.responses] == [403]
    assert out.stanzas == []


# -- 7. subscriptions, XMPP -> SIP (RFC 8048 §4) -----------------------------------------------------------------------

AL_TAG = "al-tag"


def xmpp_subscribes(harness: Harness) -> Request:
    subscribe = harness.xmpp(presence("subscribe")).request
    assert subscribe.method == "SUBSCRIBE"
    return subscribe


def accepted(harness: Harness, subscribe: Request, expires: int = 600) -> Out:
    """Alice's presence server accepts the gateway's SUBSCRIBE (through proxies that record-routed)."""
    extra = [("Contact", f"<{ALICE_CONTACT}>"), ("Expires", str(expires))]
    extra += [("Record-Route", route) for route in RECORD_ROUTE]
    return harness.answer(subscribe, 200, "OK", to_tag=AL_TAG, extra=extra)


def notify_in(
    subscribe: Request,
    state: str,
    body: bytes = b"",
    *,
    cseq: int = 1,
    call_id: str = "",
    extra: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A NOTIFY from Alice's presence server in the dialog of the gateway's SUBSCRIBE."""
    headers = [("Event", "presence"), ("Subscription-State", state), ("Contact", f"<{ALICE_CONTACT}>")]
    headers += [("Content-Type", "application/pidf+xml")] if body else []
    our_tag = subscribe.from_.param("tag") or ""
    return sip_request(
        "NOTIFY",
        sender=ALICE,
        from_tag=AL_TAG,
        to_tag=our_tag,
        call_id=call_id or subscribe.call_id,
        cseq=cseq,
        headers=[*headers, *extra],
        body=body,
    )


def watch_standing(harness: Harness) -> Request:
    """Romeo subscribed to Alice, the SIP side accepted and told her presence: the gateway's SUBSCRIBE."""
    subscribe = xmpp_subscribes(harness)
    accepted(harness, subscribe)
    out = harness.sip(notify_in(subscribe, "active;expires=600", pidf("open", "At lunch")))
    assert [s.stanza.get("type") for s in out.stanzas] == ["subscribed", None]
    return subscribe


def test_xmpp_subscribe_becomes_sip_subscribe() -> None:
    subscribe = xmpp_subscribes(Harness.new())
    assert subscribe.uri == ALICE
    assert (str(subscribe.from_.uri), str(subscribe.to.uri)) == ("sip:" + ROMEO, ALICE)
    assert subscribe.from_.param("tag")
    assert subscribe.to.param("tag") is None
    assert subscribe.cseq == (1, "SUBSCRIBE")
    assert header(subscribe, "event") == "presence"
    assert header(subscribe, "accept") == "application/pidf+xml"
    assert header(subscribe, "expires") == "3600"
    assert header(subscribe, "contact") == f"<sip:{ROMEO}>"
    assert subscribe.headers.get("route") is None


def test_notify_active_tells_subscribed_then_the_presence() -> None:
    harness = Harness.new()
    subscribe = xmpp_subscribes(harness)
    assert accepted(harness, subscribe).items == ()  # no stanza before the user's presence server speaks
    out = harness.sip(notify_in(subscribe, "active;expires=600", pidf("open", "At lunch")))
    [ok] = out.responses
    assert (ok.status, ok.cseq, ok.to.param("tag")) == (200, (1, "NOTIFY"), subscribe.from_.param("tag"))
    assert [(s.local, s.remote) for s in out.stanzas] == [("tomt.local", "xmpp.test")] * 2
    subscribed, state = (s.stanza for s in out.stanzas)
    assert dict(subscribed.attrib) == {"type": "subscribed", "from": ALICE_JID, "to": ROMEO}
    assert (state.get("type"), state.get("from"), state.get("to")) == (None, "alice@tomt.local/sip", ROMEO)
    assert texts(state, "status") == ["At lunch"]
    # later NOTIFYs: the presence only
    closed = harness.sip(notify_in(subscribe, "active;expires=500", pidf("closed"), cseq=2))
    assert [r.status for r in closed.responses] == [200]
    assert [s.stanza.get("type") for s in closed.stanzas] == ["unavailable"]


def test_notify_pending_gives_no_stanza() -> None:
    harness = Harness.new()
    subscribe = xmpp_subscribes(harness)
    accepted(harness, subscribe)
    assert harness.sip(notify_in(subscribe, "pending;expires=600")).response.status == 200


@pytest.mark.parametrize("reason", ["rejected", "noresource"])
def test_notify_terminated_for_good_unsubscribes(reason: str) -> None:
    harness = Harness.new()
    subscribe = watch_standing(harness)
    out = harness.sip(notify_in(subscribe, f"terminated;reason={reason}", cseq=2))
    assert [r.status for r in out.responses] == [200]
    assert [dict(s.stanza.attrib) for s in out.stanzas] == [{"type": "unsubscribed", "from": ALICE_JID, "to": ROMEO}]
    assert harness.gateway.subscriptions.watches == {}
    assert harness.gateway.subscriptions.store.load()[0] == []
    assert harness.sip(notify_in(subscribe, "active", cseq=3)).response.status == 481
    assert harness.later(3600).items == ()  # no refresh is left


@pytest.mark.parametrize(
    ("reason", "delay"), [("timeout", 0.0), ("deactivated", 0.0), ("", 0.0), ("giveup", RETRY_SECONDS)]
)
def test_notify_terminated_for_a_while_subscribes_again(reason: str, delay: float) -> None:
    harness = Harness.new()
    subscribe = watch_standing(harness)
    state = f"terminated;reason={reason}" if reason else "terminated"
    out = harness.sip(notify_in(subscribe, state, cseq=2))
    assert [r.status for r in out.responses] == [200]
    assert [s.stanza.get("type") for s in out.stanzas] == ["unavailable"]
    if delay:
        assert harness.later(delay - 1).items == ()
    again = harness.later(1 if delay else 0).request
    assert (again.method, again.uri, again.cseq) == ("SUBSCRIBE", ALICE, (1, "SUBSCRIBE"))
    assert again.call_id != subscribe.call_id
    assert again.to.param("tag") is None


def test_refresh_goes_in_dialog_before_expiry() -> None:
    harness = Harness.new()
    subscribe = xmpp_subscribes(harness)
    accepted(harness, subscribe, expires=600)
    assert harness.later(479).items == ()  # at 80 %: 480 s
    refresh = harness.later(2).request
    assert (refresh.method, refresh.uri) == ("SUBSCRIBE", ALICE_CONTACT)
    assert refresh.call_id == subscribe.call_id
    assert refresh.cseq == (2, "SUBSCRIBE")
    assert refresh.from_.param("tag") == subscribe.from_.param("tag")
    assert refresh.to.param("tag") == AL_TAG
    assert refresh.headers.get_all("route") == list(reversed(RECORD_ROUTE))
    assert (header(refresh, "event"), header(refresh, "expires")) == ("presence", "3600")
    assert accepted(harness, refresh, expires=100).items == ()
    assert harness.later(79).items == ()  # 100 s: at 80 s (and at least 5 s early)
    assert harness.later(2).request.cseq == (3, "SUBSCRIBE")


def test_refresh_answered_481_subscribes_anew() -> None:
    harness = Harness.new()
    subscribe = xmpp_subscribes(harness)
    accepted(harness, subscribe, expires=600)
    refresh = harness.later(481).request
    fresh = harness.answer(refresh, 481, "Call/Transaction Does Not Exist", to_tag=AL_TAG).request
    assert (fresh.method, fresh.uri, fresh.cseq) == ("SUBSCRIBE", ALICE, (1, "SUBSCRIBE"))
    assert fresh.call_id != subscribe.call_id
    assert fresh.from_.param("tag") != subscribe.from_.param("tag")
    assert fresh.to.param("tag") is None
    assert fresh.headers.get("route") is None


def test_refresh_unanswered_is_tried_again() -> None:
    harness = Harness.new()
    subscribe = xmpp_subscribes(harness)
    accepted(harness, subscribe, expires=600)
    harness.later(481)
    assert harness.later(ANSWER_SECONDS).items == ()
    again = harness.later(RETRY_SECONDS).request
    assert (again.call_id, again.cseq) == (subscribe.call_id, (3, "SUBSCRIBE"))


def test_xmpp_unsubscribe_ends_the_sip_subscription() -> None:
    harness = Harness.new()
    subscribe = watch_standing(harness)
    end = harness.xmpp(presence("unsubscribe")).request
    assert (end.method, end.uri, end.call_id) == ("SUBSCRIBE", ALICE_CONTACT, subscribe.call_id)
    assert end.cseq == (2, "SUBSCRIBE")
    assert header(end, "expires") == "0"
    assert end.to.param("tag") == AL_TAG
    assert end.headers.get_all("route") == list(reversed(RECORD_ROUTE))
    assert harness.gateway.subscriptions.watches == {}
    assert harness.later(3600).items == ()  # no refresh any more


def test_unsubscribe_for_no_subscription_gives_nothing() -> None:
    assert Harness.new().xmpp(presence("unsubscribe")).items == ()


def test_notify_before_the_200_is_accepted() -> None:
    """RFC 6665 §4.1.2.4: the NOTIFY may overtake the 200; it makes the dialog, as a UAS would."""
    harness = Harness.new()
    subscribe = xmpp_subscribes(harness)
    routes = [("Record-Route", route) for route in RECORD_ROUTE]
    out = harness.sip(notify_in(subscribe, "active;expires=600", pidf("open", "Early"), extra=routes))
    assert [r.status for r in out.responses] == [200]
    assert [s.stanza.get("type") for s in out.stanzas] == ["subscribed", None]
    assert accepted(harness, subscribe, expires=600).items == ()  # the 200 follows: nothing new to say
    refresh = harness.later(481).request
    assert (refresh.uri, refresh.call_id, refresh.cseq) == (ALICE_CONTACT, subscribe.call_id, (2, "SUBSCRIBE"))
    assert refresh.to.param("tag") == AL_TAG
    assert refresh.headers.get_all("route") == list(RECORD_ROUTE)  # the NOTIFY's, in order (§12.1.1)


def test_notify_for_an_unknown_call_is_481() -> None:
    harness = Harness.new()
    subscribe = xmpp_subscribes(harness)
    stray = notify_in(subscribe, "active", pidf("open"), call_id="nobody@tomt.local")
    answer = harness.sip(stray).response
    assert (answer.status, answer.reason) == (481, "Call/Transaction Does Not Exist")


def test_notify_with_a_tag_not_ours_is_481() -> None:
    harness = Harness.new()
    subscribe = xmpp_subscribes(harness)
    forged = sip_request(
        "NOTIFY",
        sender=ALICE,
        from_tag=AL_TAG,
        to_tag="not-ours",
        call_id=subscribe.call_id,
        headers=[("Event", "presence"), ("Subscription-State", "active"), ("Contact", f"<{ALICE_CONTACT}>")],
    )
    assert harness.sip(forged).response.status == 481  # before the 200
    accepted(harness, subscribe)
    assert harness.sip(forged).response.status == 481  # and after it
    assert harness.take().items == ()


@pytest.mark.parametrize("status", [403, 404, 489])
def test_sip_refusal_is_unsubscribed(status: int) -> None:
    harness = Harness.new()
    subscribe = xmpp_subscribes(harness)
    refused = harness.answer(subscribe, status, to_tag=AL_TAG).stanza
    assert dict(refused.attrib) == {"type": "unsubscribed", "from": ALICE_JID, "to": ROMEO}
    assert harness.gateway.subscriptions.watches == {}


@pytest.mark.parametrize("status", [408, 500, 503, None])
def test_passing_failure_subscribes_again(status: int | None) -> None:
    harness = Harness.new()
    subscribe = xmpp_subscribes(harness)
    if status is None:
        assert harness.later(ANSWER_SECONDS).items == ()
    else:
        assert harness.answer(subscribe, status, to_tag=AL_TAG).items == ()
    assert harness.later(RETRY_SECONDS - 1).items == ()
    again = harness.later(1).request
    assert (again.method, again.uri, again.cseq) == ("SUBSCRIBE", ALICE, (1, "SUBSCRIBE"))
    assert again.call_id != subscribe.call_id


@pytest.mark.parametrize("status", [600, 603, 604])
def test_a_global_refusal_ends_the_watch(status: int) -> None:
    """RFC 3261 §21.6: a 6xx (603 Decline: the user refuses) is final: the contact is told unsubscribed, and
    no SUBSCRIBE follows."""
    harness = Harness.new()
    subscribe = xmpp_subscribes(harness)
    out = harness.answer(subscribe, status, to_tag=AL_TAG)
    assert [s.stanza.get("type") for s in out.stanzas] == ["unsubscribed"]
    assert harness.later(RETRY_SECONDS * 3).items == ()


def test_subscribe_when_already_approved_answers_for_the_user() -> None:
    """RFC 6121 §3.1.3: the contact re-subscribes (a new client): subscribed and the presence, no new SIP."""
    harness = Harness.new()
    watch_standing(harness)
    out = harness.xmpp(presence("subscribe"))
    assert [s.stanza.get("type") for s in out.stanzas] == ["subscribed", None]
    assert texts(out.stanzas[1].stanza, "status") == ["At lunch"]
    assert out.requests == []


# -- 8. subscriptions, SIP -> XMPP (RFC 8048 §5) -----------------------------------------------------------------------

A_TAG = "a-tag"


def sip_subscribe(
    expires: int = 600, *, to_tag: str = "", cseq: int = 1, event: str = "presence", sender: str = ALICE
) -> bytes:
    """Alice's client subscribes to Romeo (through proxies that record-routed)."""
    headers = [("Event", event), ("Expires", str(expires)), ("Accept", "application/pidf+xml")]
    headers += [("Contact", f"<{ALICE_CONTACT}>"), *[("Record-Route", route) for route in RECORD_ROUTE]]
    return sip_request(
        "SUBSCRIBE",
        sender=sender,
        from_tag=A_TAG,
        to_tag=to_tag,
        call_id="sub-1@tomt.local",
        cseq=cseq,
        headers=headers,
    )


def watching(harness: Harness) -> str:
    """Alice's SUBSCRIBE accepted: our To tag (the 200, the subscribe stanza and the pending NOTIFY checked)."""
    out = harness.sip(sip_subscribe())
    assert [type(item) for item in out.items] == [SendStanza, Response, Request]
    [ok], [notify] = out.responses, out.requests
    assert (ok.status, header(ok, "expires"), header(ok, "contact")) == (200, "600", f"<sip:{ROMEO}>")
    tag = ok.to.param("tag") or ""
    assert tag
    assert header(notify, "subscription-state") == "pending;expires=600"
    return tag


def notify_out(out: Out) -> Request:
    """The one NOTIFY the gateway sends, nothing else."""
    notify = out.request
    assert notify.method == "NOTIFY"
    assert header(notify, "event") == "presence"
    return notify


def tuples(notify: Request) -> list[tuple[str, str, str | None]]:
    """(basic status, contact, note) of each PIDF tuple, in document order."""
    assert header(notify, "content-type") == "application/pidf+xml"
    root = ET.fromstring(notify.body)
    assert (root.tag, root.get("entity")) == (_P + "presence", "sip:" + ROMEO)
    return [
        (t.findtext(f"{_P}status/{_P}basic") or "", t.findtext(_P + "contact") or "", t.findtext(_P + "note"))
        for t in root.findall(_P + "tuple")
    ]


def activities(notify: Request) -> list[str]:
    root = ET.fromstring(notify.body)
    return [
        a.tag.removeprefix(f"{{{NS_RPID}}}")
        for a in root.iter()
        if a.tag.startswith(f"{{{NS_RPID}}}") and a.tag != f"{{{NS_RPID}}}activities"
    ]


def test_sip_subscribe_to_a_contact() -> None:
    harness = Harness.new()
    out = harness.sip(sip_subscribe())
    [sent] = out.stanzas
    assert (sent.local, sent.remote) == ("tomt.local", "xmpp.test")
    assert dict(sent.stanza.attrib) == {"type": "subscribe", "from": ALICE_JID, "to": ROMEO}
    [ok] = out.responses
    assert (ok.status, ok.cseq, ok.call_id) == (200, (1, "SUBSCRIBE"), "sub-1@tomt.local")
    assert (header(ok, "expires"), header(ok, "contact")) == ("600", f"<sip:{ROMEO}>")
    [notify] = out.requests
    tag = ok.to.param("tag")
    assert (notify.method, notify.uri, notify.call_id) == ("NOTIFY", ALICE_CONTACT, "sub-1@tomt.local")
    assert (str(notify.from_.uri), notify.from_.param("tag")) == ("sip:" + ROMEO, tag)
    assert (str(notify.to.uri), notify.to.param("tag")) == (ALICE, A_TAG)
    assert notify.cseq == (1, "NOTIFY")
    assert notify.headers.get_all("route") == list(RECORD_ROUTE)  # a dialog we accepted: in order
    assert header(notify, "contact") == f"<sip:{ROMEO}>"
    assert header(notify, "subscription-state") == "pending;expires=600"
    assert notify.body == b""


def test_subscribed_makes_the_notify_active_and_closed() -> None:
    harness = Harness.new()
    watching(harness)
    harness.now += 100
    notify = notify_out(harness.xmpp(presence("subscribed", sender=ROMEO, to=ALICE_JID)))
    assert notify.cseq == (2, "NOTIFY")
    assert header(notify, "subscription-state") == "active;expires=500"
    assert tuples(notify) == [("closed", "", None)]  # no resource available


def test_resources_become_tuples() -> None:
    harness = Harness.new()
    watching(harness)
    harness.xmpp(presence("subscribed"))
    phone = notify_out(harness.xmpp(available("phone", "dnd", "In a meeting")))
    assert header(phone, "subscription-state") == "active;expires=600"
    assert tuples(phone) == [("open", f"sip:{ROMEO};gr=phone", "In a meeting")]
    assert activities(phone) == ["busy"]
    both = notify_out(harness.xmpp(available("laptop", status="Coding")))
    assert sorted(tuples(both)) == [
        ("open", f"sip:{ROMEO};gr=laptop", "Coding"),
        ("open", f"sip:{ROMEO};gr=phone", "In a meeting"),
    ]
    gone = notify_out(harness.xmpp(presence("unavailable", sender=ROMEO + "/phone")))
    assert tuples(gone) == [("open", f"sip:{ROMEO};gr=laptop", "Coding")]
    assert activities(gone) == []
    assert [n.cseq[0] for n in (phone, both, gone)] == [3, 4, 5]


def test_available_presence_approves_without_subscribed() -> None:
    harness = Harness.new()
    watching(harness)
    notify = notify_out(harness.xmpp(available("phone")))
    assert header(notify, "subscription-state").startswith("active;")
    assert tuples(notify) == [("open", f"sip:{ROMEO};gr=phone", None)]


def test_unavailable_before_approval_tells_nothing() -> None:
    harness = Harness.new()
    watching(harness)
    assert harness.xmpp(presence("unavailable", sender=ROMEO + "/phone")).items == ()


@pytest.mark.parametrize("kind", ["unsubscribed", "error"])
def test_unsubscribed_ends_the_dialog(kind: str) -> None:
    harness = Harness.new()
    watching(harness)
    harness.xmpp(presence("subscribed"))
    notify = notify_out(harness.xmpp(presence(kind)))
    assert header(notify, "subscription-state") == "terminated;reason=rejected"
    assert notify.body == b""
    assert harness.gateway.subscriptions.watchers == {}
    assert harness.gateway.subscriptions.store.load()[1] == []
    assert harness.xmpp(available("phone")).items == ()
    assert harness.later(3600).items == ()  # no expiry left either


def test_in_dialog_refresh_gets_200_and_a_notify() -> None:
    harness = Harness.new()
    tag = watching(harness)
    harness.xmpp(presence("subscribed"))
    harness.now += 500
    out = harness.sip(sip_subscribe(900, to_tag=tag, cseq=2))
    [ok], [notify] = out.responses, out.requests
    assert (ok.status, ok.to.param("tag"), header(ok, "expires")) == (200, tag, "900")
    assert header(notify, "subscription-state") == "active;expires=900"
    assert out.stanzas == []
    assert harness.later(600).items == ()  # the first expiry no longer holds
    assert header(notify_out(harness.later(300)), "subscription-state") == "terminated;reason=timeout"


def test_expires_is_capped_at_an_hour() -> None:
    ok = Harness.new().sip(sip_subscribe(86_400)).responses[0]
    assert header(ok, "expires") == "3600"


def test_sip_unsubscribe_ends_the_dialog_only() -> None:
    """Rule 2: SIP clients un-SUBSCRIBE when they sign out; that takes nobody off a roster."""
    harness = Harness.new()
    tag = watching(harness)
    harness.xmpp(presence("subscribed"))
    out = harness.sip(sip_subscribe(0, to_tag=tag, cseq=2))
    [ok], [notify] = out.responses, out.requests
    assert (ok.status, header(ok, "expires")) == (200, "0")
    assert header(notify, "subscription-state") == "terminated;reason=timeout"
    assert out.stanzas == []  # no unsubscribe
    assert harness.gateway.subscriptions.watchers == {}


def test_notify_answered_481_drops_the_watcher() -> None:
    harness = Harness.new()
    tag = watching(harness)
    notify = notify_out(harness.xmpp(presence("subscribed")))
    assert harness.answer(notify, 481, "Call/Transaction Does Not Exist", to_tag=A_TAG).items == ()
    assert harness.gateway.subscriptions.watchers == {}
    assert harness.xmpp(available("phone")).items == ()
    assert harness.sip(sip_subscribe(to_tag=tag, cseq=2)).response.status == 481


def test_notify_answered_200_keeps_the_watcher() -> None:
    harness = Harness.new()
    watching(harness)
    notify = notify_out(harness.xmpp(presence("subscribed")))
    assert harness.answer(notify, 200, "OK", to_tag=A_TAG).items == ()
    assert len(harness.gateway.subscriptions.watchers) == 1


def test_subscription_expiring_without_refresh() -> None:
    harness = Harness.new()
    watching(harness)
    assert harness.later(599).items == ()
    notify = notify_out(harness.later(1))
    assert header(notify, "subscription-state") == "terminated;reason=timeout"
    assert harness.gateway.subscriptions.watchers == {}


def test_a_new_subscribe_keeps_what_is_known() -> None:
    """Alice's client signs in again (a new Call-ID): Romeo approved already, so a probe, not a subscribe."""
    harness = Harness.new()
    watching(harness)
    harness.xmpp(presence("subscribed"))
    harness.xmpp(available("phone", status="Here"))
    again = sip_subscribe().replace(b"sub-1@tomt.local", b"sub-2@tomt.local")
    out = harness.sip(again)
    assert [dict(s.stanza.attrib) for s in out.stanzas] == [{"type": "probe", "from": ALICE_JID, "to": ROMEO}]
    [notify] = out.requests
    assert notify.call_id == "sub-2@tomt.local"
    assert tuples(notify) == [("open", f"sip:{ROMEO};gr=phone", "Here")]


@pytest.mark.parametrize(
    ("data", "status", "extra"),
    [
        (sip_subscribe(event="dialog"), 489, ("allow-events", "presence")),
        (sip_subscribe(to_tag="never-given", cseq=2), 481, None),
        (sip_request("SUBSCRIBE", sender=ALICE, headers=[("Event", "presence")]), 400, None),  # no Contact
        (sip_subscribe().replace(b"sip:romeo@xmpp.test SIP", b"sip:xmpp.test SIP"), 404, None),
    ],
)
def test_subscribe_refused(data: bytes, status: int, extra: tuple[str, str] | None) -> None:
    harness = Harness.new()
    answer = harness.sip(data).response
    assert answer.status == status
    if extra is not None:
        assert header(answer, extra[0]) == extra[1]
    assert harness.gateway.subscriptions.watchers == {}


# -- 9. partner types (Lync) -------------------------------------------------------------------------------------------


def romeo_subscribes_to_bob(harness: Harness) -> Out:
    return harness.xmpp(presence("subscribe", to="bob@tomt.it"), local="tomt.it")


def test_public_unverified_contact_nobody_invited_is_refused() -> None:
    harness = Harness.new("public_unverified")
    [sent] = romeo_subscribes_to_bob(harness).stanzas
    assert (sent.local, sent.remote) == ("tomt.it", "xmpp.test")
    assert dict(sent.stanza.attrib) == {"type": "unsubscribed", "from": "bob@tomt.it", "to": ROMEO}
    assert harness.gateway.subscriptions.watches == {}


@pytest.mark.parametrize("invitation", ["MESSAGE", "SUBSCRIBE"])
def test_public_unverified_contact_invited_may_subscribe(invitation: str) -> None:
    harness = Harness.new("public_unverified")
    if invitation == "MESSAGE":
        harness.sip(sip_message(b"hi Romeo"))
    else:
        harness.sip(sip_subscribe(sender=BOB))
    subscribe = romeo_subscribes_to_bob(harness).request
    assert (subscribe.method, subscribe.uri, str(subscribe.from_.uri)) == ("SUBSCRIBE", BOB, "sip:" + ROMEO)
    assert harness.gateway.subscriptions.store.load()[2] == {(BOB, ROMEO)}


def test_public_unverified_invitation_is_per_pair() -> None:
    harness = Harness.new("public_unverified")
    harness.sip(sip_message(b"hi Romeo"))  # Bob invited Romeo: not Alice
    [refused] = harness.xmpp(presence("subscribe")).stanzas
    assert refused.stanza.get("type") == "unsubscribed"
    juliet = presence("subscribe", sender="juliet@xmpp.test", to="bob@tomt.it")
    [refused] = harness.xmpp(juliet, local="tomt.it").stanzas
    assert dict(refused.stanza.attrib) == {"type": "unsubscribed", "from": "bob@tomt.it", "to": "juliet@xmpp.test"}


@pytest.mark.parametrize("partner_type", ["federated", "public_verified"])
def test_other_partner_types_always_subscribe(partner_type: PartnerType) -> None:
    subscribe = romeo_subscribes_to_bob(Harness.new(partner_type)).request
    assert (subscribe.method, subscribe.uri) == ("SUBSCRIBE", BOB)


# -- 10. probes (RFC 6121 §4.3) ----------------------------------------------------------------------------------------


def test_probe_for_a_standing_watch_gets_the_last_presence() -> None:
    harness = Harness.new()
    watch_standing(harness)
    sent = harness.xmpp(presence("probe")).stanzas
    assert [(s.local, s.remote) for s in sent] == [("tomt.local", "xmpp.test")]
    answer = sent[0].stanza
    assert (answer.get("type"), answer.get("from"), answer.get("to")) == (None, "alice@tomt.local/sip", ROMEO)
    assert texts(answer, "status") == ["At lunch"]


def test_probe_for_a_watch_not_approved_yet_gets_nothing() -> None:
    harness = Harness.new()
    accepted(harness, xmpp_subscribes(harness))
    assert harness.xmpp(presence("probe")).items == ()


def test_probe_with_no_watch_subscribes_again() -> None:
    """Rule 4: the state was lost (a store wiped): the probe re-establishes the subscription."""
    subscribe = Harness.new().xmpp(presence("probe")).request
    assert (subscribe.method, subscribe.uri, str(subscribe.from_.uri)) == ("SUBSCRIBE", ALICE, "sip:" + ROMEO)


def test_probe_with_no_watch_from_a_public_unverified_stranger() -> None:
    refused = Harness.new("public_unverified").xmpp(presence("probe")).stanza
    assert refused.get("type") == "unsubscribed"


# -- 11. restore after a restart ---------------------------------------------------------------------------------------


def test_restore_refreshes_watches_and_probes_contacts() -> None:
    store = MemoryStore()
    first = Harness.new(store=store)
    subscribe = watch_standing(first)
    tag = watching(first)
    first.xmpp(presence("subscribed"))
    first.xmpp(available("phone", status="Here"))
    restarted = Harness(Gateway(config(), store), now=first.now + 60)
    restarted.gateway.restore(restarted.now)
    out = restarted.take()
    [refresh] = out.requests
    assert (refresh.method, refresh.uri, refresh.call_id) == ("SUBSCRIBE", ALICE_CONTACT, subscribe.call_id)
    assert refresh.cseq == (2, "SUBSCRIBE")
    assert (refresh.from_.param("tag"), refresh.to.param("tag")) == (subscribe.from_.param("tag"), AL_TAG)
    assert refresh.headers.get_all("route") == list(reversed(RECORD_ROUTE))
    assert [dict(s.stanza.attrib) for s in out.stanzas] == [{"type": "probe", "from": ALICE_JID, "to": ROMEO}]
    # the restored dialogs are known: NOTIFYs to us, a refresh from Alice, presence for Alice
    assert restarted.sip(notify_in(subscribe, "active;expires=600", pidf("open"), cseq=2)).responses[0].status == 200
    assert restarted.sip(sip_subscribe(to_tag=tag, cseq=2)).responses[0].status == 200
    notify = notify_out(restarted.xmpp(available("phone", status="Back")))
    assert notify.call_id == "sub-1@tomt.local"
    assert notify.cseq[0] > 3  # the dialog's CSeq goes on
    assert tuples(notify) == [("open", f"sip:{ROMEO};gr=phone", "Back")]


def test_restore_after_the_subscriptions_ran_out() -> None:
    store = MemoryStore()
    first = Harness.new(store=store)
    subscribe = watch_standing(first)  # expires in 600 s
    watching(first)  # expires in 600 s
    restarted = Harness(Gateway(config(), store), now=first.now + 700)
    restarted.gateway.restore(restarted.now)
    fresh = restarted.take().request  # no probe: the SIP watcher is gone
    assert (fresh.method, fresh.uri, fresh.cseq) == ("SUBSCRIBE", ALICE, (1, "SUBSCRIBE"))
    assert fresh.call_id != subscribe.call_id
    assert store.load()[1] == []


def test_restore_keeps_invitations() -> None:
    store = MemoryStore()
    Harness.new("public_unverified", store=store).sip(sip_message(b"hi Romeo"))
    restarted = Harness(Gateway(config("public_unverified"), store))
    restarted.gateway.restore(restarted.now)
    assert romeo_subscribes_to_bob(restarted).request.method == "SUBSCRIBE"


# -- where the gateway trusts the SIP side too much --------------------------------------------------------------------


def test_sip_subscribe_from_a_domain_not_ours() -> None:
    """Rule 1, as for a MESSAGE: 403, and no stanza from a domain that is not ours."""
    out = Harness.new().sip(sip_subscribe(sender="sip:eve@evil.example"))
    assert [r.status for r in out.responses] == [403]
    assert out.stanzas == []


def test_sip_subscribe_from_a_uri_with_parameters() -> None:
    """A SIP user is keyed as the mapped address (RFC 7247 §5): the contact's answer to alice@tomt.local finds
    the watcher that subscribed as <sip:alice@TOMT.local;transport=tls>."""
    harness = Harness.new()
    data = sip_subscribe().replace(f"<{ALICE}>".encode(), b"<sip:alice@TOMT.local;transport=tls>")
    out = harness.sip(data)
    assert [s.stanza.get("from") for s in out.stanzas] == ["alice@tomt.local"]
    notify = harness.xmpp(presence("subscribed")).request
    assert notify.method == "NOTIFY"
    assert (notify.headers.get("subscription-state") or "").startswith("active")


def test_relayed_messages_leave_no_timer_and_their_memory_is_bounded() -> None:
    """A timer per relayed message grew without bound under load (found by make bench's xmpp scenario): the
    ids are pruned as new messages come, and at most SENT_IDS_MAX are kept."""
    from proxy.xmpp.gateway import SENT_IDS_MAX

    harness = Harness.new()
    first = chat_out(harness)
    harness.gateway.sent(first.token, harness.now)
    harness.take()
    assert harness.gateway.get_timer() is None  # nothing scheduled for the bounce window
    for _ in range(SENT_IDS_MAX + 100):
        sent = chat_out(harness)
        harness.gateway.sent(sent.token, harness.now)
        harness.take()
    assert len(harness.gateway._sent_ids) == SENT_IDS_MAX
    assert harness.xmpp(error_for(first.stanza.get("id") or ""), local="tomt.it").items == ()  # the oldest went
    notice = harness.xmpp(error_for(sent.stanza.get("id") or ""), local="tomt.it").request
    assert notice.body.startswith(b"sipfed: your message to romeo@xmpp.test was not delivered")
