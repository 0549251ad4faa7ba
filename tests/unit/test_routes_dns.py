"""Weighted destinations and DNS routes, sans-IO: RFC 2782 order (seeded RNG), the health table with
time driven by hand, ``[[routes]]`` parsing of destinations/resolve, the DNS cache, and RFC 3263
selection from canned NAPTR/SRV/A answers."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from routes import Candidate, Health, RouteTable, StaticRoute, order, parse_routes, rfc2782_order
from routes.dns import (
    Answer,
    DnsCache,
    DnsFailure,
    LocatePolicy,
    Naptr,
    NoRecords,
    Query,
    Rdata,
    ResolutionError,
    Result,
    Srv,
    drive,
    from_cache,
    locate,
)
from routes.resolver import Resolver

DRAWS = 6000


def cand(host: str, priority: int = 0, weight: int = 0, **kw: Any) -> Candidate:
    fields: dict[str, Any] = {"port": 5061, "transport": "tls", "tls_name": host}
    fields.update(kw)
    return Candidate(host=host, priority=priority, weight=weight, **fields)


def first_picks(candidates: list[Candidate], draws: int = DRAWS, seed: int = 7) -> Counter[str]:
    rng = random.Random(seed)
    return Counter(rfc2782_order(candidates, rng)[0].host for _ in range(draws))


# -- RFC 2782 order --------------------------------------------------------------------------


def test_lower_priority_always_first() -> None:
    pool = [cand("b1", 20, 50), cand("a1", 10, 1), cand("b2", 20, 50), cand("a2", 10, 99), cand("c", 30)]
    rng = random.Random(1)
    for _ in range(500):
        hosts = [c.host for c in rfc2782_order(pool, rng)]
        assert set(hosts[:2]) == {"a1", "a2"}
        assert set(hosts[2:4]) == {"b1", "b2"}
        assert hosts[4] == "c"


def test_weights_share_first_attempts() -> None:
    """RFC 2782: a uniform draw in [0, 100] over running sums 10, 40, 100 gives 11/101, 30/101, 60/101."""
    picks = first_picks([cand("w10", 0, 10), cand("w30", 0, 30), cand("w60", 0, 60)])
    for host, expected in (("w10", 11 / 101), ("w30", 30 / 101), ("w60", 60 / 101)):
        assert abs(picks[host] / DRAWS - expected) < 0.025, picks


def test_weighted_order_is_a_permutation_and_second_place_follows_weights() -> None:
    pool = [cand("w10", 0, 10), cand("w30", 0, 30), cand("w60", 0, 60)]
    rng = random.Random(3)
    seconds: Counter[str] = Counter()
    for _ in range(DRAWS):
        ordered = rfc2782_order(pool, rng)
        assert sorted(c.host for c in ordered) == ["w10", "w30", "w60"]
        seconds[ordered[1].host] += 1
    # the draw is repeated over what is left: P(w10 second) = 30/101 * 11/71 + 60/101 * 11/41
    assert abs(seconds["w10"] / DRAWS - (30 / 101 * 11 / 71 + 60 / 101 * 11 / 41)) < 0.025, seconds


def test_zero_weight_is_chosen_first_only_on_a_zero_draw() -> None:
    """RFC 2782: weight-0 entries are placed first, so they win only when the draw in [0, 20] is 0;
    when every weight is 0 ("no server selection to do"), the "any order" is a random one."""
    picks = first_picks([cand("zero", 0, 0), cand("a", 0, 10), cand("b", 0, 10)])
    assert abs(picks["zero"] / DRAWS - 1 / 21) < 0.015, picks
    evenly = first_picks([cand("a"), cand("b"), cand("c")])
    assert all(abs(evenly[host] / DRAWS - 1 / 3) < 0.03 for host in "abc"), evenly


def test_same_seed_same_order() -> None:
    pool = [cand(f"h{i}", i % 2, 10 + i) for i in range(8)]
    assert rfc2782_order(pool, random.Random(42)) == rfc2782_order(pool, random.Random(42))


def test_addresses_of_one_srv_target_stay_together() -> None:
    """RFC 3263 §4.3: a target's addresses are tried in turn; weight belongs to the SRV record."""
    pool = [
        cand("10.0.0.1", 0, 50, target="pool1"),
        cand("10.0.0.2", 0, 50, target="pool1"),
        cand("10.0.0.3", 0, 50, target="pool2"),
    ]
    rng = random.Random(9)
    orders = Counter(tuple(c.host for c in rfc2782_order(pool, rng)) for _ in range(2000))
    assert set(orders) == {("10.0.0.1", "10.0.0.2", "10.0.0.3"), ("10.0.0.3", "10.0.0.1", "10.0.0.2")}
    assert abs(orders["10.0.0.1", "10.0.0.2", "10.0.0.3"] / 2000 - 0.5) < 0.05  # not 2/3: one SRV record


def test_rank_orders_services_before_priority() -> None:
    pool = [cand("second-service", 0, 0, rank=1), cand("first-service-backup", 50, 0, rank=0)]
    assert [c.host for c in rfc2782_order(pool, random.Random(0))] == ["first-service-backup", "second-service"]


# -- health ----------------------------------------------------------------------------------


def test_health_marks_down_until_the_time_given() -> None:
    health = Health()
    hop = cand("a")
    assert health.is_up(hop, 100.0)
    health.mark_down(hop, 100.0, 30.0, "connect_refused")
    assert not health.is_up(hop, 100.0)
    assert not health.is_up(hop, 129.9)
    assert health.reason(hop) == "connect_refused"
    assert health.down_until(hop, 110.0) == 130.0
    assert health.is_up(hop, 130.0)
    assert health.reason(hop) == ""  # expired marks are forgotten
    health.mark_down(hop, 200.0, 30.0)
    health.mark_up(hop)  # a success clears the mark at once
    assert health.is_up(hop, 201.0)


def test_health_is_per_endpoint_not_per_dns_answer() -> None:
    health = Health()
    health.mark_down(cand("10.0.0.1", 10, 60, source="SRV _sips._tcp.tomt.it"), 0.0, 30.0)
    assert not health.is_up(cand("10.0.0.1", 20, 5, source="SRV _sip._tls.tomt.it"), 1.0)
    assert health.is_up(cand("10.0.0.1", port=5062), 1.0)
    assert health.is_up(cand("10.0.0.1", tls_name="other.tomt.it"), 1.0)


def test_order_puts_down_candidates_last() -> None:
    health = Health()
    a, b, c = cand("a", 10), cand("b", 20), cand("c", 30)
    health.mark_down(a, 0.0, 30.0)
    rng = random.Random(0)
    assert [x.host for x in order([a, b, c], health, 5.0, rng)] == ["b", "c", "a"]
    assert [x.host for x in order([a, b, c], health, 30.0, rng)] == ["a", "b", "c"]
    # when all are down they are still tried, the one whose mark ends first leading
    health.mark_down(a, 0.0, 60.0)
    health.mark_down(b, 0.0, 10.0)
    health.mark_down(c, 0.0, 30.0)
    assert [x.host for x in order([a, b, c], health, 1.0, random.Random(0))] == ["b", "c", "a"]


def test_health_table_is_bounded() -> None:
    health = Health(max_entries=2)
    health.mark_down(cand("a"), 0.0, 50.0)
    health.mark_down(cand("b"), 0.0, 10.0)
    health.mark_down(cand("c"), 0.0, 30.0)
    assert set(health.down(1.0)) == {("tls", "a", 5061, "a"), ("tls", "c", 5061, "c")}
    assert list(health.down(40.0)) == [("tls", "a", 5061, "a")]


# -- [[routes]]: destinations and resolve ----------------------------------------------------


def test_destinations_with_route_level_defaults() -> None:
    routes, problems = parse_routes(
        [
            {
                "match_uri": "tomt.it",
                "tls_name": "pool.tomt.it",
                "port": 5062,
                "down_seconds": 12.5,
                "destinations": [
                    {"host": "Lync02.tomt.it.", "priority": 20},
                    {"host": "lync01.tomt.it", "priority": 10, "weight": 60},
                    {
                        "host": "10.1.1.9",
                        "priority": 10,
                        "weight": 40,
                        "port": 5061,
                        "transport": "tcp",
                        "tls_name": "x",
                    },
                ],
            }
        ]
    )
    assert problems == []
    (route,) = routes
    assert [(c.host, c.port, c.transport, c.tls_name, c.priority, c.weight) for c in route.destinations] == [
        ("lync02.tomt.it", 5062, "tls", "pool.tomt.it", 20, 0),
        ("lync01.tomt.it", 5062, "tls", "pool.tomt.it", 10, 60),
        ("10.1.1.9", 5061, "tcp", "x", 10, 40),
    ]
    # the one-next-hop fields the proxy reads name the first destination of the lowest priority
    assert (route.destination, route.port, route.transport, route.tls_name) == (
        "lync01.tomt.it",
        5062,
        "tls",
        "pool.tomt.it",
    )
    assert route.static_candidates == route.destinations
    assert route.down_seconds == 12.5
    assert route.resolve is None
    routes, problems = parse_routes(
        [{"match_uri": "tomt.it", "destinations": [{"host": "a.tomt.it"}, {"host": "b.tomt.it", "transport": "udp"}]}]
    )
    assert problems == []  # without route-level defaults: each transport's port, the host's name, weight 0
    assert [(c.port, c.transport, c.tls_name, c.weight) for c in routes[0].destinations] == [
        (5061, "tls", "a.tomt.it", 0),
        (5060, "udp", "b.tomt.it", 0),
    ]


def test_single_destination_is_the_one_candidate_case() -> None:
    routes, problems = parse_routes([{"match_uri": "tomt.local", "destination": "cups.tomt.local", "port": 5062}])
    assert problems == []
    (only,) = routes[0].static_candidates
    assert (only.host, only.port, only.transport, only.tls_name, only.source) == (
        "cups.tomt.local",
        5062,
        "tls",
        "cups.tomt.local",
        "static",
    )
    assert routes[0].down_seconds == 30.0
    built = StaticRoute("r", "tomt.local", "10.0.0.1", 5062, "tcp", "10.0.0.1")  # as the proxy's tests build it
    assert built.static_candidates == (Candidate("10.0.0.1", 5062, "tcp", "10.0.0.1"),)


def test_resolve_defaults() -> None:
    routes, problems = parse_routes([{"match_uri": "tomt.it", "resolve": "TOMT.it."}])
    assert problems == []
    (route,) = routes
    assert route.resolve == "tomt.it"
    assert route.srv_services == ("_sips._tcp", "_sip._tls", "_sipfederationtls._tcp")
    assert (route.naptr, route.tls_name_from, route.accepted_transports) == (True, "domain", ("tls",))
    assert (route.destination, route.port, route.transport, route.tls_name) == ("tomt.it", 5061, "tls", "tomt.it")
    assert route.static_candidates == ()
    routes, problems = parse_routes(
        [
            {
                "match_uri": "tomt.it",
                "resolve": "tomt.it",
                "transports": ["tls", "TCP"],
                "naptr": False,
                "tls_name_from": "target",
            }
        ]
    )
    assert problems == []
    route = routes[0]
    assert route.srv_services[-1] == "_sip._tcp"  # more transports add their SRV names
    assert (route.transports, route.naptr, route.tls_name_from) == (("tls", "tcp"), False, "target")


def entry(**kw: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"match_uri": "tomt.it", "resolve": "tomt.it"}
    raw.update(kw)
    return {k: v for k, v in raw.items() if v is not None}


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (entry(destination="a.tomt.it"), "routes[0]: destination and resolve cannot be combined"),
        (entry(resolve=None, destination="a", destinations=[{"host": "b"}]), "routes[0]: destination and destinations"),
        (entry(resolve=None), "routes[0].destination: missing (required: one of destination, destinations or resolve)"),
        (entry(resolve=None, destinations=[]), "routes[0].destinations: must be a non-empty list"),
        (entry(resolve=None, destinations="a.tomt.it"), "routes[0].destinations: must be a non-empty list"),
        (entry(resolve=None, destinations=["a.tomt.it"]), "routes[0].destinations[0]: must be a table"),
        (entry(resolve=None, destinations=[{"port": 5061}]), "routes[0].destinations[0].host: missing"),
        (
            entry(resolve=None, destinations=[{"host": "a", "priority": 70000}]),
            "routes[0].destinations[0].priority: 70000",
        ),
        (entry(resolve=None, destinations=[{"host": "a", "weight": -1}]), "routes[0].destinations[0].weight: -1"),
        (entry(resolve=None, destinations=[{"host": "a", "port": 0}]), "routes[0].destinations[0].port: 0"),
        (entry(resolve=None, destinations=[{"host": "a", "prio": 1}]), "routes[0].destinations[0].prio: unknown key"),
        (entry(resolve=None, destinations=[{"host": "a b"}]), "routes[0].destinations[0].host: 'a b' is not"),
        (entry(resolve=None, destinations=[{"host": "a"}, {"host": "A"}]), "routes[0].destinations[1]: tls:a:5061 is"),
        (
            entry(resolve=None, destinations=[{"host": "a"}], naptr=False),
            "routes[0].naptr: applies only to a route with",
        ),
        (entry(resolve=None, destination="a", srv_services=[]), "routes[0].srv_services: applies only"),
        (entry(resolve="10.0.0.1"), "routes[0].resolve: '10.0.0.1' is not a domain name"),
        (entry(resolve="bad domain"), "routes[0].resolve: 'bad domain' is not a domain name"),
        (entry(port=5061), "routes[0].port: does not apply with resolve"),
        (entry(srv_services=["sips.tcp"]), "routes[0].srv_services[0]: 'sips.tcp' is not an SRV service name"),
        (entry(srv_services=["_sips._sctp"]), "routes[0].srv_services[0]: '_sips._sctp'"),
        (entry(srv_services=["_sips._tcp", "_SIPS._tcp"]), "routes[0].srv_services[1]: '_SIPS._tcp' is listed twice"),
        (entry(srv_services=["_sip._udp"]), "routes[0].srv_services[0]: '_sip._udp' is a udp service, but this route"),
        (entry(srv_services="_sips._tcp"), "routes[0].srv_services: must be a list"),
        (entry(naptr="yes"), "routes[0].naptr: 'yes' must be true or false"),
        (entry(tls_name_from="cert"), "routes[0].tls_name_from: 'cert' must be one of domain, target"),
        (entry(tls_name_from="target", tls_name="x.tomt.it"), "routes[0].tls_name: a fixed certificate name"),
        (entry(transports=[]), "routes[0].transports: must be a non-empty list"),
        (entry(transports=["tls", "sctp"]), "routes[0].transports[1]: 'sctp' must be one of"),
        (entry(transports=["tls", "tls"]), "routes[0].transports[1]: 'tls' is listed twice"),
        (entry(transports=["tls"], transport="tls"), "routes[0].transport: give transport or transports, not both"),
        (entry(transport="sctp"), "routes[0].transport: 'sctp' must be one of"),
        (entry(down_seconds=0), "routes[0].down_seconds: 0 must be a number of seconds"),
        (entry(down_seconds="30"), "routes[0].down_seconds: '30' must be"),
        (entry(down_seconds=True), "routes[0].down_seconds: True must be"),
        (entry(down_seconds=86401), "routes[0].down_seconds: 86401 must be"),
    ],
)
def test_route_problems_name_their_key(raw: dict[str, Any], path: str) -> None:
    routes, problems = parse_routes([raw])
    assert routes == []
    assert len(problems) == 1, problems
    assert problems[0].startswith(path), problems


def test_every_problem_at_once() -> None:
    raw = [
        {"match_uri": "a.example", "destinations": [{"host": "x", "priority": -1}, {"weight": 1, "colour": "red"}]},
        {"match_uri": "b.example", "resolve": "b.example", "naptr": 1, "srv_services": ["x"], "down_seconds": -1},
        {"match_uri": "c.example", "resolve": "c.example", "srv_services": ["_sip._tcp"]},
    ]
    _, problems = parse_routes(raw)
    keys = [p.split(":")[0] for p in problems]
    assert keys == [
        "routes[0].destinations[0].priority",
        "routes[0].destinations[1].colour",
        "routes[0].destinations[1].host",
        "routes[1].srv_services[0]",
        "routes[1].naptr",
        "routes[1].down_seconds",
        "routes[2].srv_services[0]",
    ]


def test_candidate_for_host_finds_every_pool_member() -> None:
    routes, _ = parse_routes(
        [
            {
                "match_uri": "tomt.it",
                "destinations": [
                    {"host": "lync01.tomt.it", "priority": 1},
                    {"host": "lync02.tomt.it", "port": 5071, "tls_name": "p", "priority": 2},
                ],
            }
        ]
    )
    table = RouteTable(routes)
    found = table.candidate_for_host("LYNC02.tomt.it.")
    assert found is not None
    assert (found[0].name, found[1].port, found[1].tls_name) == ("tomt.it", 5071, "p")
    assert table.candidate_for_host("lync02.tomt.it", 5061) is None
    assert table.by_destination("lync01.tomt.it") is routes[0]


# -- DNS cache -------------------------------------------------------------------------------

Q = Query("_sips._tcp.tomt.it", "SRV")


def test_answers_live_for_their_ttl() -> None:
    cache = DnsCache()
    cache.put(Answer(Q, (Srv(0, 0, 5061, "a.tomt.it"),), 60), 100.0)
    assert isinstance(cache.get(Q, 159.9), Answer)
    assert cache.get(Q, 160.0) is None
    assert len(cache) == 0
    capped = DnsCache(max_ttl_seconds=300)
    capped.put(Answer(Q, (), 86400), 0.0)
    assert (capped.get(Q, 299.0) is not None, capped.get(Q, 300.0)) == (True, None)
    capped.put(Answer(Q, (), 0), 0.0)  # TTL 0: use once, never cache
    assert capped.get(Q, 0.0) is None


@pytest.mark.parametrize(("soa_ttl", "seconds"), [(3600, 30.0), (None, 30.0), (5, 5.0), (0, 0.0)])
def test_negative_answers_are_cached_bounded(soa_ttl: int | None, seconds: float) -> None:
    cache = DnsCache(negative_seconds=30.0)
    cache.put(NoRecords(Q, nxdomain=True, ttl_seconds=soa_ttl), 10.0)
    if seconds:
        assert isinstance(cache.get(Q, 10.0 + seconds - 0.01), NoRecords)
    assert cache.get(Q, 10.0 + seconds) is None


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = DnsCache(max_entries=2)
    a, b, c = (Query(f"{n}.tomt.it", "A") for n in "abc")
    cache.put(Answer(a, ("10.0.0.1",), 60), 0.0)
    cache.put(Answer(b, ("10.0.0.2",), 60), 0.0)
    assert cache.get(a, 1.0) is not None  # a is now the most recently used
    cache.put(Answer(c, ("10.0.0.3",), 60), 1.0)
    assert (cache.get(a, 2.0) is not None, cache.get(b, 2.0), cache.get(c, 2.0) is not None) == (True, None, True)


# -- RFC 3263 from canned answers ------------------------------------------------------------


class Zone:
    """Canned DNS: (name, type) -> records with a TTL; other names are NXDOMAIN, listed failures time out."""

    def __init__(
        self,
        records: dict[tuple[str, str], tuple[Rdata, ...]],
        ttl: int = 300,
        failing: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.records = records
        self.ttl = ttl
        self.failing = set(failing)
        self.names = {name for name, _ in records}
        self.asked: list[Query] = []
        self.batches: list[tuple[Query, ...]] = []

    def result(self, query: Query) -> Result:
        self.asked.append(query)
        key = (query.name, query.rdtype)
        if key in self.failing:
            return DnsFailure(query, "no answer within 2 s")
        if key in self.records:
            return Answer(query, self.records[key], self.ttl)
        return NoRecords(query, nxdomain=query.name not in self.names, ttl_seconds=60)

    async def query(self, query: Query) -> Answer:
        """The ``DnsSource`` protocol, for ``Resolver``."""
        await asyncio.sleep(0)
        result = self.result(query)
        if isinstance(result, Answer):
            return result
        raise result

    def locate(self, domain: str = "tomt.it", **kw: Any) -> list[Candidate]:
        policy = LocatePolicy(
            **{
                "transports": ("tls",),
                "srv_services": ("_sips._tcp", "_sip._tls", "_sipfederationtls._tcp"),
                "tls_name": domain,
                **kw,
            }
        )
        plan = locate(domain, policy)
        results: Any = None  # the first send(None) starts the generator
        try:
            while True:
                self.batches.append(plan.send(results))
                results = {q: self.result(q) for q in self.batches[-1]}
        except StopIteration as done:
            found: list[Candidate] = done.value
            return found


POOL: dict[tuple[str, str], tuple[Rdata, ...]] = {
    ("tomt.it", "NAPTR"): (
        Naptr(20, 10, "S", "SIP+D2U", "_sip._udp.tomt.it"),
        Naptr(10, 10, "s", "SIPS+D2T", "_sips._tcp.tomt.it"),
        Naptr(5, 10, "u", "E2U+sip", "!^.*$!sip:info@tomt.it!"),
    ),
    ("_sips._tcp.tomt.it", "SRV"): (
        Srv(10, 60, 5061, "pool1.tomt.it"),
        Srv(20, 0, 5071, "backup.tomt.it"),
        Srv(10, 40, 5061, "pool2.tomt.it"),
    ),
    ("_sip._udp.tomt.it", "SRV"): (Srv(0, 0, 5060, "pool1.tomt.it"),),
    ("pool1.tomt.it", "A"): ("127.0.0.11", "127.0.0.12"),
    ("pool1.tomt.it", "AAAA"): ("::1",),
    ("pool2.tomt.it", "A"): ("127.0.0.13",),
    ("backup.tomt.it", "A"): ("127.0.0.14",),
}


def test_naptr_srv_a_in_three_rounds() -> None:
    zone = Zone(POOL)
    found = zone.locate()
    assert [(c.host, c.port, c.transport, c.tls_name, c.priority, c.weight, c.target) for c in found] == [
        ("127.0.0.11", 5061, "tls", "tomt.it", 10, 60, "pool1.tomt.it"),
        ("127.0.0.12", 5061, "tls", "tomt.it", 10, 60, "pool1.tomt.it"),
        ("::1", 5061, "tls", "tomt.it", 10, 60, "pool1.tomt.it"),
        ("127.0.0.14", 5071, "tls", "tomt.it", 20, 0, "backup.tomt.it"),
        ("127.0.0.13", 5061, "tls", "tomt.it", 10, 40, "pool2.tomt.it"),
    ]
    assert found[0].source == "NAPTR SIPS+D2T -> SRV _sips._tcp.tomt.it"
    # SIP+D2U is discarded (a TLS-only route), so only one SRV name; every address question in one round
    assert [[str(q) for q in batch] for batch in zone.batches[:2]] == [["NAPTR tomt.it"], ["SRV _sips._tcp.tomt.it"]]
    assert {str(q) for q in zone.batches[2]} == {
        f"{t} {n}.tomt.it" for t in ("A", "AAAA") for n in ("pool1", "pool2", "backup")
    }
    ordered = order(found, Health(), 0.0, random.Random(1))
    assert [c.host for c in ordered][-1] == "127.0.0.14"


def test_tls_is_preferred_over_the_naptr_order() -> None:
    records = dict(POOL)
    records[("tomt.it", "NAPTR")] = (
        Naptr(10, 10, "s", "SIP+D2U", "_sip._udp.tomt.it"),
        Naptr(20, 10, "s", "SIPS+D2T", "_sips._tcp.tomt.it"),
    )
    found = Zone(records).locate(transports=("tls", "udp"))
    ranks = [(c.rank, c.transport) for c in order(found, Health(), 0.0, random.Random(0))]
    assert ranks[0] == (0, "tls")
    assert ranks[-1] == (1, "udp")


def test_without_naptr_the_configured_srv_names_in_order() -> None:
    zone = Zone(
        {
            ("_sipfederationtls._tcp.tomt.it", "SRV"): (Srv(0, 0, 5061, "sip.tomt.it"),),
            ("_sip._tls.tomt.it", "SRV"): (Srv(0, 0, 5062, "old.tomt.it"),),
            ("sip.tomt.it", "A"): ("127.0.0.21",),
            ("old.tomt.it", "A"): ("127.0.0.22",),
        }
    )
    found = zone.locate()
    assert {str(q) for q in zone.batches[1]} == {
        "SRV _sips._tcp.tomt.it",
        "SRV _sip._tls.tomt.it",
        "SRV _sipfederationtls._tcp.tomt.it",
    }
    ordered = order(found, Health(), 0.0, random.Random(0))
    assert [(c.host, c.port, c.rank, c.source) for c in ordered] == [
        ("127.0.0.22", 5062, 1, "SRV _sip._tls.tomt.it"),
        ("127.0.0.21", 5061, 2, "SRV _sipfederationtls._tcp.tomt.it"),
    ]


def test_no_srv_falls_back_to_the_domain_on_the_default_port() -> None:
    """RFC 3263 §4.2: no SRV records: A/AAAA of the domain, port 5061 for TLS."""
    found = Zone({("plain.example", "A"): ("127.0.0.3",)}).locate("plain.example")
    assert [(c.host, c.port, c.transport, c.tls_name) for c in found] == [("127.0.0.3", 5061, "tls", "plain.example")]
    assert found[0].source == "A/AAAA plain.example (no SRV)"


@pytest.mark.parametrize(
    ("srv", "failing", "match"),
    [
        ((Srv(0, 0, 0, "."),), (), r"SRV _sips\._tcp\.tomt\.it says the service is not offered \(target '\.'\)"),
        ((), (("_sips._tcp.tomt.it", "SRV"),), r"SRV _sips\._tcp\.tomt\.it failed \(no answer within 2 s\)"),
    ],
)
def test_no_fallback_to_the_domain_after_srv_dot_or_failure(srv: tuple[Srv, ...], failing: Any, match: str) -> None:
    """RFC 2782: target "." is "decidedly not available"; a timeout is not "no SRV records" (§4.2)."""
    records: dict[tuple[str, str], tuple[Rdata, ...]] = {("tomt.it", "A"): ("127.0.0.9",)}
    if srv:
        records[("_sips._tcp.tomt.it", "SRV")] = srv
    zone = Zone(records, failing=failing)
    with pytest.raises(ResolutionError, match=match):
        zone.locate()
    assert Query("tomt.it", "A") not in zone.asked


def test_failed_or_disabled_naptr_falls_through_to_srv() -> None:
    zone = Zone(POOL, failing=(("tomt.it", "NAPTR"),))
    found = zone.locate()
    assert {c.host for c in found} == {"127.0.0.11", "127.0.0.12", "::1", "127.0.0.13", "127.0.0.14"}
    assert found[0].source == "SRV _sips._tcp.tomt.it"
    zone = Zone(POOL)
    zone.locate(naptr=False)
    assert all(q.rdtype != "NAPTR" for q in zone.asked)


def test_unreachable_targets_are_left_out() -> None:
    records = {k: v for k, v in POOL.items() if k[0] != "pool2.tomt.it"}
    found = Zone(records, failing=(("pool1.tomt.it", "AAAA"),)).locate()
    assert [c.host for c in found] == ["127.0.0.11", "127.0.0.12", "127.0.0.14"]
    with pytest.raises(ResolutionError, match="no A/AAAA records"):
        Zone({("_sips._tcp.tomt.it", "SRV"): (Srv(0, 0, 5061, "gone.tomt.it"),)}).locate()


def test_certificate_name_from_target_or_fixed() -> None:
    by_target = Zone(POOL).locate(tls_name=None)
    assert {c.target: c.tls_name for c in by_target} == {
        "pool1.tomt.it": "pool1.tomt.it",
        "pool2.tomt.it": "pool2.tomt.it",
        "backup.tomt.it": "backup.tomt.it",
    }
    fixed = Zone(POOL).locate(tls_name="edge.tomt.it")
    assert {c.tls_name for c in fixed} == {"edge.tomt.it"}


def test_policy_from_route() -> None:
    routes, _ = parse_routes(
        [
            {"match_uri": "tomt.it", "resolve": "tomt.it", "tls_name_from": "target"},
            {"match_uri": "tomt.local", "resolve": "tomt.local", "tls_name": "edge.tomt.local", "naptr": False},
            {"match_uri": "x.example", "resolve": "x.example"},
        ]
    )
    policies = [LocatePolicy.for_route(r) for r in routes]
    assert [p.tls_name for p in policies] == [None, "edge.tomt.local", "x.example"]
    assert [p.naptr for p in policies] == [True, False, True]


def test_drive_stops_at_the_first_missing_answer() -> None:
    policy = LocatePolicy(("tls",), ("_sips._tcp",))
    assert drive(locate("tomt.it", policy), lambda q: None) is None


# -- Resolver over a canned source, time by hand ---------------------------------------------


def dns_route(**kw: Any) -> StaticRoute:
    routes, problems = parse_routes([{"match_uri": "tomt.it", "resolve": "tomt.it", **kw}])
    assert problems == []
    return routes[0]


def test_second_lookup_is_served_from_the_cache_until_the_ttl() -> None:
    zone = Zone(POOL, ttl=300)
    resolver = Resolver(zone)
    route = dns_route()
    assert resolver.cached_candidates(route, 0.0) is None
    first = asyncio.run(resolver.candidates_for(route, 0.0))
    sent = resolver.queries_sent
    assert sent == len(zone.asked) == 8  # NAPTR, one SRV, A and AAAA of three targets
    assert asyncio.run(resolver.candidates_for(route, 29.0)) == first
    assert resolver.cached_candidates(route, 29.0) == first
    assert resolver.queries_sent == sent
    assert resolver.cache_hits == sent
    # the two "no AAAA" answers lived min(SOA 60 s, negative cap 30 s); the positive ones their 300 s TTL
    asyncio.run(resolver.candidates_for(route, 299.0))
    assert resolver.queries_sent == sent + 2
    asyncio.run(resolver.candidates_for(route, 300.0))
    assert resolver.queries_sent == 2 * sent  # the six positive ones; the two re-asked at 299 s still live


def test_negative_answers_are_cached_and_failures_are_not() -> None:
    zone = Zone({}, failing=(("_sip._tls.tomt.it", "SRV"),))
    resolver = Resolver(zone, DnsCache(negative_seconds=30.0))
    route = dns_route(naptr=False)
    for now in (0.0, 10.0):
        with pytest.raises(ResolutionError):
            asyncio.run(resolver.candidates_for(route, now))
    asked = Counter(str(q) for q in zone.asked)
    assert asked["SRV _sips._tcp.tomt.it"] == 1  # NXDOMAIN, cached for min(SOA 60 s, 30 s)
    assert asked["SRV _sip._tls.tomt.it"] == 2  # a timeout is asked again
    with pytest.raises(ResolutionError):
        asyncio.run(resolver.candidates_for(dns_route(naptr=False, srv_services=["_sips._tcp"]), 30.0))
    assert Counter(str(q) for q in zone.asked)["SRV _sips._tcp.tomt.it"] == 2


def test_concurrent_lookups_share_one_query() -> None:
    zone = Zone(POOL)
    resolver = Resolver(zone)
    route = dns_route()

    async def both() -> list[list[Candidate]]:
        return list(await asyncio.gather(resolver.candidates_for(route, 0.0), resolver.candidates_for(route, 0.0)))

    first, second = asyncio.run(both())
    assert first == second
    assert resolver.queries_sent == len(zone.asked) == 8


def test_static_routes_need_no_dns() -> None:
    zone = Zone({})
    resolver = Resolver(zone)
    routes, _ = parse_routes([{"match_uri": "tomt.it", "destinations": [{"host": "a"}, {"host": "b"}]}])
    assert [c.host for c in asyncio.run(resolver.candidates_for(routes[0], 0.0))] == ["a", "b"]
    assert resolver.cached_candidates(routes[0], 0.0) == list(routes[0].destinations)
    assert zone.asked == []


def test_from_cache_raises_when_the_cache_says_nowhere() -> None:
    cache = DnsCache()
    policy = LocatePolicy(("tls",), ("_sips._tcp",), naptr=False, tls_name="tomt.it")
    cache.put(NoRecords(Query("_sips._tcp.tomt.it", "SRV"), nxdomain=True), 0.0)
    for rdtype in ("A", "AAAA"):
        cache.put(NoRecords(Query("tomt.it", rdtype), nxdomain=False), 0.0)
    with pytest.raises(ResolutionError, match=r"no A/AAAA records for tomt\.it"):
        from_cache("tomt.it", policy, cache, 1.0)


def test_a_caller_giving_up_does_not_cancel_the_shared_query() -> None:
    zone = Zone(POOL)
    resolver = Resolver(zone)

    async def one_gives_up() -> list[Candidate]:
        quitter = asyncio.ensure_future(resolver.candidates_for(dns_route(), 0.0))
        stayer = asyncio.ensure_future(resolver.candidates_for(dns_route(), 0.0))
        await asyncio.sleep(0)
        quitter.cancel()
        return await asyncio.wait_for(stayer, 5.0)

    assert len(asyncio.run(one_gives_up())) == 5
    assert resolver.queries_sent == 8


def test_a_route_without_destination_still_has_its_other_keys_checked() -> None:
    _, problems = parse_routes([{"match_uri": "broken", "port": 70000, "transport": "sctp"}])
    assert [p.split(":")[0] for p in problems] == ["routes[0].destination", "routes[0].transport", "routes[0].port"]
