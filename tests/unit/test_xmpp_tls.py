"""XMPP's TLS (proxy/net/xmpp_tls.py) in memory: two ``XmppTls`` ends shuttle their bytes to each other. The point
of pyOpenSSL here: a certificate that does not verify is a *verdict* the stream machine reads, not a failed
handshake, so a partner may still authenticate by dialback over an encrypted stream (XEP-0220 §1); and the
server asks for the client's certificate (XEP-0178) without requiring one. Also RFC 6120 §13.7.1.2's reference
identifiers: dNSName, SRV-ID ``_xmpp-server.`` and XmppAddr."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from proxy.admin.certs import make_lab_pki
from proxy.net.xmpp_tls import ID_ON_DNSSRV, ID_ON_XMPPADDR, XmppTls, reference_names, tls_context


def handshake(client: XmppTls, server: XmppTls, rounds: int = 10) -> None:
    """Shuttle bytes between the two ends until both are established (bounded)."""
    to_server = client.start()
    for _ in range(rounds):
        _, to_client = server.receive(to_server) if to_server else (b"", b"")
        _, to_server = client.receive(to_client) if to_client else (b"", b"")
        if client.established and server.established and not to_server:
            return
    raise AssertionError(f"no handshake in {rounds} rounds")


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ours = tmp_path_factory.mktemp("ours")
    theirs = tmp_path_factory.mktemp("theirs")
    make_lab_pki(ours, [["tomt.local", "tomt.it"], ["xmpp.test"]], key_type="ec")
    make_lab_pki(theirs, [["xmpp.test"]], key_type="ec")
    return ours, theirs


def ends(server_pki: Path, client_pki: Path, trust: Path, client_name: str = "tomt.local") -> tuple[XmppTls, XmppTls]:
    server = tls_context(server_pki / "xmpp.test.pem", server_pki / "xmpp.test.key", trust / "ca.crt", server=True)
    client = tls_context(
        client_pki / f"{client_name}.pem", client_pki / f"{client_name}.key", trust / "ca.crt", server=False
    )
    return XmppTls(client, server=False, server_name="xmpp.test"), XmppTls(server, server=True)


def test_a_trusted_peer_is_verified_both_ways(pkis: tuple[Path, Path]) -> None:
    ours, _ = pkis
    client, server = ends(ours, ours, ours)
    handshake(client, server)
    seen_by_client, seen_by_server = client.peer_cert(), server.peer_cert()
    assert seen_by_client.valid_for("xmpp.test")
    assert seen_by_server.valid_for("tomt.local")  # the client certificate XEP-0178 needs
    assert seen_by_server.valid_for("tomt.it")
    assert not seen_by_server.valid_for("xmpp.test")


def test_an_untrusted_certificate_is_a_verdict_not_a_failed_handshake(pkis: tuple[Path, Path]) -> None:
    ours, theirs = pkis
    client, server = ends(theirs, ours, ours)  # the server's certificate is from a CA the client does not know
    handshake(client, server)
    verdict = client.peer_cert()
    assert verdict.present
    assert not verdict.chain_valid
    assert "unable to get local issuer certificate" in verdict.problem
    assert "does not verify against our ca_bundle" in verdict.why_not("xmpp.test")
    # ...and the encrypted stream works all the same (dialback may authenticate it).
    assert server.receive(client.send(b"<stream:stream>"))[0] == b"<stream:stream>"


def test_the_server_asks_for_a_certificate_but_does_not_require_one(pkis: tuple[Path, Path]) -> None:
    ours, _ = pkis
    server_ctx = tls_context(ours / "xmpp.test.pem", ours / "xmpp.test.key", ours / "ca.crt", server=True)
    bare = SSL.Context(SSL.TLS_METHOD)  # a client with no certificate at all
    bare.set_verify(SSL.VERIFY_NONE, lambda *args: True)
    client = XmppTls(bare, server=False, server_name="xmpp.test")
    server = XmppTls(server_ctx, server=True)
    handshake(client, server)
    assert not server.peer_cert().present
    assert "presented no certificate" in server.peer_cert().why_not("tomt.local")


def _der_utf8(text: str) -> bytes:
    raw = text.encode()
    return bytes([0x0C, len(raw)]) + raw


def _der_ia5(text: str) -> bytes:
    raw = text.encode()
    return bytes([0x16, len(raw)]) + raw


def test_reference_identifiers_dns_srv_id_and_xmppaddr() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cn.example")])
    now = datetime.now(UTC)
    sans = x509.SubjectAlternativeName(
        [
            x509.DNSName("A.Test"),
            x509.OtherName(ID_ON_XMPPADDR, _der_utf8("b.test")),
            x509.OtherName(ID_ON_DNSSRV, _der_ia5("_xmpp-server.c.test")),
            x509.OtherName(ID_ON_DNSSRV, _der_ia5("_xmpp-client.d.test")),  # a client service: not a server's name
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(sans, critical=False)
        .sign(key, hashes.SHA256())
    )
    assert reference_names(cert) == ("a.test", "b.test", "c.test")  # the CN is not used when there are SANs
    bare = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert reference_names(bare) == ("cn.example",)  # RFC 6125 §6.4.4: the CN only without any SAN
