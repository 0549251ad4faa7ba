"""Subscriptions of SIP users to XMPP contacts (RFC 8048 §5; rule 2 of proxy/xmpp/subscriptions.py): the
SUBSCRIBE answered 200 with a NOTIFY ``pending`` and sent on as ``subscribe``; the NOTIFYs of each watcher's
dialog, its expiry and the probes that ask the contact's server for its presence. Plain functions over the
``Subscriptions`` state (no mixins), as the SIP core's are over ``Proxy``'s.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from proxy.sip.errors import SipError
from proxy.sip.headers import parse_name_addr
from proxy.sip.message import Request, Response
from proxy.xmpp import sipua
from proxy.xmpp.jid import JidError, jid_to_sip, parse_jid, sip_to_jid
from proxy.xmpp.policy import Partner
from proxy.xmpp.presence import PresenceState, presence_to_pidf
from proxy.xmpp.store import Watcher
from proxy.xmpp.xml import NS_SERVER, element

if TYPE_CHECKING:
    from proxy.xmpp.subscriptions import Subscriptions

log = logging.getLogger("sipfed.xmpp")

MAX_WATCHER_EXPIRES = 3600
Answer = tuple[int, str, tuple[tuple[str, str], ...], str]
"""A SUBSCRIBE's answer: status, reason phrase, extra header fields, our To tag."""


def sip_subscribe(subs: Subscriptions, request: Request, partner: Partner, now: float) -> Answer:
    """A SUBSCRIBE to an XMPP contact: (status, reason, extra headers, our To tag); NOTIFYs follow."""
    event = (request.headers.get("event") or "").split(";")[0].strip().lower()
    if event != "presence":
        return 489, "Bad Event", (("Allow-Events", "presence"),), sipua.new_tag()
    to_tag = request.to.param("tag")
    if to_tag:
        return resubscribe(subs, request, to_tag, now)
    try:
        sender, target = sip_to_jid(str(request.from_.uri)), sip_to_jid(request.uri)
    except (JidError, SipError) as exc:
        return 404, f"Not Found ({exc})", (), sipua.new_tag()
    if sender.domain not in subs.config.domains:  # gateway rule 1, as for a MESSAGE
        return 403, f"Forbidden ({sender.domain} is not one of the xmpp.domains)", (), sipua.new_tag()
    if target.domain not in partner.domains:
        return 404, f"Not Found ({target.domain} is not partner {partner.name}'s domain)", (), sipua.new_tag()
    sip_user, jid = jid_to_sip(sender.bare), str(target.bare)
    if sipua.expires_of(request, MAX_WATCHER_EXPIRES) == 0:  # a one-off fetch (RFC 6665 §4.2.1.1)
        return fetch(subs, request, partner, sip_user, jid, now)
    tag = sipua.new_tag()
    watcher = Watcher(sip_user, jid, partner.name, sipua.uas_dialog(request, tag))
    old = subs.watchers.get(watcher.key)
    if old is not None:  # the SIP user subscribed again (a new client session): keep what is known
        watcher.approved, watcher.resources = old.approved, old.resources
        subs.watcher_calls.pop(old.dialog.call_id, None)
    expires = min(sipua.expires_of(request, MAX_WATCHER_EXPIRES), MAX_WATCHER_EXPIRES)
    watcher.expires_at = now + expires
    subs.watchers[watcher.key] = watcher
    subs.watcher_calls[request.call_id] = watcher
    subs.invited(sip_user, jid)
    subs.store.put_watcher(watcher)
    arm_expiry(subs, watcher)
    subs.recount()
    subs.out.observer.stanza(partner.name, "out", "subscription", "relayed")
    if watcher.approved:
        probe(subs, watcher)
    else:
        subs.out.stanza(domain_of(sip_user), domain_of(jid), presence_element("subscribe", bare_jid(sip_user), jid))
    return 200, "OK", (("Expires", str(expires)), ("Contact", f"<{jid_to_sip(parse_jid(jid))}>")), tag


def fetch(subs: Subscriptions, request: Request, partner: Partner, sip_user: str, jid: str, now: float) -> Answer:
    """Expires: 0 on a new SUBSCRIBE: one NOTIFY with what is known, no subscription (and no roster request
    toward the contact); the dialog ends with it."""
    tag = sipua.new_tag()
    known = subs.watchers.get((sip_user, jid))
    one_off = Watcher(
        sip_user,
        jid,
        partner.name,
        sipua.uas_dialog(request, tag),
        now,
        known.approved if known else False,
        dict(known.resources) if known else {},
    )
    subs.watcher_calls[request.call_id] = one_off
    return 200, "OK", (("Expires", "0"), ("Contact", f"<{jid_to_sip(parse_jid(jid))}>")), tag


def after_subscribe_answer(subs: Subscriptions, request: Request, to_tag: str, now: float) -> None:
    """RFC 6665 §4.2.1.2: the NOTIFY that follows every accepted SUBSCRIBE."""
    watcher = subs.watcher_calls.get(request.call_id)
    if watcher is None or watcher.dialog.local_tag != to_tag:
        return
    if watcher.expires_at <= now:
        notify(subs, watcher, "terminated;reason=timeout", now, body=watcher.approved)
        drop_watcher(subs, watcher)
    else:
        notify(subs, watcher, "active" if watcher.approved else "pending", now)


def resubscribe(subs: Subscriptions, request: Request, to_tag: str, now: float) -> Answer:
    watcher = subs.watcher_calls.get(request.call_id)
    if watcher is None or watcher.dialog.local_tag != to_tag:
        return 481, "Call/Transaction Does Not Exist", (), to_tag
    expires = min(sipua.expires_of(request, MAX_WATCHER_EXPIRES), MAX_WATCHER_EXPIRES)
    watcher.expires_at = now + expires
    contact = request.headers.get("contact")
    if contact:
        watcher.dialog.remote_target = str(parse_name_addr(contact).uri)
    subs.store.put_watcher(watcher)
    arm_expiry(subs, watcher)
    return 200, "OK", (("Expires", str(expires)),), to_tag


def notify(subs: Subscriptions, watcher: Watcher, state: str, now: float, body: bool = False) -> None:
    """A NOTIFY in the watcher's dialog; its PIDF when active (or ``body``: a fetch's final answer)."""
    active = state == "active"
    if active:
        left = max(int(watcher.expires_at - now), 0)
        state = f"active;expires={left}"
    elif state == "pending":
        state = f"pending;expires={max(int(watcher.expires_at - now), 0)}"
    with_body = active or body
    resources = {name: PresenceState(**fields) for name, fields in watcher.resources.items()} if with_body else {}
    pidf = presence_to_pidf(jid_to_sip(parse_jid(watcher.jid)), resources) if with_body else b""
    request, branch = sipua.in_dialog(
        watcher.dialog,
        "NOTIFY",
        contact=watcher.dialog.local_uri,
        extra=(("Event", "presence"), ("Subscription-State", state)),
        body=pidf,
        content_type="application/pidf+xml",
    )
    if subs.watchers.get(watcher.key) is watcher:  # its CSeq moved on (a fetch is not stored)
        subs.store.put_watcher(watcher)
    subs.out.request(watcher.partner, request, branch, lambda response, t: notified(subs, watcher, response), now)
    subs.out.observer.stanza(watcher.partner, "in", "presence", "relayed")


def notified(subs: Subscriptions, watcher: Watcher, response: Response | None) -> None:
    if response is not None and response.status in (481, 404, 410) and subs.watchers.get(watcher.key) is watcher:
        log.info("NOTIFY to %s for %s: %d, the subscription is gone", watcher.sip_user, watcher.jid, response.status)
        drop_watcher(subs, watcher)


def arm_expiry(subs: Subscriptions, watcher: Watcher) -> None:
    subs.out.at(f"expiry:{watcher.key}", watcher.expires_at, lambda t: expired(subs, watcher, t))


def expired(subs: Subscriptions, watcher: Watcher, now: float) -> None:
    if subs.watchers.get(watcher.key) is watcher:
        notify(subs, watcher, "terminated;reason=timeout", now)
        drop_watcher(subs, watcher)


def drop_watcher(subs: Subscriptions, watcher: Watcher) -> None:
    if subs.watchers.get(watcher.key) is watcher:
        del subs.watchers[watcher.key]
        subs.store.drop_watcher(watcher.key)
    subs.watcher_calls.pop(watcher.dialog.call_id, None)
    subs.out.cancel(f"expiry:{watcher.key}")
    subs.recount()


def probe(subs: Subscriptions, watcher: Watcher) -> None:
    """Rule 5, RFC 6121 §4.3: ask the contact's server for its current presence."""
    subs.out.stanza(
        domain_of(watcher.sip_user),
        domain_of(watcher.jid),
        presence_element("probe", bare_jid(watcher.sip_user), watcher.jid),
    )


def presence_element(tag_type: str | None, from_: str, to: str) -> Element:
    attrs = {"from": from_, "to": to}
    if tag_type:
        attrs["type"] = tag_type
    return element(f"{{{NS_SERVER}}}presence", attrs)


def bare_jid(sip_user: str) -> str:
    return str(sip_to_jid(sip_user).bare)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].split(";")[0].split("/")[0].lower()
