"""Presence between SIP (PIDF, RFC 3863, with RPID, RFC 4480) and XMPP (RFC 6121 §4), mapped as RFC 8048 does.

Rules:
1. A SIP presentity is one bare JID on the XMPP side (RFC 7247 §6: no ``gr``, no resource), so the tuples of one
   PIDF document make ONE presence: available when any tuple's basic status is open (RFC 3863 §4.1.4). The tuple
   that speaks for it is the open one with the highest contact priority (§4.1.5), the first on a tie.
2. Status text: that tuple's ``<note>``, else a ``<dm:person>`` note (RFC 4479), else a note of ``<presence>``
   itself; its xml:lang as XML inherits it (XML 1.0 §2.12); at most ``MAX_STATUS_CHARS`` characters.
3. Show: RFC 8048 (notifications) maps RPID ``away`` to ``away`` and ``busy`` to ``dnd``; back, ``away`` and ``xa``
   to ``<away/>``, ``dnd`` to ``<busy/>``; ``chat`` has no RPID activity and adds none. The other RFC 4480 §3.2
   activities are ours to place (``ACTIVITY_SHOW``), by what each says of the person's reachability; of several
   the most restrictive wins (dnd, xa, away). Activities of other namespaces are ignored.
4. XMPP to SIP: each resource is a tuple whose id is derived from the resource name (stable across NOTIFYs, and an
   xs:ID as RFC 3863 §4.1.2 wants); no resource at all is one closed tuple. ``<status>`` is the tuple's
   ``<note xml:lang>``; ``<priority>`` is the contact's priority, negative as 0 and divided by 128 (an RFC 3840
   qvalue, three decimals), and back times 128, at most 127.
5. The document declares the ``dm`` and ``rpid`` prefixes on its root and uses them: baresip's subscriber matches
   the literal text ``<rpid:busy/>``, ``<rpid:away/>`` and ``<basic>``.
6. A body comes from the network: only ``parse_document`` reads it (no DTD, no entity, 64 KiB, bounded depth,
   RFC 6120 §11); whatever is not a PIDF document raises ``PresenceError``.
7. RFC 6121 §4.7: ``<show>``, ``<status xml:lang>`` and ``<priority>``; an unknown show value is plain available
   (§4.7.2.1); a priority that is no integer in -128..127 is read as 0 or clamped (§4.7.2.3).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

from proxy.xmpp.jid import Jid, JidError, jid_to_sip, sip_to_jid
from proxy.xmpp.xml import NS_SERVER, XML_LANG, StreamError, element, parse_document

NS_PIDF = "urn:ietf:params:xml:ns:pidf"
NS_DM = "urn:ietf:params:xml:ns:pidf:data-model"
NS_RPID = "urn:ietf:params:xml:ns:pidf:rpid"

MAX_PIDF_BYTES = 65_536
"""Rule 6: a presence document is a few hundred bytes; Kamailio's aggregate of many PUBLISHes stays far below."""
MAX_STATUS_CHARS = 1_024
"""Rules 2 and 7: the longest status text copied from one side to the other."""
SHOW_VALUES = ("away", "chat", "dnd", "xa")
"""RFC 6121 §4.7.2.1."""

#: Rule 3: RFC 4480 §3.2 activity -> XMPP show. away and busy are RFC 8048's; the rest are ours: busy with
#: someone or something (dnd), gone for a long while (xa), briefly elsewhere (away). working, looking-for-work,
#: unknown and other say nothing of reachability and are absent.
ACTIVITY_SHOW: dict[str, str] = {
    "away": "away",
    "busy": "dnd",
    "on-the-phone": "dnd",  # Cisco CUP and Lync publish a call this way
    "meeting": "dnd",
    "presentation": "dnd",
    "performance": "dnd",
    "appointment": "dnd",
    "holiday": "xa",
    "vacation": "xa",
    "permanent-absence": "xa",
    "sleeping": "xa",
    "breakfast": "away",
    "dinner": "away",
    "meal": "away",
    "in-transit": "away",
    "travel": "away",
    "steering": "away",
    "shopping": "away",
    "playing": "away",
    "spectator": "away",
    "tv": "away",
    "worship": "away",
}
#: Rule 3, XMPP to SIP (RFC 8048): show -> RPID activity; chat has none.
SHOW_ACTIVITY: dict[str, str] = {"away": "away", "xa": "away", "dnd": "busy"}
_SHOW_RANK = {"dnd": 3, "xa": 2, "away": 1}

# XML 1.0 §2.2 Char: what an XML document may hold at all.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_INTEGER_RE = re.compile(r"[+-]?[0-9]{1,6}", re.ASCII)
_QVALUE_RE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)", re.ASCII)  # RFC 3261 §25.1 qvalue

_PRESENCE = f"{{{NS_SERVER}}}presence"
_SHOW = f"{{{NS_SERVER}}}show"
_STATUS = f"{{{NS_SERVER}}}status"
_PRIORITY = f"{{{NS_SERVER}}}priority"


class PresenceError(ValueError):
    """A body or stanza that carries no presence this module can map; the message says why."""


@dataclass(frozen=True, slots=True)
class PresenceState:
    """One entity's availability, as either protocol can say it."""

    available: bool
    """True for available (PIDF basic ``open``, XMPP presence without ``type``)."""
    show: str | None = None
    """``away``, ``chat``, ``dnd`` or ``xa`` (RFC 6121 §4.7.2.1); None is plain available."""
    status: str | None = None
    """Free text (XMPP ``<status>``, PIDF ``<note>``)."""
    lang: str | None = None
    """The xml:lang of ``status``, when known."""
    priority: int = 0
    """RFC 6121 §4.7.2.3: -128..127."""

    def __post_init__(self) -> None:
        if self.show is not None and self.show not in SHOW_VALUES:
            raise PresenceError(f"show {self.show!r} is not one of {', '.join(SHOW_VALUES)} (RFC 6121 §4.7.2.1)")
        if not -128 <= self.priority <= 127:
            raise PresenceError(f"priority {self.priority} is outside -128..127 (RFC 6121 §4.7.2.3)")


def _bounded(text: str | None) -> str | None:
    """Rules 2 and 7: at most ``MAX_STATUS_CHARS`` characters, only those XML can carry; None when nothing is left."""
    if text is None:
        return None
    text = _NOT_XML_CHAR.sub("", text)[:MAX_STATUS_CHARS]
    return text if text.strip() else None


# -- SIP to XMPP ---------------------------------------------------------------------------------------------------


def pidf_to_presence(body: bytes) -> PresenceState:
    """Rules 1-3 and 6: one PIDF document (``application/pidf+xml``) as one XMPP presence.

    The body is required: a NOTIFY without one (a pending or terminated subscription, RFC 6665) says
    nothing about presence and is the caller's to handle. Raises ``PresenceError``."""
    root = _parse_pidf(body)
    leader = _leading_tuple(root)
    available = leader is not None and _basic(leader) == "open"
    status, lang = _status(root, leader)
    show = _show(root) if available else None
    priority = _xmpp_priority(leader) if available and leader is not None else 0
    return PresenceState(available, show, status, lang, priority)


def _parse_pidf(body: bytes) -> Element:
    if not body.strip():
        raise PresenceError("the body is empty: an empty NOTIFY carries no presence document")
    try:
        root = parse_document(body, max_bytes=MAX_PIDF_BYTES)
    except StreamError as exc:
        raise PresenceError(f"the body is not a usable PIDF document: {exc}") from None
    if root.tag != f"{{{NS_PIDF}}}presence":
        raise PresenceError(f"the root element is {root.tag}, not PIDF's {{{NS_PIDF}}}presence (RFC 3863 §4.1)")
    return root


def _basic(tuple_: Element) -> str | None:
    """RFC 3863 §4.1.4: ``open`` or ``closed``; None when the status has no basic element."""
    basic = tuple_.find(f"{{{NS_PIDF}}}status/{{{NS_PIDF}}}basic")
    if basic is None:
        return None
    value = (basic.text or "").strip()
    if value not in ("open", "closed"):
        raise PresenceError(f"basic status {value[:40]!r} is neither open nor closed (RFC 3863 §4.1.4)")
    return value


def _contact_priority(tuple_: Element) -> float:
    """RFC 3863 §4.1.5: the qvalue of ``<contact priority>``; a missing or malformed one counts as 0."""
    contact = tuple_.find(f"{{{NS_PIDF}}}contact")
    value = (contact.get("priority") or "").strip() if contact is not None else ""
    return float(value) if _QVALUE_RE.fullmatch(value) else 0.0


def _leading_tuple(root: Element) -> Element | None:
    """Rule 1: the open tuple of highest contact priority (the first on a tie), else the first tuple."""
    best: Element | None = None
    best_key = (False, -1.0)
    for tuple_ in root.findall(f"{{{NS_PIDF}}}tuple"):
        key = (_basic(tuple_) == "open", _contact_priority(tuple_))
        if key > best_key:
            best, best_key = tuple_, key
    return best


def _xmpp_priority(tuple_: Element) -> int:
    """Rule 4, back: a qvalue times 128, at most 127."""
    return min(127, round(_contact_priority(tuple_) * 128))


def _status(root: Element, leader: Element | None) -> tuple[str | None, str | None]:
    """Rule 2: (text, xml:lang) of the first note found, in the order the rule gives."""
    places: list[tuple[Element, str]] = []
    if leader is not None:
        places.append((leader, f"{{{NS_PIDF}}}note"))
    places += [(person, f"{{{NS_DM}}}note") for person in root.findall(f"{{{NS_DM}}}person")]
    places.append((root, f"{{{NS_PIDF}}}note"))
    for parent, tag in places:
        for note in parent.findall(tag):
            text = _bounded((note.text or "").strip())
            if text is not None:
                return text, note.get(XML_LANG) or parent.get(XML_LANG) or root.get(XML_LANG)
    return None, None


def _show(root: Element) -> str | None:
    """Rule 3: the most restrictive show among the RPID activities of the document."""
    prefix = f"{{{NS_RPID}}}"
    names = [
        activity.tag.removeprefix(prefix)
        for activities in root.iter(f"{prefix}activities")
        for activity in activities
        if activity.tag.startswith(prefix)
    ]
    shows = [ACTIVITY_SHOW[name] for name in names if name in ACTIVITY_SHOW]
    return max(shows, key=_SHOW_RANK.__getitem__, default=None)


# -- XMPP to SIP ---------------------------------------------------------------------------------------------------


def presence_to_pidf(entity: str, resources: dict[str, PresenceState]) -> bytes:
    """Rules 3-5: the presence of an XMPP entity's resources as the PIDF body of a NOTIFY.

    ``entity`` is the presentity URI the watcher subscribed to (``sip:romeo@xmpp.test`` or ``pres:...``);
    ``resources`` maps each resource name to its last presence; empty means unavailable."""
    try:
        bare = sip_to_jid(entity).bare
    except JidError as exc:
        raise PresenceError(f"entity {entity[:80]!r} is not a user's URI: {exc}") from None
    states = sorted(resources.items()) or [("", PresenceState(available=False))]
    parts = [
        "<?xml version='1.0' encoding='UTF-8'?>",
        f"<presence xmlns='{NS_PIDF}' xmlns:dm='{NS_DM}' xmlns:rpid='{NS_RPID}' entity={_attr(entity)}>",
        *(_tuple(bare, resource, state) for resource, state in states),
        _person(entity, states),
        "</presence>",
    ]
    return "".join(parts).encode("utf-8")


def _attr(value: str) -> str:
    return "'" + escape(_NOT_XML_CHAR.sub("", value), {"'": "&apos;", '"': "&quot;"}) + "'"


def _xml_id(prefix: str, name: str) -> str:
    """Rule 4: a name's stable xs:ID (a letter, then hex digits)."""
    return prefix + hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]


def _tuple(bare: Jid, resource: str, state: PresenceState) -> str:
    """RFC 3863 §4.1: status, contact, notes, in the schema's order."""
    basic = "open" if state.available else "closed"
    out = [f"<tuple id='{_xml_id('t', resource)}'><status><basic>{basic}</basic></status>"]
    if resource and state.available:
        contact = jid_to_sip(Jid(bare.local, bare.domain, resource))  # RFC 7247 §6: a resource is a GRUU
        out.append(f"<contact priority='{max(state.priority, 0) / 128:.3f}'>{escape(contact)}</contact>")
    status = _bounded(state.status)
    if status is not None:
        lang = f" xml:lang={_attr(state.lang)}" if state.lang else ""
        out.append(f"<note{lang}>{escape(status)}</note>")
    out.append("</tuple>")
    return "".join(out)


def _person(entity: str, states: list[tuple[str, PresenceState]]) -> str:
    """Rule 3: the RPID activity of the leading available resource (highest priority, first on a tie)."""
    available = [state for _, state in states if state.available]
    leader = max(available, key=lambda state: state.priority, default=None)
    activity = SHOW_ACTIVITY.get(leader.show or "") if leader is not None else None
    if activity is None:
        return ""
    return f"<dm:person id='{_xml_id('p', entity)}'><rpid:activities><rpid:{activity}/></rpid:activities></dm:person>"


# -- the XMPP stanza (RFC 6121 §4.7) -------------------------------------------------------------------------------


def presence_stanza(state: PresenceState, from_: str, to: str) -> Element:
    """RFC 6121 §4.7: ``<presence>`` (``type='unavailable'`` when not available) with show, status, priority;
    show and priority only on available presence, where they mean something (§4.7.2.1, §4.7.2.3)."""
    children: list[Element] = []
    if state.available and state.show is not None:
        children.append(element(_SHOW, None, state.show))
    status = _bounded(state.status)
    if status is not None:
        children.append(element(_STATUS, {XML_LANG: state.lang} if state.lang else None, status))
    if state.available and state.priority:
        children.append(element(_PRIORITY, None, str(state.priority)))
    attrs = {"from": from_, "to": to} | ({} if state.available else {"type": "unavailable"})
    return element(_PRESENCE, attrs, None, *children)


def stanza_to_presence(stanza: Element) -> PresenceState:
    """RFC 6121 §4.7 (rule 7): an availability presence as a ``PresenceState``. Raises ``PresenceError`` for
    another stanza, or for a subscription or probe presence (RFC 6121 §3, not availability)."""
    if stanza.tag != _PRESENCE:
        raise PresenceError(f"{stanza.tag} is not a presence stanza")
    kind = stanza.get("type")
    if kind not in (None, "unavailable"):
        raise PresenceError(f"presence of type {kind[:40]!r} is not availability presence (RFC 6121 §4.7.1)")
    available = kind is None
    show = (stanza.findtext(_SHOW) or "").strip()
    status, lang = _stanza_status(stanza)
    priority = _stanza_priority(stanza) if available else 0
    return PresenceState(available, show if available and show in SHOW_VALUES else None, status, lang, priority)


def _stanza_status(stanza: Element) -> tuple[str | None, str | None]:
    """RFC 6121 §4.7.2.2: of several ``<status>`` (one per language), the one in the stanza's own language."""
    statuses = stanza.findall(_STATUS)
    default = stanza.get(XML_LANG)
    chosen = next((s for s in statuses if s.get(XML_LANG, default) == default), statuses[0] if statuses else None)
    text = _bounded(chosen.text) if chosen is not None else None
    if chosen is None or text is None:
        return None, None
    return text, chosen.get(XML_LANG) or default


def _stanza_priority(stanza: Element) -> int:
    """Rule 7: an integer clamped to -128..127; anything else is 0 (the absent element's meaning)."""
    text = (stanza.findtext(_PRIORITY) or "").strip()
    return max(-128, min(127, int(text))) if _INTEGER_RE.fullmatch(text) else 0
