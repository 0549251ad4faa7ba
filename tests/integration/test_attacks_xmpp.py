"""Attacks on the live process's XMPP listener (issue 15: every input path passes the same admission rules).

A hostile server speaks raw XMPP to sipfed's S2S port: streams from domains that are not partners, stanzas
before authentication or from a domain other than the one proven, a forged dialback key, XML bombs, oversized
and deeply nested stanzas, a SASL attempt without a certificate, TLS skipped where it is required, a flood of
unauthenticated connections and a connection that never negotiates. Each gets the RFC 6120 §4.9 stream error
and a closed connection; nothing reaches the SIP side; the process keeps serving.

The partner's Authoritative Server is a small test server here (``FakeAuthority``): it answers ``db:verify``
with whatever verdict the test wants, so dialback can be driven without Prosody.
"""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Sipfed, free_port, lab_config
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
    "xmlns:db='jabber:server:dialback' version='1.0'{attrs}>"
)
WAIT = 10.0


class FakeAuthority(socketserver.ThreadingTCPServer):
    """The partner's Authoritative Server for XEP-0220: answers every ``db:verify`` with ``verdict``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, verdict: str) -> None:
        super().__init__((address, 0), _AuthorityHandler)
        self.verdict = verdict
        self.asked: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class _AuthorityHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, FakeAuthority)
        sock: socket.socket = self.request
        sock.settimeout(WAIT)
        seen = b""
        sent_header = False
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                seen += chunk
                if not sent_header and b"<stream:stream" in seen:
                    sock.sendall(
                        HEADER.format(attrs=" id='AUTH1' from='xmpp.test'").encode()
                        + b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
                    )
                    sent_header = True
                found = re.search(rb"<(?:db:)?verify [^>]*id='([^']*)'[^>]*>([^<]*)</(?:db:)?verify>", seen)
                if found:
                    server.asked.append(found.group(2).decode())
                    stream_id = found.group(1).decode()
                    sock.sendall(
                        f"<db:verify from='xmpp.test' to='tomt.local' id='{stream_id}' "
                        f"type='{server.verdict}'/>".encode()
                    )
                    seen = seen[found.end() :]


class RawServer:
    """A hostile (or simply other) XMPP server's raw connection to sipfed's S2S port."""

    def __init__(self, port: int, source: str = "127.0.31.9") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT, source_address=(source, 0))
        self.got = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def open(self, frm: str = "xmpp.test", to: str = "tomt.local") -> str:
        attrs = (f" from='{frm}'" if frm else "") + f" to='{to}'"
        self.send(HEADER.format(attrs=attrs))
        return self.until(rb"</stream:features>|</stream:stream>")

    def until(self, pattern: bytes, timeout: float = WAIT) -> str:
        """Read until ``pattern`` shows (a deadline, not a pause); the text so far."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.got):
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no {pattern!r} within {timeout:g} s; got {self.got!r}") from None
            if not chunk:
                raise AssertionError(f"closed before {pattern!r}; got {self.got!r}")
            self.got += chunk
        return self.got.decode(errors="replace")

    def closed(self, timeout: float = WAIT) -> bool:
        """True once sipfed has closed the connection (read to EOF, bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except OSError:
                return True
            if not chunk:
                return True
            self.got += chunk
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def stream_error(text: str) -> str:
    found = re.search(r"<stream:error><([a-z-]+) xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", text)
    return found.group(1) if found else ""


XMPP = """
[xmpp]
listen = "127.0.0.1:0"
domains = ["tomt.local", "tomt.it"]
store = ":memory:"
dialback_secret = "test-secret"
connect_timeout_seconds = {connect_timeout}

[[xmpp.partners]]
name = "jabber"
primary_domain = "xmpp.test"
tls = "optional"
sasl = "optional"
address = "127.0.31.2:{authority}"

[[xmpp.partners]]
name = "strict"
primary_domain = "strict.test"
tls = "required"
sasl = "required"
dialback = false
"""


@pytest.fixture
def target(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> Iterator[tuple[Sipfed, FakeAuthority]]:
    authority = FakeAuthority("127.0.31.2", "invalid")
    config = lab_config(
        tmp_path / "x.toml",
        certs,
        cups_port=free_port("127.0.0.2"),
        lync_port=free_port("127.0.0.3"),
        extra=XMPP.format(authority=authority.port, connect_timeout=2),
    )
    try:
        yield start_sipfed(config), authority
    finally:
        authority.close()


def serving(sipfed: Sipfed) -> None:
    """The process still answers a well-formed stream from a partner with features."""
    good = RawServer(sipfed.ports["xmpp"], source="127.0.31.8")
    try:
        assert "<stream:features>" in good.open()
    finally:
        good.close()


@pytest.mark.parametrize(
    ("frm", "to", "condition", "words"),
    [
        ("evil.example", "tomt.local", "policy-violation", "evil.example is not an XMPP allowed partner"),
        ("", "tomt.local", "policy-violation", "names no 'from'"),
        ("xmpp.test", "elsewhere.example", "host-unknown", "elsewhere.example is not a domain of this server"),
    ],
)
def test_a_stream_from_a_stranger_is_refused_and_closed(
    target: tuple[Sipfed, FakeAuthority], frm: str, to: str, condition: str, words: str
) -> None:
    sipfed, _ = target
    raw = RawServer(sipfed.ports["xmpp"])
    try:
        assert stream_error(raw.open(frm, to)) == condition
        assert raw.closed()
    finally:
        raw.close()
    sipfed.wait_for_log(words)  # in words, with the fix
    serving(sipfed)


def test_a_stanza_before_authentication_is_not_authorized_and_never_relayed(
    target: tuple[Sipfed, FakeAuthority],
) -> None:
    sipfed, _ = target
    raw = RawServer(sipfed.ports["xmpp"])
    try:
        raw.open()
        raw.send("<message from='romeo@xmpp.test' to='alice@tomt.local' type='chat'><body>sneaky</body></message>")
        assert stream_error(raw.until(rb"</stream:stream>")) == "not-authorized"
        assert raw.closed()
    finally:
        raw.close()
    assert "route cisco" not in sipfed.log_text()  # nothing tried to reach the SIP side


def test_a_forged_dialback_key_is_refused_by_the_authoritative_server(target: tuple[Sipfed, FakeAuthority]) -> None:
    sipfed, authority = target
    raw = RawServer(sipfed.ports["xmpp"])
    try:
        raw.open()
        raw.send("<db:result from='xmpp.test' to='tomt.local'>0123456789abcdef</db:result>")
        text = raw.until(rb"</stream:stream>")
        assert "type='invalid'" in text
        assert stream_error(text) == "not-authorized"
    finally:
        raw.close()
    assert authority.asked == ["0123456789abcdef"]  # sipfed asked the partner's Authoritative Server


def test_a_proven_domain_cannot_speak_for_another(target: tuple[Sipfed, FakeAuthority]) -> None:
    sipfed, authority = target
    authority.verdict = "valid"
    raw = RawServer(sipfed.ports["xmpp"])
    try:
        raw.open()
        raw.send("<db:result from='xmpp.test' to='tomt.local'>feedface</db:result>")
        assert "type='valid'" in raw.until(rb"type='valid'")
        raw.send("<message from='mallory@strict.test' to='alice@tomt.local' type='chat'><body>x</body></message>")
        assert stream_error(raw.until(rb"</stream:stream>")) == "not-authorized"
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        (b"<message><body>&lol9;</body></message>", "not-well-formed"),  # an undeclared entity
        (b"<message>" + b"<x>" * 64, "policy-violation"),  # nesting beyond 32
        (b"<message><body>" + b"a" * 300_000 + b"</body></message>", "policy-violation"),  # beyond 256 KiB
        (b"<?evil instruction?>", "restricted-xml"),
        (b"<!-- a comment -->", "restricted-xml"),
        (b"<message>\xff\xfe</message>", "not-well-formed"),
    ],
    ids=["entity", "depth", "size", "pi", "comment", "utf8"],
)
def test_malformed_xml_is_a_stream_error_and_the_process_lives_on(
    target: tuple[Sipfed, FakeAuthority], payload: bytes, condition: str
) -> None:
    sipfed, _ = target
    raw = RawServer(sipfed.ports["xmpp"])
    try:
        raw.open()
        raw.send(payload)
        assert stream_error(raw.until(rb"</stream:stream>")) == condition
        assert raw.closed()
    finally:
        raw.close()
    serving(sipfed)


def test_a_billion_laughs_before_the_stream_is_restricted_xml(target: tuple[Sipfed, FakeAuthority]) -> None:
    sipfed, _ = target
    raw = RawServer(sipfed.ports["xmpp"])
    try:
        raw.send("<?xml version='1.0'?><!DOCTYPE s [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;'>]>")
        assert stream_error(raw.until(rb"</stream:stream>")) == "restricted-xml"
        assert raw.closed()
    finally:
        raw.close()
    serving(sipfed)


def test_tls_and_sasl_required_partner_cannot_skip_them(target: tuple[Sipfed, FakeAuthority]) -> None:
    sipfed, _ = target
    raw = RawServer(sipfed.ports["xmpp"])
    try:
        features = raw.open(frm="strict.test")
        assert "<required/></starttls>" in features
        assert "dialback" not in features  # dialback = false, sasl = "required": not even the db prefix
        raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        assert stream_error(raw.until(rb"</stream:stream>")) == "policy-violation"  # TLS first
    finally:
        raw.close()
    sipfed.wait_for_log("TLS is required before anything else")


def test_sasl_external_is_not_offered_without_tls(target: tuple[Sipfed, FakeAuthority]) -> None:
    sipfed, _ = target
    raw = RawServer(sipfed.ports["xmpp"])
    try:
        assert "EXTERNAL" not in raw.open()
        raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>eG1wcC50ZXN0</auth>")
        text = raw.until(rb"</stream:stream>")
        assert "<invalid-mechanism/>" in text.replace(" xmlns='urn:ietf:params:xml:ns:xmpp-sasl'", "")
    finally:
        raw.close()


def test_unauthenticated_connections_are_bounded_per_source_and_timed_out(
    target: tuple[Sipfed, FakeAuthority],
) -> None:
    sipfed, _ = target
    flood = [RawServer(sipfed.ports["xmpp"], source="127.0.31.77") for _ in range(40)]
    try:
        refused = 0
        for raw in flood:
            raw.send(HEADER.format(attrs=" from='xmpp.test' to='tomt.local'"))
        for raw in flood:
            if stream_error(raw.until(rb"</stream:features>|</stream:stream>")) == "resource-constraint":
                refused += 1
        assert refused >= 40 - 32  # MAX_UNAUTHENTICATED_PER_SOURCE
        serving(sipfed)  # another source is still served
        # None of them authenticates: each is closed after connect_timeout_seconds (2 s here).
        wait_until(lambda: all(raw.closed(0.2) for raw in flood), WAIT, "unauthenticated streams still open")
    finally:
        for raw in flood:
            raw.close()
