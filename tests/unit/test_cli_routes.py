"""``sipfed routes``: the try order of each route's next hops."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main

CONFIG = """
[proxy]
fqdn = "sipfed.tomt.local"
[metrics]
listen = "off"
[[listeners]]
name = "lab"
transport = "tcp"
address = "127.0.0.1"
port = 5999
[[routes]]
name = "pool"
match_uri = "tomt.local"
transport = "tcp"
destinations = [{ host = "127.0.0.5", port = 5060, priority = 20 }, { host = "127.0.0.4", port = 5062, priority = 10 }]
[[routes]]
name = "dns"
match_uri = "tomt.it"
resolve = "tomt.it"
transport = "tcp"
"""


def test_routes_prints_candidates_in_try_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(CONFIG)
    assert main(["routes", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.index("1. tcp:127.0.0.4:5062 (priority 10") < out.index("2. tcp:127.0.0.5:5060 (priority 20")
    assert "resolves tomt.it by DNS (RFC 3263); add --resolve" in out
