"""Certificate subjects, the CUP 'Allow from' ACL, the trusted-peer table and their config section."""

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from acl.allow import AclEntry, AclError, first_match, parse_allow
from acl.digest import Verdict, authorization, ha1
from acl.peers import TrustedPeer
from acl.subjects import CertIdentity, SubjectError, parse_subject
from proxy.config import Config, ConfigError, load_config

# A certificate with a DNS SAN, and one with only a subject CN.
WITH_SAN = CertIdentity((("c", "it"), ("o", "tomt"), ("cn", "lyncpool.tomt.it")), ("lync01.tomt.it",))
CN_ONLY = CertIdentity((("c", "it"), ("o", "tomt"), ("cn", "cups.tomt.local")))
NOBODY = CertIdentity()


# -- subject patterns ---------------------------------------------------------------------------------


def test_bare_name_matches_dns_san() -> None:
    assert parse_subject("lync01.tomt.it").matches(WITH_SAN)


def test_bare_name_ignores_cn_when_the_certificate_has_a_dns_san() -> None:
    """RFC 5922 §7.1: subjectAltName first; the CN counts only when there is no DNS SAN."""
    assert not parse_subject("lyncpool.tomt.it").matches(WITH_SAN)


def test_bare_name_matches_cn_when_no_dns_san() -> None:
    assert parse_subject("cups.tomt.local").matches(CN_ONLY)


def test_bare_name_is_case_insensitive_and_ignores_trailing_dot() -> None:
    pattern = parse_subject("  Lync01.TOMT.it.  ")
    assert (pattern.kind, pattern.value) == ("name", "lync01.tomt.it")
    assert pattern.matches(WITH_SAN)


def test_dns_prefix_matches_san_only() -> None:
    assert parse_subject("DNS:lync01.tomt.it").matches(WITH_SAN)
    assert parse_subject("dns:LYNC01.tomt.it").matches(WITH_SAN)
    assert not parse_subject("DNS:cups.tomt.local").matches(CN_ONLY)


def test_cn_prefix_matches_cn_only() -> None:
    assert parse_subject("CN=lyncpool.tomt.it").matches(WITH_SAN)  # the CN, even with a DNS SAN present
    assert not parse_subject("CN=lync01.tomt.it").matches(WITH_SAN)  # a SAN is not a CN
    assert parse_subject("cn=CUPS.tomt.local").matches(CN_ONLY)


@pytest.mark.parametrize(
    "text",
    [
        "CN=cups.tomt.local,O=TOMT,C=IT",
        "C=IT, O=TOMT, CN=cups.tomt.local",
        "o=tomt,cn=CUPS.TOMT.LOCAL,c=it",
        "commonName=cups.tomt.local,O=tomt,C=it",
    ],
)
def test_full_dn_matches_regardless_of_order_and_case(text: str) -> None:
    pattern = parse_subject(text)
    assert pattern.kind == "dn"
    assert pattern.matches(CN_ONLY)


def test_full_dn_needs_every_attribute_equal() -> None:
    assert not parse_subject("CN=cups.tomt.local,O=TOMT,C=DE").matches(CN_ONLY)
    assert not parse_subject("CN=cups.tomt.local,O=TOMT").matches(CN_ONLY)
    assert not parse_subject("CN=cups.tomt.local,O=TOMT,C=IT,L=Roma").matches(CN_ONLY)


def test_full_dn_keeps_escaped_comma() -> None:
    cert = CertIdentity((("cn", "cups.tomt.local"), ("o", "tomt, inc")))
    assert parse_subject(r"CN=cups.tomt.local,O=TOMT\, Inc").matches(cert)


@pytest.mark.parametrize("text", ["*.tomt.it", "DNS:*.tomt.it", "CN=*.tomt.it", "CN=lync*.tomt.it,O=TOMT"])
def test_wildcard_patterns_refused_naming_the_wildcard(text: str) -> None:
    with pytest.raises(SubjectError, match="wildcard") as info:
        parse_subject(text)
    assert text in str(info.value)


@pytest.mark.parametrize("text", ["CN=", "DNS:", "CN=cups.tomt.local,O=", "", "   "])
def test_empty_values_refused(text: str) -> None:
    with pytest.raises(SubjectError, match=r"no value|empty"):
        parse_subject(text)


@pytest.mark.parametrize("text", ["not a name", "CN=x y.example", "lync_01.tomt.it", "=x"])
def test_garbage_subjects_refused(text: str) -> None:
    with pytest.raises(SubjectError):
        parse_subject(text)


def test_wildcard_san_in_certificate_never_matches() -> None:
    """RFC 5922 §7.2: a wildcard certificate is not an identity for lync01.tomt.it."""
    wildcard = CertIdentity((("cn", "*.tomt.it"),), ("*.tomt.it",))
    assert not parse_subject("lync01.tomt.it").matches(wildcard)
    assert not parse_subject("DNS:lync01.tomt.it").matches(wildcard)
    assert not parse_subject("CN=lync01.tomt.it").matches(wildcard)


def test_ip_san_matches_bare_address() -> None:
    assert parse_subject("127.0.0.3").matches(CertIdentity(ip_addresses=("127.0.0.3",)))


def test_identity_from_ssl_getpeercert_dict() -> None:
    cert: dict[str, object] = {
        "subject": ((("countryName", "IT"),), (("organizationName", "TOMT"),), (("commonName", "LyncPool.tomt.it"),)),
        "issuer": ((("commonName", "TOMT Lab CA"),),),
        "subjectAltName": (
            ("DNS", "Lync01.tomt.it"),
            ("DNS", "lyncpool.tomt.it"),
            ("IP Address", "127.0.0.3"),
            ("email", "admin@tomt.it"),
        ),
        "notAfter": "Jan  1 00:00:00 2030 GMT",
    }
    identity = CertIdentity.from_ssl_dict(cert)
    assert identity.subject == (("c", "it"), ("o", "tomt"), ("cn", "lyncpool.tomt.it"))
    assert identity.dns_names == ("lync01.tomt.it", "lyncpool.tomt.it")
    assert identity.ip_addresses == ("127.0.0.3",)
    assert identity.common_names == ("lyncpool.tomt.it",)
    assert identity.names == ("lync01.tomt.it", "lyncpool.tomt.it", "127.0.0.3")
    assert parse_subject("CN=lyncpool.tomt.it,O=TOMT,C=IT").matches(identity)
    assert parse_subject("lync01.tomt.it").matches(identity)


@pytest.mark.parametrize("cert", [None, {}])
def test_identity_from_no_certificate_is_empty(cert: dict[str, object] | None) -> None:
    assert CertIdentity.from_ssl_dict(cert) == NOBODY
    assert not parse_subject("lync01.tomt.it").matches(NOBODY)


# -- CUP 'Allow from' ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "network"),
    [
        ("Allow from all", "all", None),
        ("Allow from company.com", "domain", None),
        ("Allow from 10.1.2.3", "network", "10.1.2.3/32"),
        ("Allow from 10.1", "network", "10.1.0.0/16"),
        ("Allow from 10.1.2", "network", "10.1.2.0/24"),
        ("Allow from 10", "network", "10.0.0.0/8"),
        ("Allow from 10.1.0.0/16", "network", "10.1.0.0/16"),
        ("Allow from 10.1.0.0/255.255.0.0", "network", "10.1.0.0/16"),
        ("Allow from 2001:db8::/32", "network", "2001:db8::/32"),
        ("ALLOW   FROM  10.1", "network", "10.1.0.0/16"),
        ("allow from Company.COM", "domain", None),
        ("10.1", "network", "10.1.0.0/16"),
        ("company.com", "domain", None),
        ("all", "all", None),
    ],
)
def test_allow_from_forms(text: str, kind: str, network: str | None) -> None:
    entry = parse_allow(text)
    assert entry.kind == kind
    assert entry.network == (ipaddress.ip_network(network) if network else None)
    if kind == "domain":
        assert entry.value == "company.com"


@pytest.mark.parametrize(
    "text",
    [
        "Allow from",
        "Allow from ",
        "",
        "Allow from some body",
        "Allow from 10.1.0.0/33",
        "Allow from -bad-.com",
        "Allow from company",
        "Allow from 10.1.2.300",
    ],
)
def test_allow_from_garbage_is_an_error(text: str) -> None:
    with pytest.raises(AclError):
        parse_allow(text)


def test_domain_entry_matches_certificate_names_only() -> None:
    entry = parse_allow("Allow from tomt.it")
    assert entry.matches("192.0.2.1", CertIdentity(dns_names=("tomt.it",)), None, "MESSAGE")
    assert entry.matches("192.0.2.1", WITH_SAN, None, "MESSAGE")  # lync01.tomt.it is in tomt.it
    assert not entry.matches("192.0.2.1", CertIdentity(dns_names=("eviltomt.it",)), None, "MESSAGE")
    assert not entry.matches("192.0.2.1", CertIdentity(dns_names=("tomt.it.evil.example",)), None, "MESSAGE")
    assert not entry.matches("192.0.2.1", NOBODY, "tomt.it", "MESSAGE")  # a peer name is not a certificate
    assert not entry.matches("tomt.it", NOBODY, None, "MESSAGE")  # nor is a source address


def test_domain_entry_does_not_match_wildcard_san() -> None:
    """RFC 5922 §7.2 (and acl/subjects.py): a wildcard SAN names no host, so it is no host in tomt.it."""
    wildcard = CertIdentity((("cn", "*.tomt.it"),), ("*.tomt.it",))
    assert not parse_allow("Allow from tomt.it").matches("192.0.2.1", wildcard, None, "MESSAGE")


def test_network_entries_match_source_address() -> None:
    entry = parse_allow("Allow from 10.1")
    assert entry.matches("10.1.200.3", NOBODY, None, "INVITE")
    assert not entry.matches("10.2.0.1", NOBODY, None, "INVITE")
    assert not entry.matches("not-an-ip", NOBODY, None, "INVITE")
    assert not parse_allow("Allow from 10.1.2.3").matches("10.1.2.4", NOBODY, None, "INVITE")
    assert not parse_allow("Allow from 2001:db8::/32").matches("10.1.2.3", NOBODY, None, "INVITE")


def test_all_matches_anyone() -> None:
    assert parse_allow("Allow from all").matches("203.0.113.9", NOBODY, None, "BENOTIFY")


def test_method_scoped_entry() -> None:
    entry = parse_allow("Allow from 10.1", frozenset({"SUBSCRIBE", "NOTIFY", "MESSAGE"}))
    assert entry.matches("10.1.0.1", NOBODY, None, "subscribe")
    assert entry.matches("10.1.0.1", NOBODY, None, "NOTIFY")
    assert not entry.matches("10.1.0.1", NOBODY, None, "INVITE")
    assert "for MESSAGE, NOTIFY, SUBSCRIBE" in entry.describe()


def test_peer_entry_matches_bound_peer_by_name_only() -> None:
    entry = AclEntry("peer", "lync")
    assert entry.matches("192.0.2.1", NOBODY, "lync", "INVITE")
    assert not entry.matches("192.0.2.1", WITH_SAN, None, "INVITE")
    assert not entry.matches("192.0.2.1", NOBODY, "cisco", "INVITE")


def test_first_match_returns_first_entry_in_order() -> None:
    entries = (parse_allow("Allow from 10.1", frozenset({"SUBSCRIBE"})), parse_allow("Allow from 10.0.0.0/8"))
    assert first_match(entries, "10.1.0.1", NOBODY, None, "SUBSCRIBE") is entries[0]
    assert first_match(entries, "10.1.0.1", NOBODY, None, "INVITE") is entries[1]
    assert first_match(entries, "192.0.2.1", NOBODY, None, "INVITE") is None


# -- trusted peers ------------------------------------------------------------------------------------


def test_peer_binds_by_subject_and_network_and_speaks_for_its_domains() -> None:
    peer = TrustedPeer("lync", (parse_subject("lync01.tomt.it"),), (ipaddress.ip_network("127.0.0.0/8"),), ("tomt.it",))
    assert peer.matches(WITH_SAN, "127.0.0.3")
    assert not peer.matches(WITH_SAN, "192.0.2.1")
    assert not peer.matches(CN_ONLY, "127.0.0.3")
    assert peer.may_speak_for("tomt.it")
    assert peer.may_speak_for("Sub.TOMT.it")
    assert not peer.may_speak_for("eviltomt.it")
    assert not peer.may_speak_for("evil.example")


# -- the config section -------------------------------------------------------------------------------

BASE = """
[proxy]
fqdn = "sipfed.tomt.local"

[[listeners]]
name = "plain"
transport = "tcp"
address = "127.0.0.1"
port = 5060

[[routes]]
name = "cisco"
match_uri = "tomt.local"
destination = "127.0.0.2"
port = 5062
transport = "tcp"
"""

PEER = """
[[peers]]
name = "lync"
subjects = ["lync01.tomt.it", "CN=lyncpool.tomt.it,O=TOMT,C=IT"]
networks = ["127.0.0.0/8"]
domains = ["tomt.it"]
answers_digest = false
"""

AUTH = """
[auth]
realm = "sipfed.tomt.local"
secret = "k"

[[auth.users]]
username = "carol"
ha1_md5 = "0123456789abcdef0123456789abcdef"
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "sipfed.toml"
    path.write_text(BASE + text)
    return load_config(path)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def test_full_trust_section_parses(tmp_path: Path) -> None:
    acl = """
[acl]
incoming = ["Allow from 10.1", {peer = "lync", methods = ["subscribe", "NOTIFY"]}, {from = "company.com"}]
outgoing = [{peer = "lync"}]

[[acl.credentials]]
route = "cisco"
username = "sipfed"
password = "x"
realm = "cups.tomt.local"
"""
    trust = load(tmp_path, PEER + AUTH + acl).trust
    [peer] = trust.peers
    assert (peer.name, peer.domains, peer.treat_as_authenticated, peer.answers_digest) == (
        "lync",
        ("tomt.it",),
        True,
        False,
    )
    assert [str(s) for s in peer.subjects] == ["lync01.tomt.it", "CN=lyncpool.tomt.it,O=tomt,C=it"]
    assert [(e.kind, e.methods) for e in trust.incoming] == [
        ("network", frozenset()),
        ("peer", frozenset({"SUBSCRIBE", "NOTIFY"})),
        ("domain", frozenset()),
    ]
    assert trust.digest is not None
    assert trust.digest.realm == "sipfed.tomt.local"
    assert trust.digest.users == {"carol": {"MD5": "0123456789abcdef0123456789abcdef"}}
    [credential] = trust.credentials
    assert (credential.route, credential.username, credential.realm) == ("cisco", "sipfed", "cups.tomt.local")


def test_every_trust_problem_reported_at_once(tmp_path: Path) -> None:
    text = """
[[peers]]
name = "lync"
subjects = ["CN="]
networks = ["127.0.0.0/8"]
answers_digest = false
treat_as_authenticated = false

[[peers]]
name = "cisco"
subjects = ["*.tomt.local"]

[acl]
incoming = ["Allow from all", "Allow from 10.1", {peer = "nobody"}]
outgoing = ["Allow from 10.0.0.0/8", "Allow from 10.1.0.0/255.255.0.0", "Allow from garbage!"]

[[acl.credentials]]
route = "nowhere"
username = "sipfed"
password = "x"
"""
    problems = problems_of(tmp_path, text)
    assert "peers[0].subjects[0]: 'CN=': CN= has no value" in problems
    assert any(p.startswith("peers[1].subjects[0]") and "wildcard" in p for p in problems)
    assert any(p.startswith("acl.incoming[1]: never used") and "acl.incoming[0]" in p for p in problems)
    assert any(p.startswith("acl.incoming[2].peer") and "'nobody'" in p for p in problems)
    assert any(p.startswith("acl.outgoing[1]: never used") and "acl.outgoing[0]" in p for p in problems)
    assert any(p.startswith("acl.outgoing[2]") for p in problems)
    assert any("'lync' cannot answer digest" in p for p in problems)
    assert any(p.startswith("acl.credentials[0].route") and "'nowhere'" in p for p in problems)


def test_method_scoped_entry_does_not_hide_a_later_unscoped_one(tmp_path: Path) -> None:
    acl = """
[acl]
incoming = [{from = "Allow from all", methods = ["SUBSCRIBE"]}, "Allow from 10.1"]
"""
    trust = load(tmp_path, acl).trust
    assert [e.kind for e in trust.incoming] == ["all", "network"]


def test_peer_unable_to_answer_digest_is_fine_when_exempt(tmp_path: Path) -> None:
    text = PEER.replace("answers_digest = false", "answers_digest = false\ntreat_as_authenticated = false")
    assert problems_of(tmp_path, text)
    config = load(tmp_path, text + '\n[acl]\nincoming = [{peer = "lync"}]\n')
    assert config.trust.peers[0].treat_as_authenticated is False


def test_plaintext_password_is_a_warning(tmp_path: Path) -> None:
    text = (
        AUTH
        + """
[[auth.users]]
username = "dave"
password = "hunter2"
"""
    )
    config = load(tmp_path, text)
    assert any(w.startswith("auth.users[1].password") and "plaintext" in w for w in config.warnings)
    assert config.trust.digest is not None
    assert set(config.trust.digest.users["dave"]) == {"MD5", "SHA-256"}


@pytest.mark.parametrize(
    ("sections", "policy"),
    [
        ("", "admit"),
        (PEER.replace("answers_digest = false", ""), "refuse"),
        (AUTH, "challenge"),
        (PEER + AUTH, "challenge"),
    ],
)
def test_default_untrusted_policy(tmp_path: Path, sections: str, policy: str) -> None:
    config = load(tmp_path, sections)
    assert [listener.untrusted for listener in config.listeners] == [policy]
    assert any("admits every source" in w for w in config.warnings) == (policy == "admit")


def test_challenge_policy_without_auth_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "sipfed.toml"
    path.write_text(BASE.replace("port = 5060\n", 'port = 5060\nuntrusted = "challenge"\n', 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(p.startswith("listeners[0].untrusted") and "[auth]" in p for p in info.value.problems)


def test_route_scoped_exemption_applies_only_toward_its_routes() -> None:
    from acl.peers import Trust

    entry = replace(parse_allow("Allow from 10.1.0.0/16", frozenset({"SUBSCRIBE"})), routes=frozenset({"cisco"}))
    trust = Trust(incoming=(entry,))
    nobody = CertIdentity()
    assert trust.exempt("10.1.2.3", nobody, None, "SUBSCRIBE", "cisco") is entry
    assert trust.exempt("10.1.2.3", nobody, None, "SUBSCRIBE", "lync") is None
    assert trust.exempt("10.1.2.3", nobody, None, "MESSAGE", "cisco") is None
    assert "toward route(s) cisco" in entry.describe()


# -- [auth]: From identities, the throttle, one instance per load (issue 14 row 6) -------------------------


def test_from_identities_default_to_the_users_own_and_follow_the_config(tmp_path: Path) -> None:
    text = (
        AUTH
        + """
[[auth.users]]
username = "alice"
ha1_md5 = "0123456789abcdef0123456789abcdef"
from_uris = ["sip:alice@TOMT.local", "sips:a%6Cice.smith@tomt.local"]

[[auth.users]]
username = "gateway"
ha1_md5 = "0123456789abcdef0123456789abcdef"
from_domains = ["Partner.example"]
"""
    )
    digest = load(tmp_path, text).trust.digest
    assert digest is not None
    assert digest.may_use_from("carol", "carol", "sipfed.tomt.local")  # no key: its own sip:carol@realm
    assert not digest.may_use_from("carol", "carol", "tomt.local")
    assert digest.may_use_from("alice", "alice", "tomt.local")
    assert digest.may_use_from("alice", "alice.smith", "tomt.local")
    assert not digest.may_use_from("alice", "ceo", "tomt.local")
    assert not digest.may_use_from("alice", "alice", "sipfed.tomt.local")  # listed: exactly what is listed
    assert digest.may_use_from("gateway", "anyone", "partner.example")
    assert not digest.may_use_from("gateway", "gateway", "sipfed.tomt.local")
    assert not digest.may_use_from("nobody", "nobody", "sipfed.tomt.local")


def test_throttle_settings_parse_with_defaults(tmp_path: Path) -> None:
    text = AUTH.replace('secret = "k"', 'secret = "k"\nmax_failures_per_user = 7\nlockout_seconds = 2.5')
    digest = load(tmp_path, text).trust.digest
    assert digest is not None
    throttle = digest.throttle
    assert (
        throttle.max_failures_per_source,
        throttle.max_failures_per_user,
        throttle.failure_window_seconds,
        throttle.lockout_seconds,
        throttle.max_lockout_seconds,
    ) == (5, 7, 60.0, 2.5, 300.0)


def test_every_auth_problem_reported_at_once(tmp_path: Path) -> None:
    text = """
[auth]
realm = "sipfed.tomt.local"
secret = 7
max_failures_per_source = 0
max_failures_per_user = 2.5
lockout_seconds = 600
failure_window_seconds = "long"

[[auth.users]]
username = "alice"
ha1_md5 = "0123456789abcdef0123456789abcdef"
from_uris = ["sip:alice@tomt.local:5060", "tel:+3912345", "alice@tomt.local", "sip:alice@tomt.local"]
from_domains = ["tomt.local", "bad domain", ""]

[[auth.users]]
username = "alice"
ha1_md5 = "0123456789abcdef0123456789abcdef"
from_uris = "sip:alice@tomt.local"
"""
    problems = problems_of(tmp_path, text)
    assert any(p.startswith("auth.secret: must be a non-empty string") for p in problems)
    assert "auth.max_failures_per_source: 0 must be a positive whole number" in problems
    assert "auth.max_failures_per_user: 2.5 must be a positive whole number" in problems
    assert "auth.failure_window_seconds: 'long' must be a positive number" in problems
    assert "auth.lockout_seconds: 600 is more than auth.max_lockout_seconds (300)" in problems
    for j in (0, 1, 2):
        assert any(p.startswith(f"auth.users[0].from_uris[{j}]: ") and "sip:user@domain" in p for p in problems)
    assert not any(p.startswith("auth.users[0].from_uris[3]") for p in problems)
    assert not any(p.startswith("auth.users[0].from_domains[0]") for p in problems)
    assert any(p.startswith("auth.users[0].from_domains[1]: 'bad domain'") for p in problems)
    assert any(p.startswith("auth.users[0].from_domains[2]: ''") for p in problems)
    assert "auth.users[1].username: 'alice' is configured twice" in problems
    assert "auth.users[1].from_uris: must be a list of strings" in problems


def test_each_load_is_its_own_instance_so_a_restart_makes_old_nonces_stale(tmp_path: Path) -> None:
    """acl.digest rule 2: the same config (same secret) loaded twice, as by a restart."""
    first, second = load(tmp_path, AUTH).trust.digest, load(tmp_path, AUTH).trust.digest
    assert first is not None
    assert second is not None
    assert first.secret == second.secret == b"k"
    assert len(first.instance) == len(second.instance) == 16
    assert first.instance != second.instance
    first.users["carol"] = second.users["carol"] = {"MD5": ha1("MD5", "carol", "sipfed.tomt.local", "pw")}
    header = authorization(first.challenges(100.0, wall=1e9)[-1], "MESSAGE", "sip:x@y", "carol", "pw", "c")
    assert first.verify("MESSAGE", header, 100.0, wall=1e9)[0] is Verdict.OK
    assert second.verify("MESSAGE", header, 5.0, wall=1e9 + 1)[0] is Verdict.STALE
