"""TlsSession (server-side TLS over memory BIOs) against a stdlib client, all in memory."""

from __future__ import annotations

import ssl

import pytest

from proxy.admin.certs import LabPki, make_lab_pki
from proxy.net.tls_session import TlsSession

SERVER, CLIENT = "sip.a.example", "sip.b.example"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    return make_lab_pki(tmp_path_factory.mktemp("pki"), [[SERVER], [CLIENT]])


def contexts(pki: LabPki) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    server.load_cert_chain(str(pki.leaves[SERVER].chain), str(pki.leaves[SERVER].key))
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    client.load_cert_chain(str(pki.leaves[CLIENT].chain), str(pki.leaves[CLIENT].key))
    return server, client


class Client:
    """A stdlib TLS client over memory BIOs, wired to a TlsSession by hand."""

    def __init__(self, context: ssl.SSLContext, session: TlsSession) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname=SERVER)
        self.session = session

    def to_server(self) -> bytes:
        plaintext, reply = self.session.receive(self.outgoing.read())
        self.incoming.write(reply)
        return plaintext

    def handshake(self) -> None:
        for _ in range(10):  # bounded: TLS 1.3 with client certificates takes two flights each way
            try:
                self.obj.do_handshake()
                self.to_server()
                return
            except ssl.SSLWantReadError:
                self.to_server()
        raise AssertionError("handshake did not finish")


def test_plaintext_both_ways_and_close_notify_answered(pki: LabPki) -> None:
    server_ctx, client_ctx = contexts(pki)
    session = TlsSession(server_ctx)
    client = Client(client_ctx, session)
    client.handshake()
    assert session.handshaken
    client.obj.write(b"OPTIONS sip:a SIP/2.0\r\n\r\n")
    assert client.to_server() == b"OPTIONS sip:a SIP/2.0\r\n\r\n"
    client.incoming.write(session.send(b"SIP/2.0 200 OK\r\n\r\n"))
    assert client.obj.read(100) == b"SIP/2.0 200 OK\r\n\r\n"
    assert not session.closed
    # A graceful close (what asyncio's and most stacks' close() sends): CPython's read() returns b"" for it.
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()
    assert client.to_server() == b""
    assert session.closed
    client.obj.unwrap()  # completes: the session answered with its own close_notify
