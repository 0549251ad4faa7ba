"""What the gateway must not forget across a restart: the subscriptions between SIP users and XMPP contacts,
and who invited whom (``public_unverified`` partners).

XMPP subscriptions last until someone cancels them; SIP ones expire. So the gateway keeps each standing
subscription here and, after a restart, SUBSCRIBEs again on the XMPP contact's behalf and probes the XMPP
side for the SIP user's, without anyone re-subscribing (RFC 8048 §4, §5).

``SubscriptionStore`` is the interface; ``MemoryStore`` keeps it in a dict (tests, and ``store = ":memory:"``);
``proxy/net/xmpp_store.py`` keeps it in SQLite (the embedded default). Several sipfed instances serving one
domain share one PostgreSQL database through the same four tables' worth of calls (README, XMPP federation).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Dialog:
    """RFC 3261 §12.1 dialog state, from our side."""

    call_id: str
    """The Call-ID."""
    local_tag: str
    """Our tag (From for a dialog we started, To for one we accepted)."""
    remote_tag: str
    """Theirs ('' until a response or NOTIFY gives it)."""
    local_uri: str
    """Our URI (``sip:romeo@xmpp.test`` for an XMPP contact)."""
    remote_uri: str
    """Theirs (``sip:alice@tomt.local``)."""
    remote_target: str
    """Where in-dialog requests go: the remote Contact (§12.1.1, §12.1.2)."""
    route_set: tuple[str, ...] = ()
    """The Route header values in-dialog requests carry, in order (§12.1)."""
    local_cseq: int = 1
    """Our last CSeq in this dialog."""


@dataclass(slots=True)
class Watch:
    """An XMPP contact watching a SIP user: our SIP SUBSCRIBE on the contact's behalf (RFC 8048 §4)."""

    jid: str
    """The XMPP watcher, bare (``romeo@xmpp.test``)."""
    sip_user: str
    """The SIP presentity (``sip:alice@tomt.local``)."""
    partner: str
    """The partner's name."""
    dialog: Dialog | None = None
    """The SUBSCRIBE dialog; None before the first answer, and after a restart until the new one."""
    approved: bool = False
    """The SIP side accepted (a NOTIFY with Subscription-State active): the contact was told ``subscribed``."""
    expires_at: float = 0.0
    """Wall-clock time the SIP subscription runs out (refreshed before)."""
    presence: dict[str, Any] | None = None
    """The last presence the SIP side sent, as ``PresenceState`` fields (answers probes)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.jid, self.sip_user)


@dataclass(slots=True)
class Watcher:
    """A SIP user watching an XMPP contact: a SUBSCRIBE dialog we accepted (RFC 8048 §5)."""

    sip_user: str
    """The SIP watcher (``sip:alice@tomt.local``)."""
    jid: str
    """The XMPP contact, bare (``romeo@xmpp.test``)."""
    partner: str
    """The partner's name."""
    dialog: Dialog
    """The dialog NOTIFYs go out in."""
    expires_at: float = 0.0
    """Wall-clock time the SIP subscription ends unless refreshed."""
    approved: bool = False
    """The contact answered ``subscribed``: NOTIFYs are active."""
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The contact's available resources and their presence (``PresenceState`` fields)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.sip_user, self.jid)


class SubscriptionStore(Protocol):
    """Where subscriptions and invitations outlive the process."""

    def load(self) -> tuple[list[Watch], list[Watcher], set[tuple[str, str]]]:
        """Everything stored: watches, watchers, invitations (sip_user, jid)."""
        ...

    def put_watch(self, watch: Watch) -> None: ...

    def drop_watch(self, key: tuple[str, str]) -> None: ...

    def put_watcher(self, watcher: Watcher) -> None: ...

    def drop_watcher(self, key: tuple[str, str]) -> None: ...

    def add_invite(self, sip_user: str, jid: str) -> None: ...


class MemoryStore:
    """A ``SubscriptionStore`` in memory: forgotten at exit."""

    def __init__(self) -> None:
        self.watches: dict[tuple[str, str], str] = {}
        self.watchers: dict[tuple[str, str], str] = {}
        self.invites: set[tuple[str, str]] = set()

    def load(self) -> tuple[list[Watch], list[Watcher], set[tuple[str, str]]]:
        return (
            [watch_from_json(v) for v in self.watches.values()],
            [watcher_from_json(v) for v in self.watchers.values()],
            set(self.invites),
        )

    def put_watch(self, watch: Watch) -> None:
        self.watches[watch.key] = to_json(watch)

    def drop_watch(self, key: tuple[str, str]) -> None:
        self.watches.pop(key, None)

    def put_watcher(self, watcher: Watcher) -> None:
        self.watchers[watcher.key] = to_json(watcher)

    def drop_watcher(self, key: tuple[str, str]) -> None:
        self.watchers.pop(key, None)

    def add_invite(self, sip_user: str, jid: str) -> None:
        self.invites.add((sip_user, jid))


def to_json(record: Watch | Watcher) -> str:
    return json.dumps(asdict(record), separators=(",", ":"), sort_keys=True)


def _dialog(raw: Any) -> Dialog | None:
    if not isinstance(raw, dict):
        return None
    raw = dict(raw)
    raw["route_set"] = tuple(raw.get("route_set") or ())
    return Dialog(**raw)


def watch_from_json(text: str) -> Watch:
    raw = json.loads(text)
    raw["dialog"] = _dialog(raw.get("dialog"))
    return Watch(**raw)


def watcher_from_json(text: str) -> Watcher:
    raw = json.loads(text)
    dialog = _dialog(raw.get("dialog"))
    assert dialog is not None
    raw["dialog"] = dialog
    return Watcher(**raw)
