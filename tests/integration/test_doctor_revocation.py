"""`sipfed doctor --live`, issue 16: our own certificate's CRL and OCSP URLs fetched as the far side will fetch them.

Our certificate is ``cups.crt`` of the ``openssl ca`` PKI of tests/integration/crl_lab.py: it names an ldap and an
http CRL distribution point (on 127.0.34.1) and an OCSP responder beside it. The CRL is served by the lab's
HTTP server, which the test starts and stops; ``sipfed doctor`` runs as a real process, as an admin runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.crl_lab import HOST, CrlServer, Pki, make_pki

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
DOCTOR_SECONDS = 30.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("openssl-ca"))


@pytest.fixture(scope="module")
def config(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sipfed with the openssl CA's cups.tomt.local as its own certificate; no routes: only our side is probed."""
    path = tmp_path_factory.mktemp("conf") / "sipfed.toml"
    path.write_text(f"""
[proxy]
fqdn = "cups.tomt.local"

[tls]
cert_chain = "{pki.dir / "cups.crt"}"
key = "{pki.dir / "cups.key"}"
ca_bundle = "{pki.dir / "ca.crt"}"
crl_timeout_seconds = 2

[[listeners]]
name = "cisco"
address = "127.0.0.1"
port = 0
""")
    return path


def serve(pki: Pki, crl: bytes) -> Iterator[CrlServer]:
    port = int(pki.url.rsplit(":", 1)[1].split("/")[0])
    server = CrlServer((HOST, port), {"/ca.crl": crl})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def crl_server(pki: Pki) -> Iterator[CrlServer]:
    yield from serve(pki, pki.crl_der)


@pytest.fixture
def stale_crl_server(pki: Pki) -> Iterator[CrlServer]:
    """The same URL serving a CRL of the same CA whose nextUpdate passed yesterday."""
    key = serialization.load_pem_private_key((pki.dir / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca.subject)
        .last_update(now - timedelta(days=8))
        .next_update(now - timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    yield from serve(pki, crl.public_bytes(serialization.Encoding.DER))


def doctor(config: Path) -> tuple[int, list[dict[str, str]]]:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "doctor", "--config", str(config), "--live", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DOCTOR_SECONDS,
        check=False,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def revocation(findings: list[dict[str, str]], kind: str) -> dict[str, str]:
    [found] = [f for f in findings if f["check"] == "live.revocation" and kind in f["cause"]]
    return found


def test_a_served_crl_and_a_reachable_responder_are_ok(config: Path, pki: Pki, crl_server: CrlServer) -> None:
    code, findings = doctor(config)
    crl = revocation(findings, "the CRL it names")
    assert (crl["severity"], crl["subject"]) == ("ok", "our certificate")
    fetched = f"the CRL it names, {pki.url}, can be fetched from here: current CRL of CN=tomt.it test CA,O=tomt.it"
    assert fetched in crl["cause"]
    ocsp = revocation(findings, "the OCSP responder")
    assert ocsp["severity"] == "ok"
    assert "reachable (HTTP 404 to a bare GET)" in ocsp["cause"]
    assert crl_server.hits["/ca.crl"] == 1
    [offline] = [f for f in findings if f["check"] == "cert.revocation"]
    assert f"CRL {pki.url}, OCSP {pki.url.replace('/ca.crl', '/ocsp')}" in offline["cause"]
    assert [f for f in findings if f["severity"] == "error"] == []
    assert code == 0


def test_a_crl_that_cannot_be_fetched_is_an_error_with_the_fix(config: Path, pki: Pki, crl_server: CrlServer) -> None:
    crl_server.stop()
    code, findings = doctor(config)
    crl = revocation(findings, "the CRL distribution point")
    assert crl["severity"] == "error"
    assert f"the CRL distribution point {pki.url} could not be fetched: connection refused" in crl["cause"]
    assert "refuses our certificate" in crl["cause"]
    assert crl["fix"].startswith(f"publish the CA's CRL at {pki.url} and make it reachable over HTTP")
    assert "Lync's Edge and CUP fetch it over HTTP" in crl["fix"]
    ocsp = revocation(findings, "the OCSP responder")  # nothing else answers either: no fallback
    assert (ocsp["severity"], "unreachable: connection refused" in ocsp["cause"]) == ("error", True)
    assert code == 1
    assert findings[0]["severity"] == "error"


def test_a_stale_crl_is_an_error(config: Path, pki: Pki, stale_crl_server: CrlServer) -> None:
    code, findings = doctor(config)
    crl = revocation(findings, "no longer current")
    assert crl["severity"] == "error"
    assert f"the CRL at {pki.url} is no longer current: STALE" in crl["cause"]
    assert "openssl ca -gencrl" in crl["fix"]
    assert stale_crl_server.hits["/ca.crl"] == 1
    assert code == 1
