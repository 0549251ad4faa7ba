"""JIDs (RFC 7622) and the SIP <-> XMPP address mapping (RFC 7247 §6): every rule of proxy/xmpp/jid.py, both ways."""

from __future__ import annotations

import re

import pytest

from proxy.sip.uri import parse_uri
from proxy.xmpp.jid import MAX_PART_OCTETS, Jid, JidError, jid_to_sip, parse_jid, sip_to_jid


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("romeo@example.net", Jid("romeo", "example.net")),
        ("example.net", Jid(None, "example.net")),
        ("romeo@example.net/orchard", Jid("romeo", "example.net", "orchard")),
        ("example.net/admin", Jid(None, "example.net", "admin")),
        # RFC 7622 §3.1: the resourcepart is everything after the first '/', '@' and '/' included
        ("juliet@example.com/foo@bar", Jid("juliet", "example.com", "foo@bar")),
        ("juliet@example.com/foo/bar", Jid("juliet", "example.com", "foo/bar")),
        ("example.com/juliet@example.net", Jid(None, "example.com", "juliet@example.net")),
        # the domainpart is lower-cased and loses one trailing dot; the localpart keeps its case (rule 3)
        ("Romeo@Example.NET.", Jid("Romeo", "example.net")),
        ("alice@TOMT.local/Desk Phone", Jid("alice", "tomt.local", "Desk Phone")),
        ("東京@example.jp/Grüße", Jid("東京", "example.jp", "Grüße")),
        ("caf\u0065\u0301@example.net", Jid("caf\u00e9", "example.net")),  # NFC
        ("alice@xn--mnchen-3ya.de", Jid("alice", "xn--mnchen-3ya.de")),
        ("alice@192.0.2.1", Jid("alice", "192.0.2.1")),
        ("alice@[2001:db8::1]", Jid("alice", "[2001:db8::1]")),
        ("+49301234;ext=5@tomt.it", Jid("+49301234;ext=5", "tomt.it")),
    ],
)
def test_a_jid_is_split_as_rfc_7622_says(text: str, expected: Jid) -> None:
    assert parse_jid(text) == expected


@pytest.mark.parametrize(
    "jid",
    [
        Jid("romeo", "example.net"),
        Jid(None, "example.net"),
        Jid("romeo", "example.net", "orchard"),
        Jid("東京", "example.jp", "foo@bar/baz"),
        Jid(None, "example.net", "admin"),
    ],
)
def test_a_jid_reads_back_from_its_text(jid: Jid) -> None:
    assert parse_jid(str(jid)) == jid


def test_str_and_bare() -> None:
    full = parse_jid("romeo@example.net/orchard")
    assert str(full) == "romeo@example.net/orchard"
    assert full.bare == Jid("romeo", "example.net")
    assert str(full.bare) == "romeo@example.net"
    bare = full.bare
    assert bare.bare is bare  # a bare JID is its own bare JID
    assert str(Jid(None, "Example.NET.", "r")) == "example.net/r"


def test_equal_jids_hash_alike() -> None:
    assert {parse_jid("romeo@Example.net"), parse_jid("romeo@example.net.")} == {Jid("romeo", "example.net")}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "domainpart is empty"),
        ("@example.net", "localpart is empty"),
        ("romeo@", "domainpart is empty"),
        ("romeo@.", "domainpart is empty"),
        ("romeo@example.net/", "resourcepart is empty"),
        ("/orchard", "domainpart is empty"),
        ("romeo@@example.net", "not a host name"),
        ('ro"meo@example.net', "RFC 7622 §3.3.1"),
        ("ro&meo@example.net", "RFC 7622 §3.3.1"),
        ("ro'meo@example.net", "RFC 7622 §3.3.1"),
        ("ro:meo@example.net", "RFC 7622 §3.3.1"),
        ("ro<meo@example.net", "RFC 7622 §3.3.1"),
        ("ro>meo@example.net", "RFC 7622 §3.3.1"),
        ("ro meo@example.net", "RFC 7622 §3.3.1"),
        ("ro\u00a0meo@example.net", "RFC 7622 §3.3.1"),  # no-break space
        ("ro\tmeo@example.net", "RFC 7622 §3.3.1"),
        ("ro\x00meo@example.net", "RFC 7622 §3.3.1"),
        ("ro\u200bmeo@example.net", "RFC 7622 §3.3.1"),  # zero-width space (a format character)
        ("romeo@exa mple.net", "not a host name"),
        ("romeo@-example.net", "not a host name"),
        ("romeo@example..net", "not a host name"),
        ("romeo@example_net", "not a host name"),
        ("romeo@example.net..", "not a host name"),
        ("romeo@münchen.de", "A-labels"),
        ("romeo@example.net/or\x07chard", "control"),
        ("romeo@example.net/\ud800", "control"),
    ],
)
def test_a_bad_jid_is_refused_in_words(text: str, words: str) -> None:
    with pytest.raises(JidError, match=re.escape(words)):
        parse_jid(text)


def test_jid_error_is_a_value_error() -> None:
    assert issubclass(JidError, ValueError)


def test_the_constructor_checks_like_the_parser() -> None:
    with pytest.raises(JidError, match=re.escape("RFC 7622 §3.3.1")):
        Jid("a@b", "example.net")
    with pytest.raises(JidError, match="localpart is empty"):
        Jid("", "example.net")


LONGEST_LABELS = ("a" * 63 + ".") * 15 + "a" * (MAX_PART_OCTETS - 64 * 15)  # 1023 octets of 63-octet labels


A = "a" * MAX_PART_OCTETS


@pytest.mark.parametrize(
    ("fits", "too_long"),
    [
        ((A, "example.net", None), (A + "a", "example.net", None)),
        (("romeo", LONGEST_LABELS, None), ("romeo", LONGEST_LABELS + "a", None)),
        (("romeo", "example.net", A), ("romeo", "example.net", A + "a")),
    ],
)
def test_each_part_may_have_1023_octets_not_1024(
    fits: tuple[str, str, str | None], too_long: tuple[str, str, str | None]
) -> None:
    assert Jid(*fits)
    with pytest.raises(JidError, match="1024 octets long"):
        Jid(*too_long)


def test_the_limit_counts_octets_not_characters() -> None:
    assert Jid("東" * 341, "example.jp")  # 1023 octets of UTF-8
    with pytest.raises(JidError, match="1026 octets long"):
        Jid("東" * 342, "example.jp")


# -- RFC 7247 §6: SIP to XMPP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:alice@tomt.local", Jid("alice", "tomt.local")),
        ("sips:alice@tomt.local", Jid("alice", "tomt.local")),
        ("SIP:alice@TOMT.local", Jid("alice", "tomt.local")),
        ("pres:alice@tomt.local", Jid("alice", "tomt.local")),
        ("im:bob@tomt.it", Jid("bob", "tomt.it")),
        ("pres:bob@tomt.it?subject=hello", Jid("bob", "tomt.it")),
        # port, password, parameters and headers are dropped (rule 4)
        ("sip:alice:secret@tomt.local:5061;transport=tls?subject=hi", Jid("alice", "tomt.local")),
        ("sips:alice@tomt.local;maddr=192.0.2.1;lr", Jid("alice", "tomt.local")),
        # percent-decoding of the user part
        ("sip:m%C3%BCller@tomt.local", Jid("müller", "tomt.local")),
        ("sip:%E6%9D%B1%E4%BA%AC@tomt.it", Jid("東京", "tomt.it")),
        ("im:%E6%9D%B1%E4%BA%AC@tomt.it", Jid("東京", "tomt.it")),
        ("sip:al%69ce@tomt.local", Jid("alice", "tomt.local")),
        (
            "sip:+4930123;phone-context=tomt.local@tomt.local;user=phone",
            Jid("+4930123;phone-context=tomt.local", "tomt.local"),
        ),
        # rule 6: a GRUU's gr parameter is the resource
        ("sip:juliet@example.com;gr=yn0cl4bnw0yr3vym", Jid("juliet", "example.com", "yn0cl4bnw0yr3vym")),
        (
            "sip:alice@tomt.local;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            Jid("alice", "tomt.local", "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"),
        ),
        ("sip:alice@tomt.local;gr=Desk%20Phone", Jid("alice", "tomt.local", "Desk Phone")),
        ("sip:alice@tomt.local;gr", Jid("alice", "tomt.local")),
        ("sip:alice@[2001:db8::1]:5061", Jid("alice", "[2001:db8::1]")),
    ],
)
def test_a_sip_uri_maps_to_a_jid(uri: str, expected: Jid) -> None:
    assert sip_to_jid(uri) == expected


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("sip:tomt.local", "no user part"),
        ("tel:+4930123", "only sip:, sips:, pres: and im:"),
        ("xmpp:alice@tomt.local", "only sip:, sips:, pres: and im:"),
        ("mailto:alice@tomt.local", "only sip:, sips:, pres: and im:"),
        ("alice@tomt.local", "only sip:, sips:, pres: and im:"),
        ("sip:alice@tomt.local@evil.example", "more than one unescaped '@'"),
        ("sip:alice@bad host", "whitespace"),
        ("pres:tomt.local", "pres:user@domain"),
        ("pres:@tomt.local", "pres:user@domain"),
        ("im:alice@", "im:user@domain"),
        ("im:a@b@c", "im:user@domain"),
        # a user part RFC 7622 will not take as a localpart is refused, not escaped (rule 4)
        ("sip:a%40b@tomt.local", "RFC 7622 §3.3.1"),
        ("sip:a%20b@tomt.local", "RFC 7622 §3.3.1"),
        ("sip:a%2Fb@tomt.local", "RFC 7622 §3.3.1"),
        ("sip:a%3Ab@tomt.local", "RFC 7622 §3.3.1"),
        ("sip:a%22b@tomt.local", "RFC 7622 §3.3.1"),
        ("sip:o'brien@tomt.local", "RFC 7622 §3.3.1"),
        ("sip:a&b@tomt.local", "RFC 7622 §3.3.1"),
        ("sip:a%00b@tomt.local", "RFC 7622 §3.3.1"),
        ("sip:a%0D%0Ab@tomt.local", "RFC 7622 §3.3.1"),
        # bad escapes
        ("sip:a%ZZb@tomt.local", "does not start a %XX escape"),
        ("sip:a%4@tomt.local", "does not start a %XX escape"),
        ("sip:a%@tomt.local", "does not start a %XX escape"),
        ("sip:a%C3@tomt.local", "not UTF-8"),
        ("sip:a%FF%FEb@tomt.local", "not UTF-8"),
        ("sip:alice@tomt.local;gr=a%ZZ", "gr parameter"),
        ("sip:alice@tomt.local;gr=%07", "control"),
        ("sip:" + "a" * 1024 + "@tomt.local", "1024 octets long"),
        ("sip:" + "%41" * 1024 + "@tomt.local", "1024 octets long"),
    ],
)
def test_a_sip_uri_without_a_jid_is_refused_in_words(uri: str, words: str) -> None:
    with pytest.raises(JidError, match=re.escape(words)):
        sip_to_jid(uri)


# -- RFC 7247 §6: XMPP to SIP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jid", "expected"),
    [
        (Jid("alice", "tomt.local"), "sip:alice@tomt.local"),
        (Jid("Alice", "TOMT.it"), "sip:Alice@tomt.it"),
        (Jid("müller", "tomt.local"), "sip:m%C3%BCller@tomt.local"),
        (Jid("東京", "tomt.it"), "sip:%E6%9D%B1%E4%BA%AC@tomt.it"),
        (Jid("100%", "tomt.it"), "sip:100%25@tomt.it"),
        (Jid("a[b]c", "tomt.it"), "sip:a%5Bb%5Dc@tomt.it"),
        (Jid("a#b|c", "tomt.it"), "sip:a%23b%7Cc@tomt.it"),
        (Jid("a\\b", "tomt.it"), "sip:a%5Cb@tomt.it"),
        # unreserved and user-unreserved characters stay as they are (RFC 3261 §25.1)
        (Jid("a-b_c.d!e~f*g(h)", "tomt.it"), "sip:a-b_c.d!e~f*g(h)@tomt.it"),
        (Jid("+4930;ext=5,x=$?", "tomt.it"), "sip:+4930;ext=5,x=$?@tomt.it"),
        # rule 6: the resource is a GRUU's gr parameter
        (Jid("romeo", "xmpp.test", "balcony"), "sip:romeo@xmpp.test;gr=balcony"),
        (Jid("romeo", "xmpp.test", "Desk Phone"), "sip:romeo@xmpp.test;gr=Desk%20Phone"),
        (Jid("romeo", "xmpp.test", "urn:uuid:f81d4fae"), "sip:romeo@xmpp.test;gr=urn:uuid:f81d4fae"),
        (Jid("romeo", "xmpp.test", "a;b=c@d"), "sip:romeo@xmpp.test;gr=a%3Bb%3Dc%40d"),
        (Jid("romeo", "xmpp.test", "Grüße"), "sip:romeo@xmpp.test;gr=Gr%C3%BC%C3%9Fe"),
        (Jid(None, "xmpp.test"), "sip:xmpp.test"),
    ],
)
def test_a_jid_maps_to_a_sip_uri(jid: Jid, expected: str) -> None:
    assert jid_to_sip(jid) == expected


ROUND_TRIP = [
    Jid("alice", "tomt.local"),
    Jid("Alice.Smith", "tomt.it"),
    Jid("müller", "tomt.local"),
    Jid("東京", "tomt.it", "Grüße, 東京"),
    Jid("100%", "tomt.it"),
    Jid("a[b]c#d|e\\f{g}^h`i", "tomt.it"),
    Jid("+4930;ext=5,x=$?=", "tomt.it"),
    Jid("romeo", "xmpp.test", "balcony"),
    Jid("romeo", "xmpp.test", "a;b=c@d/e?f&g"),
    Jid("romeo", "xmpp.test", "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"),
    Jid("romeo", "[2001:db8::1]"),
]


@pytest.mark.parametrize("jid", ROUND_TRIP, ids=str)
def test_xmpp_to_sip_and_back_is_the_same_jid(jid: Jid) -> None:
    assert sip_to_jid(jid_to_sip(jid)) == jid


@pytest.mark.parametrize("jid", ROUND_TRIP, ids=str)
def test_what_jid_to_sip_writes_is_a_sip_uri_to_our_own_parser(jid: Jid) -> None:
    uri = parse_uri(jid_to_sip(jid))
    assert uri.scheme == "sip"
    assert uri.host == jid.domain
    assert (uri.param("gr") is not None) == (jid.resource is not None)


@pytest.mark.parametrize(
    "uri",
    ["sip:alice@tomt.local", "sip:m%C3%BCller@tomt.local", "sip:romeo@xmpp.test;gr=balcony", "sip:a;b=c@tomt.it"],
)
def test_sip_to_xmpp_and_back_is_the_same_uri(uri: str) -> None:
    assert jid_to_sip(sip_to_jid(uri)) == uri
