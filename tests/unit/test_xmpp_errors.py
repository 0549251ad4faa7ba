"""Errors between SIP responses and XMPP stanza errors (RFC 7247 §7) and the error stanza (RFC 6120 §8.3):
proxy/xmpp/errors.py, every row of both tables."""

from __future__ import annotations

import re
from xml.etree.ElementTree import Element

import pytest

from proxy.xmpp.errors import (
    ERROR_TYPE,
    ERROR_TYPES,
    MAX_TEXT_CHARS,
    SIP_TO_XMPP,
    XMPP_TO_SIP,
    error_stanza,
    sip_to_xmpp_error,
    stanza_error_condition,
    xmpp_to_sip_status,
)
from proxy.xmpp.xml import NS_SERVER, NS_STANZAS, XML_LANG, element, parse_document, to_bytes

# RFC 7247 §7.2, as the table reads, row by row.
SIP_ROWS = [
    (400, "bad-request"),
    (401, "not-authorized"),
    (402, "bad-request"),
    (403, "forbidden"),
    (404, "item-not-found"),
    (405, "feature-not-implemented"),
    (406, "not-acceptable"),
    (407, "not-authorized"),
    (408, "remote-server-timeout"),
    (410, "gone"),
    (413, "policy-violation"),
    (414, "policy-violation"),
    (415, "bad-request"),
    (416, "jid-malformed"),
    (420, "feature-not-implemented"),
    (421, "feature-not-implemented"),
    (423, "resource-constraint"),
    (430, "recipient-unavailable"),
    (439, "feature-not-implemented"),
    (440, "policy-violation"),
    (480, "recipient-unavailable"),
    (481, "item-not-found"),
    (482, "not-acceptable"),
    (483, "not-acceptable"),
    (484, "item-not-found"),
    (485, "item-not-found"),
    (486, "recipient-unavailable"),
    (487, "service-unavailable"),
    (488, "not-acceptable"),
    (489, "policy-violation"),
    (491, "unexpected-request"),
    (493, "bad-request"),
    (500, "internal-server-error"),
    (501, "feature-not-implemented"),
    (502, "remote-server-not-found"),
    (503, "service-unavailable"),
    (504, "remote-server-timeout"),
    (505, "not-acceptable"),
    (513, "policy-violation"),
    (600, "service-unavailable"),
    (603, "service-unavailable"),
    (604, "item-not-found"),
    (606, "not-acceptable"),
]

# RFC 7247 §7.1, as the table reads (where it offers two codes, the one errors.py's rule 3 picks).
XMPP_ROWS = [
    ("bad-request", 400),
    ("conflict", 400),
    ("feature-not-implemented", 501),
    ("forbidden", 403),
    ("gone", 410),
    ("internal-server-error", 500),
    ("item-not-found", 404),
    ("jid-malformed", 400),
    ("not-acceptable", 406),
    ("not-allowed", 405),
    ("not-authorized", 401),
    ("policy-violation", 403),
    ("recipient-unavailable", 480),
    ("redirect", 302),
    ("registration-required", 400),
    ("remote-server-not-found", 404),
    ("remote-server-timeout", 408),
    ("resource-constraint", 500),
    ("service-unavailable", 503),
    ("subscription-required", 400),
    ("undefined-condition", 400),
    ("unexpected-request", 400),
]

# RFC 6120 §8.3.3: the error type each condition recommends (the first where it offers two).
TYPE_ROWS = [
    ("bad-request", "modify"),
    ("conflict", "cancel"),
    ("feature-not-implemented", "cancel"),
    ("forbidden", "auth"),
    ("gone", "cancel"),
    ("internal-server-error", "cancel"),
    ("item-not-found", "cancel"),
    ("jid-malformed", "modify"),
    ("not-acceptable", "modify"),
    ("not-allowed", "cancel"),
    ("not-authorized", "auth"),
    ("policy-violation", "modify"),
    ("recipient-unavailable", "wait"),
    ("redirect", "modify"),
    ("registration-required", "auth"),
    ("remote-server-not-found", "cancel"),
    ("remote-server-timeout", "wait"),
    ("resource-constraint", "wait"),
    ("service-unavailable", "cancel"),
    ("subscription-required", "auth"),
    ("undefined-condition", "cancel"),
    ("unexpected-request", "wait"),
]


@pytest.mark.parametrize(("status", "condition"), SIP_ROWS)
def test_each_sip_response_maps_to_its_condition(status: int, condition: str) -> None:
    assert sip_to_xmpp_error(status) == (ERROR_TYPE[condition], condition)


def test_the_sip_table_is_exactly_the_rows_above() -> None:
    assert sorted(SIP_TO_XMPP.items()) == SIP_ROWS


@pytest.mark.parametrize("status", [300, 301, 302, 305, 380, 399])
def test_every_redirection_is_redirect(status: int) -> None:
    assert sip_to_xmpp_error(status) == ("modify", "redirect")


@pytest.mark.parametrize(
    ("status", "condition"),
    [
        (409, "bad-request"),  # RFC 3261 §8.1.3.2: an unknown code is the x00 of its class
        (422, "bad-request"),
        (470, "bad-request"),
        (499, "bad-request"),
        (555, "internal-server-error"),
        (580, "internal-server-error"),
        (599, "internal-server-error"),
        (607, "service-unavailable"),
        (699, "service-unavailable"),
    ],
)
def test_an_unknown_status_is_read_as_its_class(status: int, condition: str) -> None:
    assert sip_to_xmpp_error(status) == (ERROR_TYPE[condition], condition)


@pytest.mark.parametrize("status", [0, 100, 180, 200, 202, 299, 700, 999, -404])
def test_a_status_that_is_no_error_is_refused(status: int) -> None:
    with pytest.raises(ValueError, match=re.escape(f"SIP status {status} is not an error response")):
        sip_to_xmpp_error(status)


@pytest.mark.parametrize(("condition", "status"), XMPP_ROWS)
def test_each_xmpp_condition_maps_to_its_response(condition: str, status: int) -> None:
    assert xmpp_to_sip_status(condition)[0] == status


def test_the_xmpp_table_names_every_defined_condition_once() -> None:
    assert sorted(XMPP_TO_SIP) == sorted(ERROR_TYPE) == [condition for condition, _ in XMPP_ROWS]
    assert [(condition, code) for condition, (code, _) in XMPP_TO_SIP.items()] == XMPP_ROWS


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ("item-not-found", "Not Found"),
        ("recipient-unavailable", "Temporarily Unavailable"),
        ("remote-server-timeout", "Request Timeout"),
        ("service-unavailable", "Service Unavailable"),
        ("forbidden", "Forbidden"),
        ("redirect", "Moved Temporarily"),
    ],
)
def test_the_reason_phrase_is_rfc_3261s(condition: str, reason: str) -> None:
    assert xmpp_to_sip_status(condition)[1] == reason


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ("payment-required", "Server Internal Error (XMPP payment-required)"),  # RFC 3920's, gone from RFC 6120
        ("made-up", "Server Internal Error (XMPP made-up)"),
        ("x\r\nVia: SIP/2.0/TLS evil", "Server Internal Error (XMPP unknown condition)"),
        ("Forbidden", "Server Internal Error (XMPP unknown condition)"),
        ("a" * 65, "Server Internal Error (XMPP unknown condition)"),
        ("", "Server Internal Error (XMPP unknown condition)"),
    ],
)
def test_an_unknown_condition_is_a_500_naming_it_safely(condition: str, reason: str) -> None:
    assert xmpp_to_sip_status(condition) == (500, reason)


@pytest.mark.parametrize(
    ("status", "condition"),
    [
        (404, "item-not-found"),
        (403, "forbidden"),
        (480, "recipient-unavailable"),
        (408, "remote-server-timeout"),
        (503, "service-unavailable"),
    ],
)
def test_the_issues_pairs_hold_both_ways(status: int, condition: str) -> None:
    assert sip_to_xmpp_error(status)[1] == condition
    assert xmpp_to_sip_status(condition)[0] == status


@pytest.mark.parametrize(("condition", "error_type"), TYPE_ROWS)
def test_each_condition_carries_the_type_rfc_6120_recommends(condition: str, error_type: str) -> None:
    assert ERROR_TYPE[condition] == error_type
    assert error_type in ERROR_TYPES


def test_every_error_status_maps_to_a_defined_condition() -> None:
    for status in range(300, 700):
        error_type, condition = sip_to_xmpp_error(status)
        assert condition in XMPP_TO_SIP, status
        assert error_type == ERROR_TYPE[condition], status


# -- the error stanza (RFC 6120 §8.3) --------------------------------------------------------------------------------


def message() -> Element:
    return element(
        f"{{{NS_SERVER}}}message",
        {"from": "alice@tomt.local/sip", "to": "romeo@xmpp.test", "id": "m1", "type": "chat", XML_LANG: "en"},
        None,
        element(f"{{{NS_SERVER}}}body", None, "Art thou not Romeo?"),
        element("{http://jabber.org/protocol/chatstates}active"),
    )


def test_an_error_stanza_on_the_wire() -> None:
    answer = error_stanza(message(), "wait", "recipient-unavailable", "romeo is offline")
    assert to_bytes(answer) == (
        b"<message id='m1' type='error' xml:lang='en' from='romeo@xmpp.test' to='alice@tomt.local/sip'>"
        b"<body>Art thou not Romeo?</body><active xmlns='http://jabber.org/protocol/chatstates'/>"
        b"<error type='wait'><recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>romeo is offline</text></error></message>"
    )


def test_the_original_is_left_untouched() -> None:
    original = message()
    before = to_bytes(original)
    error_stanza(original, "cancel", "item-not-found")
    assert to_bytes(original) == before


def test_without_text_there_is_no_text_element() -> None:
    answer = error_stanza(message(), "cancel", "item-not-found")
    error = answer.find(f"{{{NS_SERVER}}}error")
    assert error is not None
    assert [child.tag for child in error] == [f"{{{NS_STANZAS}}}item-not-found"]


def test_a_stanza_without_from_gets_no_to() -> None:
    presence = element(f"{{{NS_SERVER}}}presence", {"to": "romeo@xmpp.test"})
    answer = error_stanza(presence, "auth", "forbidden")
    assert answer.attrib == {"from": "romeo@xmpp.test", "type": "error"}


def test_an_error_stanza_is_never_answered_with_an_error() -> None:
    answer = error_stanza(message(), "cancel", "item-not-found")
    with pytest.raises(ValueError, match=re.escape("never answered with an error stanza (RFC 6120 §8.3.1)")):
        error_stanza(answer, "cancel", "item-not-found")


@pytest.mark.parametrize(
    ("error_type", "condition", "words"),
    [
        ("fatal", "item-not-found", "error type 'fatal' is not one of auth, cancel, continue, modify, wait"),
        ("cancel", "payment-required", "'payment-required' is not a defined condition"),
        ("cancel", "item-not-found/><evil", "is not a defined condition"),
    ],
)
def test_a_bad_type_or_condition_is_refused(error_type: str, condition: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        error_stanza(message(), error_type, condition)


def test_the_text_is_bounded() -> None:
    answer = error_stanza(message(), "cancel", "item-not-found", "t" * 5000)
    assert stanza_error_condition(answer) == ("item-not-found", "t" * MAX_TEXT_CHARS)


def test_a_hostile_reason_phrase_cannot_break_our_stream() -> None:
    wire = to_bytes(error_stanza(message(), "wait", "recipient-unavailable", "Busy\x00\x1b[2J here\ufffe"))
    assert stanza_error_condition(parse_document(wire)) == ("recipient-unavailable", "Busy[2J here")


def test_a_text_of_nothing_but_controls_is_no_text() -> None:
    answer = error_stanza(message(), "cancel", "item-not-found", "\x00\x01")
    assert stanza_error_condition(answer) == ("item-not-found", None)


@pytest.mark.parametrize(("condition", "error_type"), TYPE_ROWS)
def test_each_condition_reads_back_from_the_wire(condition: str, error_type: str) -> None:
    wire = to_bytes(error_stanza(message(), error_type, condition, "Grüße, 東京"))
    assert stanza_error_condition(parse_document(wire)) == (condition, "Grüße, 東京")


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"<message type='error'><body>hi</body></message>", ("undefined-condition", None)),
        (b"<message type='error'><error type='cancel'/></message>", ("undefined-condition", None)),
        (
            b"<iq type='error'><error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>why</text>"
            b"</error></iq>",
            ("undefined-condition", "why"),
        ),
        (
            b"<presence type='error'><error type='modify'>"
            b"<too-many-subscriptions xmlns='urn:example:app'/>"
            b"<not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
            ("not-acceptable", None),
        ),
        (
            b"<message type='error'><error type='cancel'>"
            b"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>  </text>"
            b"<gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>xmpp:romeo@afterlife.example.net</gone>"
            b"</error></message>",
            ("gone", None),
        ),
        (
            b"<message type='error'><error type='cancel'>"
            b"<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            b"<remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
            ("item-not-found", None),  # the first defined condition counts
        ),
    ],
)
def test_stanza_error_condition(wire: bytes, expected: tuple[str, str | None]) -> None:
    assert stanza_error_condition(parse_document(wire)) == expected


def test_a_peers_unknown_condition_reads_as_named_and_maps_to_a_safe_500() -> None:
    wire = b"<message type='error'><error type='cancel'><payment-required xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
    condition, _ = stanza_error_condition(parse_document(wire + b"</error></message>"))
    assert xmpp_to_sip_status(condition) == (500, "Server Internal Error (XMPP payment-required)")
