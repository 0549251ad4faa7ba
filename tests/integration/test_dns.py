"""RFC 3263 resolution against a real authoritative DNS server on loopback.

The server (tests/integration/dnsserver.py) is small and written with dnspython's zone and message APIs: it
binds UDP and TCP sockets on 127.0.0.1, answers authoritatively from zone text (NXDOMAIN and NODATA
with the zone's SOA, so negative TTLs are real), truncates UDP answers that do not fit, and counts
every question it gets — which is how the tests see what the cache saved. sipfed's side is
``routes.resolver.Resolver`` over ``DnspythonSource`` (dnspython's asyncio resolver); time is passed
by hand, so TTL expiry needs no sleeping.
"""

from __future__ import annotations

import asyncio
import random
import socket
import tomllib
from collections import Counter
from collections.abc import Iterator

import dns.message
import dns.rdatatype
import pytest

from routes import Health, StaticRoute, order, parse_routes
from routes.dns import DnsCache, ResolutionError
from routes.resolver import DnspythonSource, Resolver
from tests.integration.dnsserver import HOST, TinyAuthoritativeServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SOA = "@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.53\n"
BIG_TARGETS = 80
ZONES = {
    "tomt.it.": SOA
    + """
@ IN NAPTR 10 10 "s" "SIPS+D2T" "" _sips._tcp
@ IN NAPTR 20 10 "s" "SIP+D2U" "" _sip._udp
@ IN NAPTR 30 10 "u" "E2U+sip" "!^.*$!sip:info@tomt.it!" .
_sips._tcp IN SRV 10 60 5061 pool1
_sips._tcp IN SRV 10 40 5061 pool2
_sips._tcp IN SRV 20 0 5071 backup
_sip._udp IN SRV 0 0 5060 pool1
pool1 IN A 127.0.0.11
pool1 IN A 127.0.0.12
pool2 IN A 127.0.0.13
backup IN A 127.0.0.14
""",
    "tomt.local.": SOA
    + """
_sipfederationtls._tcp 600 IN SRV 0 0 5062 cups
cups 600 IN A 127.0.0.2
""",
    "example.": SOA
    + "plain IN A 127.0.0.3\n"
    + "".join(
        f"_sips._tcp.big IN SRV 0 1 5061 host{i:02d}.big\nhost{i:02d}.big IN A 127.0.1.{i + 1}\n"
        for i in range(BIG_TARGETS)
    ),
}


@pytest.fixture(scope="module")
def server() -> Iterator[TinyAuthoritativeServer]:
    running = TinyAuthoritativeServer(ZONES)
    yield running
    running.close()


def resolver_for(server: TinyAuthoritativeServer, negative_seconds: float = 30.0) -> Resolver:
    source = DnspythonSource([HOST], server.port, timeout_seconds=2.0, lifetime_seconds=4.0)
    return Resolver(source, DnsCache(negative_seconds=negative_seconds))


def route(toml: str) -> StaticRoute:
    routes, problems = parse_routes(tomllib.loads(toml)["routes"])
    assert problems == []
    return routes[0]


TOMT_IT = route('[[routes]]\nmatch_uri = "tomt.it"\nresolve = "tomt.it"\ndown_seconds = 20')


def test_naptr_srv_a_gives_the_rfc_2782_order(server: TinyAuthoritativeServer) -> None:
    candidates = asyncio.run(resolver_for(server).candidates_for(TOMT_IT, 0.0))
    assert {(c.host, c.port, c.transport, c.tls_name) for c in candidates} == {
        ("127.0.0.11", 5061, "tls", "tomt.it"),
        ("127.0.0.12", 5061, "tls", "tomt.it"),
        ("127.0.0.13", 5061, "tls", "tomt.it"),
        ("127.0.0.14", 5071, "tls", "tomt.it"),
    }
    firsts: Counter[str] = Counter()
    rng = random.Random(2782)
    for _ in range(2000):
        hosts = [c.host for c in order(candidates, Health(), 0.0, rng)]
        # pool1's two addresses stay together (in the order DNS gave them); backup (priority 20) is last
        assert hosts[3] == "127.0.0.14"
        assert hosts.index("127.0.0.13") in (0, 2)
        firsts["pool2" if hosts[0] == "127.0.0.13" else "pool1"] += 1
    assert abs(firsts["pool1"] / 2000 - 61 / 101) < 0.05  # RFC 2782: pool1 weight 60 of 100
    assert server.count("_sip._udp.tomt.it", "SRV") == 0  # a TLS-only route never follows SIP+D2U


def test_a_failed_candidate_goes_last_until_its_time_is_up(server: TinyAuthoritativeServer) -> None:
    candidates = asyncio.run(resolver_for(server).candidates_for(TOMT_IT, 0.0))
    health = Health()
    pool2 = next(c for c in candidates if c.host == "127.0.0.13")
    health.mark_down(pool2, 100.0, TOMT_IT.down_seconds, "connect_refused")
    rng = random.Random(1)
    for _ in range(50):
        assert order(candidates, health, 119.0, rng)[-1] == pool2
    assert any(order(candidates, health, 120.0, rng)[0] == pool2 for _ in range(50))


def test_second_lookup_comes_from_the_cache_until_the_ttl(server: TinyAuthoritativeServer) -> None:
    resolver = resolver_for(server)
    local = route('[[routes]]\nmatch_uri = "tomt.local"\nresolve = "tomt.local"')
    before = server.total()
    first = asyncio.run(resolver.candidates_for(local, 1000.0))
    assert [(c.host, c.port, c.tls_name, c.source) for c in first] == [
        ("127.0.0.2", 5062, "tomt.local", "SRV _sipfederationtls._tcp.tomt.local")
    ]
    asked = server.total() - before
    assert asked == resolver.queries_sent == 6  # NAPTR, three SRV names, A and AAAA of cups
    assert asyncio.run(resolver.candidates_for(local, 1029.0)) == first
    assert server.total() - before == asked  # nothing new reached the server
    assert resolver.cached_candidates(local, 1029.0) == first
    # the negative answers (no NAPTR, no _sips._tcp, no _sip._tls, no AAAA) live min(SOA 60 s, 30 s)
    asyncio.run(resolver.candidates_for(local, 1030.0))
    assert server.total() - before == asked + 4
    # the SRV and A records live their 600 s TTL
    srv_before = server.count("_sipfederationtls._tcp.tomt.local", "SRV")
    asyncio.run(resolver.candidates_for(local, 1599.0))
    assert server.count("_sipfederationtls._tcp.tomt.local", "SRV") == srv_before
    asyncio.run(resolver.candidates_for(local, 1600.0))
    assert server.count("_sipfederationtls._tcp.tomt.local", "SRV") == srv_before + 1


def test_nxdomain_is_cached_negatively_and_bounded(server: TinyAuthoritativeServer) -> None:
    resolver = resolver_for(server, negative_seconds=10.0)
    missing = route('[[routes]]\nmatch_uri = "gone.tomt.it"\nresolve = "gone.tomt.it"')
    for now in (0.0, 9.9):
        with pytest.raises(ResolutionError, match=r"no A/AAAA records for gone\.tomt\.it"):
            asyncio.run(resolver.candidates_for(missing, now))
    assert server.count("gone.tomt.it", "NAPTR") == 1
    assert server.count("_sips._tcp.gone.tomt.it", "SRV") == 1
    with pytest.raises(ResolutionError):
        asyncio.run(resolver.candidates_for(missing, 10.0))
    assert server.count("gone.tomt.it", "NAPTR") == 2


def test_no_srv_uses_the_domain_on_5061(server: TinyAuthoritativeServer) -> None:
    plain = route('[[routes]]\nmatch_uri = "plain.example"\nresolve = "plain.example"')
    candidates = asyncio.run(resolver_for(server).candidates_for(plain, 0.0))
    assert [(c.host, c.port, c.transport, c.tls_name) for c in candidates] == [
        ("127.0.0.3", 5061, "tls", "plain.example")
    ]


def test_target_names_for_certificates(server: TinyAuthoritativeServer) -> None:
    by_target = route('[[routes]]\nmatch_uri = "tomt.it"\nresolve = "tomt.it"\ntls_name_from = "target"')
    candidates = asyncio.run(resolver_for(server).candidates_for(by_target, 0.0))
    assert {c.host: c.tls_name for c in candidates} == {
        "127.0.0.11": "pool1.tomt.it",
        "127.0.0.12": "pool1.tomt.it",
        "127.0.0.13": "pool2.tomt.it",
        "127.0.0.14": "backup.tomt.it",
    }


def test_truncated_answer_is_asked_again_over_tcp(server: TinyAuthoritativeServer) -> None:
    big = route(
        '[[routes]]\nmatch_uri = "big.example"\nresolve = "big.example"\nnaptr = false\nsrv_services = ["_sips._tcp"]'
    )
    candidates = asyncio.run(resolver_for(server).candidates_for(big, 0.0))
    assert len(candidates) == BIG_TARGETS
    assert server.count("_sips._tcp.big.example", "SRV", "udp") == 1
    assert server.count("_sips._tcp.big.example", "SRV", "tcp") == 1


def test_concurrent_requests_share_the_questions(server: TinyAuthoritativeServer) -> None:
    resolver = resolver_for(server)
    pool = route('[[routes]]\nmatch_uri = "tomt.it"\nresolve = "tomt.it"\nnaptr = false')
    before = server.count("_sips._tcp.tomt.it", "SRV")

    async def many() -> None:
        results = await asyncio.gather(*(resolver.candidates_for(pool, 0.0) for _ in range(20)))
        assert all(r == results[0] for r in results)

    asyncio.run(many())
    assert server.count("_sips._tcp.tomt.it", "SRV") == before + 1


def questions_heard(sock: socket.socket) -> list[str]:
    """Every question that reached ``sock`` (a server that never answers), in order of arrival: 'NAME TYPE'."""
    sock.setblocking(False)
    heard = []
    while True:
        try:
            question = dns.message.from_wire(sock.recv(4096)).question[0]
        except BlockingIOError:
            return heard
        heard.append(f"{question.name.to_text(omit_final_dot=True)} {dns.rdatatype.to_text(question.rdtype)}")


def test_a_silent_server_fails_within_the_lifetime() -> None:
    """Timeout 0.3 s, lifetime 0.6 s: each question goes out at most three times (the lifetime's worth; with
    dnspython's default 5 s it would be six and more); the NAPTR first, then the SRV names in parallel."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((HOST, 0))
    try:
        source = DnspythonSource([HOST], silent.getsockname()[1], timeout_seconds=0.3, lifetime_seconds=0.6)
        resolver = Resolver(source)
        with pytest.raises(ResolutionError, match=r"failed \(no answer within 0\.6 s\)"):
            asyncio.run(resolver.candidates_for(TOMT_IT, 0.0))
        assert len(resolver.cache) == 0  # failures are not cached
        assert resolver.queries_sent == 4  # NAPTR and the three SRV names, each asked once
        heard = questions_heard(silent)
    finally:
        silent.close()
    srv = ["_sips._tcp.tomt.it SRV", "_sip._tls.tomt.it SRV", "_sipfederationtls._tcp.tomt.it SRV"]
    assert set(heard) == {"tomt.it NAPTR", *srv}, heard
    assert all(1 <= count <= 3 for count in Counter(heard).values()), heard
    first_srv = min(heard.index(name) for name in srv)
    assert first_srv > max(i for i, q in enumerate(heard) if q == "tomt.it NAPTR"), heard  # the NAPTR first
    assert sorted(heard[first_srv : first_srv + 3]) == sorted(srv), heard  # each SRV name before any again: parallel
