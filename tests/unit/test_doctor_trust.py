"""`sipfed doctor` offline, issue 16: a listener without client certificates facing a trusted peer, a CA bundle of
another CA than our chain's, and the revocation settings, judged on real lab certificates (``proxy.admin.certs``,
a second unrelated lab PKI, and certificates and a CRL signed here by the lab's intermediate)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from proxy.admin.certs import LabPki, make_lab_pki
from proxy.admin.doctor import diagnose, run
from proxy.admin.findings import Finding
from proxy.config import load_config
from proxy.x509 import load_certificate, load_private_key, short_name

OURS = ["sipfed.tomt.local", "sipfed.tomt.it"]
CRL_URL = "http://pki.tomt.local/tomt-issuing.crl"
OCSP_URL = "http://pki.tomt.local/ocsp"
LDAP_URL = "ldap:///CN=tomt-issuing,CN=CDP,DC=tomt,DC=local?certificateRevocationList?base"

# Lync's side as the field notes set it up: a listener per side, the static routes naming their listener.
TWO_SIDES = """
[[listeners]]
name = "cisco"
address = "127.0.0.1"
port = 5061

[[listeners]]
name = "lync"
address = "127.0.0.1"
port = 5062
fqdn = "sipfed.tomt.it"
require_client_cert = {lync_requires}

[[routes]]
name = "cisco"
match_uri = "tomt.local"
destination = "127.0.0.2"
port = 5062
tls_name = "cups.tomt.local"
listener = "cisco"

[[routes]]
name = "lync"
match_uri = "tomt.it"
destination = "127.0.0.3"
port = 5061
tls_name = "lync01.tomt.it"
listener = "lync"

[[peers]]
name = "cisco"
subjects = ["cups.tomt.local"]
domains = ["tomt.local"]
"""
LYNC_PEER = """
[[peers]]
name = "lync"
subjects = ["lync01.tomt.it"]
domains = ["tomt.it"]
answers_digest = false
microsoft = true
"""
# A peer bound by its network that sipfed challenges (digest): the listener's client certificates do not matter.
CHALLENGED_PEER = """
[[peers]]
name = "lync"
networks = ["10.1.0.0/16"]
domains = ["tomt.it"]
treat_as_authenticated = false
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    return make_lab_pki(tmp_path_factory.mktemp("pki"), [OURS], key_type="ec")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    """Another CA altogether: its root is what a wrong tls.ca_bundle holds."""
    return make_lab_pki(tmp_path_factory.mktemp("stranger"), [["cups.example.org"]], key_type="ec")


@pytest.fixture
def certs(pki: LabPki, stranger: LabPki, tmp_path: Path) -> Path:
    """A private copy of the PKI as `certs/` beside the config, with the stranger's root as `stranger-ca.crt`."""
    out = Path(shutil.copytree(pki.ca_cert.parent, tmp_path / "certs"))
    shutil.copy(stranger.ca_cert, out / "stranger-ca.crt")
    return out


def write_config(
    tmp_path: Path,
    body: str,
    *,
    chain: str = "sipfed.tomt.local.pem",
    key: str = "sipfed.tomt.local.key",
    bundle: str = "ca.crt",
    tls: str = "",
) -> Path:
    path = tmp_path / "sipfed.toml"
    path.write_text(f"""
[proxy]
fqdn = "sipfed.tomt.local"

[tls]
cert_chain = "certs/{chain}"
key = "certs/{key}"
ca_bundle = "certs/{bundle}"
{tls}
{body}
""")
    return path


def checked(path: Path, check: str) -> list[Finding]:
    findings = diagnose(load_config(path, check_own=False), datetime.now(UTC))  # as sipfed doctor reads it
    return [f for f in findings if f.check == check]


def name_of(path: Path) -> str:
    return short_name(load_certificate(path).subject)


# --- listener.client_cert ----------------------------------------------------------------------------------------


def test_a_lync_facing_listener_without_client_certificates_is_a_warning_naming_peer_listener_and_fix(
    tmp_path: Path, certs: Path
) -> None:
    path = write_config(tmp_path, TWO_SIDES.format(lync_requires="false") + LYNC_PEER)
    findings = checked(path, "listener.client_cert")
    [warning] = [f for f in findings if f.severity == "warning"]
    assert warning.subject == "listener lync"
    assert "listener lync (127.0.0.1:5062) does not require client certificates" in warning.cause
    trusted = "faces peer lync, trusted by its certificate subject (lync01.tomt.it) and treated as authenticated"
    assert trusted in warning.cause
    assert "its requests get the listener's untrusted policy, refuse (a bare 403" in warning.cause
    assert warning.fix == "set require_client_cert = true on listener lync"  # cisco faces the other side
    assert [f.severity for f in findings if f.subject == "listener cisco"] == ["ok"]
    assert run(path, False) == 0


def test_the_fix_names_a_listener_that_requires_certificates_and_its_port(tmp_path: Path, certs: Path) -> None:
    body = TWO_SIDES.format(lync_requires="false") + LYNC_PEER
    body += '\n[[listeners]]\nname = "peer-auth"\naddress = "127.0.0.1"\nport = 5063\nfqdn = "sipfed.tomt.it"\n'
    [warning] = [f for f in checked(write_config(tmp_path, body), "listener.client_cert") if f.severity == "warning"]
    assert warning.fix.startswith("set require_client_cert = true on listener lync, or point lync's static route")
    assert "at listener peer-auth (127.0.0.1:5063), which requires them" in warning.fix
    assert "Lync: the static route's -Port 5063; CUP: the TLS peer subject's port 5063" in warning.fix


def test_a_peer_treated_as_authenticated_by_network_alone_is_named(tmp_path: Path, certs: Path) -> None:
    body = TWO_SIDES.format(lync_requires="false") + (
        '\n[[peers]]\nname = "lync"\nnetworks = ["10.1.0.0/16"]\ndomains = ["tomt.it"]\n'
    )
    [warning] = [f for f in checked(write_config(tmp_path, body), "listener.client_cert") if f.severity == "warning"]
    assert "faces peer lync, treated as authenticated on its source address alone (10.1.0.0/16)" in warning.cause
    assert "any TLS client from those networks is taken for lync" in warning.cause
    assert warning.fix.endswith("name lync's certificate in its [[peers]] subjects")


def test_the_only_tls_listener_faces_every_peer_named_by_certificate(tmp_path: Path, certs: Path) -> None:
    """No route names a listener: the one TLS listener is still where a certificate-named peer must arrive."""
    body = """
[[listeners]]
name = "edge"
address = "127.0.0.1"
port = 5061
require_client_cert = false

[[peers]]
name = "cisco"
subjects = ["cups.tomt.local"]
"""
    [finding] = checked(write_config(tmp_path, body), "listener.client_cert")
    assert (finding.severity, finding.subject) == ("warning", "listener edge")
    assert "faces peer cisco, trusted by its certificate subject (cups.tomt.local)" in finding.cause


@pytest.mark.parametrize(
    ("lync_requires", "peer", "words"),
    [("true", LYNC_PEER, "requires a client certificate"), ("false", CHALLENGED_PEER, "faces no peer trusted by")],
    ids=["mutual-tls", "challenged-peer"],
)
def test_nothing_to_warn_of(tmp_path: Path, certs: Path, lync_requires: str, peer: str, words: str) -> None:
    findings = checked(
        write_config(tmp_path, TWO_SIDES.format(lync_requires=lync_requires) + peer), "listener.client_cert"
    )
    assert [f.severity for f in findings] == ["ok", "ok"]
    [lync] = [f for f in findings if f.subject == "listener lync"]
    assert words in lync.cause


# --- cert.chain: another CA's bundle -----------------------------------------------------------------------------

ONE_SIDE = '[[listeners]]\nname = "cisco"\naddress = "127.0.0.1"\nport = 5061\n'


def test_a_bundle_of_another_ca_says_so_and_does_not_ask_for_the_intermediate(tmp_path: Path, certs: Path) -> None:
    path = write_config(tmp_path, ONE_SIDE, bundle="stranger-ca.crt")
    [error] = checked(path, "cert.chain")
    ours, theirs = name_of(certs / "ca.crt"), name_of(certs / "stranger-ca.crt")
    assert error.severity == "error"
    assert error.cause.startswith(f"tls.ca_bundle is another CA's: it holds {theirs!r}, none of which issued our chain")
    assert f"whose issuer {ours!r} is not in it either" in error.cause
    assert "unknown CA" in error.cause
    assert error.fix.startswith(f"put the CA that issued the peers' certificates in tls.ca_bundle, and ours ({ours!r})")
    assert "(the intermediate) after ours" not in error.fix
    assert run(path, False) == 1


def test_a_whole_chain_up_to_our_root_against_another_cas_bundle(tmp_path: Path, certs: Path) -> None:
    (certs / "whole.pem").write_bytes((certs / "sipfed.tomt.local.pem").read_bytes() + (certs / "ca.crt").read_bytes())
    [error] = checked(write_config(tmp_path, ONE_SIDE, chain="whole.pem", bundle="stranger-ca.crt"), "cert.chain")
    ours = name_of(certs / "ca.crt")
    assert error.cause.startswith("tls.ca_bundle is another CA's")
    assert f"ends at the root {ours!r}, which is not in it" in error.cause
    assert f"and ours ({ours!r}) too if the peers' certificates come from the same CA" in error.fix


@pytest.mark.parametrize("bundle", ["ca.crt", "stranger-ca.crt"])
def test_our_certificate_alone_still_asks_for_the_intermediate_and_names_the_bundles_ca(
    tmp_path: Path, certs: Path, bundle: str
) -> None:
    """Without the intermediate, which root it chains to cannot be known: the fix says what the bundle must hold."""
    shutil.copy(certs / "sipfed.tomt.local.crt", certs / "leaf-only.pem")
    [error] = checked(write_config(tmp_path, ONE_SIDE, chain="leaf-only.pem", bundle=bundle), "cert.chain")
    intermediate = name_of(certs / "intermediate.crt")
    assert "unable to get local issuer certificate" in error.cause
    assert error.fix.startswith(f"append the certificate of {intermediate!r} (the intermediate) after ours")
    held = name_of(certs / bundle)
    assert f"tls.ca_bundle must hold the root that {intermediate!r} chains to (it holds {held!r})" in error.fix


def test_the_right_bundle_is_still_ok(tmp_path: Path, certs: Path) -> None:
    [finding] = checked(write_config(tmp_path, ONE_SIDE), "cert.chain")
    assert finding.severity == "ok"


# --- tls.revocation and cert.revocation --------------------------------------------------------------------------


def signed_by_intermediate(certs: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    issuer = load_certificate(certs / "intermediate.crt")
    key = load_private_key(certs / "intermediate.key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return issuer, key


def write_crl(certs: Path) -> Path:
    """A current, empty CRL of the lab intermediate (DER), as a local tls.crl_files entry."""
    issuer, key = signed_by_intermediate(certs)
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=7))
        .sign(key, hashes.SHA256())
    )
    path = certs / "intermediate.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    return path


def leaf_with_pointers(certs: Path, stem: str, crl_urls: list[str], ocsp_urls: list[str]) -> None:
    """Our names, issued by the lab intermediate, naming these CRL distribution points and OCSP responders."""
    issuer, issuer_key = signed_by_intermediate(certs)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, OURS[0])]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in OURS]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(u)], None, None, None) for u in crl_urls]
            ),
            critical=False,
        )
    )
    if ocsp_urls:
        access = [
            x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(u))
            for u in ocsp_urls
        ]
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (certs / f"{stem}.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + issuer.public_bytes(serialization.Encoding.PEM)
    )
    (certs / f"{stem}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.mark.parametrize(
    ("tls", "severity", "words"),
    [
        ("", "ok", "soft-fail: a revoked peer certificate is refused, one whose CRL cannot be had is admitted"),
        ('revocation = "off"', "warning", "off: sipfed checks no CRL, so a peer certificate its CA has revoked"),
        (
            'revocation = "hard-fail"',
            "warning",
            "every peer certificate must name an http CRL distribution point that sipfed can reach, else it is refused",
        ),
        ('revocation = "hard-fail"\ncrl_files = ["certs/intermediate.crl"]', "ok", "1 local CRL file(s)"),
    ],
    ids=["default-soft-fail", "off", "hard-fail-without-files", "hard-fail-with-files"],
)
def test_the_revocation_mode_is_reported(tmp_path: Path, certs: Path, tls: str, severity: str, words: str) -> None:
    write_crl(certs)
    [finding] = checked(write_config(tmp_path, ONE_SIDE, tls=tls), "tls.revocation")
    assert (finding.severity, finding.subject) == (severity, "[tls] revocation")
    assert words in finding.cause
    assert bool(finding.fix) is (severity == "warning")


def test_our_revocation_urls_are_listed(tmp_path: Path, certs: Path) -> None:
    leaf_with_pointers(certs, "pointed", [LDAP_URL, CRL_URL], [OCSP_URL])
    [finding] = checked(write_config(tmp_path, ONE_SIDE, chain="pointed.pem", key="pointed.key"), "cert.revocation")
    assert (finding.severity, finding.subject) == ("ok", "certs/pointed.pem")
    assert f"names its revocation status at CRL {CRL_URL}, OCSP {OCSP_URL}" in finding.cause


@pytest.mark.parametrize(("peer", "severity"), [("", "ok"), (LYNC_PEER, "warning")], ids=["no-lync", "lync"])
def test_a_certificate_without_revocation_urls_is_a_note_and_a_warning_toward_lync(
    tmp_path: Path, certs: Path, peer: str, severity: str
) -> None:
    body = TWO_SIDES.format(lync_requires="true") + peer
    [finding] = checked(write_config(tmp_path, body), "cert.revocation")  # the lab's certificate names none
    assert finding.severity == severity
    assert "our certificate names no http CRL distribution point and no OCSP responder" in finding.cause
    assert "peers that require revocation checking (Lync does by default" in finding.cause
    assert "unless they hold our CA's CRL locally" in finding.cause
    assert ("reissue our certificate from a CA whose CRL distribution point is an http URL" in finding.fix) is (
        severity == "warning"
    )


def test_an_ldap_only_distribution_point_is_named(tmp_path: Path, certs: Path) -> None:
    leaf_with_pointers(certs, "ldap-only", [LDAP_URL], [])
    [finding] = checked(write_config(tmp_path, ONE_SIDE, chain="ldap-only.pem", key="ldap-only.key"), "cert.revocation")
    assert f"names no http CRL distribution point (only {LDAP_URL}, which partners outside our network" in finding.cause
