"""The architecture as a table, checked against every module's imports (STYLE.md: a sans-IO core, asyncio at
the edge; routes/ and acl/ are leaves).

Each module belongs to the layer of the longest prefix in ``LAYERS`` that names it. ``LAYERS`` says which of
our layers it may import (its own always) and ``SANS_IO`` which layers may import nothing that does I/O or
reads a clock. Imports under ``if TYPE_CHECKING:`` count as ``TYPE_ONLY`` edges: a type hint, not a call.
The last tests prove the check can fail: a forbidden import, written into a copy of a real module, is caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("proxy", "routes", "acl")

#: layer -> the other layers it may import. Read top down: each layer may lean on those above it.
LAYERS: dict[str, frozenset[str]] = {
    "proxy.sip": frozenset(),  # the SIP grammar: stdlib only
    "acl": frozenset(),  # trust, digest, ACLs: a leaf
    "routes": frozenset(),  # routes, DNS, candidates: a leaf
    "proxy.hep": frozenset(),  # the HEP3 encoder: pure
    "proxy.x509": frozenset(),  # reading certificates (cryptography): shared by config, admin tools
    "proxy.relay": frozenset({"proxy.sip", "routes", "acl", "proxy.x509"}),  # the proxy's decisions (§16, §17)
    "proxy.xmpp": frozenset({"proxy.sip"}),  # XMPP S2S streams and the SIP<->XMPP gateway
    "proxy.config": frozenset({"routes", "acl", "proxy.xmpp", "proxy.x509"}),  # the TOML file, typed and checked
    "proxy.logs": frozenset(),  # log formatting
    "proxy.net": frozenset(
        {"proxy", "proxy.sip", "proxy.relay", "proxy.hep", "proxy.config", "proxy.xmpp", "proxy.x509", "routes", "acl"}
    ),
    "proxy.metrics": frozenset({"proxy", "proxy.relay", "proxy.net", "proxy.xmpp"}),  # the Observers
    "proxy.server": frozenset(
        {
            "proxy",  # build_kind, for the start-up line
            "proxy.relay",
            "proxy.x509",
            "proxy.net",
            "proxy.config",
            "proxy.metrics",
            "routes",
            "acl",
            "proxy.logs",
            "proxy.hep",
            "proxy.xmpp",
            "proxy.workers",  # the slot a worker is started with
        }
    ),
    "proxy.workers": frozenset(),  # worker mode's shared rules: the slot, the restart budget, merging answers
    # Worker mode's supervisor: binds the listeners, runs the workers (each a proxy.server), merges their answers.
    "proxy.supervisor": frozenset({"proxy.config", "proxy.net", "proxy.ctl", "proxy.server", "proxy.workers"}),
    "proxy.ctl": frozenset({"proxy.config", "proxy.net"}),  # the control socket's client
    "proxy.cli": frozenset(
        {
            "proxy",
            "proxy.config",
            "proxy.server",
            "proxy.ctl",
            "proxy.logs",
            "proxy.net",
            "routes",
            "acl",
            "proxy.admin",
            "proxy.supervisor",
            "proxy.workers",
        }
    ),
    "proxy.__main__": frozenset({"proxy.cli"}),
    # The admin tools (certs, doctor): they read the config and probe with the proxy's own TLS and SIP code;
    # nothing runs them but cli, and nothing of the running proxy imports them.
    "proxy.admin": frozenset(
        {"proxy", "proxy.sip", "proxy.config", "proxy.net", "proxy.xmpp", "proxy.x509", "routes", "acl"}
    ),
    "proxy": frozenset(),  # proxy/__init__.py: the version
}
#: Edges allowed for type hints only: the control socket drives ``Server.reload`` through duck typing.
TYPE_ONLY: dict[str, frozenset[str]] = {"proxy.net": frozenset({"proxy.server"})}
#: Layers that do no I/O and read no clock (time is a parameter), and what that forbids.
SANS_IO = ("proxy.sip", "proxy.relay", "acl", "routes", "proxy.hep", "proxy.xmpp")
FORBIDDEN = frozenset(
    {
        "asyncio",
        "ssl",
        "socket",
        "time",
        "prometheus_client",
        "selectors",
        "threading",
        "subprocess",
        "http",
        "urllib.request",
        "dns.asyncresolver",
        "uvloop",
    }
)
#: ``logging`` is placed on purpose: the relay logs its decisions where it makes them; the grammar, trust and
#: route leaves raise or return instead.
NO_LOGGING = ("proxy.sip", "acl", "routes", "proxy.hep")
#: Modules of a sans-IO layer that are its edge, with the I/O they may do.
EDGE_MODULES = {"routes.resolver": frozenset({"asyncio", "dns.asyncresolver", "time"})}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    best = None
    for layer in LAYERS:
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    return best


def imports(source: str) -> tuple[set[str], set[str]]:
    """(imports, imports under ``if TYPE_CHECKING:``), absolute module names."""
    tree = ast.parse(source)
    typing_only: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                typing_only |= _names(inner)
    everything: set[str] = set()
    for node in ast.walk(tree):
        everything |= _names(node)
    return everything - typing_only, typing_only


def _names(node: ast.AST) -> set[str]:
    """The modules an import statement loads: ``from a.b import c`` is ``a.b``, or ``a.b.c`` when that is a
    module of ours (``from proxy.net import driver``)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        submodules = {f"{node.module}.{alias.name}" for alias in node.names}
        ours = {name for name in submodules if _is_our_module(name)}
        return ours or {node.module}
    return set()


def _is_our_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return name.split(".")[0] in PACKAGES and (path.with_suffix(".py").exists() or (path / "__init__.py").exists())


def violations(module: str, source: str) -> list[str]:
    """Every rule of the table that ``source``, as module ``module``, breaks."""
    layer = layer_of(module)
    if layer is None:
        return [f"{module}: in no layer of LAYERS (add it, with what it may import)"]
    runtime, typing_only = imports(source)
    found = []
    for name in sorted(runtime | typing_only):
        target = layer_of(name) if name.split(".")[0] in PACKAGES else None
        if target is None or target == layer:
            continue
        allowed = LAYERS[layer] | (TYPE_ONLY.get(layer, frozenset()) if name in typing_only else frozenset())
        if target not in allowed and not (name in typing_only and target in TYPE_ONLY.get(layer, frozenset())):
            found.append(f"{module} imports {name} ({layer} may import {sorted(allowed) or 'nothing of ours'})")
    if layer in SANS_IO:
        edge = EDGE_MODULES.get(module, frozenset())
        for name in sorted(runtime):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN - edge):
                found.append(f"{module} imports {name}: {layer} is sans-IO (time is a parameter)")
    if layer in NO_LOGGING and "logging" in runtime:
        found.append(f"{module} imports logging: {layer} raises or returns, the caller logs")
    return found


def our_modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", our_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_keeps_to_its_layer(path: Path) -> None:
    assert violations(module_name(path), path.read_text()) == []


def test_the_table_names_only_real_layers() -> None:
    names = {module_name(p) for p in our_modules()}
    for layer, allowed in LAYERS.items():
        for target in allowed | {layer}:
            assert any(n == target or n.startswith(target + ".") for n in names), f"{layer} -> {target}: no module"


# -- the check can fail ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "line", "why"),
    [
        ("proxy.relay.core", "from proxy.net.driver import Driver", "proxy.relay may import"),
        ("proxy.relay.forwarding", "import asyncio", "sans-IO"),
        ("proxy.relay.forwarding", "from time import monotonic", "sans-IO"),
        ("proxy.sip.message", "from proxy.relay.types import Flow", "proxy.sip may import nothing"),
        ("proxy.sip.parser", "import logging", "raises or returns"),
        ("routes.table", "from proxy.config import Config", "routes may import nothing"),
        ("acl.peers", "from proxy.relay.types import Flow", "acl may import nothing"),
        ("proxy.relay.core", "from proxy.metrics import Metrics", "proxy.relay may import"),
        ("proxy.relay.trust", "from proxy.server import Server", "proxy.relay may import"),
        ("proxy.net.driver", "from proxy.server import Server", "proxy.net may import"),  # at run time: no
        ("proxy.config", "from proxy.net.tls import client_context", "proxy.config may import"),
    ],
)
def test_a_forbidden_import_is_caught(module: str, line: str, why: str) -> None:
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():  # a package: its __init__ (proxy.config)
        path = ROOT / module.replace(".", "/") / "__init__.py"
    source = path.read_text()
    assert violations(module, source) == []  # the real module is clean ...
    found = violations(module, source + "\n" + line + "\n")  # ... and the same with one bad line is not
    assert len(found) == 1
    assert why in found[0]


def test_a_type_only_edge_is_allowed_only_where_listed() -> None:
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from proxy.server import Server\n"
    assert violations("proxy.net.control", guarded) == []
    assert violations("proxy.relay.core", guarded) != []
