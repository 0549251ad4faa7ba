"""A CA made by the ``openssl`` command line (``openssl ca`` with its index.txt, serial and crlnumber, as a Windows
or OpenSSL CA admin would), its leaves naming an ldap and an http CRL distribution point and an OCSP responder,
one of them revoked (keyCompromise), the CRL as DER and PEM; and a stdlib HTTP server that serves the CRL on a
loopback address and counts every GET. Used by tests/integration/test_revocation_fetch.py (the fetcher alone)
and test_revocation.py (the real sipfed process).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

HOST = "127.0.34.1"
HOLD_SECONDS = 10.0  # the longest a held answer waits for the test to release it

CA_CONFIG = """
[ca]
default_ca = test_ca

[test_ca]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/ca.crt
private_key = $dir/ca.key
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 30
default_crl_days = 7
policy = policy_any
unique_subject = no
copy_extensions = none

[policy_any]
commonName = supplied

[leaf_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:${{ENV::SAN}}
crlDistributionPoints = URI:ldap:///CN=tomt-CA?certificateRevocationList?base,URI:{url}
authorityInfoAccess = OCSP;URI:{ocsp}
"""


@dataclass(frozen=True)
class Pki:
    """What ``openssl`` made."""

    dir: Path
    ca: x509.Certificate
    revoked: bytes  # DER, as getpeercert(binary_form=True) gives it
    good: bytes
    crl_der: bytes
    crl_pem: Path
    url: str


def run(dir: Path, *args: str, san: str = "unused.invalid") -> None:
    """``openssl`` in ``dir``; ``san``: the DNS name ca.cnf's leaf extensions put in subjectAltName."""
    env = {**os.environ, "SAN": san}
    done = subprocess.run(["openssl", *args], cwd=dir, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr}"


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def issue_leaf(dir: Path, stem: str, common_name: str) -> bytes:
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(dir, "req", "-new", *ec_key, "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", f"/CN={common_name}")
    run(dir, "ca", "-batch", "-config", "ca.cnf", "-extensions", "leaf_ext", "-notext", "-in", f"{stem}.csr",
        "-out", f"{stem}.crt", san=common_name)  # fmt: skip
    return x509.load_pem_x509_certificate((dir / f"{stem}.crt").read_bytes()).public_bytes(Encoding.DER)


def make_pki(dir: Path) -> Pki:
    """In ``dir``: a CA, lync01.tomt.it (revoked: keyCompromise) and cups.tomt.local (good), each naming the CRL at
    http://127.0.34.1:PORT/ca.crl; their keys and certificates as lync01.key/.crt, cups.key/.crt."""
    url = f"http://{HOST}:{free_port()}/ca.crl"
    (dir / "ca.cnf").write_text(CA_CONFIG.format(dir=dir, url=url, ocsp=url.replace("/ca.crl", "/ocsp")))
    (dir / "index.txt").write_text("")
    (dir / "serial").write_text("1000\n")
    (dir / "crlnumber").write_text("1000\n")
    (dir / "newcerts").mkdir()
    run(dir, "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/O=tomt.it/CN=tomt.it test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    revoked = issue_leaf(dir, "lync01", "lync01.tomt.it")
    good = issue_leaf(dir, "cups", "cups.tomt.local")
    run(dir, "ca", "-config", "ca.cnf", "-revoke", "lync01.crt", "-crl_reason", "keyCompromise")
    run(dir, "ca", "-config", "ca.cnf", "-gencrl", "-out", "ca.crl.pem")
    run(dir, "crl", "-in", "ca.crl.pem", "-outform", "DER", "-out", "ca.crl")
    ca = x509.load_pem_x509_certificate((dir / "ca.crt").read_bytes())
    return Pki(dir, ca, revoked, good, (dir / "ca.crl").read_bytes(), dir / "ca.crl.pem", url)


class CrlServer(ThreadingHTTPServer):
    """Serves ``files`` (path -> body; chunked when the path says so), counts every GET by path in ``hits``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], files: dict[str, bytes]) -> None:
        super().__init__(address, _Handler)
        self.files = files
        self.hits: Counter[str] = Counter()
        self.held = threading.Event()  # set: answers wait for ``release`` (at most HOLD_SECONDS)
        self.released = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket: from now on, connections to the port are refused."""
        if self._thread.is_alive():
            self.shutdown()
            self.server_close()
            self._thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    server: CrlServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.hits[self.path] += 1
        if self.server.held.is_set():
            self.server.released.wait(HOLD_SECONDS)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/pkix-crl")
        self.send_header("Connection", "close")
        if "chunked" not in self.path:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(body), 100):
            part = body[start : start + 100]
            self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")

    def log_message(self, format: str, *args: object) -> None:
        pass
