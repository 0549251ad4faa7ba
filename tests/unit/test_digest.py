"""Digest authentication (RFC 7616, RFC 8760, RFC 3261 §22): computation, nonces, replay, parsing."""

import pytest

from acl.digest import ALGORITHMS, DigestServer, Verdict, authorization, ha1, parse_auth, response

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
    stamp, _, mac = server.nonce(1000.0).partition(".")
    forged = f"{stamp}.{'0' * len(mac)}"
    header = answer(f'Digest realm="{REALM}", nonce="{forged}", algorithm=MD5, qop="auth"')
    assert server.verify("MESSAGE", header, 1000.0)[0] is Verdict.BAD


def test_nonce_with_later_stamp_but_old_mac_is_bad() -> None:
    """Moving the time stamp forward to dodge expiry breaks the HMAC."""
    server = make_server()
    _, _, mac = server.nonce(1000.0).partition(".")
    header = answer(f'Digest realm="{REALM}", nonce="{5000:x}.{mac}", algorithm=MD5, qop="auth"')
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


def test_nonce_carries_time_so_later_nonces_differ() -> None:
    server = make_server()
    assert server.nonce(1000.0) == server.nonce(1000.0)
    assert server.nonce(1000.0) != server.nonce(1001.0)


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
