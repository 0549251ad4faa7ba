"""What the profiles of issue 19 took off the hot path stays off it: the objects made per message have an
``__init__`` of their own (mypyc compiles it; a dataclass's generated one runs as Python, 4-10x slower), the
route table answers from what it made once, and an in-dialog host's network is judged once."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from proxy.relay.forwarding import hop_for_uri
from proxy.relay.state import ClientTx, ServerTx
from proxy.relay.types import NextHop, RegisterAlias, SendOnFlow, SendToHop
from proxy.sip.headers import NameAddr, Via
from proxy.sip.message import Request, Response
from proxy.sip.transaction import Timer
from proxy.sip.uri import parse_uri
from routes import Candidate, RouteTable, StaticRoute
from tests.unit.test_relay import make_proxy

HOT = [ServerTx, ClientTx, Request, Response, Via, NameAddr, SendToHop, SendOnFlow, NextHop, RegisterAlias, Timer]


@pytest.mark.parametrize("cls", [*HOT, Candidate], ids=lambda c: c.__name__)
def test_objects_made_per_message_have_their_own_init(cls: type) -> None:
    assert "__create_fn__" not in getattr(cls.__init__, "__qualname__", ""), (
        f"{cls.__name__}.__init__ is the one dataclasses generates: write it out (see NextHop)"
    )


def test_written_out_inits_keep_the_dataclass_fields_and_defaults() -> None:
    hop = NextHop("tls", "cups.tomt.local", 5062, "cups.tomt.local", "cisco")
    assert (hop.route, hop.failover, hop.probe) == (None, False, False)
    assert replace(hop, probe=True) == NextHop("tls", "cups.tomt.local", 5062, "cups.tomt.local", "cisco", probe=True)
    candidate = Candidate("10.0.0.1", 5061, "tls", "pool.tomt.it", weight=5)
    assert (candidate.priority, candidate.weight, candidate.source, candidate.target, candidate.rank) == (
        0,
        5,
        "static",
        "",
        0,
    )
    with pytest.raises(AttributeError):
        candidate.port = 1  # type: ignore[misc]  # still frozen


def test_the_route_table_answers_from_candidates_made_once() -> None:
    pool = StaticRoute(
        "lync",
        "tomt.it",
        "lyncpool.tomt.it",
        5061,
        "tls",
        "lyncpool.tomt.it",
        destinations=(Candidate("10.0.0.1", 5061, "tls", "a.tomt.it"), Candidate("10.0.0.2", 5062, "tls", "b.tomt.it")),
    )
    single = StaticRoute("cisco", "tomt.local", "cups.tomt.local", 5062, "tls", "cups.tomt.local")
    table = RouteTable([pool, single])
    first = table.candidate_for_host("CUPS.tomt.local.", 5062)
    assert first is not None
    assert first[0] is single
    again = table.candidate_for_host("cups.tomt.local")
    assert again is not None
    assert again[1] is first[1]  # the same Candidate, not a new one per request
    assert table.candidate_for_host("cups.tomt.local", 5061) is None
    member = table.candidate_for_host("10.0.0.2")
    assert member is not None
    assert (member[0], member[1].tls_name) == (pool, "b.tomt.it")
    assert table.by_destination("lyncpool.tomt.it") is pool
    own = table.destination_candidate("lyncpool.tomt.it")
    assert own is not None
    assert own[1] == Candidate("lyncpool.tomt.it", 5061, "tls", "lyncpool.tomt.it")


def test_an_in_dialog_hosts_network_is_judged_once_and_the_cache_is_bounded() -> None:
    policy = replace(make_proxy().policy, dialog_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    for _ in range(2):
        hop = hop_for_uri(parse_uri("sip:127.0.0.9:7000;transport=tcp"), policy, "lync")
        assert (hop.host, hop.port) == ("127.0.0.9", 7000)
    assert policy.in_dialog_hosts == {"127.0.0.9": True}
    with pytest.raises(Exception, match="not a configured destination"):
        hop_for_uri(parse_uri("sip:192.0.2.1:7000;transport=tcp"), policy, "lync")
    assert policy.in_dialog_hosts["192.0.2.1"] is False  # a refusal is remembered too, and still refused
    with pytest.raises(Exception, match="not a configured destination"):
        hop_for_uri(parse_uri("sip:192.0.2.1:7000;transport=tcp"), policy, "lync")
    for i in range(5000):
        policy.in_dialog_hosts.setdefault(f"h{i}", False)
    size = len(policy.in_dialog_hosts)
    hop_for_uri(parse_uri("sip:127.0.0.10:7000;transport=tcp"), policy, "lync")
    assert len(policy.in_dialog_hosts) == size  # full: judged, not stored
