"""The static route table: MatchUri lookup (exact > longest ``*.domain`` > ``*``) and config parsing."""

from typing import Any

import pytest

from routes import RouteTable, StaticRoute, parse_routes


def route(match_uri: str, destination: str = "10.0.0.1", **kw: Any) -> StaticRoute:
    fields: dict[str, Any] = {"name": match_uri, "port": 5061, "transport": "tls", "tls_name": destination}
    fields.update(kw)
    return StaticRoute(match_uri=match_uri, destination=destination, **fields)


def table(*match_uris: str) -> RouteTable:
    return RouteTable([route(m, f"hop-{i}.example") for i, m in enumerate(match_uris)])


def match(routes: RouteTable, domain: str) -> str | None:
    found = routes.lookup(domain)
    return found.match_uri if found else None


def dest(routes: RouteTable, host: str) -> str | None:
    found = routes.by_destination(host)
    return found.match_uri if found else None


def entry(**kw: Any) -> dict[str, Any]:
    """A valid [[routes]] table, with ``kw`` overriding (None removes a key)."""
    raw: dict[str, Any] = {
        "match_uri": "tomt.local",
        "destination": "cups.tomt.local",
        "port": 5062,
        "transport": "tls",
    }
    raw.update(kw)
    return {k: v for k, v in raw.items() if v is not None}


# -- lookup ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "order",
    [("*", "*.tomt.local", "tomt.local"), ("tomt.local", "*.tomt.local", "*"), ("*.tomt.local", "*", "tomt.local")],
)
def test_exact_beats_wildcard_beats_catch_all(order: tuple[str, ...]) -> None:
    routes = table(*order)
    assert match(routes, "tomt.local") == "tomt.local"
    assert match(routes, "cups.tomt.local") == "*.tomt.local"
    assert match(routes, "tomt.it") == "*"


def test_longer_wildcard_beats_shorter() -> None:
    for order in (("*.tomt.local", "*.eu.tomt.local"), ("*.eu.tomt.local", "*.tomt.local")):
        routes = table(*order)
        assert match(routes, "pool.eu.tomt.local") == "*.eu.tomt.local"
        assert match(routes, "pool.us.tomt.local") == "*.tomt.local"


def test_wildcard_matches_whole_labels_only() -> None:
    routes = table("*.tomt.local")
    assert routes.lookup("a.b.tomt.local") is not None
    assert routes.lookup("xtomt.local") is None
    assert routes.lookup("tomt.local.evil.example") is None


def test_lookup_is_case_insensitive() -> None:
    routes = table("tomt.local", "*.tomt.it")
    assert match(routes, "TOMT.Local") == "tomt.local"
    assert match(routes, "Pool.TOMT.IT") == "*.tomt.it"
    assert routes.lookup("tomt.local.") is not None  # an absolute FQDN is the same domain


def test_config_match_uri_is_case_insensitive() -> None:
    parsed, problems = parse_routes([entry(match_uri="TOMT.Local"), entry(match_uri="*.Tomt.IT")])
    assert problems == []
    routes = RouteTable(parsed)
    assert routes.lookup("tomt.local") is not None
    assert routes.lookup("pool.tomt.it") is not None


def test_no_match_is_none() -> None:
    assert table("tomt.local", "*.tomt.it").lookup("example.com") is None
    assert RouteTable([]).lookup("tomt.local") is None


def test_by_destination() -> None:
    routes = RouteTable([route("tomt.local", "127.0.0.2", port=5062), route("tomt.it", "lync01.tomt.it")])
    assert dest(routes, "127.0.0.2") == "tomt.local"
    assert dest(routes, "LYNC01.tomt.it.") == "tomt.it"
    assert routes.by_destination("127.0.0.9") is None


# -- parse_routes ----------------------------------------------------------------------------


def test_parse_good_routes_with_defaults() -> None:
    parsed, problems = parse_routes(
        [
            entry(name="cisco", listener="cisco", tls_name="CUPS.tomt.local"),
            {"match_uri": "*.tomt.it", "destination": "127.0.0.3"},
            {"match_uri": "*", "destination": "10.1.1.1", "transport": "UDP"},
        ]
    )
    assert problems == []
    cisco, lync, any_ = parsed
    assert (cisco.name, cisco.port, cisco.tls_name, cisco.listener) == ("cisco", 5062, "cups.tomt.local", "cisco")
    assert (lync.name, lync.port, lync.transport, lync.tls_name, lync.listener) == (
        "*.tomt.it",
        5061,
        "tls",
        "127.0.0.3",
        None,
    )
    assert (any_.transport, any_.port) == ("udp", 5060)


def test_parse_nothing() -> None:
    assert parse_routes(None) == ([], [])


def test_parse_not_a_list() -> None:
    _, problems = parse_routes({"match_uri": "x"})
    assert problems == ["routes: must be a list of tables ([[routes]])"]


def test_parse_reports_every_problem_with_key_paths() -> None:
    raw = [
        entry(match_uri=None),
        entry(match_uri="tomt.it", port=70000),
        entry(match_uri="a.example", transport="sctp"),
        entry(match_uri="b.example", colour="blue"),
        entry(match_uri="c.example"),
        entry(match_uri="c.example", name="other"),
        "not a table",
        entry(match_uri="d.example", destination="not a host!"),
        entry(match_uri="e.example", port="5061"),
    ]
    parsed, problems = parse_routes(raw)
    text = "\n".join(problems)
    assert "routes[0].match_uri: missing" in text
    assert "routes[1].port: 70000" in text
    assert "routes[2].transport: 'sctp'" in text
    assert "routes[3].colour: unknown key" in text
    assert "routes[6]: must be a table" in text
    assert "routes[7].destination:" in text
    assert "routes[8].port: '5061'" in text
    duplicate = [p for p in problems if "'c.example'" in p]
    assert len(duplicate) == 1
    assert duplicate[0].startswith("routes: match_uri 'c.example'")
    assert len(problems) == 8
    assert [r.match_uri for r in parsed] == ["c.example", "c.example"]


@pytest.mark.parametrize("port", [0, -1, 65536, 70000, True, 5061.0])
def test_parse_bad_port(port: object) -> None:
    _, problems = parse_routes([entry(port=port)])
    assert len(problems) == 1
    assert problems[0].startswith("routes[0].port:")


@pytest.mark.parametrize("match_uri", ["bad domain", "*.", "**.tomt.local", "tomt..local", "-x.example", ""])
def test_parse_bad_match_uri(match_uri: str) -> None:
    _, problems = parse_routes([entry(match_uri=match_uri)])
    assert [p.split(":")[0] for p in problems] == ["routes[0].match_uri"]


def test_parse_duplicate_names() -> None:
    _, problems = parse_routes([entry(name="x"), entry(name="x", match_uri="tomt.it")])
    assert problems == [problems[0]]
    assert problems[0].startswith("routes[1].name: 'x'")


def test_parse_custom_where() -> None:
    _, problems = parse_routes([entry(transport="ws")], where="sites[2].routes")
    assert problems[0].startswith("sites[2].routes[0].transport:")
