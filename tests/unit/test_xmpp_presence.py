"""Presence between PIDF/RPID and XMPP (RFC 8048, RFC 3863, RFC 4480, RFC 6121 §4.7): proxy/xmpp/presence.py.

The SIP samples are written by hand after what the peers of the lab send: Kamailio's presence server (an aggregate
of PUBLISHed tuples and a ``dm:person``), baresip's presence module (CRLF lines, ``standalone="no"``, an empty
``rpid:activities``) and Cisco CUP (``rpid:on-the-phone`` during a call)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from proxy.xmpp.presence import (
    ACTIVITY_SHOW,
    MAX_STATUS_CHARS,
    NS_DM,
    NS_PIDF,
    NS_RPID,
    PresenceError,
    PresenceState,
    pidf_to_presence,
    presence_stanza,
    presence_to_pidf,
    stanza_to_presence,
)
from proxy.xmpp.xml import NS_SERVER, XML_LANG, element, parse_document, to_bytes

HEAD = (
    "<?xml version='1.0' encoding='UTF-8'?>"
    f"<presence xmlns='{NS_PIDF}' xmlns:dm='{NS_DM}' xmlns:rpid='{NS_RPID}' entity='sip:alice@tomt.local'>"
)

KAMAILIO = b"""<?xml version='1.0' encoding='UTF-8'?>
<presence xmlns='urn:ietf:params:xml:ns:pidf' xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model'
    xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' entity='sip:alice@tomt.local'>
  <tuple id='a1b2c3'>
    <status><basic>open</basic></status>
  </tuple>
  <dm:person id='p7e3f'>
    <rpid:activities><rpid:away/></rpid:activities>
    <dm:note>Lunch</dm:note>
  </dm:person>
</presence>
"""

# Two PUBLISHes aggregated by Kamailio's presence_xml: the desk phone is off, the softphone is in a call.
KAMAILIO_TWO_DEVICES = """<?xml version="1.0"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
    xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:alice@tomt.local" xml:lang="de">
  <tuple id="desk"><status><basic>closed</basic></status><contact priority="0.8">sip:alice@192.0.2.10</contact>
    <note>Feierabend</note></tuple>
  <tuple id="soft"><status><basic>open</basic></status><contact priority="0.5">sip:alice@192.0.2.11</contact>
    <note>Im Gespräch</note></tuple>
  <dm:person id="p1"><rpid:activities><rpid:on-the-phone/></rpid:activities></dm:person>
</presence>
""".encode()


def baresip(basic: str, activities: str = "<rpid:activities/>") -> bytes:
    """What baresip's presence module PUBLISHes (modules/presence/publisher.c: open or closed, empty activities);
    with ``activities`` the busy and away its subscriber reads (subscriber.c matches ``<rpid:busy/>``)."""
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\r\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf"\r\n'
        '    xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"\r\n'
        '    xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"\r\n'
        '    entity="sip:bob@tomt.local">\r\n'
        f'  <dm:person id="p4159">{activities}</dm:person>\r\n'
        '  <tuple id="t4109">\r\n'
        "    <status>\r\n"
        f"      <basic>{basic}</basic>\r\n"
        "    </status>\r\n"
        "    <contact>sip:bob@tomt.local</contact>\r\n"
        "  </tuple>\r\n"
        "</presence>\r\n"
    ).encode()


CUP_ON_THE_PHONE = f"""<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="{NS_PIDF}" xmlns:dm="{NS_DM}" xmlns:rpid="{NS_RPID}" entity="sip:carol@tomt.local">
<tuple id="cisco-id"><status><basic>open</basic></status><note xml:lang="en">On the phone</note></tuple>
<dm:person id="carol"><rpid:activities><rpid:on-the-phone/></rpid:activities></dm:person>
</presence>""".encode()


def pidf(body: str) -> bytes:
    return (HEAD + body + "</presence>").encode()


def person(*activities: str) -> str:
    inner = "".join(f"<rpid:{name}/>" for name in activities)
    return f"<dm:person id='p1'><rpid:activities>{inner}</rpid:activities></dm:person>"


OPEN = "<tuple id='t1'><status><basic>open</basic></status></tuple>"
CLOSED = "<tuple id='t2'><status><basic>closed</basic></status></tuple>"


# -- SIP to XMPP -----------------------------------------------------------------------------------------------------


def test_kamailio_pidf_is_away_with_its_note() -> None:
    assert pidf_to_presence(KAMAILIO) == PresenceState(available=True, show="away", status="Lunch")


def test_kamailio_aggregate_of_two_devices_is_one_presence() -> None:
    # rule 1: one tuple open is enough; the open tuple speaks, though the closed one has the higher priority
    assert pidf_to_presence(KAMAILIO_TWO_DEVICES) == PresenceState(True, "dnd", "Im Gespräch", "de", 64)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (baresip("open"), PresenceState(True)),
        (baresip("closed"), PresenceState(False)),
        (baresip("open", "<rpid:activities><rpid:busy/></rpid:activities>"), PresenceState(True, "dnd")),
        (baresip("open", "<rpid:activities><rpid:away/></rpid:activities>"), PresenceState(True, "away")),
        (baresip("closed", "<rpid:activities><rpid:busy/></rpid:activities>"), PresenceState(False)),
    ],
)
def test_baresip_pidf(body: bytes, expected: PresenceState) -> None:
    assert pidf_to_presence(body) == expected


def test_cup_on_the_phone_is_dnd() -> None:
    assert pidf_to_presence(CUP_ON_THE_PHONE) == PresenceState(True, "dnd", "On the phone", "en")


@pytest.mark.parametrize(("activity", "show"), sorted(ACTIVITY_SHOW.items()))
def test_each_rpid_activity_maps_to_its_show(activity: str, show: str) -> None:
    assert pidf_to_presence(pidf(OPEN + person(activity))).show == show


def test_rfc_8048_rows_hold() -> None:
    assert ACTIVITY_SHOW["away"] == "away"
    assert ACTIVITY_SHOW["busy"] == "dnd"


@pytest.mark.parametrize("activity", ["working", "looking-for-work", "unknown", "other", "not-an-rpid-activity"])
def test_an_activity_that_says_nothing_of_reachability_is_plain_available(activity: str) -> None:
    assert pidf_to_presence(pidf(OPEN + person(activity))) == PresenceState(True)


@pytest.mark.parametrize(
    ("activities", "show"),
    [
        (("away", "on-the-phone"), "dnd"),
        (("meal", "vacation"), "xa"),
        (("vacation", "busy", "meal"), "dnd"),
        (("working", "meal"), "away"),
    ],
)
def test_of_several_activities_the_most_restrictive_wins(activities: tuple[str, ...], show: str) -> None:
    assert pidf_to_presence(pidf(OPEN + person(*activities))).show == show


def test_activities_of_another_namespace_are_ignored() -> None:
    foreign = "<dm:person id='p1'><rpid:activities><busy xmlns='urn:example:other'/></rpid:activities></dm:person>"
    assert pidf_to_presence(pidf(OPEN + foreign)).show is None


def test_a_closed_presentity_has_no_show() -> None:
    assert pidf_to_presence(pidf(CLOSED + person("busy"))) == PresenceState(False)


@pytest.mark.parametrize(
    ("tuples", "available"),
    [
        ("", False),
        (CLOSED, False),
        (OPEN, True),
        (CLOSED + OPEN, True),
        (OPEN + CLOSED, True),
        (CLOSED + CLOSED.replace("t2", "t3"), False),
        ("<tuple id='t9'><status/></tuple>", False),  # a status without basic says nothing open
    ],
)
def test_several_tuples_are_one_presence_open_if_any_is(tuples: str, available: bool) -> None:
    assert pidf_to_presence(pidf(tuples)).available is available


def tuple_(tid: str, basic: str, priority: str | None, note: str) -> str:
    contact = f"<contact priority='{priority}'>sip:{tid}@tomt.local</contact>" if priority else ""
    return f"<tuple id='{tid}'><status><basic>{basic}</basic></status>{contact}<note>{note}</note></tuple>"


@pytest.mark.parametrize(
    ("tuples", "status", "priority"),
    [
        (tuple_("a", "open", "0.2", "low") + tuple_("b", "open", "0.9", "high"), "high", 115),
        (tuple_("a", "open", "0.9", "first") + tuple_("b", "open", "0.9", "second"), "first", 115),
        (tuple_("a", "closed", "1", "off") + tuple_("b", "open", None, "on"), "on", 0),
        (tuple_("a", "open", "1.0", "top") + tuple_("b", "open", "0.5", "half"), "top", 127),
        (tuple_("a", "open", "bogus", "bad q") + tuple_("b", "open", "0.001", "tiny"), "tiny", 0),
        (tuple_("a", "open", "1.5", "too big") + tuple_("b", "open", "0.1", "tenth"), "tenth", 13),
    ],
)
def test_the_open_tuple_of_highest_priority_speaks(tuples: str, status: str, priority: int) -> None:
    state = pidf_to_presence(pidf(tuples))
    assert (state.status, state.priority) == (status, priority)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (tuple_("a", "open", None, "tuple") + "<dm:person id='p'><dm:note>person</dm:note></dm:person>", "tuple"),
        (OPEN + "<note>presence</note><dm:person id='p'><dm:note>person</dm:note></dm:person>", "person"),
        (OPEN + "<note>presence</note>", "presence"),
        (tuple_("a", "open", None, "  ") + "<note>presence</note>", "presence"),
        (OPEN, None),
        ("<dm:person id='p'><dm:note>Gone home</dm:note></dm:person>", "Gone home"),
    ],
)
def test_the_note_comes_from_the_tuple_then_the_person_then_the_document(body: str, status: str | None) -> None:
    assert pidf_to_presence(pidf(body)).status == status


@pytest.mark.parametrize(
    ("body", "lang"),
    [
        ("<dm:person id='p'><dm:note xml:lang='it'>Pranzo</dm:note></dm:person>", "it"),
        ("<dm:person id='p' xml:lang='fr'><dm:note>Déjeuner</dm:note></dm:person>", "fr"),
        ("<dm:person id='p'><dm:note>Lunch</dm:note></dm:person>", None),
    ],
)
def test_the_note_keeps_its_language(body: str, lang: str | None) -> None:
    assert pidf_to_presence(pidf(OPEN + body)).lang == lang


def test_non_ascii_text_survives() -> None:
    body = pidf(OPEN + "<dm:person id='p'><dm:note xml:lang='de'>Grüße, 東京</dm:note></dm:person>")
    assert pidf_to_presence(body) == PresenceState(True, status="Grüße, 東京", lang="de")


def test_a_long_note_is_cut_to_the_bound() -> None:
    state = pidf_to_presence(pidf(OPEN + f"<note>{'x' * 5000}</note>"))
    assert state.status == "x" * MAX_STATUS_CHARS


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"><note>&lol2;</note></presence>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE p [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"><note>&xxe;</note></presence>"""


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "empty"),
        (b" \r\n", "empty"),
        # parse_document puts the body inside its wrapper element, where a DTD is a syntax error: refused either way
        (BILLION_LAUGHS, "not a usable PIDF document"),
        (EXTERNAL_ENTITY, "not a usable PIDF document"),
        (BILLION_LAUGHS.split(b"\n", 1)[1], "not a usable PIDF document"),
        (pidf("<note>&unknown;</note>"), "not a usable PIDF document"),
        (pidf(OPEN + "<!-- a comment -->"), "comments"),
        (pidf(OPEN + "<?php echo 1 ?>"), "processing instructions"),
        (b"<presence entity='sip:a@b'><tuple id='t'/></presence>", "not PIDF"),
        (b"<foo xmlns='urn:example'/>", "not PIDF"),
        (b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><tuple>", "not a usable PIDF document"),
        (b"<presence xmlns='urn:ietf:params:xml:ns:pidf'/><presence xmlns='urn:ietf:params:xml:ns:pidf'/>", "root"),
        (b"not xml at all", "not a usable PIDF document"),
        (b"<?xml version='1.0' encoding='ISO-8859-1'?><presence xmlns='urn:ietf:params:xml:ns:pidf'/>", "encoding"),
        (pidf(OPEN + "<note>" + "x" * 70_000 + "</note>"), "larger than 65536"),
        (pidf(OPEN + "<a>" * 40 + "</a>" * 40), "deeper"),
        (pidf("<tuple id='t'><status><basic>maybe</basic></status></tuple>"), "neither open nor closed"),
    ],
)
def test_a_body_that_is_no_pidf_is_refused_in_words(body: bytes, words: str) -> None:
    with pytest.raises(PresenceError, match=re.escape(words)):
        pidf_to_presence(body)


def test_presence_error_is_a_value_error() -> None:
    assert issubclass(PresenceError, ValueError)


# -- XMPP to SIP -----------------------------------------------------------------------------------------------------


def parsed(body: bytes) -> ET.Element:
    """The document as the standard library reads it: an independent check that it is well-formed XML."""
    return ET.fromstring(body)


def test_the_document_is_well_formed_utf8_with_its_declaration_and_namespaces() -> None:
    body = presence_to_pidf("sip:romeo@xmpp.test", {"balcony": PresenceState(True, "dnd", "Grüße, 東京", "de")})
    assert body.startswith(b"<?xml version='1.0' encoding='UTF-8'?><presence ")
    for declaration in (f"xmlns='{NS_PIDF}'", f"xmlns:dm='{NS_DM}'", f"xmlns:rpid='{NS_RPID}'"):
        assert declaration.encode() in body
    assert "Grüße, 東京".encode() in body
    root = parsed(body)
    assert root.tag == f"{{{NS_PIDF}}}presence"
    assert root.get("entity") == "sip:romeo@xmpp.test"
    assert parse_document(body).tag == root.tag  # and our own restricted parser takes it too


def test_no_resource_is_one_closed_tuple() -> None:
    root = parsed(presence_to_pidf("pres:romeo@xmpp.test", {}))
    tuples = root.findall(f"{{{NS_PIDF}}}tuple")
    assert len(tuples) == 1
    assert tuples[0].findtext(f"{{{NS_PIDF}}}status/{{{NS_PIDF}}}basic") == "closed"
    assert root.find(f"{{{NS_DM}}}person") is None
    assert pidf_to_presence(presence_to_pidf("pres:romeo@xmpp.test", {})) == PresenceState(False)


@pytest.mark.parametrize(
    ("show", "activity"),
    [("away", b"<rpid:away/>"), ("xa", b"<rpid:away/>"), ("dnd", b"<rpid:busy/>"), ("chat", None), (None, None)],
)
def test_show_maps_to_the_rpid_activity_rfc_8048_gives(show: str | None, activity: bytes | None) -> None:
    body = presence_to_pidf("sip:romeo@xmpp.test", {"balcony": PresenceState(True, show)})
    if activity is None:
        assert b"rpid:activities" not in body
    else:  # rule 5: the literal text baresip's subscriber looks for
        assert b"<rpid:activities>" + activity + b"</rpid:activities>" in body


def test_each_resource_is_a_tuple_with_a_stable_valid_id() -> None:
    resources = {name: PresenceState(True) for name in ("balcony", "orchard", "Desk Phone", "東京", "a/b@c")}
    first = parsed(presence_to_pidf("sip:romeo@xmpp.test", resources))
    again = parsed(presence_to_pidf("sip:romeo@xmpp.test", dict(reversed(list(resources.items())))))
    ids = [t.get("id") or "" for t in first.findall(f"{{{NS_PIDF}}}tuple")]
    assert len(set(ids)) == len(resources)
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", tid) for tid in ids)  # xs:ID (an NCName)
    assert ids == [t.get("id") for t in again.findall(f"{{{NS_PIDF}}}tuple")]


def test_a_resource_is_a_gruu_contact_carrying_its_priority() -> None:
    root = parsed(presence_to_pidf("sip:romeo@xmpp.test", {"Desk Phone": PresenceState(True, priority=64)}))
    contact = root.find(f"{{{NS_PIDF}}}tuple/{{{NS_PIDF}}}contact")
    assert contact is not None
    assert contact.text == "sip:romeo@xmpp.test;gr=Desk%20Phone"
    assert contact.get("priority") == "0.500"


def test_every_priority_reads_back_through_the_contact_qvalue() -> None:
    for priority in range(128):
        body = presence_to_pidf("sip:romeo@xmpp.test", {"r": PresenceState(True, priority=priority)})
        assert pidf_to_presence(body).priority == priority


def test_a_negative_priority_is_the_lowest_qvalue() -> None:
    body = presence_to_pidf("sip:romeo@xmpp.test", {"r": PresenceState(True, priority=-1)})
    assert b"priority='0.000'" in body
    assert pidf_to_presence(body).priority == 0


@pytest.mark.parametrize(
    ("state", "read_back"),
    [
        (PresenceState(True), PresenceState(True)),
        (PresenceState(True, "away", "brb", "en", 5), PresenceState(True, "away", "brb", "en", 5)),
        (PresenceState(True, "dnd", "Grüße, 東京", "de", 127), PresenceState(True, "dnd", "Grüße, 東京", "de", 127)),
        (PresenceState(True, "xa", "on holiday"), PresenceState(True, "away", "on holiday")),  # RFC 8048: xa is away
        (PresenceState(True, "chat", "talk to me"), PresenceState(True, None, "talk to me")),  # chat has no activity
        (PresenceState(False, None, "gone home", "en"), PresenceState(False, None, "gone home", "en")),
        (PresenceState(True, None, "<b>&'\"</b>"), PresenceState(True, None, "<b>&'\"</b>")),
        (PresenceState(True, None, "bell\x07 and nul\x00"), PresenceState(True, None, "bell and nul")),
        (PresenceState(True, None, "y" * 3000), PresenceState(True, None, "y" * MAX_STATUS_CHARS)),
    ],
)
def test_our_own_reader_reads_back_what_we_write(state: PresenceState, read_back: PresenceState) -> None:
    assert pidf_to_presence(presence_to_pidf("sip:romeo@xmpp.test", {"balcony": state})) == read_back


def test_several_resources_read_back_as_the_leading_one() -> None:
    resources = {
        "phone": PresenceState(True, "away", "on my phone", priority=1),
        "laptop": PresenceState(True, "dnd", "coding", priority=10),
        "old": PresenceState(False, None, "logged out"),
    }
    body = presence_to_pidf("sip:romeo@xmpp.test", resources)
    root = parsed(body)
    basics = sorted(t.findtext(f"{{{NS_PIDF}}}status/{{{NS_PIDF}}}basic") or "" for t in root)
    assert basics.count("open") == 2
    assert basics.count("closed") == 1
    assert b"<rpid:busy/>" in body  # the person's activity follows the highest-priority resource
    assert pidf_to_presence(body) == PresenceState(True, "dnd", "coding", priority=10)


def test_an_entity_that_is_no_users_uri_is_refused() -> None:
    with pytest.raises(PresenceError, match="not a user's URI"):
        presence_to_pidf("tel:+4930123", {})


def test_odd_text_in_the_entity_is_escaped() -> None:
    body = presence_to_pidf("sip:romeo@xmpp.test;gr=a&b'c", {})
    assert b"entity='sip:romeo@xmpp.test;gr=a&amp;b&apos;c'" in body
    assert parsed(body).get("entity") == "sip:romeo@xmpp.test;gr=a&b'c"


# -- the XMPP stanza (RFC 6121 §4.7) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "wire"),
    [
        (PresenceState(True), b"<presence from='a@tomt.local/sip' to='r@xmpp.test'/>"),
        (
            PresenceState(True, "away", "brb", "en", -5),
            b"<presence from='a@tomt.local/sip' to='r@xmpp.test'><show>away</show>"
            b"<status xml:lang='en'>brb</status><priority>-5</priority></presence>",
        ),
        (
            PresenceState(False, "dnd", "Feierabend", "de", 9),
            b"<presence from='a@tomt.local/sip' to='r@xmpp.test' type='unavailable'>"
            b"<status xml:lang='de'>Feierabend</status></presence>",
        ),
        (
            PresenceState(True, "chat", "Grüße, 東京 <&>"),
            "<presence from='a@tomt.local/sip' to='r@xmpp.test'><show>chat</show>"
            "<status>Grüße, 東京 &lt;&amp;&gt;</status></presence>".encode(),
        ),
    ],
)
def test_presence_stanza_on_the_wire(state: PresenceState, wire: bytes) -> None:
    assert to_bytes(presence_stanza(state, "a@tomt.local/sip", "r@xmpp.test")) == wire


def test_the_status_of_a_stanza_is_bounded_and_xml_safe() -> None:
    stanza = presence_stanza(PresenceState(True, None, "\x00" + "z" * 2000), "a@b", "c@d")
    assert stanza.findtext(f"{{{NS_SERVER}}}status") == "z" * MAX_STATUS_CHARS


@pytest.mark.parametrize(
    "state",
    [
        PresenceState(True),
        PresenceState(False),
        PresenceState(True, "away", "brb", "en", 5),
        PresenceState(True, "xa", None, None, -128),
        PresenceState(True, "dnd", "Grüße, 東京", "ja", 127),
        PresenceState(True, "chat"),
        PresenceState(False, None, "gone", "en"),
    ],
)
def test_stanza_round_trip_through_the_wire(state: PresenceState) -> None:
    wire = to_bytes(presence_stanza(state, "a@tomt.local/sip", "r@xmpp.test"))
    assert stanza_to_presence(parse_document(wire)) == state


def stanza(inner: str = "", **attrs: str) -> bytes:
    attributes = "".join(f" {key.replace('_', ':')}='{value}'" for key, value in attrs.items())
    return f"<presence from='r@xmpp.test/balcony' to='a@tomt.local'{attributes}>{inner}</presence>".encode()


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (stanza(), PresenceState(True)),
        (stanza(type="unavailable"), PresenceState(False)),
        (stanza("<show>dnd</show>"), PresenceState(True, "dnd")),
        (stanza("<show> away </show>"), PresenceState(True, "away")),
        (stanza("<show>busy</show>"), PresenceState(True)),  # RFC 6121 §4.7.2.1: unknown show is plain available
        (stanza("<show/>"), PresenceState(True)),
        (stanza("<show>dnd</show><priority>5</priority>", type="unavailable"), PresenceState(False)),
        (stanza("<priority>abc</priority>"), PresenceState(True)),
        (stanza("<priority>1.5</priority>"), PresenceState(True)),
        (stanza("<priority>300</priority>"), PresenceState(True, priority=127)),
        (stanza("<priority>-999</priority>"), PresenceState(True, priority=-128)),
        (stanza("<priority> +7 </priority>"), PresenceState(True, priority=7)),
        (stanza("<priority>99999999999999999999</priority>"), PresenceState(True)),
        (stanza("<status>hi</status>", xml_lang="en"), PresenceState(True, status="hi", lang="en")),
        (
            stanza("<status xml:lang='de'>Hallo</status><status>Hello</status>", xml_lang="en"),
            PresenceState(True, status="Hello", lang="en"),
        ),
        (
            stanza("<status xml:lang='de'>Hallo</status><status xml:lang='it'>Ciao</status>", xml_lang="en"),
            PresenceState(True, status="Hallo", lang="de"),
        ),
        (stanza("<status>Grüße, 東京</status>"), PresenceState(True, status="Grüße, 東京")),
        (stanza("<status>   </status>"), PresenceState(True)),
        (stanza(f"<status>{'s' * 4000}</status>"), PresenceState(True, status="s" * MAX_STATUS_CHARS)),
        (stanza("<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/>"), PresenceState(True)),
    ],
)
def test_stanza_to_presence(wire: bytes, expected: PresenceState) -> None:
    assert stanza_to_presence(parse_document(wire)) == expected


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (stanza(type="subscribe"), "'subscribe' is not availability presence"),
        (stanza(type="probe"), "'probe' is not availability presence"),
        (stanza(type="error"), "'error' is not availability presence"),
        (b"<message from='r@xmpp.test' to='a@tomt.local'><body>hi</body></message>", "not a presence stanza"),
        (b"<presence xmlns='jabber:client'/>", "not a presence stanza"),
    ],
)
def test_a_stanza_that_is_no_availability_presence_is_refused(wire: bytes, words: str) -> None:
    with pytest.raises(PresenceError, match=re.escape(words)):
        stanza_to_presence(parse_document(wire))


def test_a_stanza_built_by_hand_reads_too() -> None:
    built = element(f"{{{NS_SERVER}}}presence", {XML_LANG: "it"}, None, element(f"{{{NS_SERVER}}}status", None, "Ciao"))
    assert stanza_to_presence(built) == PresenceState(True, status="Ciao", lang="it")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"show": "busy"}, "show 'busy' is not one of away, chat, dnd, xa"),
        ({"priority": 128}, "priority 128 is outside -128..127"),
        ({"priority": -129}, "priority -129 is outside -128..127"),
    ],
)
def test_a_presence_state_checks_its_values(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(PresenceError, match=re.escape(words)):
        PresenceState(True, **kwargs)  # type: ignore[arg-type]
