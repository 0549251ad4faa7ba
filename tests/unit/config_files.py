"""A config file in a test's directory with real TLS files beside it (``certs/proxy.pem``, ``proxy.key``,
``ca.crt`` from the project's own lab PKI): the loader judges our own certificate and key (issue 16), so
placeholders would not load. Shared by test_config and test_xmpp_policy."""

from __future__ import annotations

from pathlib import Path

from proxy.admin.certs import make_lab_pki


def write_config(tmp_path: Path, text: str, *, certs: bool = True) -> Path:
    if certs:
        make_lab_pki(tmp_path / "certs", [["proxy", "sipfed.tomt.local", "sipfed.tomt.it"]], key_type="ec")
    path = tmp_path / "sipfed.toml"
    path.write_text(text)
    return path
