"""`sipfed certs`: the lab PKI avoids the two field mistakes (no clientAuth, no intermediate sent).

One PKI is built per module; tests that change files work on a copy of it.
"""

import argparse
import shutil
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from proxy.admin.certs import (
    CertError,
    LabPki,
    LeafFiles,
    add_arguments,
    dns_name_problem,
    issue_leaf,
    make_lab_pki,
    run,
)

SERVER = "sip.a.example"
CLIENT = "sip.b.example"
TIMEOUT_SECONDS = 5.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    out_dir = tmp_path_factory.mktemp("pki")
    pki = make_lab_pki(out_dir, [[SERVER, "a.example"], [CLIENT]], ip_addresses=("127.0.0.1", "::1"))
    issue_leaf(out_dir, [CLIENT], eku=("serverAuth",), key_type="ec", file_stem="no-client-auth")
    return pki


@pytest.fixture
def pki_copy(pki: LabPki, tmp_path: Path) -> Path:
    """A private copy of the module's PKI directory, for tests that write to it."""
    return Path(shutil.copytree(pki.ca_cert.parent, tmp_path / "pki"))


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sipfed certs")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def no_client_auth(pki: LabPki) -> LeafFiles:
    """The fixture's deliberately broken leaf: EKU serverAuth only."""
    out_dir = pki.ca_cert.parent
    return LeafFiles(*(out_dir / f"no-client-auth.{ext}" for ext in ("key", "crt", "pem")))


def eku_of(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# --- files and extensions ------------------------------------------------------------------


def test_every_file_is_written_and_keys_are_private(pki: LabPki) -> None:
    out_dir = pki.ca_cert.parent
    assert set(pki.leaves) == {SERVER, CLIENT}
    leaf = pki.leaves[SERVER]
    assert leaf == LeafFiles(out_dir / f"{SERVER}.key", out_dir / f"{SERVER}.crt", out_dir / f"{SERVER}.pem")
    for key in (out_dir / "ca.key", out_dir / "intermediate.key", leaf.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pki.intermediate_cert == out_dir / "intermediate.crt"
    assert [event.line() for event in pki.events][:2] == [
        f"wrote {out_dir / 'ca.key'}",
        f"wrote {out_dir / 'ca.crt'}",
    ]
    assert len(pki.events) == 4 + 3 * 2
    assert not list(out_dir.glob(".*.tmp"))


def test_leaf_has_server_and_client_auth_and_every_name(pki: LabPki) -> None:
    leaf = load(pki.leaves[SERVER].cert)
    assert eku_of(leaf) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SERVER
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [SERVER, "a.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    key_usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.digital_signature
    assert key_usage.value.key_encipherment
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc > timedelta(days=825)


def test_root_and_intermediate_are_constrained_cas(pki: LabPki) -> None:
    root, intermediate = load(pki.ca_cert), load(pki.intermediate_cert)
    root_bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert root_bc.critical
    assert root_bc.value.ca
    root_ku = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert root_ku.key_cert_sign
    assert root_ku.crl_sign
    assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value == (
        x509.BasicConstraints(ca=True, path_length=0)
    )
    assert root.not_valid_after_utc - root.not_valid_before_utc >= timedelta(days=3650)
    assert root.subject != intermediate.subject


def test_chain_file_is_leaf_then_intermediate(pki: LabPki) -> None:
    chain = x509.load_pem_x509_certificates(pki.leaves[SERVER].chain.read_bytes())
    assert chain == [load(pki.leaves[SERVER].cert), load(pki.intermediate_cert)]
    chain[0].verify_directly_issued_by(chain[1])
    chain[1].verify_directly_issued_by(load(pki.ca_cert))


@pytest.mark.parametrize("name", [SERVER, CLIENT])
def test_chain_verifies_as_server_and_as_client(pki: LabPki, name: str) -> None:
    leaf, intermediate = x509.load_pem_x509_certificates(pki.leaves[name].chain.read_bytes())
    builder = PolicyBuilder().store(Store([load(pki.ca_cert)])).time(datetime.now(UTC))
    server_path = builder.build_server_verifier(x509.DNSName(name)).verify(leaf, [intermediate])
    assert [cert.subject for cert in server_path] == [
        leaf.subject,
        intermediate.subject,
        load(pki.ca_cert).subject,
    ]
    client = builder.build_client_verifier().verify(leaf, [intermediate])
    assert x509.DNSName(name) in (client.subjects or [])


def test_leaf_without_client_auth_fails_client_verification(pki: LabPki) -> None:
    leaf = load(no_client_auth(pki).cert)
    assert eku_of(leaf) == {ExtendedKeyUsageOID.SERVER_AUTH}
    key_usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not key_usage.key_encipherment  # RFC 8813: not for an EC key
    builder = PolicyBuilder().store(Store([load(pki.ca_cert)]))
    with pytest.raises(VerificationError):
        builder.build_client_verifier().verify(leaf, [load(pki.intermediate_cert)])


def test_issue_leaf_honours_validity_and_stem(pki_copy: Path) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    files = issue_leaf(
        pki_copy,
        ["wrong.example"],
        key_type="ec",
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
        file_stem="expired",
    )
    assert files.cert == pki_copy / "expired.crt"
    assert load(files.cert).not_valid_after_utc == now - timedelta(days=1)
    with pytest.raises(CertError, match="is not after"):
        issue_leaf(pki_copy, ["x.example"], key_type="ec", now=now, not_after=now - timedelta(hours=2))
    with pytest.raises(CertError, match="eku 'codeSigning'"):
        issue_leaf(pki_copy, ["x.example"], eku=("codeSigning",))


# --- mutual TLS with the standard library ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    server: str | OSError
    """The client certificate's CN as the server saw it, or the server's error."""
    client: bytes | OSError
    """What the client read after the handshake, or its error."""


def _serve(listener: socket.socket, context: ssl.SSLContext, result: list[str | OSError]) -> None:
    try:
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT_SECONDS)
        with context.wrap_socket(conn, server_side=True) as tls:
            peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
            result.append(str(peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value))
            tls.sendall(b"ok")
    except OSError as exc:
        result.append(exc)


def handshake(ca: Path, server: tuple[Path, Path], client: LeafFiles, server_hostname: str) -> Outcome:
    """Mutual TLS on 127.0.0.1; `server` is (certificate file, key file)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*server)
    server_ctx.load_verify_locations(ca)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_cert_chain(client.chain, client.key)
    client_ctx.load_verify_locations(ca)
    result: list[str | OSError] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT_SECONDS)
        thread = threading.Thread(target=_serve, args=(listener, server_ctx, result))
        thread.start()
        client_result: bytes | OSError
        try:
            with (
                socket.create_connection(listener.getsockname(), TIMEOUT_SECONDS) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                client_result = tls.recv(2)
        except OSError as exc:
            client_result = exc
        thread.join(TIMEOUT_SECONDS)
    assert not thread.is_alive()
    return Outcome(result[0], client_result)


def test_mutual_tls_succeeds_with_chain_files(pki: LabPki) -> None:
    server = pki.leaves[SERVER]
    outcome = handshake(pki.ca_cert, (server.chain, server.key), pki.leaves[CLIENT], SERVER)
    assert outcome == Outcome(CLIENT, b"ok")


def test_mutual_tls_fails_for_a_wrong_name(pki: LabPki) -> None:
    server = pki.leaves[SERVER]
    outcome = handshake(pki.ca_cert, (server.chain, server.key), pki.leaves[CLIENT], "other.example")
    assert isinstance(outcome.client, ssl.SSLCertVerificationError)
    assert "other.example" in str(outcome.client)


def test_server_without_its_intermediate_is_refused(pki: LabPki) -> None:
    """Field mistake 2: the client trusts only the root, so it needs the intermediate sent."""
    server = pki.leaves[SERVER]
    outcome = handshake(pki.ca_cert, (server.cert, server.key), pki.leaves[CLIENT], SERVER)
    assert isinstance(outcome.client, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(outcome.client)


def test_client_without_client_auth_is_refused(pki: LabPki) -> None:
    """Field mistake 1: the server answers alert 43 unsupported_certificate."""
    server = pki.leaves[SERVER]
    outcome = handshake(pki.ca_cert, (server.chain, server.key), no_client_auth(pki), SERVER)
    assert isinstance(outcome.server, ssl.SSLCertVerificationError)
    assert "unsuitable certificate purpose" in str(outcome.server)
    assert isinstance(outcome.client, ssl.SSLError)
    assert "UNSUPPORTED_CERTIFICATE" in str(outcome.client)


# --- reuse, --force and the CLI ---------------------------------------------------------------


def test_second_call_reuses_the_ca_and_keeps_leaves(pki_copy: Path) -> None:
    ca_before = (pki_copy / "ca.crt").read_bytes()
    leaf_before = (pki_copy / f"{SERVER}.crt").read_bytes()
    again = make_lab_pki(pki_copy, [[SERVER, "a.example"], ["sip.c.example"]], key_type="ec")
    assert (pki_copy / "ca.crt").read_bytes() == ca_before
    assert (pki_copy / f"{SERVER}.crt").read_bytes() == leaf_before
    lines = [event.line() for event in again.events]
    assert f"kept {pki_copy / 'ca.crt'}" in lines
    assert f"kept {pki_copy / f'{SERVER}.crt'} (names differ; --force to reissue)" in lines
    assert f"wrote {pki_copy / 'sip.c.example.pem'}" in lines
    load(pki_copy / "sip.c.example.crt").verify_directly_issued_by(load(again.intermediate_cert))


def test_cli_keeps_then_force_reissues(pki_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_before = (pki_copy / "ca.crt").read_bytes()
    leaf_before = (pki_copy / f"{CLIENT}.crt").read_bytes()
    argv = ["--out", str(pki_copy), "--name", CLIENT, "--ip", "127.0.0.1", "--ip", "::1"]
    assert run_cli(argv) == 0
    assert f"kept {pki_copy / f'{CLIENT}.key'}\n" in capsys.readouterr().out
    assert run_cli(["--out", str(pki_copy), "--name", CLIENT, "--force"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {pki_copy / f'{CLIENT}.pem'}\n" in out
    assert f"kept {pki_copy / 'ca.crt'}\n" in out
    assert (pki_copy / "ca.crt").read_bytes() == ca_before
    assert (pki_copy / f"{CLIENT}.crt").read_bytes() != leaf_before


@pytest.mark.parametrize(
    ("value", "bad"),
    [
        ("bad_name.example", "bad_name.example"),
        ("ok.example,*.example", "*.example"),
        ("example.com.", "example.com."),
        ("-dash.example", "-dash.example"),
        ("10.0.0.1", "10.0.0.1"),
        ("ok.example,", ""),
    ],
)
def test_cli_rejects_a_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, bad: str) -> None:
    assert run_cli(["--out", str(tmp_path / "pki"), f"--name={value}"]) == 2
    assert f"--name {bad!r}" in capsys.readouterr().err
    assert not (tmp_path / "pki").exists()


def test_cli_reports_every_problem_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--name", "a.example", "--name", "A.example"]
    assert run_cli([*argv, "--ip", "1.2.3", "--days", "0"]) == 2
    err = capsys.readouterr().err
    assert "--name 'a.example': given twice" in err
    assert "--ip '1.2.3'" in err
    assert "--days 0" in err


def test_cli_reports_an_unwritable_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("not a directory")
    assert run_cli(["--out", str(tmp_path / "file" / "pki"), "--name", "a.example"]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_intermediate_from_another_root_is_refused(pki_copy: Path) -> None:
    (pki_copy / "ca.crt").unlink()
    (pki_copy / "ca.key").unlink()
    with pytest.raises(CertError, match=r"intermediate\.crt was not issued by"):
        make_lab_pki(pki_copy, [[SERVER]], key_type="ec")


def test_expired_ca_is_refused(pki_copy: Path) -> None:
    with pytest.raises(CertError, match=r"ca\.crt is not valid now"):
        make_lab_pki(pki_copy, [[SERVER]], now=datetime(2100, 1, 1, tzinfo=UTC))


def test_ca_without_its_key_is_refused(pki_copy: Path) -> None:
    (pki_copy / "ca.key").unlink()
    with pytest.raises(CertError, match=r"ca\.key is missing"):
        make_lab_pki(pki_copy, [[SERVER]])


@pytest.mark.parametrize("name", ["sip.example.com", "a", "3com.example", "xn--bcher-kva.example"])
def test_dns_name_accepts_host_names(name: str) -> None:
    assert dns_name_problem(name) is None


@pytest.mark.parametrize("name", ["a..b", "a" * 64 + ".example", "bücher.example", "host.123"])
def test_dns_name_rejects_non_host_names(name: str) -> None:
    assert dns_name_problem(name) is not None
