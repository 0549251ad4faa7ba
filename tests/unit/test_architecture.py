"""The layering holds: the sans-IO core touches no socket, clock, TLS or Prometheus; routes/ and acl/
are leaves that never import proxy/ (STYLE.md). Checked by reading each module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SANS_IO = ["proxy/sip", "proxy/relay", "routes", "acl"]
#: The one module of routes/ allowed to do I/O: the asyncio DNS adapter (STYLE.md: asyncio at the edges).
EDGE_MODULES = {"routes/resolver.py"}
FORBIDDEN = {"asyncio", "ssl", "socket", "time", "prometheus_client", "selectors", "threading"}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", SANS_IO)
def test_sans_io_code_does_no_io(folder: str) -> None:
    offenders = {}
    for path in modules(folder):
        if str(path.relative_to(ROOT)) in EDGE_MODULES:
            continue
        bad = {name for name in imported(path) if name.split(".")[0] in FORBIDDEN}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


@pytest.mark.parametrize("folder", ["routes", "acl"])
def test_leaf_packages_never_import_proxy(folder: str) -> None:
    offenders = [str(p.relative_to(ROOT)) for p in modules(folder)
                 if any(name == "proxy" or name.startswith("proxy.") for name in imported(p))]
    assert offenders == []


def test_the_check_would_catch_an_offender(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import asyncio\nfrom time import monotonic\n")
    assert imported(sample) == {"asyncio", "time"}
