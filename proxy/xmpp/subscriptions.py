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

from proxy.sip.message import Request, Response
from proxy.xmpp import sipua, watchers
from proxy.xmpp.jid import JidError, jid_to_sip, parse_jid, sip_to_jid
from proxy.xmpp.outbox import Outbox
from proxy.xmpp.policy import Partner, XmppConfig
from proxy.xmpp.presence import (
    PresenceError,
    PresenceState,
    pidf_to_presence,
    presence_stanza,
    stanza_to_presence,
)
from proxy.xmpp.store import SubscriptionStore, Watch, Watcher
from proxy.xmpp.watchers import Answer, bare_jid, domain_of, presence_element

log = logging.getLogger("sipfed.xmpp")

RESOURCE = "sip"
"""The resource our SIP users' presence comes from (a full JID, as RFC 6121 §4.2.2 has presence sent)."""
RETRY_SECONDS = 30.0
"""A SUBSCRIBE that failed for a passing reason (408, 5xx) is tried again after this long."""


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
        self.watcher_calls: dict[str, Watcher] = {}
        self._watch_tags: dict[tuple[str, str], str] = {}
        """Watch key -> our From tag of the last SUBSCRIBE (NOTIFY may come before its 200)."""
        self._subscribing: set[tuple[str, str]] = set()
        """Watches whose out-of-dialog SUBSCRIBE waits for its answer: a repeated ``subscribe`` adds nothing."""
        self._ended: dict[str, None] = {}
        """Call-IDs of dialogs we ended (un-SUBSCRIBE): their final NOTIFY is answered 200, not 481."""

    # -- rule 5 -------------------------------------------------------------------------------------------

    def restore(self, now: float) -> None:
        watches, standing, invites = self.store.load()
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
        for watcher in standing:
            if watcher.expires_at <= now:
                self.store.drop_watcher(watcher.key)
                continue
            self.watchers[watcher.key] = watcher
            self.watcher_calls[watcher.dialog.call_id] = watcher
            watchers.arm_expiry(self, watcher)
            watchers.probe(self, watcher)
        self.recount()
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
            self.out.stanza(
                domain_of(sip_user), domain_of(jid), presence_element("unsubscribed", bare_jid(sip_user), jid)
            )
            self.out.observer.stanza(partner.name, "in", "subscription", "refused")
            return
        watch = self.watches.get((jid, sip_user))
        if watch is not None and watch.approved:  # RFC 6121 §3.1.3: already approved, answer for the user
            self.out.stanza(
                domain_of(sip_user), domain_of(jid), presence_element("subscribed", bare_jid(sip_user), jid)
            )
            self._send_presence(watch)
            return
        if watch is None:
            watch = Watch(jid, sip_user, partner.name)
            self.watches[watch.key] = watch
            self.store.put_watch(watch)
            self.recount()
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
        self.recount()

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
            watchers.notify(self, watcher, "active", now)

    def _contact_answer(self, sip_user: str, jid: str, approved: bool, now: float) -> None:
        """Rule 2: the contact approved or refused (or the subscription failed)."""
        watcher = self.watchers.get((sip_user, jid))
        if watcher is None:
            return
        if approved:
            watcher.approved = True
            self.store.put_watcher(watcher)
            watchers.notify(self, watcher, "active", now)
        else:
            watchers.notify(self, watcher, "terminated;reason=rejected", now)
            watchers.drop_watcher(self, watcher)

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
            call_id=sipua.new_call_id(domain_of(watch.jid)),
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
                domain_of(watch.sip_user),
                domain_of(watch.jid),
                presence_element("subscribed", bare_jid(watch.sip_user), watch.jid),
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
            domain_of(watch.sip_user),
            domain_of(watch.jid),
            presence_element("unavailable", bare_jid(watch.sip_user), watch.jid),
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
                domain_of(watch.sip_user),
                domain_of(watch.jid),
                presence_element("unsubscribed", bare_jid(watch.sip_user), watch.jid),
            )
        self.recount()

    def _send_presence(self, watch: Watch) -> None:
        if watch.presence is None:
            return
        state = PresenceState(**watch.presence)
        stanza = presence_stanza(state, f"{bare_jid(watch.sip_user)}/{RESOURCE}", watch.jid)
        self.out.stanza(domain_of(watch.sip_user), domain_of(watch.jid), stanza)
        self.out.observer.stanza(watch.partner, "out", "presence", "relayed")

    # -- SIP side: SUBSCRIBEs to XMPP contacts (rule 2: proxy/xmpp/watchers.py) ---------------------------

    def sip_subscribe(self, request: Request, partner: Partner, now: float) -> Answer:
        """A SUBSCRIBE to an XMPP contact: (status, reason, extra headers, our To tag); NOTIFYs follow."""
        return watchers.sip_subscribe(self, request, partner, now)

    def after_subscribe_answer(self, request: Request, to_tag: str, now: float) -> None:
        """RFC 6665 §4.2.1.2: the NOTIFY that follows every accepted SUBSCRIBE."""
        watchers.after_subscribe_answer(self, request, to_tag, now)

    def recount(self) -> None:
        self.out.observer.subscriptions(len(self.watches), len(self.watchers))


def sip_user_key(uri: str) -> str:
    """A SIP user as the gateway keys it: ``sip:user@domain``, whatever case, parameters or scheme the URI was
    written with (the contact's answers come back to the mapped JID, RFC 7247 §5)."""
    return jid_to_sip(sip_to_jid(uri).bare)
