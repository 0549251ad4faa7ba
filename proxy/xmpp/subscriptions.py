"""Presence subscriptions between SIP users and XMPP contacts (RFC 8048), both ways, kept across restarts.

Rules:
1. XMPP -> SIP (RFC 8048 §4): an XMPP ``subscribe`` becomes a SIP SUBSCRIBE (Event: presence) on the contact's
   behalf; NOTIFY ``active`` tells the contact ``subscribed`` and maps its PIDF to presence; ``terminated`` with
   ``rejected``/``noresource`` is ``unsubscribed``; other reasons re-SUBSCRIBE (RFC 6665 §4.1.3). sipfed
   refreshes the SIP subscription for as long as the XMPP one stands; ``unsubscribe`` ends it (Expires: 0).
2. SIP -> XMPP (RFC 8048 §5): a SUBSCRIBE to an XMPP contact is answered 200 with a NOTIFY ``pending`` and
   sent on as ``subscribe``; ``subscribed`` makes the NOTIFYs ``active``, each resource one PIDF tuple;
   ``unsubscribed`` ends the dialog (``terminated;reason=rejected``). A SIP un-SUBSCRIBE ends the dialog only:
   SIP clients un-SUBSCRIBE when they sign out, which is not taking the contact off a roster.
3. Partner types (Lync): ``federated`` and ``public_verified`` accept subscriptions both ways;
   ``public_unverified`` lets an XMPP contact subscribe to a SIP user only after that user invited it (sent it
   a SUBSCRIBE or a MESSAGE); otherwise the contact gets ``unsubscribed``.
4. Probes (RFC 6121 §4.3) are answered with the SIP user's last presence for a standing subscription; a
   probe for one sipfed does not know (state lost) re-establishes it, under rule 3.
5. Everything standing is in the ``SubscriptionStore``; ``restore`` picks it up after a restart: SIP dialogs
   continue, refresh timers are armed again, and the XMPP contacts are probed for their current presence.
"""

from __future__ import annotations

import dataclasses
import logging
from xml.etree.ElementTree import Element

from proxy.sip.errors import SipError
from proxy.sip.headers import parse_name_addr
from proxy.sip.message import Request, Response
from proxy.xmpp import sipua
from proxy.xmpp.jid import JidError, jid_to_sip, parse_jid, sip_to_jid
from proxy.xmpp.outbox import Outbox
from proxy.xmpp.policy import Partner, XmppConfig
from proxy.xmpp.presence import (
    PresenceError,
    PresenceState,
    pidf_to_presence,
    presence_stanza,
    presence_to_pidf,
    stanza_to_presence,
)
from proxy.xmpp.store import SubscriptionStore, Watch, Watcher
from proxy.xmpp.xml import NS_SERVER, element

log = logging.getLogger("sipfed.xmpp")

RESOURCE = "sip"
"""The resource our SIP users' presence comes from (a full JID, as RFC 6121 §4.2.2 has presence sent)."""
RETRY_SECONDS = 30.0
"""A SUBSCRIBE that failed for a passing reason (408, 5xx) is tried again after this long."""
MAX_WATCHER_EXPIRES = 3600
Answer = tuple[int, str, tuple[tuple[str, str], ...], str]
"""A SUBSCRIBE's answer: status, reason phrase, extra header fields, our To tag."""


def _presence(tag_type: str | None, from_: str, to: str) -> Element:
    attrs = {"from": from_, "to": to}
    if tag_type:
        attrs["type"] = tag_type
    return element(f"{{{NS_SERVER}}}presence", attrs)


class Subscriptions:
    """Rules 1-5 for every partner."""

    def __init__(self, config: XmppConfig, store: SubscriptionStore, outbox: Outbox) -> None:
        self.config = config
        self.store = store
        self.out = outbox
        self.watches: dict[tuple[str, str], Watch] = {}
        self.watchers: dict[tuple[str, str], Watcher] = {}
        self.invites: set[tuple[str, str]] = set()
        self._watch_calls: dict[str, Watch] = {}
        self._watcher_calls: dict[str, Watcher] = {}
        self._watch_tags: dict[tuple[str, str], str] = {}
        """Watch key -> our From tag of the last SUBSCRIBE (NOTIFY may come before its 200)."""
        self._subscribing: set[tuple[str, str]] = set()
        """Watches whose out-of-dialog SUBSCRIBE waits for its answer: a repeated ``subscribe`` adds nothing."""
        self._ended: dict[str, None] = {}
        """Call-IDs of dialogs we ended (un-SUBSCRIBE): their final NOTIFY is answered 200, not 481."""

    # -- rule 5 -------------------------------------------------------------------------------------------

    def restore(self, now: float) -> None:
        watches, watchers, invites = self.store.load()
        self.invites = invites
        for watch in watches:
            self.watches[watch.key] = watch
            if watch.dialog is not None and watch.expires_at > now:
                # Refreshed at once: the notifier may have ended the dialog while we were away (a NOTIFY that
                # failed); a 481 then starts a new one (_refreshed).
                self._watch_calls[watch.dialog.call_id] = watch
                self._refresh(watch, now)
            else:
                self._subscribe(watch, now)
        for watcher in watchers:
            if watcher.expires_at <= now:
                self.store.drop_watcher(watcher.key)
                continue
            self.watchers[watcher.key] = watcher
            self._watcher_calls[watcher.dialog.call_id] = watcher
            self._arm_expiry(watcher)
            self._probe(watcher)
        self._count()
        log.info("XMPP subscriptions restored: %d XMPP->SIP, %d SIP->XMPP", len(self.watches), len(self.watchers))

    def invited(self, sip_user: str, jid: str) -> None:
        """Rule 3: the SIP user contacted the XMPP contact first."""
        if (sip_user, jid) not in self.invites:
            self.invites.add((sip_user, jid))
            self.store.add_invite(sip_user, jid)

    # -- XMPP side ----------------------------------------------------------------------------------------

    def xmpp_presence(self, stanza: Element, partner: Partner, now: float) -> None:
        try:
            sender, target = parse_jid(stanza.get("from") or ""), parse_jid(stanza.get("to") or "")
            sip_user = jid_to_sip(target.bare)
        except JidError as exc:
            log.info("presence from %s dropped: %s", stanza.get("from"), exc)
            self.out.observer.stanza(partner.name, "in", "presence", "dropped")
            return
        jid, kind = str(sender.bare), stanza.get("type")
        if kind in (None, "unavailable"):
            self._contact_presence(stanza, sip_user, jid, sender.resource or "", now)
        elif kind == "subscribe":
            self._subscribe_request(sip_user, jid, partner, now)
        elif kind == "unsubscribe":
            self._unsubscribe_request(sip_user, jid, now)
        elif kind in ("subscribed", "unsubscribed", "error"):
            self._contact_answer(sip_user, jid, kind == "subscribed", now)
        elif kind == "probe":
            self._probe_request(sip_user, jid, partner, now)

    def _subscribe_request(self, sip_user: str, jid: str, partner: Partner, now: float) -> None:
        """Rules 1 and 3."""
        if partner.partner_type == "public_unverified" and (sip_user, jid) not in self.invites:
            log.warning(
                "subscription of %s to %s refused: partner %s is public_unverified and %s has not invited "
                '%s (sent it a SUBSCRIBE or MESSAGE) first; partner_type = "public_verified" or '
                '"federated" allows it',
                jid,
                sip_user,
                partner.name,
                sip_user,
                jid,
            )
            self.out.stanza(_domain(sip_user), _domain(jid), _presence("unsubscribed", _jid(sip_user), jid))
            self.out.observer.stanza(partner.name, "in", "subscription", "refused")
            return
        watch = self.watches.get((jid, sip_user))
        if watch is not None and watch.approved:  # RFC 6121 §3.1.3: already approved, answer for the user
            self.out.stanza(_domain(sip_user), _domain(jid), _presence("subscribed", _jid(sip_user), jid))
            self._send_presence(watch)
            return
        if watch is None:
            watch = Watch(jid, sip_user, partner.name)
            self.watches[watch.key] = watch
            self.store.put_watch(watch)
            self._count()
        elif watch.key in self._subscribing:
            return  # the same request again, before the first was answered
        self.out.observer.stanza(partner.name, "in", "subscription", "relayed")
        self._subscribe(watch, now)

    def _unsubscribe_request(self, sip_user: str, jid: str, now: float) -> None:
        watch = self.watches.pop((jid, sip_user), None)
        if watch is None:
            return
        self.store.drop_watch(watch.key)
        self.out.cancel(f"refresh:{watch.key}")
        if watch.dialog is not None:
            self._watch_calls.pop(watch.dialog.call_id, None)
            self._forget_call(watch.dialog.call_id)
            request, branch = sipua.in_dialog(
                watch.dialog,
                "SUBSCRIBE",
                contact=watch.dialog.local_uri,
                extra=(("Event", "presence"), ("Expires", "0")),
            )
            self.out.request(watch.partner, request, branch, lambda response, t: None, now)
        self._count()

    def _forget_call(self, call_id: str) -> None:
        if len(self._ended) >= 4096:
            del self._ended[next(iter(self._ended))]
        self._ended[call_id] = None

    def _probe_request(self, sip_user: str, jid: str, partner: Partner, now: float) -> None:
        """Rule 4."""
        watch = self.watches.get((jid, sip_user))
        if watch is None:
            self._subscribe_request(sip_user, jid, partner, now)
        elif watch.approved:
            self._send_presence(watch)

    def _contact_presence(self, stanza: Element, sip_user: str, jid: str, resource: str, now: float) -> None:
        """Rule 2: a contact's presence (one resource) becomes a NOTIFY to each SIP user watching it."""
        watcher = self.watchers.get((sip_user, jid))
        if watcher is None:
            return
        state = stanza_to_presence(stanza)
        if state.available:
            watcher.resources[resource] = dataclasses.asdict(state)
        else:
            watcher.resources.pop(resource, None)
        if not watcher.approved and state.available:
            watcher.approved = True  # presence flows only once the contact approved (RFC 6121 §3.1.5)
        self.store.put_watcher(watcher)
        if watcher.approved:
            self._notify(watcher, "active", now)

    def _contact_answer(self, sip_user: str, jid: str, approved: bool, now: float) -> None:
        """Rule 2: the contact approved or refused (or the subscription failed)."""
        watcher = self.watchers.get((sip_user, jid))
        if watcher is None:
            return
        if approved:
            watcher.approved = True
            self.store.put_watcher(watcher)
            self._notify(watcher, "active", now)
        else:
            self._notify(watcher, "terminated;reason=rejected", now)
            self._drop_watcher(watcher)

    # -- SIP side: our SUBSCRIBE dialogs (rule 1) ---------------------------------------------------------------

    def _subscribe(self, watch: Watch, now: float) -> None:
        tag = sipua.new_tag()
        self._watch_tags[watch.key] = tag
        contact = jid_to_sip(parse_jid(watch.jid))
        request, branch = sipua.build_request(
            "SUBSCRIBE",
            watch.sip_user,
            from_uri=contact,
            from_tag=tag,
            to_uri=watch.sip_user,
            call_id=sipua.new_call_id(_domain(watch.jid)),
            cseq=1,
            contact=contact,
            extra=(
                ("Event", "presence"),
                ("Accept", "application/pidf+xml"),
                ("Expires", str(self.config.subscription_expires_seconds)),
            ),
        )
        self._watch_calls[request.call_id] = watch
        if watch.dialog is not None:
            self._watch_calls.pop(watch.dialog.call_id, None)
        watch.dialog = None
        self._subscribing.add(watch.key)
        self.out.request(
            watch.partner, request, branch, lambda response, t: self._subscribed(watch, request, tag, response, t), now
        )

    def _refresh(self, watch: Watch, now: float) -> None:
        if self.watches.get(watch.key) is not watch:
            return
        if watch.dialog is None:
            self._subscribe(watch, now)
            return
        request, branch = sipua.in_dialog(
            watch.dialog,
            "SUBSCRIBE",
            contact=watch.dialog.local_uri,
            extra=(
                ("Event", "presence"),
                ("Accept", "application/pidf+xml"),
                ("Expires", str(self.config.subscription_expires_seconds)),
            ),
        )
        self.out.request(watch.partner, request, branch, lambda response, t: self._refreshed(watch, response, t), now)

    def _subscribed(self, watch: Watch, request: Request, tag: str, response: Response | None, now: float) -> None:
        self._subscribing.discard(watch.key)
        if self.watches.get(watch.key) is not watch:
            return
        if response is not None and response.status < 300:
            if watch.dialog is None:  # a NOTIFY may have made it first (RFC 6665 §4.1.2.4)
                watch.dialog = sipua.uac_dialog(request, response, tag)
            self._accepted(watch, response, now)
            return
        status = response.status if response is not None else 408
        if status == 408 or 500 <= status < 600:  # passing; a 6xx (603 Decline) is the user's final word
            log.info(
                "SUBSCRIBE for %s to %s: %d; trying again in %g s", watch.jid, watch.sip_user, status, RETRY_SECONDS
            )
            self.out.at(f"refresh:{watch.key}", now + RETRY_SECONDS, lambda t: self._subscribe(watch, t))
            return
        log.info(
            "SUBSCRIBE for %s to %s refused (%d %s): telling %s unsubscribed",
            watch.jid,
            watch.sip_user,
            status,
            response.reason if response else "",
            watch.jid,
        )
        self._end_watch(watch, tell=True)

    def _refreshed(self, watch: Watch, response: Response | None, now: float) -> None:
        if self.watches.get(watch.key) is not watch:
            return
        if response is not None and response.status < 300:
            self._accepted(watch, response, now)
        elif response is not None and response.status == 481:  # the far end forgot it: start again
            self._subscribe(watch, now)
        else:
            self.out.at(f"refresh:{watch.key}", now + RETRY_SECONDS, lambda t: self._refresh(watch, t))

    def _accepted(self, watch: Watch, response: Response, now: float) -> None:
        expires = sipua.expires_of(response, self.config.subscription_expires_seconds)
        if expires <= 0:  # granted for no time at all: try again later rather than refresh in a loop
            self.out.at(f"refresh:{watch.key}", now + RETRY_SECONDS, lambda t: self._subscribe(watch, t))
            return
        watch.expires_at = now + expires
        self.store.put_watch(watch)
        assert watch.dialog is not None
        self._watch_calls[watch.dialog.call_id] = watch
        self._arm_refresh(watch, now)

    def _arm_refresh(self, watch: Watch, now: float) -> None:
        """RFC 6665 §4.1.2.2: refresh before it runs out (at 80 %, at least 5 s early)."""
        left = max(watch.expires_at - now, 0.0)
        when = now + max(min(left * 0.8, left - 5.0), 0.0)
        self.out.at(f"refresh:{watch.key}", when, lambda t: self._refresh(watch, t))

    def sip_notify(self, request: Request, now: float) -> int | None:
        """A NOTIFY for one of our SUBSCRIBE dialogs: the status to answer, None when it is not ours."""
        watch = self._watch_calls.get(request.call_id)
        if watch is None or self.watches.get(watch.key) is not watch:
            return 200 if request.call_id in self._ended else None  # the final NOTIFY of one we ended
        our_tag = request.to.param("tag") or ""
        if watch.dialog is not None and our_tag != watch.dialog.local_tag:
            return 481
        if watch.dialog is None:
            if our_tag != self._watch_tags.get(watch.key):
                return 481
            watch.dialog = sipua.uas_dialog(request, our_tag)  # RFC 6665 §4.1.2.4: as a UAS would
            watch.dialog.local_cseq = 1  # our SUBSCRIBE's
        state, params = sipua.subscription_state(request)
        if state == "terminated":
            self._terminated(watch, params.get("reason", ""), now)
        elif state == "active":
            self._active(watch, request)
        return 200

    def _active(self, watch: Watch, request: Request) -> None:
        if not watch.approved:
            watch.approved = True
            self.out.stanza(
                _domain(watch.sip_user), _domain(watch.jid), _presence("subscribed", _jid(watch.sip_user), watch.jid)
            )
        if request.body:
            try:
                watch.presence = dataclasses.asdict(pidf_to_presence(request.body))
            except PresenceError as exc:
                log.info("NOTIFY for %s from %s: presence not understood (%s)", watch.jid, watch.sip_user, exc)
        self.store.put_watch(watch)
        self._send_presence(watch)

    def _terminated(self, watch: Watch, reason: str, now: float) -> None:
        """RFC 6665 §4.1.3: rejected and noresource are final; the rest are worth a new SUBSCRIBE."""
        if reason in ("rejected", "noresource"):
            self._end_watch(watch, tell=True)
            return
        self.out.stanza(
            _domain(watch.sip_user), _domain(watch.jid), _presence("unavailable", _jid(watch.sip_user), watch.jid)
        )
        delay = 0.0 if reason in ("deactivated", "timeout", "") else RETRY_SECONDS
        self.out.at(f"refresh:{watch.key}", now + delay, lambda t: self._subscribe(watch, t))

    def _end_watch(self, watch: Watch, *, tell: bool) -> None:
        self.watches.pop(watch.key, None)
        self.store.drop_watch(watch.key)
        self.out.cancel(f"refresh:{watch.key}")
        if watch.dialog is not None:
            self._watch_calls.pop(watch.dialog.call_id, None)
        if tell:
            self.out.stanza(
                _domain(watch.sip_user), _domain(watch.jid), _presence("unsubscribed", _jid(watch.sip_user), watch.jid)
            )
        self._count()

    def _send_presence(self, watch: Watch) -> None:
        if watch.presence is None:
            return
        state = PresenceState(**watch.presence)
        stanza = presence_stanza(state, f"{_jid(watch.sip_user)}/{RESOURCE}", watch.jid)
        self.out.stanza(_domain(watch.sip_user), _domain(watch.jid), stanza)
        self.out.observer.stanza(watch.partner, "out", "presence", "relayed")

    # -- SIP side: SUBSCRIBEs to XMPP contacts (rule 2) ---------------------------------------------------

    def sip_subscribe(self, request: Request, partner: Partner, now: float) -> Answer:
        """A SUBSCRIBE to an XMPP contact: (status, reason, extra headers, our To tag); NOTIFYs follow."""
        event = (request.headers.get("event") or "").split(";")[0].strip().lower()
        if event != "presence":
            return 489, "Bad Event", (("Allow-Events", "presence"),), sipua.new_tag()
        to_tag = request.to.param("tag")
        if to_tag:
            return self._resubscribe(request, to_tag, now)
        try:
            sender, target = sip_to_jid(str(request.from_.uri)), sip_to_jid(request.uri)
        except (JidError, SipError) as exc:
            return 404, f"Not Found ({exc})", (), sipua.new_tag()
        if sender.domain not in self.config.domains:  # gateway rule 1, as for a MESSAGE
            return 403, f"Forbidden ({sender.domain} is not one of the xmpp.domains)", (), sipua.new_tag()
        if target.domain not in partner.domains:
            return 404, f"Not Found ({target.domain} is not partner {partner.name}'s domain)", (), sipua.new_tag()
        sip_user, jid = jid_to_sip(sender.bare), str(target.bare)
        if sipua.expires_of(request, MAX_WATCHER_EXPIRES) == 0:  # a one-off fetch (RFC 6665 §4.2.1.1)
            return self._fetch(request, partner, sip_user, jid, now)
        tag = sipua.new_tag()
        watcher = Watcher(sip_user, jid, partner.name, sipua.uas_dialog(request, tag))
        old = self.watchers.get(watcher.key)
        if old is not None:  # the SIP user subscribed again (a new client session): keep what is known
            watcher.approved, watcher.resources = old.approved, old.resources
            self._watcher_calls.pop(old.dialog.call_id, None)
        expires = min(sipua.expires_of(request, MAX_WATCHER_EXPIRES), MAX_WATCHER_EXPIRES)
        watcher.expires_at = now + expires
        self.watchers[watcher.key] = watcher
        self._watcher_calls[request.call_id] = watcher
        self.invited(sip_user, jid)
        self.store.put_watcher(watcher)
        self._arm_expiry(watcher)
        self._count()
        self.out.observer.stanza(partner.name, "out", "subscription", "relayed")
        if watcher.approved:
            self._probe(watcher)
        else:
            self.out.stanza(_domain(sip_user), _domain(jid), _presence("subscribe", _jid(sip_user), jid))
        return 200, "OK", (("Expires", str(expires)), ("Contact", f"<{jid_to_sip(parse_jid(jid))}>")), tag

    def _fetch(self, request: Request, partner: Partner, sip_user: str, jid: str, now: float) -> Answer:
        """Expires: 0 on a new SUBSCRIBE: one NOTIFY with what is known, no subscription (and no roster request
        toward the contact); the dialog ends with it."""
        tag = sipua.new_tag()
        known = self.watchers.get((sip_user, jid))
        fetch = Watcher(
            sip_user,
            jid,
            partner.name,
            sipua.uas_dialog(request, tag),
            now,
            known.approved if known else False,
            dict(known.resources) if known else {},
        )
        self._watcher_calls[request.call_id] = fetch
        return 200, "OK", (("Expires", "0"), ("Contact", f"<{jid_to_sip(parse_jid(jid))}>")), tag

    def after_subscribe_answer(self, request: Request, to_tag: str, now: float) -> None:
        """RFC 6665 §4.2.1.2: the NOTIFY that follows every accepted SUBSCRIBE."""
        watcher = self._watcher_calls.get(request.call_id)
        if watcher is None or watcher.dialog.local_tag != to_tag:
            return
        if watcher.expires_at <= now:
            self._notify(watcher, "terminated;reason=timeout", now, body=watcher.approved)
            self._drop_watcher(watcher)
        else:
            self._notify(watcher, "active" if watcher.approved else "pending", now)

    def _resubscribe(self, request: Request, to_tag: str, now: float) -> Answer:
        watcher = self._watcher_calls.get(request.call_id)
        if watcher is None or watcher.dialog.local_tag != to_tag:
            return 481, "Call/Transaction Does Not Exist", (), to_tag
        expires = min(sipua.expires_of(request, MAX_WATCHER_EXPIRES), MAX_WATCHER_EXPIRES)
        watcher.expires_at = now + expires
        contact = request.headers.get("contact")
        if contact:
            watcher.dialog.remote_target = str(parse_name_addr(contact).uri)
        self.store.put_watcher(watcher)
        self._arm_expiry(watcher)
        return 200, "OK", (("Expires", str(expires)),), to_tag

    def _notify(self, watcher: Watcher, state: str, now: float, body: bool = False) -> None:
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
        if self.watchers.get(watcher.key) is watcher:  # its CSeq moved on (a fetch is not stored)
            self.store.put_watcher(watcher)
        self.out.request(watcher.partner, request, branch, lambda response, t: self._notified(watcher, response), now)
        self.out.observer.stanza(watcher.partner, "in", "presence", "relayed")

    def _notified(self, watcher: Watcher, response: Response | None) -> None:
        if response is not None and response.status in (481, 404, 410) and self.watchers.get(watcher.key) is watcher:
            log.info(
                "NOTIFY to %s for %s: %d, the subscription is gone", watcher.sip_user, watcher.jid, response.status
            )
            self._drop_watcher(watcher)

    def _arm_expiry(self, watcher: Watcher) -> None:
        self.out.at(f"expiry:{watcher.key}", watcher.expires_at, lambda t: self._expired(watcher, t))

    def _expired(self, watcher: Watcher, now: float) -> None:
        if self.watchers.get(watcher.key) is watcher:
            self._notify(watcher, "terminated;reason=timeout", now)
            self._drop_watcher(watcher)

    def _drop_watcher(self, watcher: Watcher) -> None:
        if self.watchers.get(watcher.key) is watcher:
            del self.watchers[watcher.key]
            self.store.drop_watcher(watcher.key)
        self._watcher_calls.pop(watcher.dialog.call_id, None)
        self.out.cancel(f"expiry:{watcher.key}")
        self._count()

    def _probe(self, watcher: Watcher) -> None:
        """Rule 5, RFC 6121 §4.3: ask the contact's server for its current presence."""
        self.out.stanza(
            _domain(watcher.sip_user), _domain(watcher.jid), _presence("probe", _jid(watcher.sip_user), watcher.jid)
        )

    def _count(self) -> None:
        self.out.observer.subscriptions(len(self.watches), len(self.watchers))


def sip_user_key(uri: str) -> str:
    """A SIP user as the gateway keys it: ``sip:user@domain``, whatever case, parameters or scheme the URI was
    written with (the contact's answers come back to the mapped JID, RFC 7247 §5)."""
    return jid_to_sip(sip_to_jid(uri).bare)


def _jid(sip_user: str) -> str:
    return str(sip_to_jid(sip_user).bare)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].split(";")[0].split("/")[0].lower()
