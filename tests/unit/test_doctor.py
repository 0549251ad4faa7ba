"""`sipfed doctor` offline checks: each field-note failure, made with a purpose-made certificate or config."""

import json
import shutil
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.admin.certs import LEAF_EKU, LabPki, issue_leaf, make_lab_pki
from proxy.admin.doctor import check_names, diagnose, run
from proxy.admin.findings import Finding
from proxy.admin.live_certs import check_peer_chain, check_peer_eku, check_peer_name, check_peer_validity
from proxy.admin.live_failures import refusal
from proxy.admin.live_sip import NotSip, answer_to, options_request, read_final
from proxy.config import ListenerConfig, load_config
from proxy.sip.message import Request, parse_message
from routes import StaticRoute

OURS = ["sipfed.tomt.local", "sipfed.tomt.it"]
CHECKS = {
    "ca.bundle",
    "cert.eku",
    "cert.chain",
    "cert.validity",
    "cert.key",
    "cert.names",
    "route.loop",
    "listener.lync_port",
    "listener.client_cert",
    "tls.revocation",
    "cert.revocation",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    return make_lab_pki(tmp_path_factory.mktemp("pki"), [OURS, ["other.tomt.local"]], key_type="ec")


@pytest.fixture
def certs(pki: LabPki, tmp_path: Path) -> Path:
    """A private copy of the module's PKI as `certs/` beside the config."""
    return Path(shutil.copytree(pki.ca_cert.parent, tmp_path / "certs"))


def write_config(
    tmp_path: Path,
    *,
    chain: str = "sipfed.tomt.local.pem",
    key: str = "sipfed.tomt.local.key",
    bundle: str = "ca.crt",
    lync_port: int = 5062,
    lync_fqdn: str = "sipfed.tomt.it",
    cisco_address: str = "127.0.0.1",
    destination: str = "127.0.0.2",
    route_port: int = 5062,
    proxy_extra: str = "",
) -> Path:
    path = tmp_path / "sipfed.toml"
    path.write_text(f"""
[proxy]
fqdn = "sipfed.tomt.local"
{proxy_extra}

[tls]
cert_chain = "certs/{chain}"
key = "certs/{key}"
ca_bundle = "certs/{bundle}"

[[listeners]]
name = "cisco"
address = "{cisco_address}"
port = 5061

[[listeners]]
name = "lync"
address = "127.0.0.1"
port = {lync_port}
fqdn = "{lync_fqdn}"

[[routes]]
name = "cisco"
match_uri = "tomt.local"
destination = "{destination}"
port = {route_port}
tls_name = "cups.tomt.local"
listener = "cisco"
""")
    return path


def findings_of(path: Path) -> list[Finding]:
    return diagnose(load_config(path, check_own=False), datetime.now(UTC))  # as sipfed doctor reads it


def with_severity(findings: list[Finding], severity: str, check: str) -> list[Finding]:
    return [f for f in findings if f.severity == severity and f.check == check]


def leaf(
    certs: Path,
    stem: str,
    *,
    eku: tuple[str, ...] = LEAF_EKU,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> None:
    """A purpose-made leaf for our names, `certs/<stem>.pem` (with the intermediate) and `.key`."""
    issue_leaf(certs, OURS, key_type="ec", file_stem=stem, eku=eku, not_before=not_before, not_after=not_after)


def test_good_lab_certificates_have_no_errors_and_show_every_check(tmp_path: Path, certs: Path) -> None:
    findings = findings_of(write_config(tmp_path))
    assert [f for f in findings if f.severity != "ok"] == []
    assert {f.check for f in findings} == CHECKS
    assert run(tmp_path / "sipfed.toml", False) == 0


def test_missing_client_auth_names_alert_43(tmp_path: Path, certs: Path) -> None:
    leaf(certs, "server-only", eku=("serverAuth",))
    [error] = with_severity(
        findings_of(write_config(tmp_path, chain="server-only.pem", key="server-only.key")), "error", "cert.eku"
    )
    assert "alert 43 unsupported_certificate" in error.cause
    assert "Client Authentication" in error.fix
    assert error.subject == "certs/server-only.pem"


def test_chain_without_the_intermediate_is_an_error(tmp_path: Path, certs: Path) -> None:
    shutil.copy(certs / "sipfed.tomt.local.crt", certs / "leaf-only.pem")
    [error] = with_severity(findings_of(write_config(tmp_path, chain="leaf-only.pem")), "error", "cert.chain")
    assert "unable to get local issuer certificate" in error.cause
    assert "intermediate" in error.fix


def test_intermediate_only_in_the_bundle_is_a_warning(tmp_path: Path, certs: Path) -> None:
    shutil.copy(certs / "sipfed.tomt.local.crt", certs / "leaf-only.pem")
    (certs / "both.crt").write_bytes((certs / "intermediate.crt").read_bytes() + (certs / "ca.crt").read_bytes())
    findings = findings_of(write_config(tmp_path, chain="leaf-only.pem", bundle="both.crt"))
    [warning] = with_severity(findings, "warning", "cert.chain")
    assert "only through tls.ca_bundle" in warning.cause
    assert not with_severity(findings, "error", "cert.chain")


@pytest.mark.parametrize(
    ("start_days", "end_days", "words"),
    [(-60, -1, "expired on"), (1, 100, "not valid before")],
    ids=["expired", "not-yet-valid"],
)
def test_certificate_outside_its_validity_is_an_error(
    tmp_path: Path, certs: Path, start_days: int, end_days: int, words: str
) -> None:
    now = datetime.now(UTC)
    leaf(certs, "dated", not_before=now + timedelta(days=start_days), not_after=now + timedelta(days=end_days))
    [error] = with_severity(
        findings_of(write_config(tmp_path, chain="dated.pem", key="dated.key")), "error", "cert.validity"
    )
    assert words in error.cause
    assert error.subject.startswith("certs/dated.pem #1")


def test_certificate_expiring_in_10_days_is_a_warning(tmp_path: Path, certs: Path) -> None:
    leaf(certs, "soon", not_after=datetime.now(UTC) + timedelta(days=10))
    path = write_config(tmp_path, chain="soon.pem", key="soon.key")
    [warning] = with_severity(findings_of(path), "warning", "cert.validity")
    assert "10 days left" in warning.cause
    assert run(path, False) == 0


def test_key_of_another_certificate_is_an_error(tmp_path: Path, certs: Path) -> None:
    [error] = with_severity(findings_of(write_config(tmp_path, key="other.tomt.local.key")), "error", "cert.key")
    assert "not the private key" in error.cause


def test_chain_in_the_wrong_order_names_the_position(tmp_path: Path, certs: Path) -> None:
    data = (certs / "intermediate.crt").read_bytes() + (certs / "sipfed.tomt.local.crt").read_bytes()
    (certs / "reversed.pem").write_bytes(data)
    [error] = with_severity(findings_of(write_config(tmp_path, chain="reversed.pem")), "error", "cert.key")
    assert "certificate #2" in error.cause


def test_encrypted_key_is_an_error(tmp_path: Path, certs: Path) -> None:
    key = serialization.load_pem_private_key((certs / "sipfed.tomt.local.key").read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret")
    )
    (certs / "locked.key").write_bytes(encrypted)
    [error] = with_severity(findings_of(write_config(tmp_path, key="locked.key")), "error", "cert.key")
    assert "encrypted" in error.cause


def test_listener_fqdn_not_in_certificate_names_is_an_error(tmp_path: Path, certs: Path) -> None:
    [error] = with_severity(findings_of(write_config(tmp_path, lync_fqdn="sipfed.example.org")), "error", "cert.names")
    assert error.subject == "listener lync"
    assert "'sipfed.example.org'" in error.cause
    assert "Trusted Application Pool" in error.cause


def test_federation_fqdn_not_in_certificate_names_is_an_error(tmp_path: Path, certs: Path) -> None:
    path = write_config(tmp_path, proxy_extra='federation_fqdn = "fed.tomt.local"')
    [error] = with_severity(findings_of(path), "error", "cert.names")
    assert error.subject == "listener cisco"
    assert error.cause.startswith("federation_fqdn (Record-Route maddr) 'fed.tomt.local'")


def self_signed(san: list[str] | None, common_name: str = "cn.tomt.local") -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(
    ("san", "fqdn", "severity"),
    [
        (["*.tomt.local"], "sipfed.tomt.local", "ok"),
        (["*.tomt.local"], "a.sipfed.tomt.local", "error"),
        (None, "cn.tomt.local", "ok"),
        (["other.tomt.local"], "cn.tomt.local", "error"),
    ],
    ids=["wildcard", "wildcard-one-label-only", "cn-without-san", "cn-ignored-with-san"],
)
def test_certificate_names_follow_rfc_6125(san: list[str] | None, fqdn: str, severity: str) -> None:
    listener = ListenerConfig("cisco", "tls", "127.0.0.1", 5061, fqdn, fqdn)
    [finding] = check_names(self_signed(san), [listener], "cert.pem")
    assert finding.severity == severity


@pytest.mark.parametrize(
    ("cisco_address", "destination", "port", "loop"),
    [
        ("127.0.0.1", "127.0.0.1", 5061, True),
        ("127.0.0.1", "sipfed.tomt.local", 5061, True),
        ("0.0.0.0", "127.0.0.2", 5061, True),
        ("127.0.0.1", "127.0.0.2", 5061, False),
        ("127.0.0.1", "127.0.0.1", 5060, False),
    ],
    ids=["own-address", "own-name", "loopback-under-wildcard", "other-address", "other-port"],
)
def test_route_to_our_own_listener_is_a_loop(
    tmp_path: Path, certs: Path, cisco_address: str, destination: str, port: int, loop: bool
) -> None:
    path = write_config(tmp_path, cisco_address=cisco_address, destination=destination, route_port=port)
    [finding] = [f for f in findings_of(path) if f.check == "route.loop"]
    assert (finding.severity == "error") is loop
    assert ("'cisco'" in finding.cause) is loop


def test_lync_listener_off_5062_is_a_warning(tmp_path: Path, certs: Path) -> None:
    path = write_config(tmp_path, lync_port=5063)
    [warning] = with_severity(findings_of(path), "warning", "listener.lync_port")
    assert warning.subject == "listener lync"
    assert "5062" in warning.cause
    assert run(path, False) == 0


def test_bundle_without_a_ca_is_an_error(tmp_path: Path, certs: Path) -> None:
    findings = findings_of(write_config(tmp_path, bundle="other.tomt.local.crt"))
    [error] = with_severity(findings, "error", "ca.bundle")
    assert "no CA" in error.cause


def test_unreadable_chain_is_a_finding_not_a_crash(tmp_path: Path, certs: Path) -> None:
    (certs / "junk.pem").write_text("not a certificate\n")
    findings = findings_of(write_config(tmp_path, chain="junk.pem"))
    [error] = with_severity(findings, "error", "cert.load")
    assert "no PEM certificate" in error.cause
    assert not [f for f in findings if f.check in ("cert.eku", "cert.names")]


def test_config_without_tls_skips_certificate_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plain.toml"
    path.write_text(
        '[proxy]\nfqdn = "sipfed.tomt.local"\n[[listeners]]\nname = "cisco"\ntransport = "tcp"\n'
        'address = "127.0.0.1"\nport = 5060\n'
    )
    assert run(path, True) == 0
    checks = {f["check"] for f in json.loads(capsys.readouterr().out)}
    assert "tls" in checks
    assert not checks & {"cert.eku", "cert.chain"}


def test_json_output_parses(tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(write_config(tmp_path, key="other.tomt.local.key"), True) == 1
    parsed = json.loads(capsys.readouterr().out)
    assert isinstance(parsed, list)
    assert all(set(item) == {"severity", "check", "subject", "cause", "fix"} for item in parsed)
    assert parsed[0]["severity"] == "error"
    assert {item["severity"] for item in parsed} <= {"error", "warning", "ok"}


def test_table_is_aligned_and_fits_the_width(tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(write_config(tmp_path, lync_fqdn="sipfed.example.org"), False, width=120) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SEVERITY", "CHECK", "SUBJECT", "CAUSE", "FIX"]
    assert all(len(line) <= 120 for line in lines)
    cause_column = lines[0].index("CAUSE")
    rows = [line for line in lines[1:] if line.startswith(("error", "warning", "ok"))]
    assert rows
    assert all(line[cause_column - 2 : cause_column] == "  " and line[cause_column] != " " for line in rows)
    assert lines[-1].startswith("1 error(s), 0 warning(s)")


@pytest.mark.parametrize(
    "text",
    ["[proxy\n", '[proxy]\nfqdn = "a.b"\n[tls]\ncert_chain = "missing.pem"\n'],
    ids=["bad-toml", "missing-files"],
)
def test_config_that_fails_to_load_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    assert run(path, False) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "config error in" in captured.err


# --- `doctor --live`: the parts that need no network (the network is in tests/integration/test_doctor_live.py)

ROUTE = StaticRoute("cisco", "tomt.local", "127.0.0.2", 5062, "tls", "other.tomt.local")


def pem_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_options_request_is_a_valid_sip_request() -> None:
    raw = options_request(ROUTE, "sipfed.tomt.local", ("127.0.0.1", 40000), "abc@sipfed.tomt.local")
    assert raw.endswith(b"\r\n\r\n")
    request = parse_message(raw)
    assert isinstance(request, Request)
    assert request.start_line() == "OPTIONS sip:other.tomt.local:5062;transport=tls SIP/2.0"
    assert request.top_via.branch.startswith("z9hG4bK")
    assert request.cseq == (1, "OPTIONS")
    assert request.call_id == "abc@sipfed.tomt.local"
    assert request.headers.get("max-forwards") == "70"
    assert request.headers.get("content-length") == "0"
    assert request.from_.param("tag")


def test_the_final_answer_is_read_past_keepalives_provisionals_and_other_transactions() -> None:
    provisional = b"SIP/2.0 100 Trying\r\ni: ours\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n"
    stranger = b"SIP/2.0 200 OK\r\nCall-ID: theirs\r\nCSeq: 1 OPTIONS\r\nContent-Length: 4\r\n\r\nbody"
    final = b"SIP/2.0 404 Not Found\r\nCALL-ID: ours\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"\r\n" + provisional + stranger + final)
        assert read_final(ours, "ours", b"", time.monotonic() + 5) == (404, "Not Found")
        theirs.close()
        assert read_final(ours, "ours", b"", time.monotonic() + 5) is None  # closed without an answer
    assert answer_to(provisional, "ours") == (100, "Trying")
    assert answer_to(stranger, "ours") is None
    with pytest.raises(NotSip, match=r"HTTP/1\.1 400"):
        answer_to(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "ours")


@pytest.mark.parametrize(
    ("reason", "alert"),
    [
        ("TLSV1_ALERT_UNKNOWN_CA", "48 unknown_ca"),
        ("SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "43 unsupported_certificate"),
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "116 certificate_required"),
        ("SSLV3_ALERT_CERTIFICATE_UNKNOWN", "46 certificate_unknown"),
        ("WRONG_VERSION_NUMBER", None),
    ],
)
def test_refusal_alerts_are_named(reason: str, alert: str | None) -> None:
    exc = ssl.SSLError(1, f"[SSL: {reason}] whatever (_ssl.c:1006)")
    found = refusal(exc)
    assert (f"{found.code} {found.name}" if found else None) == alert


def test_peer_chain_checks(pki: LabPki) -> None:
    leaf = pem_cert(pki.leaves["other.tomt.local"].cert)
    intermediate, root = pem_cert(pki.intermediate_cert), pem_cert(pki.ca_cert)
    assert check_peer_chain([leaf, intermediate], [root], "r").severity == "ok"
    missing = check_peer_chain([leaf], [root], "r")
    assert (missing.severity, "does not send its intermediate" in missing.cause) == ("error", True)
    copes = check_peer_chain([leaf], [root, intermediate], "r")  # the bundle has it: sipfed copes, others fail
    assert (copes.severity, "does not send its intermediate" in copes.cause) == ("warning", True)
    stranger = self_signed(["other.tomt.local"])
    assert "ends at the root" in check_peer_chain([stranger], [root], "r").cause


def test_peer_name_explains_a_cn_ignored_because_of_sans() -> None:
    finding = check_peer_name(self_signed(["else.tomt.local"], common_name="other.tomt.local"), ROUTE)
    assert finding.severity == "error"
    assert "its CN is 'other.tomt.local'" in finding.cause
    assert check_peer_name(self_signed(["other.tomt.local"]), ROUTE).severity == "ok"


def test_peer_validity_and_eku(pki: LabPki) -> None:
    leaf = pem_cert(pki.leaves["other.tomt.local"].cert)
    [soon] = check_peer_validity([leaf], "r", leaf.not_valid_after_utc - timedelta(days=3))
    assert (soon.severity, soon.check) == ("warning", "live.peer_validity")
    [gone] = check_peer_validity([leaf], "r", leaf.not_valid_after_utc + timedelta(seconds=1))
    assert "expired on" in gone.cause
    assert [f.severity for f in check_peer_eku(leaf, "r")] == ["ok"]


def test_live_without_routes_says_so(tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().split("[[routes]]")[0])
    assert run(path, True, live=True) == 0
    [finding] = [f for f in json.loads(capsys.readouterr().out) if f["check"].startswith("live.")]
    assert finding["cause"] == "no static routes: nothing to probe"
