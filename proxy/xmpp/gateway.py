"""The SIP <-> XMPP gateway, sans-IO: stanzas from authenticated streams and SIP messages from sipfed's proxy
core in; stanzas for partners and SIP messages for the core out (``Outbox``).

Rules:
1. Addresses map per RFC 7247 §5 (``proxy.xmpp.jid``); a SIP user writes as ``user@ourdomain/sip``.
2. Messages (RFC 7572): ``<message>`` with a body becomes a page-mode MESSAGE (text/plain; UTF-8;
   ``xml:lang`` <-> Content-Language); its error answer becomes an error stanza (RFC 7247 §7). A MESSAGE,
   page-mode or inside an INVITE-based IM session as Lync sends them, becomes ``<message type='chat'>``;
   it is answered 200 once the stanza is written on an authenticated stream, or with the mapped error when
   no stream could be made. An error stanza that comes back later reaches the SIP user as a MESSAGE in words.
3. Presence and subscriptions: ``proxy.xmpp.subscriptions``.
4. iq: XEP-0199 pings and disco#info are answered; any other get/set gets ``service-unavailable``
   (RFC 6120 §8.4).
5. Every SIP message the gateway sends goes through the proxy core on the partner's own flow, bound to the
   partner's domains: the core's admission, routes, Record-Route and limits apply to it as to any peer.
"""

from __future__ import annotations

import base64
import itertools
import logging
import secrets
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from proxy.sip.errors import SipError
from proxy.sip.message import Request, Response, make_response, parse_message
from proxy.xmpp import sipua
from proxy.xmpp.errors import error_stanza, sip_to_xmpp_error, stanza_error_condition, xmpp_to_sip_status
from proxy.xmpp.jid import Jid, JidError, jid_to_sip, parse_jid, sip_to_jid
from proxy.xmpp.outbox import GatewayOutput, Outbox, XmppObserver
from proxy.xmpp.policy import Partner, XmppConfig
from proxy.xmpp.store import Dialog, SubscriptionStore
from proxy.xmpp.subscriptions import RESOURCE, Subscriptions, sip_user_key
from proxy.xmpp.xml import NS_DISCO_INFO, NS_PING, NS_SERVER, XML_LANG, element

log = logging.getLogger("sipfed.xmpp")

BOUNCE_SECONDS = 60.0
"""How long an error stanza may follow a message we relayed and still be told to its SIP sender."""
SENT_IDS_MAX = 10_000
"""At most this many relayed messages are remembered for late errors (the oldest go first)."""
MAX_BODY_CHARS = 16_384
TEXT_TYPES = ("text/plain", "")
_M = f"{{{NS_SERVER}}}"


@dataclass(slots=True)
class _Waiting:
    """A SIP MESSAGE whose answer waits for its stanza to be written (rule 2)."""

    request: Request
    partner: str
    to_tag: str


class Gateway:
    """Rules 1-5 for every partner."""

    def __init__(self, config: XmppConfig, store: SubscriptionStore, observer: XmppObserver | None = None) -> None:
        self.config = config
        self.out = Outbox(observer)
        self.subscriptions = Subscriptions(config, store, self.out)
        self.sessions: dict[str, tuple[Dialog, str]] = {}
        """INVITE-based IM sessions (Lync) by Call-ID: the dialog and the partner."""
        self._waiting: dict[int, _Waiting] = {}
        self._sent_ids: dict[str, tuple[float, str, str, str]] = {}
        """Stanza ids of relayed messages -> (until, SIP sender, contact, partner), for late errors; in the order
        sent, so expired ones are pruned from the front as new ones come (no timer per message)."""
        self._tokens = itertools.count(1)

    # -- the edge's interface ------------------------------------------------------------------------------

    def take_outputs(self) -> list[GatewayOutput]:
        return self.out.take()

    def get_timer(self) -> float | None:
        return self.out.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.out.run_due(now)

    def restore(self, now: float) -> None:
        self.subscriptions.restore(now)

    def stanza_in(self, stanza: Element, local: str, remote: str, now: float) -> None:
        """A stanza from an authenticated stream (``remote`` proven, addressed to our ``local`` domain)."""
        partner = self.config.partner_for(remote)
        if partner is None:
            return
        tag = stanza.tag
        if tag == _M + "message":
            self._message_in(stanza, local, remote, partner, now)
        elif tag == _M + "presence":
            self.subscriptions.xmpp_presence(stanza, partner, now)
        elif tag == _M + "iq":
            self._iq(stanza, local, remote, partner)

    def sip_in(self, partner_name: str, data: bytes, now: float) -> None:
        """A SIP message from the proxy core on the partner's flow."""
        try:
            message = parse_message(data)
        except SipError as exc:
            log.warning("gateway: a SIP message from the core did not parse: %s", exc.reason)
            return
        if isinstance(message, Response):
            self.out.answered(message, now)
            return
        partner = next((p for p in self.config.partners if p.name == partner_name), None)
        if partner is None or message.method == "ACK":
            return
        try:
            self._sip_request(message, partner, now)
        except SipError as exc:
            self.out.sip(partner.name, sipua.answer(message, exc.status, exc.reason, sipua.new_tag(), exc.headers))

    def sent(self, token: int, now: float) -> None:
        """The stanza of ``token`` is on an authenticated stream: its MESSAGE gets 200 (rule 2)."""
        waiting = self._waiting.pop(token, None)
        if waiting is not None:
            self.out.sip(waiting.partner, sipua.answer(waiting.request, 200, "OK", waiting.to_tag))
            self.out.observer.stanza(waiting.partner, "out", "message", "relayed")

    def unsent(self, token: int, condition: str, reason: str, now: float) -> None:
        """No stream could carry the stanza of ``token``: its MESSAGE gets the mapped error (RFC 7247 §7)."""
        waiting = self._waiting.pop(token, None)
        if waiting is not None:
            status, phrase = xmpp_to_sip_status(condition)
            words = f"{phrase} ({reason})"[:200]
            self.out.sip(waiting.partner, sipua.answer(waiting.request, status, words, waiting.to_tag))
            self.out.observer.stanza(waiting.partner, "out", "message", "error")

    # -- XMPP -> SIP ----------------------------------------------------------------------------------------

    def _message_in(self, stanza: Element, local: str, remote: str, partner: Partner, now: float) -> None:
        kind = stanza.get("type", "normal")
        if kind == "error":
            self._bounced(stanza, partner, now)
            return
        if kind == "groupchat":
            reply = error_stanza(stanza, "cancel", "feature-not-implemented", "sipfed relays one-to-one chat only")
            self.out.stanza(local, remote, reply)
            self.out.observer.stanza(partner.name, "in", "message", "refused")
            return
        text, lang = _body(stanza)
        if text is None:  # chat states and receipts alone: nothing a SIP user could be shown
            self.out.observer.stanza(partner.name, "in", "message", "dropped")
            return
        try:
            sender, target = parse_jid(stanza.get("from") or ""), parse_jid(stanza.get("to") or "")
            sip_from, sip_to = jid_to_sip(sender.bare), jid_to_sip(target.bare)
        except JidError as exc:
            self.out.stanza(local, remote, error_stanza(stanza, "modify", "jid-malformed", str(exc)))
            return
        request, branch = sipua.build_request(
            "MESSAGE",
            sip_to,
            from_uri=sip_from,
            from_tag=sipua.new_tag(),
            to_uri=sip_to,
            call_id=sipua.new_call_id(sender.domain),
            cseq=1,
            extra=(("Content-Language", lang),) if lang else (),
            body=text.encode("utf-8"),
            content_type="text/plain;charset=UTF-8",
        )
        self.out.request(
            partner.name,
            request,
            branch,
            lambda response, t: self._message_answered(stanza, local, remote, partner, response),
            now,
        )

    def _message_answered(
        self, stanza: Element, local: str, remote: str, partner: Partner, response: Response | None
    ) -> None:
        # RFC 6121 §5.2.2: a headline is never answered with an error.
        if (response is not None and response.status < 300) or stanza.get("type") == "headline":
            self.out.observer.stanza(partner.name, "in", "message", "relayed")
            return
        status = response.status if response is not None else 408
        kind, condition = sip_to_xmpp_error(status)
        why = f"SIP {status} {response.reason if response is not None else 'Request Timeout'}"
        log.info("message from %s to %s: %s, answered %s", stanza.get("from"), stanza.get("to"), why, condition)
        self.out.stanza(local, remote, error_stanza(stanza, kind, condition, why))
        self.out.observer.stanza(partner.name, "in", "message", "error")

    def _bounced(self, stanza: Element, partner: Partner, now: float) -> None:
        """Rule 2: a late error for a message we relayed, told to its SIP sender in words."""
        sent = self._sent_ids.pop(stanza.get("id") or "", None)
        if sent is None or sent[0] < now:
            return
        _, sip_user, jid, _ = sent
        condition, text = stanza_error_condition(stanza)
        self.out.observer.stanza(partner.name, "out", "message", "bounced")
        words = f"sipfed: your message to {jid} was not delivered ({condition}{': ' + text if text else ''})"
        contact = jid_to_sip(parse_jid(jid))
        request, branch = sipua.build_request(
            "MESSAGE",
            sip_user,
            from_uri=contact,
            from_tag=sipua.new_tag(),
            to_uri=sip_user,
            call_id=sipua.new_call_id(_domain_of(jid)),
            cseq=1,
            body=words.encode(),
            content_type="text/plain;charset=UTF-8",
        )
        self.out.request(partner.name, request, branch, lambda response, t: None, now)

    def _iq(self, stanza: Element, local: str, remote: str, partner: Partner) -> None:
        """Rule 4."""
        kind = stanza.get("type")
        if kind not in ("get", "set"):
            return
        child = stanza[0] if len(stanza) else None
        reply = element(
            _M + "iq",
            {
                "type": "result",
                "id": stanza.get("id") or "",
                "from": stanza.get("to") or "",
                "to": stanza.get("from") or "",
            },
        )
        if kind == "get" and child is not None and child.tag == f"{{{NS_PING}}}ping":
            pass  # XEP-0199 §4.2: an empty result
        elif kind == "get" and child is not None and child.tag == f"{{{NS_DISCO_INFO}}}query":
            reply.append(
                element(
                    f"{{{NS_DISCO_INFO}}}query",
                    None,
                    None,
                    element(f"{{{NS_DISCO_INFO}}}identity", {"category": "gateway", "type": "sip", "name": "sipfed"}),
                    element(f"{{{NS_DISCO_INFO}}}feature", {"var": NS_DISCO_INFO}),
                    element(f"{{{NS_DISCO_INFO}}}feature", {"var": NS_PING}),
                )
            )
        else:
            reply = error_stanza(stanza, "cancel", "service-unavailable")
        self.out.stanza(local, remote, reply)
        self.out.observer.stanza(partner.name, "in", "iq", "relayed")

    # -- SIP -> XMPP ----------------------------------------------------------------------------------------

    def _sip_request(self, request: Request, partner: Partner, now: float) -> None:
        method = request.method
        if method == "MESSAGE":
            self._message_out(request, partner, now)
        elif method == "SUBSCRIBE":
            status, reason, extra, tag = self.subscriptions.sip_subscribe(request, partner, now)
            self.out.sip(partner.name, sipua.answer(request, status, reason, tag, extra))
            if status < 300:
                self.subscriptions.after_subscribe_answer(request, tag, now)
        elif method == "NOTIFY":
            status = self.subscriptions.sip_notify(request, now) or 481
            reason = "OK" if status == 200 else "Call/Transaction Does Not Exist"
            self.out.sip(partner.name, sipua.answer(request, status, reason, request.to.param("tag") or ""))
        elif method == "INVITE":
            self._invite(request, partner, now)
        elif method in ("BYE", "CANCEL", "INFO", "OPTIONS"):
            if method == "BYE":
                self.sessions.pop(request.call_id, None)
            tag = request.to.param("tag") or sipua.new_tag()
            self.out.sip(partner.name, sipua.answer(request, 200, "OK", tag, (("Allow", ALLOW),)))
        else:
            raise SipError("Method Not Allowed", 405, (("Allow", ALLOW),))

    def _message_out(self, request: Request, partner: Partner, now: float) -> None:
        """Rule 2, RFC 7572 §5: a MESSAGE to an XMPP contact."""
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if content_type == "application/im-iscomposing+xml":  # RFC 3994 typing notices: nothing to relay
            self.out.sip(partner.name, sipua.answer(request, 200, "OK", request.to.param("tag") or sipua.new_tag()))
            return
        if content_type not in TEXT_TYPES:
            raise SipError("Unsupported Media Type", 415, (("Accept", "text/plain"),))
        sender, target = _addresses(request, self.config)
        try:
            text = request.body.decode("utf-8")[:MAX_BODY_CHARS]
        except UnicodeDecodeError:
            raise SipError("Bad Request (the body is not UTF-8 text)", 400) from None
        self._send_chat(request, partner, sender, target, text, now)

    def _send_chat(
        self, request: Request, partner: Partner, sender: Jid, target: Jid, text: str, now: float, answer: bool = True
    ) -> None:
        """The chat stanza; with ``answer`` the MESSAGE's response waits for it to be written (rule 2)."""
        stanza_id = secrets.token_hex(6)
        attrs = {"type": "chat", "id": stanza_id, "from": f"{sender.bare}/{RESOURCE}", "to": str(target.bare)}
        lang = (request.headers.get("content-language") or "").split(",")[0].strip()
        if lang:
            attrs[XML_LANG] = lang
        thread = element(_M + "thread", None, request.call_id[:64]) if request.call_id in self.sessions else None
        children = [element(_M + "body", None, text)] + ([thread] if thread is not None else [])
        token = next(self._tokens) if answer else 0
        if answer:
            self._waiting[token] = _Waiting(request, partner.name, request.to.param("tag") or sipua.new_tag())
        self._remember(
            stanza_id, (now + BOUNCE_SECONDS, sip_user_key(str(request.from_.uri)), str(target.bare), partner.name), now
        )
        self.subscriptions.invited(sip_user_key(str(request.from_.uri)), str(target.bare))
        self.out.stanza(sender.domain, target.domain, element(_M + "message", attrs, None, *children), token)

    def _remember(self, stanza_id: str, entry: tuple[float, str, str, str], now: float) -> None:
        sent = self._sent_ids
        for oldest in list(itertools.islice(sent, 64)):  # a bounded step per message keeps up with any rate
            if sent[oldest][0] >= now and len(sent) < SENT_IDS_MAX:
                break
            del sent[oldest]
        sent[stanza_id] = entry

    def _invite(self, request: Request, partner: Partner, now: float) -> None:
        """Rule 2: Lync's INVITE-based IM session ([MS-SIP] §3.7): accepted with an SDP answer naming the
        message media; the MESSAGEs inside it go on as chat. Its first message may ride in Ms-Text-Format."""
        if b"m=message" not in request.body:
            raise SipError("Not Acceptable Here (only IM sessions: m=message)", 488)
        sender, target = _addresses(request, self.config)  # rule 1, before any answer
        tag = request.to.param("tag") or sipua.new_tag()
        contact = str(request.to.uri)
        if request.call_id not in self.sessions:
            self.sessions[request.call_id] = (sipua.uas_dialog(request, tag), partner.name)
        sdp = (
            f"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=session\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
            f"m=message 5061 sip {contact}\r\na=accept-types:text/plain\r\n"
        ).encode()
        response = make_response(
            request, 200, "OK", to_tag=tag, extra=(("Contact", f"<{contact}>"), ("Content-Type", "application/sdp"))
        )
        response.headers.set("Content-Length", str(len(sdp)))
        response.body = sdp
        self.out.sip(partner.name, response)
        first = _ms_text_format(request.headers.get("ms-text-format"))
        if first:
            self._send_chat(request, partner, sender, target, first, now, answer=False)


ALLOW = "MESSAGE, SUBSCRIBE, NOTIFY, INVITE, ACK, BYE, CANCEL, INFO, OPTIONS"


def _addresses(request: Request, config: XmppConfig) -> tuple[Jid, Jid]:
    """Rule 1: the SIP sender must be of one of our domains, the target of a partner's."""
    try:
        sender = sip_to_jid(str(request.from_.uri))
        target = sip_to_jid(request.uri)
    except JidError as exc:
        raise SipError(f"Not Found ({exc})", 404) from None
    if sender.domain not in config.domains:
        raise SipError(f"Forbidden ({sender.domain} is not one of the xmpp.domains offered to XMPP partners)", 403)
    if config.partner_for(target.domain) is None:
        raise SipError(f"Not Found ({target.domain} is not an XMPP partner domain)", 404)
    return sender, target


def _body(stanza: Element) -> tuple[str | None, str]:
    """RFC 6121 §5.2.3: the body in the stanza's language (else the first), and that language."""
    default = stanza.get(XML_LANG, "")
    bodies = [child for child in stanza if child.tag == _M + "body"]
    if not bodies:
        return None, ""
    chosen = next((b for b in bodies if b.get(XML_LANG, default) == default), bodies[0])
    text = (chosen.text or "")[:MAX_BODY_CHARS]
    return (text if text.strip() else None), chosen.get(XML_LANG, default)


def _ms_text_format(value: str | None) -> str:
    """[MS-SIP] §2.2.1: ``text/plain; charset=UTF-8; ms-body=<base64>`` carries an INVITE's first message."""
    if not value or "ms-body=" not in value:
        return ""
    encoded = value.split("ms-body=", 1)[1].split(";")[0].strip()
    try:
        return base64.b64decode(encoded).decode("utf-8")[:MAX_BODY_CHARS]
    except (ValueError, UnicodeDecodeError):
        return ""


def _domain_of(jid: str) -> str:
    return jid.rpartition("@")[2].split("/")[0]
