"""Digest authentication (RFC 7616, RFC 8760, RFC 3261 §22): computation, nonces, replay, parsing."""

import pytest

from acl.digest import (
    ALGORITHMS,
    DigestServer,
    FromIdentities,
    Throttle,
    Verdict,
    authorization,
    ha1,
    parse_auth,
    response,
)
from acl.peers import Trust
from proxy.relay.observe import Observer
from proxy.relay.trust import _credentials_ok
from proxy.sip.errors import SipError
from proxy.sip.message import Request, parse_message

REALM = "sipfed.tomt.local"
URI = "sip:alice@tomt.local"

# RFC 7616 §3.9.1: the worked example, shared by both algorithms.
EXAMPLE = {
    "username": "Mufasa",
    "realm": "http-auth@example.org",
    "password": "Circle of Life",
    "method": "GET",
    "uri": "/dir/index.html",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "nc": "00000001",
}
EXAMPLE_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def make_server(algorithms: tuple[str, ...] = ("SHA-256", "MD5"), ttl: float = 300.0) -> DigestServer:
    users = {"carol": {alg: ha1(alg, "carol", REALM, "s3cret") for alg in ALGORITHMS}}
    return DigestServer(REALM, b"server-secret", users, ttl, algorithms)


def challenge_for(server: DigestServer, now: float, algorithm: str = "MD5") -> str:
    [challenge] = [c for c in server.challenges(now) if f"algorithm={algorithm}" in c]
    return challenge


def answer(
    challenge: str, *, password: str = "s3cret", nc: int = 1, method: str = "MESSAGE", username: str = "carol"
) -> str:
    return authorization(challenge, method, URI, username, password, "0a4f113b", nc)


# -- RFC 7616 §3.9.1 ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_worked_example(algorithm: str) -> None:
    e = EXAMPLE
    stored = ha1(algorithm, e["username"], e["realm"], e["password"])
    got = response(algorithm, stored, e["nonce"], e["method"], e["uri"], nc=e["nc"], cnonce=e["cnonce"], qop="auth")
    assert got == EXAMPLE_RESPONSES[algorithm]


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_authorization_answers_the_worked_example_challenge(algorithm: str) -> None:
    e = EXAMPLE
    challenge = (
        f'Digest realm="{e["realm"]}", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{e["nonce"]}", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    header = authorization(challenge, e["method"], e["uri"], e["username"], e["password"], e["cnonce"])
    scheme, params = parse_auth(header)
    assert scheme == "digest"
    assert params["response"] == EXAMPLE_RESPONSES[algorithm]
    assert (params["qop"], params["nc"], params["algorithm"]) == ("auth", "00000001", algorithm)
    assert params["opaque"] == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


# -- the server side: verify ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_round_trip_is_ok(algorithm: str) -> None:
    server = make_server()
    header = answer(challenge_for(server, 1000.0, algorithm))
    assert server.verify("MESSAGE", header, 1001.0) == (Verdict.OK, "carol")


def test_wrong_password_is_bad() -> None:
    server = make_server()
    header = answer(challenge_for(server, 1000.0), password="guess")
    assert server.verify("MESSAGE", header, 1000.0) == (Verdict.BAD, "carol")


def test_other_method_than_signed_is_bad() -> None:
    server = make_server()
    header = answer(challenge_for(server, 1000.0), method="MESSAGE")
    assert server.verify("INVITE", header, 1000.0)[0] is Verdict.BAD


def test_unknown_user_is_bad() -> None:
    server = make_server()
    header = answer(challenge_for(server, 1000.0), username="mallory")
    assert server.verify("MESSAGE", header, 1000.0)[0] is Verdict.BAD


def test_algorithm_not_offered_is_bad() -> None:
    server = make_server(algorithms=("SHA-256",))
    nonce = server.nonce(1000.0)
    header = answer(f'Digest realm="{REALM}", nonce="{nonce}", algorithm=MD5, qop="auth"')
    assert server.verify("MESSAGE", header, 1000.0)[0] is Verdict.BAD


def test_forged_nonce_is_bad() -> None:
    server = make_server()
    stamp, instance, token, mac = server.nonce(1000.0).split(".")
    forged = f"{stamp}.{instance}.{token}.{'0' * len(mac)}"
    header = answer(f'Digest realm="{REALM}", nonce="{forged}", algorithm=MD5, qop="auth"')
    assert server.verify("MESSAGE", header, 1000.0)[0] is Verdict.BAD


@pytest.mark.parametrize("part", [0, 1, 2])
def test_nonce_with_any_part_changed_but_old_mac_is_bad(part: int) -> None:
    """Moving the stamp forward to dodge expiry, claiming another instance or token: the HMAC breaks."""
    server = make_server()
    parts = server.nonce(1000.0).split(".")
    parts[part] = {0: f"{5000:x}", 1: "ab" * 8, 2: "0" * 24}[part]
    header = answer(f'Digest realm="{REALM}", nonce="{".".join(parts)}", algorithm=MD5, qop="auth"')
    assert server.verify("MESSAGE", header, 5000.0)[0] is Verdict.BAD


def test_nonce_of_another_secret_is_bad() -> None:
    other = DigestServer(REALM, b"someone else", make_server().users)
    header = answer(challenge_for(other, 1000.0))
    assert make_server().verify("MESSAGE", header, 1000.0)[0] is Verdict.BAD


def test_other_realm_is_not_ours_to_judge() -> None:
    server = make_server()
    nonce = server.nonce(1000.0)
    header = answer(f'Digest realm="cups.tomt.local", nonce="{nonce}", algorithm=MD5, qop="auth"')
    assert server.verify("MESSAGE", header, 1000.0) == (Verdict.OTHER_REALM, "")


def test_non_digest_scheme_is_bad() -> None:
    assert make_server().verify("MESSAGE", "Basic Y2Fyb2w6czNjcmV0", 0.0)[0] is Verdict.BAD


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_expired_nonce_with_right_password_is_stale(algorithm: str) -> None:
    server = make_server(ttl=300.0)
    header = answer(challenge_for(server, 1000.0, algorithm))
    assert server.verify("MESSAGE", header, 1000.0 + 300.0 + 1)[0] is Verdict.STALE


def test_nonce_still_good_at_its_ttl() -> None:
    server = make_server(ttl=300.0)
    header = answer(challenge_for(server, 1000.0))
    assert server.verify("MESSAGE", header, 1300.0)[0] is Verdict.OK


def test_expired_nonce_with_wrong_password_is_bad_not_stale() -> None:
    """stale=true only tells a client that knows the password to retry (RFC 7616 §3.3)."""
    server = make_server(ttl=300.0)
    header = answer(challenge_for(server, 1000.0), password="guess")
    assert server.verify("MESSAGE", header, 2000.0)[0] is Verdict.BAD


def test_nonce_count_replay_refused_and_increasing_count_accepted() -> None:
    server = make_server()
    challenge = challenge_for(server, 1000.0)
    assert server.verify("MESSAGE", answer(challenge, nc=1), 1000.0)[0] is Verdict.OK
    assert server.verify("MESSAGE", answer(challenge, nc=1), 1001.0)[0] is Verdict.REPLAY
    assert server.verify("MESSAGE", answer(challenge, nc=2), 1002.0)[0] is Verdict.OK
    assert server.verify("MESSAGE", answer(challenge, nc=5), 1003.0)[0] is Verdict.OK
    assert server.verify("MESSAGE", answer(challenge, nc=3), 1004.0)[0] is Verdict.REPLAY


def test_nonce_counts_are_per_nonce() -> None:
    server = make_server()
    first, second = challenge_for(server, 1000.0), challenge_for(server, 1001.0)
    assert first != second
    assert server.verify("MESSAGE", answer(first, nc=1), 1001.0)[0] is Verdict.OK
    assert server.verify("MESSAGE", answer(second, nc=1), 1001.0)[0] is Verdict.OK


def test_missing_qop_is_bad() -> None:
    """RFC 2069 compatibility (no qop, no nc) has no replay protection: refused."""
    server = make_server()
    nonce = server.nonce(1000.0)
    header = answer(f'Digest realm="{REALM}", nonce="{nonce}", algorithm=MD5')
    assert "qop" not in parse_auth(header)[1]
    assert server.verify("MESSAGE", header, 1000.0)[0] is Verdict.BAD


def test_malformed_nc_is_bad() -> None:
    server = make_server()
    header = answer(challenge_for(server, 1000.0)).replace("nc=00000001", "nc=1")
    assert server.verify("MESSAGE", header, 1000.0)[0] is Verdict.BAD


# -- challenges -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithms", [("SHA-256", "MD5"), ("MD5", "SHA-256"), ("MD5",)])
def test_challenges_list_configured_algorithms_in_order(algorithms: tuple[str, ...]) -> None:
    challenges = make_server(algorithms).challenges(1000.0)
    parsed = [parse_auth(c) for c in challenges]
    assert [p["algorithm"] for _, p in parsed] == list(algorithms)
    for scheme, params in parsed:
        assert scheme == "digest"
        assert (params["realm"], params["qop"]) == (REALM, "auth")
        assert "stale" not in params
    assert len({p["nonce"] for _, p in parsed}) == 1


def test_stale_challenges_say_so() -> None:
    for challenge in make_server().challenges(1000.0, stale=True):
        assert parse_auth(challenge)[1]["stale"] == "true"


def test_every_challenge_has_a_fresh_nonce_even_in_the_same_second() -> None:
    """RFC 7616 §3.3 / §5.4: the old nonce was a function of the second; two clients shared it."""
    server = make_server()
    nonces = {parse_auth(server.challenges(1000.0)[0])[1]["nonce"] for _ in range(50)}
    assert len(nonces) == 50
    assert all(n.startswith(f"{1000:x}.") for n in nonces)


# -- nonce-count per nonce, restarts, the bounded table (RFC 7616 §3.4, §5.5) ----------------------------


def test_one_clients_huge_nonce_count_does_not_lock_out_another() -> None:
    server = make_server()
    mine, theirs = challenge_for(server, 1000.0), challenge_for(server, 1000.0)
    assert server.verify("MESSAGE", answer(mine, nc=0xFFFFFFFF), 1000.0)[0] is Verdict.OK
    assert server.verify("MESSAGE", answer(theirs, nc=1), 1000.0)[0] is Verdict.OK
    assert server.verify("MESSAGE", answer(mine, nc=1), 1000.0)[0] is Verdict.REPLAY


def restarted(server: DigestServer, instance: str) -> DigestServer:
    """The same config loaded again: same secret and users, a new instance, empty tables."""
    return DigestServer(
        REALM, server.secret, server.users, server.nonce_ttl_seconds, server.algorithms, instance=instance
    )


def test_credentials_captured_before_a_restart_are_stale_after_it() -> None:
    before = restarted(make_server(), "aa" * 8)
    header = answer(challenge_for(before, 1000.0))
    assert before.verify("MESSAGE", header, 1001.0)[0] is Verdict.OK
    after = restarted(before, "bb" * 8)
    assert after.verify("MESSAGE", header, 1002.0)[0] is Verdict.STALE
    assert after.verify("MESSAGE", answer(challenge_for(before, 1000.0), password="guess"), 1002.0)[0] is Verdict.BAD
    assert after.verify("MESSAGE", answer(challenge_for(after, 1002.0)), 1003.0)[0] is Verdict.OK


def test_nonce_is_dated_by_the_wall_clock_when_given() -> None:
    """The core's ``now`` is monotonic (it restarts with the host); ``wall`` dates the nonce instead."""
    server = make_server(ttl=300.0)
    [challenge, _] = server.challenges(5.0, wall=1_700_000_000.0)
    assert parse_auth(challenge)[1]["nonce"].startswith(f"{1_700_000_000:x}.")
    header = answer(challenge)
    assert server.verify("MESSAGE", header, 6.0, wall=1_700_000_400.0)[0] is Verdict.STALE
    assert server.verify("MESSAGE", header, 7.0, wall=1_700_000_100.0)[0] is Verdict.OK


def test_nonce_from_the_future_is_stale() -> None:
    """The clock was set back: the client is asked again, with a nonce dated by the clock as it is now."""
    server = make_server()
    assert server.verify("MESSAGE", answer(challenge_for(server, 2000.0)), 1000.0)[0] is Verdict.STALE


def test_table_forgets_expired_nonces_and_caps_the_rest_as_stale() -> None:
    server = make_server(ttl=300.0)
    server.max_tracked_nonces = 3
    old = [challenge_for(server, 1000.0) for _ in range(3)]
    for challenge in old:
        assert server.verify("MESSAGE", answer(challenge), 1000.0)[0] is Verdict.OK
    fresh = challenge_for(server, 1400.0)
    assert server.verify("MESSAGE", answer(fresh), 1400.0)[0] is Verdict.OK
    assert len(server._counts) == 1  # the three expired ones were forgotten
    newer = [challenge_for(server, 1401.0 + n) for n in range(4)]
    for n, challenge in enumerate(newer):
        assert server.verify("MESSAGE", answer(challenge), 1401.0 + n)[0] is Verdict.OK
    assert len(server._counts) == 3
    # Pushed out of the table: stale, never a second "first use" of nc=1.
    assert server.verify("MESSAGE", answer(fresh), 1405.0)[0] is Verdict.STALE
    assert server.verify("MESSAGE", answer(newer[0]), 1405.0)[0] is Verdict.STALE
    assert server.verify("MESSAGE", answer(newer[3]), 1405.0)[0] is Verdict.REPLAY


# -- failed-attempt throttling (RFC 7616 §5.7) --------------------------------------------------------


def throttled_server(*, max_failures_per_user: int = 5, failure_window_seconds: float = 60.0) -> DigestServer:
    server = make_server()
    server.throttle = Throttle(
        max_failures_per_source=3,
        max_failures_per_user=max_failures_per_user,
        failure_window_seconds=failure_window_seconds,
        lockout_seconds=10.0,
        max_lockout_seconds=40.0,
    )
    return server


def test_source_locked_out_after_its_failures_even_with_the_right_password() -> None:
    server = throttled_server()
    challenge = challenge_for(server, 1000.0)
    for n in range(3):
        assert server.verify("MESSAGE", answer(challenge, password="guess"), 1000.0 + n, source="192.0.2.7") == (
            Verdict.BAD,
            "carol",
        )
    assert server.verify("MESSAGE", answer(challenge), 1003.0, source="192.0.2.7") == (Verdict.THROTTLED, "carol")
    assert server.lockout("carol", 1003.0, "192.0.2.7") == ("source", 9)
    assert server.verify("MESSAGE", answer(challenge), 1003.0, source="192.0.2.8")[0] is Verdict.OK
    assert server.verify("MESSAGE", answer(challenge, nc=2), 1012.0, source="192.0.2.7")[0] is Verdict.OK


def test_lockouts_double_up_to_the_maximum() -> None:
    server = throttled_server(max_failures_per_user=1000)
    challenge, now, lengths = challenge_for(server, 1000.0), 1000.0, []
    for _ in range(4):
        for _ in range(3):
            server.verify("MESSAGE", answer(challenge, password="guess"), now, source="192.0.2.7")
        found = server.lockout("carol", now, "192.0.2.7")
        assert found is not None
        lengths.append(found[1])
        now += found[1]
    assert lengths == [10, 20, 40, 40]


def test_user_locked_out_by_failures_from_many_sources() -> None:
    server = throttled_server()
    challenge = challenge_for(server, 1000.0)
    for n in range(5):
        server.verify("MESSAGE", answer(challenge, password="guess"), 1000.0, source=f"198.51.100.{n}")
    assert server.verify("MESSAGE", answer(challenge), 1001.0, source="203.0.113.1")[0] is Verdict.THROTTLED
    assert server.lockout("carol", 1001.0, "203.0.113.1") == ("user", 9)


def test_without_a_source_the_user_limit_still_holds() -> None:
    server = throttled_server()
    challenge = challenge_for(server, 1000.0)
    for _ in range(5):
        assert server.verify("MESSAGE", answer(challenge, password="guess"), 1000.0)[0] is Verdict.BAD
    assert server.verify("MESSAGE", answer(challenge), 1000.0)[0] is Verdict.THROTTLED


def test_ipv6_sources_count_per_64() -> None:
    server = throttled_server()
    challenge = challenge_for(server, 1000.0)
    for n in range(3):
        server.verify("MESSAGE", answer(challenge, password="guess"), 1000.0, source=f"2001:db8:0:1::{n + 1}")
    assert server.verify("MESSAGE", answer(challenge), 1000.0, source="2001:db8:0:1::99")[0] is Verdict.THROTTLED
    assert server.verify("MESSAGE", answer(challenge), 1000.0, source="2001:db8:0:2::1")[0] is Verdict.OK


def test_failures_outside_the_window_are_not_counted_and_a_success_clears_the_source() -> None:
    server = throttled_server(failure_window_seconds=60.0)
    challenge = challenge_for(server, 1000.0)
    for now in (1000.0, 1001.0, 1100.0, 1101.0):  # two, then two more after the window
        server.verify("MESSAGE", answer(challenge, password="guess"), now, source="192.0.2.7")
    assert server.verify("MESSAGE", answer(challenge), 1102.0, source="192.0.2.7")[0] is Verdict.OK
    for now in (1103.0, 1104.0):
        server.verify("MESSAGE", answer(challenge, password="guess"), now, source="192.0.2.7")
    assert server.verify("MESSAGE", answer(challenge, nc=2), 1105.0, source="192.0.2.7")[0] is Verdict.OK


def test_unknown_usernames_are_counted_by_source_only_and_sources_are_capped() -> None:
    server = throttled_server()
    server.throttle.max_tracked_sources = 100
    challenge = challenge_for(server, 1000.0)
    for n in range(500):
        server.verify("MESSAGE", answer(challenge, username=f"guess{n}"), 1000.0, source=f"10.0.{n // 256}.{n % 256}")
    assert len(server.throttle._tables["source"]) == 100
    assert not server.throttle._tables["user"]


# -- From identities --------------------------------------------------------------------------------


def test_from_identities_exact_uris_and_domains() -> None:
    rule = FromIdentities(frozenset({("alice", "tomt.local")}), ("partner.example",))
    assert rule.allows("alice", "TOMT.local")
    assert rule.allows("%61lice", "tomt.local")  # RFC 3261 §19.1.4: escaped and plain are equal
    assert not rule.allows("Alice", "tomt.local")  # the user part is case-sensitive
    assert not rule.allows("ceo", "tomt.local")
    assert rule.allows("anyone", "partner.example")
    assert rule.allows("anyone", "eu.partner.example")
    assert not rule.allows("anyone", "evilpartner.example")
    assert FromIdentities(domains=("*",)).allows("x", "anything.example")


def test_may_use_from_refuses_users_without_a_rule_once_rules_are_set() -> None:
    server = make_server()
    assert server.may_use_from("carol", "ceo", "tomt.local")  # built in code, no From rule
    server.from_identities = {"carol": FromIdentities(frozenset({("carol", "tomt.local")}))}
    assert server.may_use_from("carol", "carol", "tomt.local")
    assert not server.may_use_from("carol", "ceo", "tomt.local")
    assert not server.may_use_from("dave", "dave", "tomt.local")


# -- through the relay's admission (proxy/relay/trust.py) ------------------------------------------------


class Recorder(Observer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def digest(self, outcome: str) -> None:
        self.calls.append(("digest", outcome))

    def digest_throttled(self, scope: str) -> None:
        self.calls.append(("throttled", scope))


def sip_request(from_uri: str, authorization: str = "") -> Request:
    lines = [
        f"MESSAGE {URI} SIP/2.0",
        "Via: SIP/2.0/TLS 192.0.2.7:5061;branch=z9hG4bKx1",
        f"From: <{from_uri}>;tag=a",
        f"To: <{URI}>",
        "Call-ID: c1@x",
        "CSeq: 1 MESSAGE",
        "Max-Forwards: 70",
    ]
    if authorization:
        lines.append(f"Proxy-Authorization: {authorization}")
    message = parse_message(("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def test_digest_user_with_a_from_it_may_not_use_is_403_naming_both() -> None:
    server = make_server()
    server.from_identities = {"carol": FromIdentities(frozenset({("carol", "tomt.local")}))}
    trust = Trust(digest=server)
    good = sip_request("sip:carol@tomt.local", answer(challenge_for(server, 1000.0)))
    assert _credentials_ok(good, trust, 1000.0, Observer())
    forged = sip_request("sip:ceo@tomt.local", answer(challenge_for(server, 1000.0)))
    with pytest.raises(SipError) as info:
        _credentials_ok(forged, trust, 1000.0, Observer())
    assert (info.value.status, info.value.reason) == (403, "Forbidden (user carol may not use From sip:ceo@tomt.local)")


def test_locked_out_attempt_is_403_with_the_time_left_and_counted() -> None:
    server = throttled_server()
    trust, recorder = Trust(digest=server), Recorder()
    challenge = challenge_for(server, 1000.0)
    for _ in range(3):
        with pytest.raises(SipError):
            _credentials_ok(
                sip_request(URI, answer(challenge, password="guess")), trust, 1000.0, recorder, source="192.0.2.7"
            )
    with pytest.raises(SipError) as info:
        _credentials_ok(sip_request(URI, answer(challenge)), trust, 1000.5, recorder, source="192.0.2.7")
    assert (info.value.status, info.value.reason) == (
        403,
        "Forbidden (too many failed digest attempts from 192.0.2.7; retry in 10 s)",
    )
    assert recorder.calls == [("digest", "failed")] * 3 + [("throttled", "source")]


def test_stale_answer_rechallenges_with_the_same_clock() -> None:
    server = make_server()
    [challenge, _] = server.challenges(5.0, wall=1_700_000_000.0)
    with pytest.raises(SipError) as info:
        _credentials_ok(
            sip_request(URI, answer(challenge)), Trust(digest=server), 6.0, Observer(), wall=1_700_000_999.0
        )
    assert info.value.status == 407
    fresh = parse_auth(dict(info.value.headers)["Proxy-Authenticate"])[1]
    assert fresh["stale"] == "true"
    assert fresh["nonce"].startswith(f"{1_700_000_999:x}.")


# -- parse_auth -------------------------------------------------------------------------------------


def test_parse_auth_quoted_values_with_commas_and_escapes() -> None:
    value = (
        'Digest username="bob \\"the\\" builder", realm="a, b", nonce=abc123,uri="sip:x@h;p=1,2",'
        ' opaque="c\\\\d" , qop=auth, NC=00000002'
    )
    scheme, params = parse_auth(value)
    assert scheme == "digest"
    assert params == {
        "username": 'bob "the" builder',
        "realm": "a, b",
        "nonce": "abc123",
        "uri": "sip:x@h;p=1,2",
        "opaque": "c\\d",
        "qop": "auth",
        "nc": "00000002",
    }


def test_parse_auth_scheme_case_insensitive_and_empty_quoted_value() -> None:
    scheme, params = parse_auth('DIGEST realm="", nonce="n"')
    assert scheme == "digest"
    assert params == {"realm": "", "nonce": "n"}
