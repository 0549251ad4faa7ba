"""TLS for XMPP streams, started in the middle of a connection (STARTTLS, RFC 6120 §5), over memory BIOs.

pyOpenSSL rather than the ssl module: XMPP federation needs the partner's certificate *and* the verdict on
it, without the handshake failing when it does not verify. A partner whose CA we do not trust may still
authenticate by dialback over the encrypted stream (XEP-0220 §1), and a server that offers SASL EXTERNAL
must see the client certificate first (XEP-0178); the ssl module either refuses such a handshake or never
asks for the certificate. The verify callback here records every error and lets the handshake finish; the
stream state machine then decides per partner (``PeerCert.valid_for``).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier
from OpenSSL import SSL

from proxy.xmpp.stream import PeerCert

ID_ON_XMPPADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
"""RFC 6120 §13.7.1.4: an XmppAddr in a subjectAltName otherName."""
ID_ON_DNSSRV = ObjectIdentifier("1.3.6.1.5.5.7.8.7")
"""RFC 4985: an SRVName (``_xmpp-server.example.com``)."""
#: OpenSSL's X509_V_ERR_* codes, in words (x509_vfy.h), the ones a federation meets.
VERIFY_ERRORS = {
    2: "unable to get the issuer's certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in the chain",
    20: "unable to get local issuer certificate (its CA is not in our ca_bundle)",
    21: "unable to verify the first certificate (the chain is incomplete)",
    23: "certificate revoked",
    26: "unsupported certificate purpose",
}


def tls_context(cert_chain: Path, key: Path, ca_bundle: Path | None, server: bool) -> SSL.Context:
    """TLS 1.2 or newer, our chain and key (presented as server, and as client for XEP-0178), the peer's
    certificate asked for and verified against ``ca_bundle`` but never fatal (the module docstring)."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate_chain_file(str(cert_chain))
    context.use_privatekey_file(str(key))
    context.check_privatekey()
    if ca_bundle is not None:
        context.load_verify_locations(str(ca_bundle))
    context.set_verify(SSL.VERIFY_PEER, _record_verdict)
    if server:
        context.set_session_id(b"sipfed-xmpp")
    return context


def _record_verdict(connection: SSL.Connection, certificate: object, errno: int, depth: int, ok: int) -> bool:
    if not ok:
        errors = connection.get_app_data()
        if isinstance(errors, list):
            errors.append(VERIFY_ERRORS.get(errno, f"verify error {errno}") + (f" (depth {depth})" if depth else ""))
    return True  # the stream decides (PeerCert), the handshake goes on


class XmppTls:
    """One connection's TLS: bytes in, plaintext and bytes to send out."""

    def __init__(self, context: SSL.Context, *, server: bool, server_name: str | None = None) -> None:
        self.conn = SSL.Connection(context, None)
        self.errors: list[str] = []
        self.conn.set_app_data(self.errors)
        if server:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()
            if server_name:
                self.conn.set_tlsext_host_name(server_name.encode("idna"))
        self.established = False
        self.closed = False

    def start(self) -> bytes:
        """The client's first flight (ClientHello); nothing for a server."""
        self._handshake()
        return self._pending()

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed what arrived; (plaintext, bytes to send). Raises ``SSL.Error`` when the handshake fails."""
        self.conn.bio_write(data)
        if not self.established:
            self._handshake()
            if not self.established:
                return b"", self._pending()
        chunks = []
        while True:
            try:
                chunk = self.conn.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closed = True
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), self._pending()

    def send(self, plaintext: bytes) -> bytes:
        self.conn.sendall(plaintext)
        return self._pending()

    def _handshake(self) -> None:
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            return
        self.established = True

    def pending(self) -> bytes:
        """What OpenSSL wrote and nobody sent yet (an alert after a failed handshake)."""
        return self._pending()

    def _pending(self) -> bytes:
        out = []
        while True:
            try:
                out.append(self.conn.bio_read(65536))
            except SSL.WantReadError:
                break
        return b"".join(out)

    def peer_cert(self) -> PeerCert:
        """What the other server presented, with the verify callback's verdict."""
        cert = self.conn.get_peer_certificate()
        if cert is None:
            return PeerCert()
        return PeerCert(True, not self.errors, reference_names(cert.to_cryptography()), "; ".join(self.errors))

    def version(self) -> str:
        return self.conn.get_protocol_version_name()


def reference_names(cert: x509.Certificate) -> tuple[str, ...]:
    """RFC 6120 §13.7.1.2 / RFC 6125 §6.2: dNSNames, SRV-IDs for ``_xmpp-server``, XmppAddrs; the CN only
    when the certificate has no subjectAltName at all (RFC 6125 §6.4.4)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return tuple(str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    names = [name.lower() for name in sans.get_values_for_type(x509.DNSName)]
    for other in sans.get_values_for_type(x509.OtherName):
        text = _der_string(other.value)
        if other.type_id == ID_ON_XMPPADDR and text:
            names.append(text.lower())
        elif other.type_id == ID_ON_DNSSRV and text.lower().startswith("_xmpp-server."):
            names.append(text[len("_xmpp-server.") :].lower())
    return tuple(dict.fromkeys(names))


def _der_string(der: bytes) -> str:
    """A DER UTF8String or IA5String (the types XmppAddr and SRVName use), '' for anything else."""
    if len(der) < 2 or der[0] not in (0x0C, 0x16):
        return ""
    length, start = der[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, start = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    try:
        return der[start : start + length].decode("utf-8")
    except UnicodeDecodeError:
        return ""
