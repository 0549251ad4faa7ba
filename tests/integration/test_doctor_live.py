"""`sipfed doctor --live` against purpose-made TLS SIP peers: each broken federation named by its cause.

The peers are tiny stdlib servers written here (nothing from sipfed runs on the peer side); each
answers OPTIONS with 200 OK and requires a client certificate from a CA it is given, the way CUP's
peer-auth listener and a Lync pool do. Their certificates are made with ``proxy.admin.certs``, one flaw each.
``sipfed doctor`` runs once over all routes as a real process (routes are probed concurrently).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from proxy.admin.certs import issue_leaf, make_lab_pki

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
OURS = ["sipfed.tomt.local", "sipfed.tomt.it"]
PEER = "cups.tomt.local"
TIMEOUT = 1.5  # connect_timeout_seconds: also how long doctor waits for an OPTIONS answer
IO_TIMEOUT = 5.0


def answer_ok(request: bytes) -> bytes:
    """RFC 3261 §8.2.6: 200 OK copying Via, From, To (with a tag), Call-ID and CSeq."""
    lines = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    copied = [
        line for line in lines[1:] if line.split(":", 1)[0].strip().lower() in ("via", "from", "to", "call-id", "cseq")
    ]
    copied = [f"{line};tag=peer" if line.lower().startswith("to:") else line for line in copied]
    return "\r\n".join(["SIP/2.0 200 OK", *copied, "Content-Length: 0", "", ""]).encode()


class StreamPeer:
    """A TLS (or, without a context, TCP) SIP server; ``silent`` reads OPTIONS and never answers."""

    def __init__(self, context: ssl.SSLContext | None, *, silent: bool = False, host: str = "127.0.0.2") -> None:
        self.context, self.silent = context, silent
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        try:
            stream = self.context.wrap_socket(conn, server_side=True) if self.context else conn
            with stream:
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    data = stream.recv(4096)
                    if not data:
                        return
                    request += data
                if not self.silent:
                    stream.sendall(answer_ok(request))
                stream.recv(4096)  # until doctor closes (or the timeout)
        except OSError:  # ssl.SSLError included: a refused handshake is part of the test
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


class UdpPeer:
    """A SIP server over UDP answering each request with 200 OK."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                request, source = self.sock.recvfrom(65535)
                self.sock.sendto(answer_ok(request), source)
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


def server_context(chain: Path, key: Path, client_ca: Path, *, tls12: bool = False) -> ssl.SSLContext:
    """Mutual TLS as the peers do it: our chain out, a client certificate from `client_ca` required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_ca)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Route:
    """One static route of the doctor's config, and where its peer listens."""

    name: str
    port: int
    transport: str = "tls"
    destination: str = "127.0.0.2"


def write_config(path: Path, certs: Path, routes: list[Route]) -> Path:
    text = f"""
[proxy]
fqdn = "sipfed.tomt.local"
connect_timeout_seconds = {TIMEOUT}

[tls]
cert_chain = "{certs / "sipfed.tomt.local.pem"}"
key = "{certs / "sipfed.tomt.local.key"}"
ca_bundle = "{certs / "ca.crt"}"

[[listeners]]
name = "cisco"
address = "127.0.0.1"
port = 0
"""
    for route in routes:
        text += f"""
[[routes]]
name = "{route.name}"
match_uri = "{route.name.replace("_", "-")}.test"
destination = "{route.destination}"
port = {route.port}
transport = "{route.transport}"
tls_name = "{PEER}"
listener = "cisco"
"""
    path.write_text(text)
    return path


def doctor(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "doctor", "--config", str(config), "--live", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every purpose-made peer, one doctor run over all of them; yields paths, peers and the findings."""
    certs, other = tmp_path_factory.mktemp("certs"), tmp_path_factory.mktemp("other-ca")
    pki = make_lab_pki(certs, [OURS, [PEER]], key_type="ec")
    stranger = make_lab_pki(other, [[PEER]], key_type="ec")
    now = datetime.now(UTC)
    good, strange = pki.leaves[PEER], stranger.leaves[PEER]
    wrong = issue_leaf(certs, ["wrong.example"], key_type="ec", file_stem="wrong")
    expired = issue_leaf(
        certs,
        [PEER],
        key_type="ec",
        file_stem="expired",
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    server_only = issue_leaf(certs, [PEER], key_type="ec", file_stem="server-only", eku=("serverAuth",))
    ca, other_ca = pki.ca_cert, stranger.ca_cert
    peers = {
        "good": StreamPeer(server_context(good.chain, good.key, ca)),
        "wrong_name": StreamPeer(server_context(wrong.chain, wrong.key, ca)),
        "no_intermediate": StreamPeer(server_context(good.cert, good.key, ca)),  # sends its leaf only
        "unknown_ca": StreamPeer(server_context(strange.chain, strange.key, ca)),
        "expired": StreamPeer(server_context(expired.chain, expired.key, ca)),
        "no_client_auth": StreamPeer(server_context(server_only.chain, server_only.key, ca)),
        "distrusts_us": StreamPeer(server_context(good.chain, good.key, other_ca)),
        "distrusts_us_tls12": StreamPeer(server_context(good.chain, good.key, other_ca, tls12=True)),
        "silent": StreamPeer(server_context(good.chain, good.key, ca), silent=True),
        "tcp": StreamPeer(None),
    }
    udp = UdpPeer()
    routes = [Route(name, peer.port, "tcp" if name == "tcp" else "tls") for name, peer in peers.items()]
    routes += [Route("udp", udp.port, "udp"), Route("refused", free_port("127.0.0.3"), destination="127.0.0.3")]
    try:
        config = write_config(tmp_path_factory.mktemp("conf") / "sipfed.toml", certs, routes)
        result = doctor(config, "--json")
        assert result.stdout, result.stderr
        yield {
            "certs": certs,
            "routes": routes,
            "result": result,
            "findings": json.loads(result.stdout),
            "good_port": peers["good"].port,
            "tmp": tmp_path_factory.mktemp("good-only"),
        }
    finally:
        for peer in [*peers.values(), udp]:
            peer.close()


def of_route(lab: dict[str, Any], name: str) -> list[dict[str, str]]:
    return [f for f in lab["findings"] if f["subject"] == f"route {name}"]


def problems(lab: dict[str, Any], name: str) -> list[dict[str, str]]:
    return [f for f in of_route(lab, name) if f["severity"] != "ok"]


def test_a_good_peer_has_no_problem_and_answers_options_200(lab: dict[str, Any]) -> None:
    assert problems(lab, "good") == []
    checks = {f["check"]: f["cause"] for f in of_route(lab, "good") if f["check"].startswith("live.")}
    assert set(checks) == {
        "live.connect",
        "live.peer_chain",
        "live.peer_name",
        "live.peer_validity",
        "live.peer_eku",
        "live.tls",
        "live.sip",
    }
    assert "SIP/2.0 200 OK" in checks["live.sip"]
    assert "cups.tomt.local" in checks["live.tls"]


@pytest.mark.parametrize(
    ("route", "check", "words"),
    [
        ("wrong_name", "live.peer_name", "does not carry the route's tls_name 'cups.tomt.local' (it names: "),
        ("no_intermediate", "live.peer_chain", "the peer does not send its intermediate certificate"),
        ("unknown_ca", "live.peer_chain", "does not lead to our CA bundle"),
        ("expired", "live.peer_validity", "expired on"),
        ("no_client_auth", "live.peer_eku", "no Client Authentication EKU (clientAuth)"),
        ("distrusts_us", "live.tls", "the peer refused our certificate (TLS alert 48 unknown_ca)"),
        ("distrusts_us_tls12", "live.tls", "the peer refused our certificate (TLS alert 48 unknown_ca)"),
        ("refused", "live.connect", "nothing listens on 127.0.0.3:"),
    ],
)
def test_each_broken_peer_gets_one_error_naming_its_cause(
    lab: dict[str, Any], route: str, check: str, words: str
) -> None:
    [error] = problems(lab, route)
    assert (error["severity"], error["check"]) == ("error", check)
    assert words in error["cause"]
    assert error["fix"]


def test_cause_details(lab: dict[str, Any]) -> None:
    """The words an admin acts on: alert 43 for clientAuth, the 5062/5061 hint, the unknown CA's name."""
    [no_client_auth] = problems(lab, "no_client_auth")
    assert "alert 43 unsupported_certificate" in no_client_auth["cause"]
    [refused] = problems(lab, "refused")
    assert "CUP's peer-auth listener is 5062, Lync's is 5061" in refused["fix"]
    [unknown] = problems(lab, "unknown_ca")
    assert "unknown CA" in unknown["cause"]
    [distrusts] = problems(lab, "distrusts_us")
    assert "trust our CA" in distrusts["fix"]
    # A peer whose only flaw is the missing clientAuth still works outbound: SIP answered.
    assert any("200 OK" in f["cause"] for f in of_route(lab, "no_client_auth") if f["check"] == "live.sip")


def test_no_answer_to_options_is_a_warning(lab: dict[str, Any]) -> None:
    [warning] = problems(lab, "silent")
    assert (warning["severity"], warning["check"]) == ("warning", "live.sip")
    assert "no SIP answer to OPTIONS" in warning["cause"]


@pytest.mark.parametrize("route", ["tcp", "udp"])
def test_plain_transports_get_options_answered(lab: dict[str, Any], route: str) -> None:
    assert problems(lab, route) == []
    assert any("SIP/2.0 200 OK" in f["cause"] for f in of_route(lab, route) if f["check"] == "live.sip")


def test_exit_status_is_1_with_errors_and_errors_come_first(lab: dict[str, Any]) -> None:
    assert lab["result"].returncode == 1
    severities = [f["severity"] for f in lab["findings"]]
    assert severities == sorted(severities, key=["error", "warning", "ok"].index)


def test_good_route_alone_exits_0_and_the_table_shows_the_answer(lab: dict[str, Any]) -> None:
    config = write_config(lab["tmp"] / "sipfed.toml", lab["certs"], [Route("good", lab["good_port"])])
    result = doctor(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIP/2.0 200 OK" in result.stdout
    assert "0 error(s), 0 warning(s)" in result.stdout
