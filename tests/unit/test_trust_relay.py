"""Trust decisions inside the proxy core: trusted peers, our digest challenge, next hops' challenges."""

from dataclasses import replace

from acl.allow import parse_allow
from acl.digest import ALGORITHMS, DigestServer, Verdict, authorization, ha1, parse_auth
from acl.peers import Credential, Trust, TrustedPeer
from acl.subjects import CertIdentity, parse_subject
from proxy.relay.core import Proxy, RelaySettings
from proxy.relay.forwarding import RelayPolicy
from proxy.relay.types import Flow, Identity, Output
from proxy.sip.message import Request, Response, parse_message
from routes import RouteTable, StaticRoute
from tests.unit.edge import BoundProxy
from tests.unit.relay_harness import forwarded, hops, replies

REALM = "sipfed.tomt.it"
HOP_REALM = "cups.tomt.local"
LYNC_CERT = CertIdentity(dns_names=("lync01.tomt.it",))
LYNC_IN = Flow("tls", "lync", ("127.0.0.3", 40001), 1, LYNC_CERT, "lync")
STRANGER = Flow("tls", "lync", ("192.0.2.7", 40009), 4, CertIdentity(dns_names=("other.example",)))
EXEMPT = Flow("tls", "lync", ("127.0.0.3", 40010), 5, CertIdentity(dns_names=("lync02.tomt.it",)))
CISCO_OUT = Flow("tls", "cisco", ("127.0.0.2", 5062), 2, CertIdentity(dns_names=("cups.tomt.local",)))
ROUTES = RouteTable(
    [
        StaticRoute("cisco", "tomt.local", "127.0.0.2", 5062, "tls", "cups.tomt.local", "cisco"),
        StaticRoute("lync", "tomt.it", "127.0.0.3", 5061, "tls", "lync01.tomt.it", "lync"),
    ]
)


def lync_peer(*, answers_digest: bool = False) -> TrustedPeer:
    return TrustedPeer(
        "lync",
        (parse_subject("lync01.tomt.it"),),
        domains=("tomt.it",),
        treat_as_authenticated=True,
        answers_digest=answers_digest,
    )


def our_digest() -> DigestServer:
    users = {"carol": {alg: ha1(alg, "carol", REALM, "s3cret") for alg in ALGORITHMS}}
    return DigestServer(REALM, b"sipfed-secret", users)


def make_proxy(trust: Trust, untrusted: str = "challenge") -> Proxy:
    identities = [
        Identity("cisco", "tls", "127.0.0.1", 5071, "sipfed.tomt.local", "sipfed.tomt.local", "refuse"),
        Identity("lync", "tls", "127.0.0.1", 5072, "sipfed.tomt.it", "sipfed.tomt.it", untrusted),
    ]
    policy = RelayPolicy.build(identities, ROUTES, {}, frozenset())
    return BoundProxy(policy, RelaySettings(), trust)


def request(
    method: str = "SUBSCRIBE",
    *,
    branch: str = "z9hG4bKlync1",
    cseq: int = 1,
    from_host: str = "tomt.it",
    uri: str = "sip:alice@tomt.local",
    to_tag: str | None = None,
    headers: tuple[str, ...] = (),
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/TLS lync01.tomt.it:5061;branch={branch}",
        f"From: <sip:bob@{from_host}>;tag=from1",
        "To: <sip:alice@tomt.local>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: call1@tomt.it",
        f"CSeq: {cseq} {method}",
        "Max-Forwards: 70",
        "Event: presence",
        *headers,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(sent: bytes, status: int, reason: str, *, headers: tuple[str, ...] = ()) -> bytes:
    """The response a next hop builds for ``sent`` (RFC 3261 §8.2.6.2)."""
    copied = []
    for line in sent.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]:
        name = line.split(":")[0].strip().lower()
        if name == "to" and ";tag=" not in line:
            line += ";tag=cup1"
        if name in ("via", "from", "to", "call-id", "cseq"):
            copied.append(line)
    return ("\r\n".join([f"SIP/2.0 {status} {reason}", *copied, *headers, "Content-Length: 0"]) + "\r\n\r\n").encode()


def send(px: Proxy, data: bytes, flow: Flow = LYNC_IN, now: float = 0.0) -> list[Output]:
    px.receive(flow, data, now)
    return px.take_outputs()


def only_reply(outputs: list[Output], flow: Flow = LYNC_IN) -> Response:
    assert hops(outputs) == [], outputs
    [response] = replies(outputs, flow)
    return response


# -- trusted peers (trust rules 1 and 2) -------------------------------------------------------------


def test_trusted_peer_forwarded_without_challenge() -> None:
    px = make_proxy(Trust(peers=(lync_peer(),), digest=our_digest()))
    outputs = send(px, request())
    assert replies(outputs, LYNC_IN) == []
    _, fwd = forwarded(outputs)
    assert fwd.method == "SUBSCRIBE"
    assert fwd.cseq == (1, "SUBSCRIBE")


def test_trusted_peer_speaking_for_foreign_domain_is_403_naming_peer_and_domain() -> None:
    px = make_proxy(Trust(peers=(lync_peer(),), digest=our_digest()))
    response = only_reply(send(px, request(from_host="evil.example")))
    assert response.status == 403
    assert "lync" in response.reason
    assert "evil.example" in response.reason
    assert "proxy-authenticate" not in response.headers


# -- our digest challenge (trust rule 3) -------------------------------------------------------------


def challenge_of(px: Proxy, flow: Flow = STRANGER) -> tuple[Response, str]:
    response = only_reply(send(px, request(), flow), flow)
    assert response.status == 407
    return response, response.headers.get_all("proxy-authenticate")[0]


def credentials(challenge: str, password: str = "s3cret", nc: int = 1, uri: str = "sip:alice@tomt.local") -> str:
    return authorization(challenge, "SUBSCRIBE", uri, "carol", password, "c0ffee", nc)


def test_untrusted_source_on_challenge_listener_gets_407() -> None:
    px = make_proxy(Trust(peers=(lync_peer(),), digest=our_digest()))
    response, _ = challenge_of(px)
    offered = [parse_auth(v) for v in response.headers.get_all("proxy-authenticate")]
    assert offered
    for scheme, params in offered:
        assert scheme == "digest"
        assert params["realm"] == REALM
        assert params["qop"] == "auth"
        assert params["nonce"]
    assert [p["algorithm"] for _, p in offered] == ["SHA-256", "MD5"]


def test_resent_with_right_credentials_forwarded_without_ours() -> None:
    px = make_proxy(Trust(peers=(lync_peer(),), digest=our_digest()))
    _, challenge = challenge_of(px)
    theirs = 'Digest username="x", realm="cups.tomt.local", nonce="n", uri="sip:alice@tomt.local", response="0"'
    retry = request(
        branch="z9hG4bKlync2",
        cseq=2,
        headers=(f"Proxy-Authorization: {credentials(challenge)}", f"Proxy-Authorization: {theirs}"),
    )
    outputs = send(px, retry, STRANGER, 1.0)
    assert replies(outputs, STRANGER) == []
    _, fwd = forwarded(outputs)
    assert fwd.cseq == (2, "SUBSCRIBE")
    assert fwd.headers.get_all("proxy-authorization") == [theirs]  # §22.3: another realm's stays


def test_resent_with_wrong_password_is_403() -> None:
    px = make_proxy(Trust(peers=(lync_peer(),), digest=our_digest()))
    _, challenge = challenge_of(px)
    retry = request(branch="z9hG4bKlync2", cseq=2, headers=(f"Proxy-Authorization: {credentials(challenge, 'guess')}",))
    response = only_reply(send(px, retry, STRANGER, 1.0), STRANGER)
    assert response.status == 403
    assert "proxy-authenticate" not in response.headers


def test_replayed_nonce_count_is_403() -> None:
    px = make_proxy(Trust(peers=(lync_peer(),), digest=our_digest()))
    _, challenge = challenge_of(px)
    header = f"Proxy-Authorization: {credentials(challenge)}"
    forwarded(send(px, request(branch="z9hG4bKlync2", cseq=2, headers=(header,)), STRANGER, 1.0))
    response = only_reply(send(px, request(branch="z9hG4bKlync3", cseq=3, headers=(header,)), STRANGER, 2.0), STRANGER)
    assert response.status == 403
    assert "replay" in response.reason
    nc2 = f"Proxy-Authorization: {credentials(challenge, nc=2)}"
    forwarded(send(px, request(branch="z9hG4bKlync4", cseq=4, headers=(nc2,)), STRANGER, 3.0))


def test_expired_nonce_gets_407_with_stale() -> None:
    px = make_proxy(Trust(peers=(lync_peer(),), digest=our_digest()))
    _, challenge = challenge_of(px)
    retry = request(branch="z9hG4bKlync2", cseq=2, headers=(f"Proxy-Authorization: {credentials(challenge)}",))
    response = only_reply(send(px, retry, STRANGER, 1000.0), STRANGER)
    assert response.status == 407
    assert all(parse_auth(v)[1]["stale"] == "true" for v in response.headers.get_all("proxy-authenticate"))


def test_credentials_for_another_request_uri_not_accepted() -> None:
    """RFC 7616 §3.4.6 / RFC 2617 §3.2.2.5: the digest "uri" must be the Request-URI it came with."""
    px = make_proxy(Trust(peers=(lync_peer(),), digest=our_digest()))
    _, challenge = challenge_of(px)
    header = f"Proxy-Authorization: {credentials(challenge, uri='sip:alice@tomt.local')}"
    retry = request(branch="z9hG4bKlync2", cseq=2, uri="sip:carol@tomt.local", headers=(header,))
    response = only_reply(send(px, retry, STRANGER, 1.0), STRANGER)
    assert response.status in (400, 403)


def test_incoming_exempt_source_never_challenged() -> None:
    trust = Trust(peers=(lync_peer(),), incoming=(parse_allow("Allow from 127.0.0.3"),), digest=our_digest())
    px = make_proxy(trust)
    for n, method in enumerate(("SUBSCRIBE", "MESSAGE", "INVITE")):
        outputs = send(px, request(method, branch=f"z9hG4bKex{n}"), EXEMPT)
        assert all(r.status not in (401, 407) for r in replies(outputs, EXEMPT))
        forwarded(outputs)


def test_method_scoped_exemption_challenges_other_methods() -> None:
    entry = parse_allow("Allow from 127.0.0.3", frozenset({"SUBSCRIBE"}))
    px = make_proxy(Trust(peers=(lync_peer(),), incoming=(entry,), digest=our_digest()))
    forwarded(send(px, request("SUBSCRIBE"), EXEMPT))
    assert only_reply(send(px, request("MESSAGE", branch="z9hG4bKm"), EXEMPT), EXEMPT).status == 407


def test_refuse_listener_is_403() -> None:
    px = make_proxy(Trust(peers=(lync_peer(),), digest=our_digest()), untrusted="refuse")
    response = only_reply(send(px, request(), STRANGER), STRANGER)
    assert response.status == 403
    assert "proxy-authenticate" not in response.headers


def test_admit_listener_forwards_strangers() -> None:
    px = make_proxy(Trust(peers=(lync_peer(),)), untrusted="admit")
    forwarded(send(px, request(), STRANGER))


def test_shielded_stranger_on_challenge_listener_gets_403_not_407() -> None:
    trust = Trust(peers=(lync_peer(),), outgoing=(parse_allow("Allow from 192.0.2.0/24"),), digest=our_digest())
    assert only_reply(send(make_proxy(trust), request(), STRANGER), STRANGER).status == 403


# -- a next hop's challenge (trust rule 4) -------------------------------------------------------------


def hop_server() -> DigestServer:
    """The next hop's realm (Kamailio-style MD5); nonces depend only on secret and time, so each test
    gets a fresh nonce-count table and the same challenge."""
    users = {"sipfed": {alg: ha1(alg, "sipfed", HOP_REALM, "fedpw") for alg in ALGORITHMS}}
    return DigestServer(HOP_REALM, b"cups-secret", users, algorithms=("MD5",))


HOP_CHALLENGE = hop_server().challenges(0.0)[0]


def shielding_proxy(*, answers_digest: bool = False, with_credentials: bool = True) -> Proxy:
    creds = (Credential("cisco", "sipfed", "fedpw"),) if with_credentials else ()
    return make_proxy(Trust(peers=(lync_peer(answers_digest=answers_digest),), credentials=creds))


def challenged(px: Proxy, status: int = 407, data: bytes | None = None) -> tuple[bytes, list[Output]]:
    """Send a SUBSCRIBE from Lync and have the next hop answer with ``status``; return both."""
    hop, _ = forwarded(send(px, data or request()))
    header = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    reason = "Proxy Authentication Required" if status == 407 else "Unauthorized"
    return hop.data, send(px, answer(hop.data, status, reason, headers=(f"{header}: {HOP_CHALLENGE}",)), CISCO_OUT)


def test_challenge_answered_with_route_credentials_and_new_cseq() -> None:
    px = shielding_proxy()
    first, outputs = challenged(px)
    assert replies(outputs, LYNC_IN) == []  # nothing upstream yet
    hop, retry = forwarded(outputs)
    original = parse_message(first)
    assert isinstance(original, Request)
    assert (hop.hop.host, hop.hop.port) == ("127.0.0.2", 5062)
    assert retry.top_via.branch != original.top_via.branch
    assert retry.headers.get_all("via")[1:] == original.headers.get_all("via")[1:]
    assert retry.cseq == (2, "SUBSCRIBE")  # RFC 3261 §22.2: a new request, next CSeq
    assert retry.call_id == original.call_id
    assert retry.from_.param("tag") == "from1"
    [value] = retry.headers.get_all("proxy-authorization")
    assert "authorization" not in retry.headers
    assert hop_server().verify("SUBSCRIBE", value, 1.0) == (Verdict.OK, "sipfed")

    response = replies(send(px, answer(hop.data, 200, "OK"), CISCO_OUT, 1.0), LYNC_IN)
    assert [(r.status, r.cseq) for r in response] == [(200, (1, "SUBSCRIBE"))]  # the sender's own CSeq
    assert [v.branch for v in response[0].vias] == ["z9hG4bKlync1"]

    again = request(branch="z9hG4bKlync2", cseq=2, to_tag="cup1")
    hop2, in_dialog = forwarded(send(px, again, LYNC_IN, 2.0))
    assert in_dialog.cseq == (3, "SUBSCRIBE")  # shifted by the one sipfed spent
    assert "proxy-authorization" not in in_dialog.headers
    [ok] = replies(send(px, answer(hop2.data, 200, "OK"), CISCO_OUT, 2.5), LYNC_IN)
    assert ok.cseq == (2, "SUBSCRIBE")


def test_other_dialogs_not_renumbered() -> None:
    px = shielding_proxy()
    challenged(px)
    other = request(branch="z9hG4bKother", cseq=7).replace(b"call1@tomt.it", b"call2@tomt.it")
    assert forwarded(send(px, other, LYNC_IN, 1.0))[1].cseq == (7, "SUBSCRIBE")


def test_challenge_without_credentials_is_403_upstream() -> None:
    px = shielding_proxy(with_credentials=False)
    _, outputs = challenged(px)
    [response] = replies(outputs, LYNC_IN)
    assert hops(outputs) == []
    assert response.status == 403
    assert "next hop demanded digest" in response.reason
    assert "proxy-authenticate" not in response.headers
    assert "www-authenticate" not in response.headers


def test_second_challenge_to_our_retry_is_403_not_a_loop() -> None:
    px = shielding_proxy()
    _, outputs = challenged(px)
    hop, _ = forwarded(outputs)
    outputs = send(
        px,
        answer(
            hop.data,
            407,
            "Proxy Authentication Required",
            headers=(f"Proxy-Authenticate: {hop_server().challenges(1.0)[0]}",),
        ),
        CISCO_OUT,
        1.0,
    )
    assert hops(outputs) == []
    [response] = replies(outputs, LYNC_IN)
    assert response.status == 403
    assert "proxy-authenticate" not in response.headers
    assert response.cseq == (1, "SUBSCRIBE")


def test_peer_that_answers_digest_gets_the_407_unchanged() -> None:
    px = shielding_proxy(answers_digest=True)
    _, outputs = challenged(px)
    assert hops(outputs) == []
    [response] = replies(outputs, LYNC_IN)
    assert (response.status, response.reason) == (407, "Proxy Authentication Required")
    assert response.headers.get_all("proxy-authenticate") == [HOP_CHALLENGE]
    assert response.cseq == (1, "SUBSCRIBE")


def test_401_answered_with_authorization_header() -> None:
    px = shielding_proxy()
    _, outputs = challenged(px, 401)
    assert replies(outputs, LYNC_IN) == []
    _, retry = forwarded(outputs)
    assert "proxy-authorization" not in retry.headers
    [value] = retry.headers.get_all("authorization")
    assert hop_server().verify("SUBSCRIBE", value, 1.0)[0] is Verdict.OK


def test_credential_for_another_realm_not_used() -> None:
    trust = Trust(peers=(lync_peer(),), credentials=(Credential("cisco", "sipfed", "fedpw", "elsewhere"),))
    _, outputs = challenged(make_proxy(trust))
    assert [r.status for r in replies(outputs, LYNC_IN)] == [403]


def test_outgoing_acl_shields_a_peer_that_could_answer() -> None:
    trust = Trust(peers=(lync_peer(answers_digest=True),), outgoing=(parse_allow("Allow from 127.0.0.3"),))
    _, outputs = challenged(make_proxy(trust))
    assert [r.status for r in replies(outputs, LYNC_IN)] == [403]


def test_invite_challenge_acked_and_answered() -> None:
    px = shielding_proxy()
    _, outputs = challenged(px, data=request("INVITE"))
    sends = [parse_message(s.data) for s in hops(outputs)]
    assert [(m.method, m.cseq) for m in sends if isinstance(m, Request)] == [
        ("ACK", (1, "ACK")),
        ("INVITE", (2, "INVITE")),
    ]
    assert [r.status for r in replies(outputs, LYNC_IN)] == []


def test_flow_without_peer_binding_is_not_shielded_by_default() -> None:
    px = make_proxy(Trust(peers=(lync_peer(),)), untrusted="admit")
    unbound = replace(LYNC_IN, peer=None, remote=("192.0.2.7", 40001))
    hop, _ = forwarded(send(px, request(), unbound))
    outputs = send(
        px,
        answer(hop.data, 407, "Proxy Authentication Required", headers=(f"Proxy-Authenticate: {HOP_CHALLENGE}",)),
        CISCO_OUT,
    )
    assert [r.status for r in replies(outputs, unbound)] == [407]
