"""Revocation checking at the edge: CRLs fetched over plain HTTP (RFC 5280 §4.2.1.13), local CRL files, and the
``RevocationChecker`` the connection code asks; the rules themselves are ``proxy.relay.revocation``.

HTTP is the least that CRL distribution points need (RFC 5280 §4.2.1.13 names http and ldap, served as DER,
"application/pkix-crl"): one HTTP/1.1 GET with ``Connection: close``; the body by Content-Length, chunks, or
until EOF; at most ``MAX_CRL_BYTES``; the whole exchange, name lookup included, within the timeout. Redirects
are not followed. Every failure becomes words for a negative cache entry.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from cryptography import x509

from proxy.relay.crl_cache import CacheEntry, CrlCache
from proxy.relay.revocation import (
    FILE_SOURCE,
    Certificate,
    Decision,
    KnownCrl,
    Mode,
    Verdict,
    as_certificate,
    decide,
    distribution_points,
    evaluate,
    utc_text,
)
from proxy.x509 import ocsp_urls, parse_crls, read_crl_file

log = logging.getLogger("sipfed.net")

MAX_CRL_BYTES = 10 * 1024 * 1024
#: How long a settled verdict is reused for the same chain, and for how many chains at most.
VERDICT_TTL = timedelta(seconds=30)
MAX_VERDICTS = 1024
#: The status line and each header line; more than MAX_HEADERS lines is refused too.
MAX_HEADER_LINE_BYTES = 8192
MAX_HEADERS = 100


class CrlFetchError(Exception):
    """A CRL could not be had; ``why`` says it in words for the log and the negative cache entry."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class CrlFileError(ValueError):
    """Local CRL files that cannot be used; ``problems`` has one line per file."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An HTTP response, read whole."""

    status: int
    """The status code."""
    phrase: str
    """The reason phrase."""
    body: bytes
    """The body of a 200, at most the size asked for; empty for any other status."""


async def fetch_crl(url: str, timeout_seconds: float, max_bytes: int = MAX_CRL_BYTES) -> x509.CertificateRevocationList:
    """The CRL at http ``url`` (DER or PEM; the first of several); CrlFetchError with the reason in words."""
    answer = await http_get(url, timeout_seconds, max_bytes)
    if answer.status != 200:
        raise CrlFetchError(f"HTTP {answer.status} {answer.phrase}".rstrip())
    try:
        return parse_crls(answer.body)[0]
    except ValueError as exc:
        raise CrlFetchError(f"the answer is not a CRL ({exc})") from None


async def http_get(url: str, timeout_seconds: float, max_bytes: int = MAX_CRL_BYTES) -> HttpAnswer:
    """One GET of an http URL within ``timeout_seconds`` (``sipfed doctor --live`` may probe OCSP URLs with it:
    any answer means reachable); CrlFetchError with the reason in words."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise CrlFetchError(f"{url!r} is not an http URL")
    try:
        port = parts.port or 80
    except ValueError:
        raise CrlFetchError(f"{url!r} has an invalid port") from None
    host = parts.hostname
    authority = f"[{host}]" if ":" in host else host
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {authority}{'' if port == 80 else f':{port}'}\r\n"
        "Accept: application/pkix-crl, application/x-pkcs7-crl, */*\r\nUser-Agent: sipfed\r\nConnection: close\r\n\r\n"
    ).encode("ascii", "replace")
    try:
        async with asyncio.timeout(timeout_seconds):
            return await _exchange(host, port, request, max_bytes)
    except TimeoutError:
        raise CrlFetchError(f"timed out after {timeout_seconds:g} s") from None
    except ConnectionRefusedError:
        raise CrlFetchError("connection refused") from None
    except socket.gaierror as exc:
        raise CrlFetchError(f"the name {host} does not resolve ({exc.strerror})") from None
    except asyncio.IncompleteReadError as exc:
        raise CrlFetchError(f"the server closed the connection early ({len(exc.partial)} bytes into a part)") from None
    except (asyncio.LimitOverrunError, ValueError) as exc:
        raise CrlFetchError(f"not an HTTP answer sipfed can read ({exc})") from None
    except OSError as exc:
        raise CrlFetchError(exc.strerror or str(exc) or type(exc).__name__) from None


async def _exchange(host: str, port: int, request: bytes, max_bytes: int) -> HttpAnswer:
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEADER_LINE_BYTES)
    try:
        writer.write(request)
        await writer.drain()
        status, phrase, headers = await _read_head(reader)
        body = b"" if status != 200 else await _read_body(reader, headers, max_bytes)
        return HttpAnswer(status, phrase, body)
    finally:
        writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    """RFC 9112 §4, §5: the status line and the header fields (names lower case; a repeated one: the last)."""
    line = (await reader.readuntil(b"\n")).decode("latin-1").rstrip("\r\n")
    version, _, rest = line.partition(" ")
    code, _, phrase = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not (code.isdigit() and len(code) == 3):
        raise ValueError(f"status line {line[:80]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        field = (await reader.readuntil(b"\n")).decode("latin-1").rstrip("\r\n")
        if not field:
            return int(code), phrase.strip(), headers
        name, colon, value = field.partition(":")
        if not colon:
            raise ValueError(f"header line {field[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    raise ValueError(f"more than {MAX_HEADERS} header fields")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], max_bytes: int) -> bytes:
    """RFC 9112 §6.3: chunked, else Content-Length, else until the server closes; never more than ``max_bytes``."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, max_bytes)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ValueError(f"Content-Length {length[:40]!r}")
        _check_size(int(length), max_bytes)
        return await reader.readexactly(int(length))
    body = bytearray()
    while chunk := await reader.read(65536):
        body += chunk
        _check_size(len(body), max_bytes)
    return bytes(body)


async def _read_chunked(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """RFC 9112 §7.1: chunk-size [; ext] CRLF chunk-data CRLF …, a last chunk of 0, then trailers."""
    body = bytearray()
    while True:
        size_line = (await reader.readuntil(b"\n")).split(b";")[0].strip()
        size = int(size_line, 16)  # ValueError: not HTTP we can read
        if size == 0:
            while (await reader.readuntil(b"\n")).strip():
                pass  # trailer fields: nothing we need
            return bytes(body)
        _check_size(len(body) + size, max_bytes)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise CrlFetchError(f"the CRL is larger than {max_bytes} bytes")


@dataclass(frozen=True, slots=True)
class Probe:
    """One revocation URL of a certificate, tried as the far side will try it (``sipfed doctor --live``)."""

    url: str
    """The CRL distribution point or OCSP responder URL."""
    kind: Literal["crl", "ocsp"]
    """Which of the two."""
    ok: bool
    """A current CRL came back; for OCSP, any HTTP answer (a responder wants a request, not a bare GET)."""
    words: str
    """What came back, in words."""


async def probe_revocation_urls(cert: Certificate, now: datetime, timeout_seconds: float) -> tuple[Probe, ...]:
    """Fetch every http CRL distribution point and reach every OCSP responder ``cert`` names, all at once."""
    leaf = as_certificate(cert)
    crls = [_probe_crl(url, now, timeout_seconds) for url in distribution_points(leaf)]
    return tuple(await asyncio.gather(*crls, *(_probe_ocsp(url, timeout_seconds) for url in ocsp_urls(leaf))))


async def _probe_crl(url: str, now: datetime, timeout_seconds: float) -> Probe:
    try:
        crl = await fetch_crl(url, timeout_seconds)
    except CrlFetchError as exc:
        return Probe(url, "crl", False, f"could not be fetched: {exc.why}")
    next_update = crl.next_update_utc
    current = next_update is not None and crl.last_update_utc <= now < next_update
    state = "current" if current else "STALE (peers that check revocation will refuse us)"
    return Probe(
        url, "crl", current, f"{state} CRL of {crl.issuer.rfc4514_string()}, nextUpdate {utc_text(next_update)}"
    )


async def _probe_ocsp(url: str, timeout_seconds: float) -> Probe:
    try:
        answer = await http_get(url, timeout_seconds, max_bytes=65536)
    except CrlFetchError as exc:
        return Probe(url, "ocsp", False, f"unreachable: {exc.why}")
    return Probe(url, "ocsp", True, f"reachable (HTTP {answer.status} to a bare GET)")


def load_crl_files(paths: Sequence[Path]) -> tuple[KnownCrl, ...]:
    """The CRLs of local files (DER, or PEM with one or more CRLs), at start and reload; CrlFileError naming
    every file that cannot be read or holds no CRL."""
    found: list[KnownCrl] = []
    problems: list[str] = []
    for path in paths:
        try:
            crls = read_crl_file(path)
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
            continue
        found += [KnownCrl(f"{FILE_SOURCE}{path}", crl) for crl in crls]
    if problems:
        raise CrlFileError(problems)
    return tuple(found)


class RevocationChecker:
    """``[tls] revocation`` for the connection code: ``check`` fetches what is missing (bounded by
    ``timeout_seconds``), ``check_cached`` answers from what is known now, without I/O; ``decide`` applies the
    mode. ``anchors``: the CA bundle's certificates (and any intermediates we know), so that a leaf alone will do.
    One fetch per URL at a time, shared by every check that needs it."""

    def __init__(
        self,
        mode: Mode,
        anchors: Sequence[Certificate] = (),
        crl_files: Sequence[Path] = (),
        timeout_seconds: float = 2.0,
        *,
        retry_seconds: float = 60.0,
        max_entries: int = 256,
        max_crl_bytes: int = MAX_CRL_BYTES,
    ) -> None:
        self.cache = CrlCache(max_entries, retry_seconds)
        self.timeout_seconds = timeout_seconds
        self.max_crl_bytes = max_crl_bytes
        self.fetches = 0
        """Fetches started (each shared by every check that waited for it)."""
        self._inflight: dict[str, asyncio.Task[CacheEntry]] = {}
        self._verdicts: dict[bytes, tuple[datetime, Verdict]] = {}
        """Settled verdicts by the chain's DER bytes, with until when they hold (``check_cached``)."""
        self.mode: Mode = mode
        self.anchors: tuple[x509.Certificate, ...] = ()
        self.local: tuple[KnownCrl, ...] = ()
        self.reload(mode, anchors, crl_files)

    def reload(self, mode: Mode, anchors: Sequence[Certificate], crl_files: Sequence[Path]) -> None:
        """New settings (SIGHUP): the files are read again, the cache of fetched CRLs stays. CrlFileError, with
        nothing changed, when a file cannot be used."""
        local = load_crl_files(crl_files)
        self.mode, self.anchors, self.local = mode, tuple(as_certificate(a) for a in anchors), local
        self._verdicts.clear()

    def check_cached(self, chain: Sequence[Certificate], now: datetime) -> Verdict:
        """The verdict from the CRLs known at ``now`` (aware UTC), no I/O; ``to_fetch`` names what would help.
        A settled verdict (nothing to fetch) is kept for the same chain for ``VERDICT_SECONDS``, or until a CRL
        is fetched or the settings reload: walking a chain costs ~0.25 ms, a reconnecting peer pays it once."""
        if self.mode == "off":
            return Verdict.unchecked()
        key = b"".join(cert for cert in chain if isinstance(cert, bytes)) if chain else b""
        kept = self._verdicts.get(key) if key else None
        if kept is not None and now < kept[0]:
            return kept[1]
        verdict = evaluate(chain, self.anchors, self.cache.known(now, self.local), now)
        if key and not verdict.to_fetch:
            self._verdicts[key] = (now + VERDICT_TTL, verdict)
            if len(self._verdicts) > MAX_VERDICTS:
                self._verdicts.pop(next(iter(self._verdicts)))
        return verdict

    async def check(self, chain: Sequence[Certificate], now: datetime) -> Verdict:
        """``check_cached`` after fetching the CRLs it names as missing, all at once, each within the timeout."""
        verdict = self.check_cached(chain, now)
        if verdict.to_fetch:
            await asyncio.gather(*(self.fetch(url, now) for url in verdict.to_fetch))
            verdict = self.check_cached(chain, now)
        return verdict

    def decide(self, verdict: Verdict) -> Decision:
        """The mode's policy on ``verdict``: admit or refuse, and the words to log."""
        return decide(self.mode, verdict)

    async def fetch(self, url: str, now: datetime) -> CacheEntry:
        """Fetch ``url`` into the cache (or join the fetch already under way); a failure is a negative entry.
        A cancelled caller leaves the fetch running for the others (``asyncio.shield``)."""
        task = self._inflight.get(url)
        if task is None:
            task = asyncio.create_task(self._fetch(url, now))
            self._inflight[url] = task
            task.add_done_callback(lambda _: self._inflight.pop(url, None))
        return await asyncio.shield(task)

    async def _fetch(self, url: str, now: datetime) -> CacheEntry:
        self.fetches += 1
        try:
            crl = await fetch_crl(url, self.timeout_seconds, self.max_crl_bytes)
        except CrlFetchError as exc:
            log.warning("CRL %s could not be fetched: %s (next try in %g s)", url, exc.why, self._retry_seconds)
            self._verdicts.clear()
            return self.cache.put_error(url, exc.why, now)
        log.info("CRL %s fetched: %d revoked, nextUpdate %s", url, len(crl), utc_text(crl.next_update_utc))
        self._verdicts.clear()
        return self.cache.put(url, crl, now)

    @property
    def _retry_seconds(self) -> float:
        return self.cache.retry.total_seconds()
