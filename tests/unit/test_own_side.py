"""Our own side first (issue 16, proxy/config/own.py): sipfed judges its own certificate, key and chain when it
loads a config. A key that is not the certificate's is a config error (``check-config`` exits non-zero with the
usual list, ``run`` never reaches the TLS library's traceback); what only weakens federation is a warning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxy.admin.certs import issue_leaf, make_lab_pki
from proxy.cli import main
from proxy.config import ConfigError, load_config

CONFIG = """
[proxy]
fqdn = "sipfed.tomt.local"
federation_fqdn = "{federation}"

[tls]
cert_chain = "certs/{chain}"
key = "certs/{key}"
ca_bundle = "certs/ca.crt"

[[listeners]]
name = "cisco"
transport = "tls"
address = "127.0.0.1"
port = 5061
"""


def setup(
    tmp_path: Path,
    *,
    chain: str = "sipfed.tomt.local.pem",
    key: str = "sipfed.tomt.local.key",
    federation: str = "sipfed.tomt.local",
) -> Path:
    make_lab_pki(tmp_path / "certs", [["sipfed.tomt.local", "sipfed.tomt.it"], ["other.tomt.local"]], key_type="ec")
    path = tmp_path / "sipfed.toml"
    path.write_text(CONFIG.format(chain=chain, key=key, federation=federation))
    return path


def test_a_good_side_loads_without_warnings(tmp_path: Path) -> None:
    config = load_config(setup(tmp_path))
    assert not [w for w in config.warnings if w.startswith(("tls.", "listeners["))]
    assert config.own.subject == "sipfed.tomt.local"
    assert config.own.missing_intermediate == ""
    assert config.own.client_auth


def test_a_key_of_another_certificate_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = setup(tmp_path, key="other.tomt.local.key")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    [problem] = raised.value.problems
    assert problem.startswith("tls.key: ")
    assert "is not the private key of tls.cert_chain's certificate (sipfed.tomt.local)" in problem
    assert main(["check-config", "--config", str(path)]) != 0
    out = capsys.readouterr()
    assert "is not the private key" in out.out + out.err
    assert "Traceback" not in out.out + out.err


def test_a_chain_without_its_intermediate_is_a_warning_naming_it(tmp_path: Path) -> None:
    config = load_config(setup(tmp_path, chain="sipfed.tomt.local.crt"))  # the leaf alone
    [warning] = [w for w in config.warnings if w.startswith("tls.cert_chain")]
    assert "without its issuer sipfed lab intermediate" in warning
    assert "append the intermediate's PEM to the file" in warning
    assert config.own.missing_intermediate.startswith("sipfed lab intermediate")


def test_a_federation_fqdn_that_is_no_name_of_ours_is_a_warning(tmp_path: Path) -> None:
    config = load_config(setup(tmp_path, federation="federation.tomt.local"))
    [warning] = [w for w in config.warnings if w.startswith("listeners[cisco].federation_fqdn")]
    assert "'federation.tomt.local' is not a name of our certificate (sipfed.tomt.local:" in warning
    assert "CUP's Federation Routing FQDN" in warning


def test_no_client_authentication_and_expiry_are_warnings(tmp_path: Path) -> None:
    path = setup(tmp_path)
    now = datetime.now(UTC)
    issue_leaf(
        tmp_path / "certs",
        ["sipfed.tomt.local", "sipfed.tomt.it"],
        key_type="ec",
        eku=("serverAuth",),
        not_before=now - timedelta(days=1),
        not_after=now + timedelta(days=10),
        file_stem="server-only",
    )
    path.write_text(CONFIG.format(chain="server-only.pem", key="server-only.key", federation="sipfed.tomt.local"))
    config = load_config(path)
    assert any("no Client Authentication EKU" in w and "alert 43" in w for w in config.warnings)
    assert any("within 30 days: renew it" in w for w in config.warnings)
    assert not config.own.client_auth
