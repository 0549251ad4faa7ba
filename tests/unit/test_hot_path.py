"""What the profiles of issue 19 took off the hot path stays off it: the objects made per message have an
``__init__`` of their own (mypyc compiles it; a dataclass's generated one runs as Python, 4-10x slower), the
route table answers from what it made once, and an in-dialog host's network is judged once."""

from __future__ import annotations

import ast
import ipaddress
from dataclasses import replace
from pathlib import Path

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

ROOT = Path(__file__).resolve().parents[2]
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


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any(
        (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "dataclass") or getattr(d, "id", "") == "dataclass"
        for d in node.decorator_list
    )


def _fields(node: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> dict[str, ast.expr | None]:
    """The dataclass fields in dataclasses' order: a base's (defined in the same module) first, then its own."""
    out: dict[str, ast.expr | None] = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            out.update(_fields(classes[base.id], classes))
    for item in node.body:
        if (
            isinstance(item, ast.AnnAssign)
            and isinstance(item.target, ast.Name)
            and "ClassVar" not in ast.unparse(item.annotation)
        ):
            out[item.target.id] = item.value
    return out


def _written_out_inits() -> list[tuple[str, ast.ClassDef, dict[str, ast.expr | None]]]:
    found = []
    for path in sorted((ROOT / "proxy").rglob("*.py")) + sorted((ROOT / "routes").rglob("*.py")):
        tree = ast.parse(path.read_text())
        classes = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
        for node in classes.values():
            own_init = any(isinstance(item, ast.FunctionDef) and item.name == "__init__" for item in node.body)
            if _is_dataclass(node) and own_init:
                found.append((f"{path.relative_to(ROOT)}:{node.name}", node, _fields(node, classes)))
    return found


@pytest.mark.parametrize(
    ("where", "node", "fields"), _written_out_inits(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_written_out_init_keeps_the_fields_order_and_defaults(
    where: str, node: ast.ClassDef, fields: dict[str, ast.expr | None]
) -> None:
    """A dataclass with its own ``__init__`` (written out for mypyc) declares its fields twice: the parameters
    must follow the fields' order and carry the same defaults, or positional callers and ``dataclasses.replace``
    would get another object than the declaration says."""
    init = next(item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "__init__")
    positional = [a.arg for a in init.args.args[1:]]
    params = positional + [a.arg for a in init.args.kwonlyargs]
    assert [name for name in fields if name in params] == params, f"{where}: {params} against fields {list(fields)}"
    defaults = dict(zip(positional[len(positional) - len(init.args.defaults) :], init.args.defaults, strict=True))
    defaults.update(
        {a.arg: d for a, d in zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True) if d is not None}
    )
    for name, default in defaults.items():
        declared = fields[name]
        if declared is None or "field(" in ast.unparse(declared):
            continue
        assert ast.unparse(default) == ast.unparse(declared), (
            f"{where}: {name} defaults to {ast.unparse(default)} in __init__ but {ast.unparse(declared)} as a field"
        )
