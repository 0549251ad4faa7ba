"""``[xmpp]`` and ``[[xmpp.partners]]`` in Lync's vocabulary: proxy/xmpp/policy.py, and the section through the
real loader (proxy/config/loader.py: the gateway's routes and per-partner peers, a [[routes]] entry claiming a partner
domain refused)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from acl.subjects import CertIdentity
from proxy.config import ConfigError, load_config
from proxy.xmpp.policy import PARTNER_KEYS, XMPP_KEYS, Partner, XmppConfig, parse_xmpp
from tests.unit.config_files import write_config

BASE = Path("/etc/sipfed")
OURS = ["tomt.local", "tomt.it"]
SASL_WITHOUT_TLS = (
    'sasl = "{sasl}" with tls = "not_supported": SASL requires TLS (its EXTERNAL mechanism authenticates with '
    'the TLS certificate, XEP-0178); set tls to "required" or "optional", or sasl to "not_supported"'
)
NO_AUTHENTICATION = (
    'sasl = "not_supported" and dialback = false leave no way to authenticate the partner; enable dialback or SASL'
)


def parse(raw: object, base: Path = BASE) -> tuple[XmppConfig | None, list[str]]:
    problems: list[str] = []
    return parse_xmpp(raw, base, problems), problems


def section(*partners: Mapping[str, Any], **keys: Any) -> dict[str, Any]:
    """An [xmpp] table with our two domains (unless ``domains`` is given) and these partners."""
    return {"domains": OURS, "partners": list(partners)} | keys


def parsed(raw: object, base: Path = BASE) -> XmppConfig:
    """A section expected to be valid."""
    config, problems = parse(raw, base)
    assert problems == []
    assert config is not None
    return config


def one_partner(**keys: Any) -> tuple[Partner | None, list[str]]:
    config, problems = parse(section({"primary_domain": "xmpp.test"} | keys))
    assert config is not None
    return (config.partners[0] if config.partners else None), problems


# -- defaults ----------------------------------------------------------------------------------------------------------


def test_absent_section_is_off() -> None:
    assert parse(None) == (None, [])


def test_a_section_that_is_no_table() -> None:
    assert parse(["tomt.local"]) == (None, ["xmpp: must be a table ([xmpp])"])


def test_defaults() -> None:
    config = parsed({"domains": ["Tomt.Local.", "tomt.it", "tomt.local"]})
    assert config.listen == ("0.0.0.0", 5269)
    assert config.domains == ("tomt.local", "tomt.it")  # lower case, trailing dot gone, duplicates once
    assert config.partners == ()
    assert (config.dialback_secret, config.cert_chain, config.key, config.ca_bundle, config.store) == (None,) * 5
    assert config.subscription_expires_seconds == 3600
    assert isinstance(config.subscription_expires_seconds, int)
    assert (config.connect_timeout_seconds, config.keepalive_seconds, config.idle_timeout_seconds) == (10, 60, 600)
    assert config.max_stanza_bytes == 262_144


def test_partner_defaults() -> None:
    partner, problems = one_partner()
    assert problems == []
    assert partner == Partner("xmpp.test", "xmpp.test")  # the name defaults to the primary domain
    assert (partner.partner_type, partner.tls, partner.sasl, partner.dialback, partner.keepalive) == (
        "federated",
        "required",
        "optional",
        True,
        True,
    )
    assert (partner.address, partner.description, partner.domains) == (None, "", ("xmpp.test",))


def test_a_full_partner() -> None:
    partner, problems = one_partner(
        name="jabber",
        additional_domains=["Chat.Xmpp.Test", "muc.xmpp.test"],
        description="the lab's Prosody",
        partner_type="public_verified",
        tls="optional",
        sasl="not_supported",
        dialback=True,
        keepalive=False,
        address="192.0.2.7:5270",
    )
    assert problems == []
    assert partner == Partner(
        "jabber",
        "xmpp.test",
        ("chat.xmpp.test", "muc.xmpp.test"),
        "public_verified",
        "optional",
        "not_supported",
        True,
        False,
        ("192.0.2.7", 5270),
        "the lab's Prosody",
    )
    assert partner.describe() == ("partner jabber (public_verified; TLS optional, SASL not_supported, dialback on)")


def test_every_partner_domain_maps_to_its_partner() -> None:
    config = parsed(
        section(
            {"name": "jabber", "primary_domain": "xmpp.test", "additional_domains": ["chat.xmpp.test"]},
            {"name": "other", "primary_domain": "other.example"},
        )
    )
    assert {domain: partner.name for domain, partner in config.by_domain.items()} == {
        "xmpp.test": "jabber",
        "chat.xmpp.test": "jabber",
        "other.example": "other",
    }
    jabber = config.partners[0]
    assert config.partner_for("Chat.XMPP.test.") is jabber
    assert config.partner_for("tomt.local") is None
    assert config.partner_for("evil.xmpp.test") is None  # a subdomain is not the partner's


# -- Lync's spellings (_choice: case, '_' and ' ' ignored; nothing else) -----------------------------------------------


@pytest.mark.parametrize(
    ("key", "written", "value"),
    [
        ("tls", "Required", "required"),
        ("tls", "NotSupported", "not_supported"),
        ("tls", "not supported", "not_supported"),
        ("tls", "OPTIONAL", "optional"),
        ("sasl", "Not_Supported", "not_supported"),
        ("partner_type", "PublicUnverified", "public_unverified"),
        ("partner_type", "Public verified", "public_verified"),
        ("partner_type", "public_unverified", "public_unverified"),
        ("partner_type", "Federated", "federated"),
    ],
)
def test_lync_spellings_accepted(key: str, written: str, value: str) -> None:
    others = {"sasl": "not_supported"} if value == "not_supported" else {}  # SASL needs TLS
    partner, problems = one_partner(**({key: written} | others))
    assert problems == []
    assert partner is not None
    assert getattr(partner, key) == value


@pytest.mark.parametrize(
    ("key", "written", "allowed"),
    [
        ("tls", "not-supported", "required, optional, not_supported"),
        ("tls", "yes", "required, optional, not_supported"),
        ("tls", True, "required, optional, not_supported"),
        ("sasl", "External", "required, optional, not_supported"),
        ("partner_type", "Public-Verified", "federated, public_verified, public_unverified"),
        ("partner_type", "public", "federated, public_verified, public_unverified"),
    ],
)
def test_other_spellings_refused(key: str, written: object, allowed: str) -> None:
    partner, problems = one_partner(**{key: written})
    assert problems == [f"xmpp.partners[0].{key}: {written!r} must be one of {allowed}"]
    assert partner is not None
    assert getattr(partner, key) == {"tls": "required", "sasl": "optional", "partner_type": "federated"}[key]


# -- authentication rules ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sasl", "shown"), [("Required", "required"), ("optional", "optional"), (None, "optional")])
def test_sasl_without_tls_is_refused(sasl: str | None, shown: str) -> None:
    keys = {"tls": "NotSupported"} | ({"sasl": sasl} if sasl else {})
    _, problems = one_partner(**keys)
    assert problems == ["xmpp.partners[0]: " + SASL_WITHOUT_TLS.format(sasl=shown)]


def test_no_sasl_and_no_dialback_leave_no_authentication() -> None:
    _, problems = one_partner(sasl="not_supported", dialback=False)
    assert problems == ["xmpp.partners[0]: " + NO_AUTHENTICATION]


@pytest.mark.parametrize(
    "keys",
    [
        {"tls": "not_supported", "sasl": "not_supported"},  # dialback without TLS (the lab's plain partner)
        {"tls": "required", "sasl": "required", "dialback": False},  # SASL EXTERNAL only
        {"tls": "optional", "sasl": "optional", "dialback": False},
    ],
)
def test_authenticating_combinations_accepted(keys: dict[str, Any]) -> None:
    partner, problems = one_partner(**keys)
    assert problems == []
    assert partner is not None


def test_both_authentication_problems_of_one_partner_reported() -> None:
    _, problems = one_partner(tls="not_supported", sasl="required", dialback="no")
    assert problems == [
        "xmpp.partners[0].dialback: 'no' must be true or false",
        "xmpp.partners[0]: " + SASL_WITHOUT_TLS.format(sasl="required"),
    ]


# -- domains -----------------------------------------------------------------------------------------------------------


def test_a_domain_claimed_by_two_partners() -> None:
    _, problems = parse(
        section(
            {"name": "jabber", "primary_domain": "xmpp.test"},
            {"name": "copy", "primary_domain": "other.example", "additional_domains": ["XMPP.test"]},
        )
    )
    assert problems == [
        "xmpp.partners[1]: domain xmpp.test is already partner jabber's; each domain belongs to one partner"
    ]


def test_a_partner_domain_that_is_ours() -> None:
    _, problems = parse(section({"primary_domain": "xmpp.test", "additional_domains": ["tomt.it"]}))
    assert problems == ["xmpp.partners[0]: tomt.it is one of our own xmpp.domains"]


@pytest.mark.parametrize("bad", ["localhost", "-tomt.local", "tomt-.local", "tomt..local", "tomt_local.it", "a b.it"])
def test_bad_domain_names(bad: str) -> None:
    _, problems = parse(
        section({"primary_domain": bad, "additional_domains": [bad]}, {"primary_domain": "xmpp.test"}, domains=[bad])
    )
    assert problems == [
        f"xmpp.domains: {bad!r} is not a domain name",
        "xmpp.domains: required (the domain names)",
        f"xmpp.partners[0].primary_domain: {bad!r} is not a domain name",
        "xmpp.partners[0].primary_domain: required (the domain names)",
    ]


def test_a_label_of_63_characters_is_the_longest() -> None:
    assert parsed({"domains": ["a" * 63 + ".it"]}).domains == ("a" * 63 + ".it",)
    _, problems = parse({"domains": ["a" * 64 + ".it"]})
    assert problems[0] == f"xmpp.domains: {'a' * 64 + '.it'!r} is not a domain name"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({}, "xmpp.domains: required (the domain names)"),
        ({"domains": []}, "xmpp.domains: required (the domain names)"),
        ({"domains": "tomt.local"}, "xmpp.domains: must be a list of domain names"),
        ({"domains": ["tomt.local", 5]}, "xmpp.domains: must be a list of domain names"),
        (
            {"domains": OURS, "partners": [{"primary_domain": "xmpp.test", "additional_domains": "chat.xmpp.test"}]},
            "xmpp.partners[0].additional_domains: must be a list of domain names",
        ),
        (
            {"domains": OURS, "partners": [{"name": "jabber"}]},
            "xmpp.partners[0].primary_domain: required (the domain names)",
        ),
        (
            {"domains": OURS, "partners": {"primary_domain": "xmpp.test"}},
            "xmpp.partners: must be an array of tables ([[xmpp.partners]])",
        ),
        ({"domains": OURS, "partners": ["xmpp.test"]}, "xmpp.partners: must be an array of tables ([[xmpp.partners]])"),
    ],
)
def test_domain_lists_and_partner_tables(raw: dict[str, Any], problem: str) -> None:
    config, problems = parse(raw)
    assert problems == [problem]
    assert config is not None
    assert all(partner.primary_domain == "xmpp.test" for partner in config.partners)


# -- unknown keys, types -----------------------------------------------------------------------------------------------


def test_unknown_keys_listed_with_the_known_ones() -> None:
    _, problems = parse(section({"primary_domain": "xmpp.test", "Sasl": "required", "port": 5269}, tls="required"))
    known = ", ".join(sorted(XMPP_KEYS))
    known_partner = ", ".join(sorted(PARTNER_KEYS))
    assert problems == [
        f"xmpp.tls: unknown key (known: {known})",
        f"xmpp.partners[0].Sasl: unknown key (known: {known_partner})",
        f"xmpp.partners[0].port: unknown key (known: {known_partner})",
    ]


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"name": 7}, "xmpp.partners[0].name: 7 must be a string"),
        ({"description": ["lab"]}, "xmpp.partners[0].description: ['lab'] must be a string"),
        ({"keepalive": "yes"}, "xmpp.partners[0].keepalive: 'yes' must be true or false"),
        ({"dialback": 1}, "xmpp.partners[0].dialback: 1 must be true or false"),
    ],
)
def test_partner_value_types(keys: dict[str, Any], problem: str) -> None:
    partner, problems = one_partner(**keys)
    assert problems == [problem]
    assert partner is not None
    assert (partner.name, partner.description, partner.dialback, partner.keepalive) == ("xmpp.test", "", True, True)


def test_section_value_types() -> None:
    config, problems = parse({"domains": OURS, "dialback_secret": 42, "store": True})
    assert problems == ["xmpp.dialback_secret: 42 must be a string", "xmpp.store: True must be a string"]
    assert config is not None
    assert (config.dialback_secret, config.store) == (None, None)


def test_an_empty_dialback_secret_is_none() -> None:
    assert parsed({"domains": OURS, "dialback_secret": ""}).dialback_secret is None
    assert parsed({"domains": OURS, "dialback_secret": "s3cret"}).dialback_secret == "s3cret"


# -- addresses ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("xmpp.tomt.local", ("xmpp.tomt.local", 5269)),
        ("192.0.2.1:5270", ("192.0.2.1", 5270)),
        ("[::1]:5269", ("::1", 5269)),
        ("[::1]", ("::1", 5269)),  # a bracketed IPv6 address alone: the default port
        ("[2001:db8::5]:15269", ("2001:db8::5", 15269)),
        ("::", ("::", 5269)),  # an unbracketed IPv6 address is all host
        ("127.0.0.1:0", ("127.0.0.1", 0)),  # any free port (tests)
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_listen_forms(listen: str, address: tuple[str, int]) -> None:
    assert parsed({"domains": OURS, "listen": listen}).listen == address


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("127.0.0.1:65536", "'127.0.0.1:65536' port must be 0-65535"),
        ("127.0.0.1:-1", "'127.0.0.1:-1' port must be 0-65535"),
        ("127.0.0.1:xmpp", "'127.0.0.1:xmpp' port must be 0-65535"),
        (":5269", "':5269' names no host"),
        ("", '\'\' must be "host:port" (or "host")'),
        (5269, '5269 must be "host:port" (or "host")'),
    ],
)
def test_listen_refused(listen: object, problem: str) -> None:
    config, problems = parse({"domains": OURS, "listen": listen})
    assert problems == [f"xmpp.listen: {problem}"]
    assert config is not None
    assert config.listen == ("0.0.0.0", 5269)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("prosody.lab:0", "'prosody.lab:0' port must be 1-65535"),  # port 0 is for a listener only
        ("prosody.lab:70000", "'prosody.lab:70000' port must be 1-65535"),
        (["prosody.lab", 5269], '[\'prosody.lab\', 5269] must be "host:port" (or "host")'),
    ],
)
def test_partner_address_refused(address: object, problem: str) -> None:
    partner, problems = one_partner(address=address)
    assert problems == [f"xmpp.partners[0].address: {problem}"]
    assert partner is not None
    assert partner.address is None


def test_partner_address_without_port_takes_5269() -> None:
    partner, problems = one_partner(address="prosody.lab")
    assert problems == []
    assert partner is not None
    assert partner.address == ("prosody.lab", 5269)


# -- numbers and paths -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("subscription_expires_seconds", 60, 60),
        ("subscription_expires_seconds", 86_400, 86_400),
        ("subscription_expires_seconds", 600.0, 600),  # a float that is whole is taken
        ("connect_timeout_seconds", 0.5, 0.5),
        ("connect_timeout_seconds", 120, 120.0),
        ("keepalive_seconds", 1, 1.0),
        ("idle_timeout_seconds", 86_400, 86_400.0),
        ("max_stanza_bytes", 4096, 4096),
        ("max_stanza_bytes", 16_777_216, 16_777_216),
    ],
)
def test_numbers_in_range(key: str, value: float, expected: float) -> None:
    got = getattr(parsed({"domains": OURS, key: value}), key)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("key", "value", "words", "default"),
    [
        ("subscription_expires_seconds", 59, "59 must be a number from 60 to 86400", 3600),
        ("subscription_expires_seconds", 86_401, "86401 must be a number from 60 to 86400", 3600),
        ("subscription_expires_seconds", 600.5, "600.5 must be a whole number", 3600),
        ("subscription_expires_seconds", "600", "'600' must be a number from 60 to 86400", 3600),
        ("subscription_expires_seconds", True, "True must be a number from 60 to 86400", 3600),
        ("connect_timeout_seconds", 0.4, "0.4 must be a number from 0.5 to 120", 10.0),
        ("keepalive_seconds", 0, "0 must be a number from 1 to 3600", 60.0),
        ("idle_timeout_seconds", 4.9, "4.9 must be a number from 5 to 86400", 600.0),
        ("max_stanza_bytes", 4095, "4095 must be a number from 4096 to 16777216", 262_144),
        ("max_stanza_bytes", 8192.5, "8192.5 must be a whole number", 262_144),
    ],
)
def test_numbers_refused(key: str, value: object, words: str, default: float) -> None:
    config, problems = parse({"domains": OURS, key: value})
    assert problems == [f"xmpp.{key}: {words}"]
    assert config is not None
    assert getattr(config, key) == default


def test_paths_resolved_against_the_config_directory(tmp_path: Path) -> None:
    config = parsed(
        {
            "domains": OURS,
            "cert_chain": "certs/xmpp.pem",
            "key": "../private/xmpp.key",
            "ca_bundle": "/etc/ssl/ca.crt",
            "store": "state/subs.sqlite3",
        },
        base=tmp_path / "conf",
    )
    assert config.cert_chain == (tmp_path / "conf" / "certs" / "xmpp.pem").resolve()
    assert config.key == (tmp_path / "private" / "xmpp.key").resolve()
    assert config.ca_bundle == Path("/etc/ssl/ca.crt")
    assert config.store == (tmp_path / "conf" / "state" / "subs.sqlite3").resolve()


def test_every_problem_reported_at_once() -> None:
    _, problems = parse(
        section(
            {"primary_domain": "xmpp.test", "tls": "never"},
            {"primary_domain": "tomt.local", "sasl": "not_supported", "dialback": False},
            domains=["tomt.local", "bad_domain"],
            listen="h:99999",
            keepalive_seconds=0,
            colour="blue",
        )
    )
    assert problems == [
        "xmpp.colour: unknown key (known: " + ", ".join(sorted(XMPP_KEYS)) + ")",
        "xmpp.listen: 'h:99999' port must be 0-65535",
        "xmpp.domains: 'bad_domain' is not a domain name",
        "xmpp.partners[0].tls: 'never' must be one of required, optional, not_supported",
        "xmpp.partners[1]: " + NO_AUTHENTICATION,
        "xmpp.partners[1]: tomt.local is one of our own xmpp.domains",
        "xmpp.keepalive_seconds: 0 must be a number from 1 to 3600",
    ]


# -- through the loader (proxy/config/loader.py) -----------------------------------------------------------------------

SIP = """
[proxy]
fqdn = "sipfed.tomt.local"

[tls]
cert_chain = "certs/proxy.pem"
key = "certs/proxy.key"
ca_bundle = "certs/ca.crt"

[[listeners]]
name = "cisco"
address = "127.0.0.1"
port = 5061
"""

XMPP = """
[xmpp]
domains = ["tomt.local", "tomt.it"]
listen = "127.0.0.1:0"

[[xmpp.partners]]
name = "jabber"
primary_domain = "xmpp.test"
additional_domains = ["chat.xmpp.test"]
partner_type = "PublicUnverified"

[[xmpp.partners]]
primary_domain = "plain.example"
tls = "NotSupported"
sasl = "NotSupported"
"""


def write(tmp_path: Path, text: str) -> Path:
    """The config file and its TLS files beside it, as tests/unit/test_config.py writes them."""
    return write_config(tmp_path, text)


def test_loader_refuses_sasl_without_tls(tmp_path: Path) -> None:
    text = SIP + XMPP.replace('sasl = "NotSupported"', 'sasl = "Required"')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problem = 'xmpp.partners[1]: sasl = "required" with tls = "not_supported": SASL requires TLS'
    assert info.value.problems == ["xmpp.partners[1]: " + SASL_WITHOUT_TLS.format(sasl="required")]
    assert str(info.value).startswith(f"config error in {path}:\n  - {problem} (its EXTERNAL mechanism")


def test_loader_refuses_sasl_without_tls_of_the_first_partner(tmp_path: Path) -> None:
    text = SIP + XMPP.replace('partner_type = "PublicUnverified"', 'tls = "not_supported"\nsasl = "required"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "\n  - xmpp.partners[0]: " + SASL_WITHOUT_TLS.format(sasl="required") in str(info.value)


def test_loader_gateway_routes_and_peers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SIP + XMPP))
    assert config.xmpp is not None
    assert [p.partner_type for p in config.xmpp.partners] == ["public_unverified", "federated"]
    assert [(r.name, r.match_uri, r.destination, r.transport, r.listener) for r in config.xmpp_routes] == [
        ("xmpp:jabber", "xmpp.test", "xmpp.test", "xmpp", "xmpp"),
        ("xmpp:jabber", "chat.xmpp.test", "chat.xmpp.test", "xmpp", "xmpp"),
        ("xmpp:plain.example", "plain.example", "plain.example", "xmpp", "xmpp"),
    ]
    assert config.routes == ()  # the gateway's routes stand apart from [[routes]]
    peers = {peer.name: peer for peer in config.trust.peers if peer.name.startswith("xmpp:")}
    assert sorted(peers) == ["xmpp:jabber", "xmpp:plain.example"]
    jabber = peers["xmpp:jabber"]
    assert (jabber.subjects, jabber.networks) == ((), ())
    assert jabber.domains == ("xmpp.test", "chat.xmpp.test")
    assert peers["xmpp:plain.example"].domains == ("plain.example",)
    assert jabber.may_speak_for("chat.xmpp.test")
    assert not jabber.may_speak_for("tomt.local")
    # Bound to nothing on the network: no certificate and no address ever matches these peers.
    identity = CertIdentity((("cn", "xmpp.test"),), ("xmpp.test",))
    assert not any(peer.matches(identity, "127.0.0.1") for peer in peers.values())


def test_loader_refuses_a_route_to_a_partner_domain(tmp_path: Path) -> None:
    route = '\n[[routes]]\nmatch_uri = "Chat.Xmpp.Test"\ndestination = "127.0.0.3"\nlistener = "cisco"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, SIP + route + XMPP))
    assert info.value.problems == [
        "xmpp.partners: chat.xmpp.test is XMPP partner jabber's domain, and [[routes]] 'chat.xmpp.test' also "
        "matches it; remove one"
    ]


def test_loader_without_tls_material_for_tls_partners(tmp_path: Path) -> None:
    udp_only = '[proxy]\nfqdn = "sipfed.tomt.local"\n\n[[listeners]]\nname = "udp"\ntransport = "udp"\n'
    udp_only += 'address = "127.0.0.1"\nport = 5060\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, udp_only + XMPP))
    assert info.value.problems == [
        'xmpp: partners use TLS (tls is not "not_supported"): set [tls] cert_chain and key, or '
        "xmpp.cert_chain and xmpp.key"
    ]
