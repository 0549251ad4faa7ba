"""Revocation with a real PKI and a real CRL server (proxy/net/crl_fetch.py): the CA, its certificates, a
revocation and the CRL are made by the ``openssl`` command line (``openssl ca`` with its index.txt, serial and
crlnumber, as a Windows or OpenSSL CA admin would), the CRL served over HTTP on 127.0.34.1 by a stdlib server
the test starts and stops, and counted there.

No test waits for a fixed time: every fetch is bounded by its timeout, every test by ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from proxy.net.crl_fetch import (
    CrlFetchError,
    CrlFileError,
    Probe,
    RevocationChecker,
    fetch_crl,
    load_crl_files,
    probe_revocation_urls,
)
from proxy.relay.revocation import Mode, Verdict
from tests.integration.crl_lab import HOST, CrlServer, Pki, make_pki
from tests.integration.waiting import async_wait_until

pytestmark = pytest.mark.integration

T = TypeVar("T")
TIMEOUT_SECONDS = 2.0  # one fetch's bound
TEST_SECONDS = 30.0  # a whole test's bound: how long a broken build takes to fail


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("openssl-ca"))


@pytest.fixture
def server(pki: Pki) -> Iterator[CrlServer]:
    """The CA's CRL on the port the certificates name: DER at /ca.crl, also PEM and chunked, and junk."""
    port = int(pki.url.rsplit(":", 1)[1].split("/")[0])
    files = {
        "/ca.crl": pki.crl_der,
        "/ca.pem": pki.crl_pem.read_bytes(),
        "/chunked.crl": pki.crl_der,
        "/index.html": b"<html>It works!</html>",
    }
    crl_server = CrlServer((HOST, port), files)
    yield crl_server
    crl_server.released.set()
    crl_server.stop()


def bounded(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coroutine, TEST_SECONDS)

    return asyncio.run(main())


def now() -> datetime:
    return datetime.now(UTC)


def test_the_revoked_leaf_is_revoked_the_other_good_and_the_crl_fetched_once(pki: Pki, server: CrlServer) -> None:
    checker = RevocationChecker("hard-fail", [pki.ca], timeout_seconds=TIMEOUT_SECONDS)

    async def main() -> tuple[Verdict, Verdict, Verdict]:
        return (
            await checker.check([pki.revoked], now()),
            await checker.check([pki.good], now()),
            await checker.check([pki.revoked], now()),
        )

    revoked, good, again = bounded(main())
    assert (revoked.outcome, revoked.reason) == ("revoked", "revoked")
    for part in ("CN=lync01.tomt.it", "serial 0x1000", "keyCompromise", pki.url):
        assert part in revoked.words
    assert good.outcome == "good"
    assert again == revoked
    assert server.hits["/ca.crl"] == 1  # the second and third checks: from the cache, within nextUpdate
    assert checker.fetches == 1
    assert not checker.decide(revoked).admit
    assert checker.decide(good).admit
    assert checker.check_cached([pki.revoked], now()).outcome == "revoked"  # the hot path: no I/O


def test_concurrent_checks_share_one_fetch(pki: Pki, server: CrlServer) -> None:
    checker = RevocationChecker("soft-fail", [pki.ca], timeout_seconds=TIMEOUT_SECONDS)

    async def main() -> list[str]:
        verdicts = await asyncio.gather(*(checker.check([leaf], now()) for leaf in [pki.revoked, pki.good] * 4))
        return [verdict.outcome for verdict in verdicts]

    assert bounded(main()) == ["revoked", "good"] * 4
    assert server.hits["/ca.crl"] == 1


def test_a_cancelled_check_leaves_the_shared_fetch_to_the_others(pki: Pki, server: CrlServer) -> None:
    """The server holds its answer until one of two waiting checks is cancelled; the other still gets it."""
    checker = RevocationChecker("hard-fail", [pki.ca], timeout_seconds=TEST_SECONDS)
    server.held.set()

    async def main() -> tuple[bool, str]:
        first = asyncio.create_task(checker.check([pki.revoked], now()))
        second = asyncio.create_task(checker.check([pki.revoked], now()))
        await async_wait_until(lambda: server.hits["/ca.crl"] == 1, TEST_SECONDS, "the CRL request at the server")
        first.cancel()
        server.released.set()
        verdict = await second
        with contextlib.suppress(asyncio.CancelledError):
            await first
        return first.cancelled(), verdict.outcome

    assert bounded(main()) == (True, "revoked")
    assert server.hits["/ca.crl"] == 1


@pytest.mark.parametrize("mode", ["soft-fail", "hard-fail"])
def test_with_the_crl_server_stopped_revocation_is_unknown(pki: Pki, server: CrlServer, mode: Mode) -> None:
    """The IE8 case from the field notes: the CRL cannot be reached. soft-fail admits with a warning,
    hard-fail refuses; the failure is remembered, so the next check does not knock again."""
    server.stop()
    checker = RevocationChecker(mode, [pki.ca], timeout_seconds=TIMEOUT_SECONDS)
    verdict = bounded(checker.check([pki.good], now()))
    assert (verdict.outcome, verdict.reason) == ("unknown", "crl_unreachable")
    assert f"CRL {pki.url} could not be fetched: connection refused" in verdict.words
    decision = checker.decide(verdict)
    assert (decision.admit, decision.warning) == ((True, True) if mode == "soft-fail" else (False, False))
    assert decision.reason == "crl_unreachable"
    assert bounded(checker.check([pki.revoked], now())).reason == "crl_unreachable"
    assert checker.fetches == 1  # within the retry interval: the negative entry answers
    assert server.hits == Counter()


def test_off_fetches_nothing(pki: Pki, server: CrlServer) -> None:
    checker = RevocationChecker("off", [pki.ca], timeout_seconds=TIMEOUT_SECONDS)
    verdict = bounded(checker.check([pki.revoked], now()))
    assert checker.decide(verdict).admit
    assert server.hits == Counter()


@pytest.mark.parametrize("path", ["/ca.crl", "/ca.pem", "/chunked.crl"])
def test_der_pem_and_chunked_answers_are_read(pki: Pki, server: CrlServer, path: str) -> None:
    crl = bounded(fetch_crl(pki.url.replace("/ca.crl", path), TIMEOUT_SECONDS))
    assert crl.issuer == pki.ca.subject
    assert len(crl) == 1


@pytest.mark.parametrize(
    ("path", "max_bytes", "words"),
    [
        ("/missing.crl", 1 << 20, "HTTP 404 Not Found"),
        ("/index.html", 1 << 20, "the answer is not a CRL"),
        ("/ca.crl", 100, "larger than 100 bytes"),
        ("/chunked.crl", 150, "larger than 150 bytes"),
    ],
)
def test_a_bad_answer_is_named(pki: Pki, server: CrlServer, path: str, max_bytes: int, words: str) -> None:
    with pytest.raises(CrlFetchError, match=words):
        bounded(fetch_crl(pki.url.replace("/ca.crl", path), TIMEOUT_SECONDS, max_bytes))


def test_a_server_that_never_answers_times_out() -> None:
    """A listening socket nobody accepts on: the connection opens (the kernel's backlog), no answer comes."""
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(1)
        url = f"http://{HOST}:{silent.getsockname()[1]}/ca.crl"
        with pytest.raises(CrlFetchError, match=r"timed out after 0\.5 s"):
            bounded(fetch_crl(url, 0.5))


def test_only_http_urls_are_fetched() -> None:
    with pytest.raises(CrlFetchError, match="not an http URL"):
        bounded(fetch_crl("ldap:///CN=test,CN=CDP", TIMEOUT_SECONDS))


def test_a_local_crl_file_decides_without_any_fetch(pki: Pki) -> None:
    """``crl_files``: no server is running, none is asked."""
    checker = RevocationChecker("hard-fail", [pki.ca], [pki.crl_pem, pki.dir / "ca.crl"], TIMEOUT_SECONDS)
    assert checker.check_cached([pki.revoked], now()).outcome == "revoked"
    good = bounded(checker.check([pki.good], now()))
    assert good.outcome == "good"
    assert f"file {pki.crl_pem}" in good.words
    assert checker.fetches == 0


def test_unusable_crl_files_are_all_named(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.crl"
    junk.write_bytes(b"not a CRL")
    with pytest.raises(CrlFileError) as caught:
        load_crl_files([pki.crl_pem, tmp_path / "missing.crl", junk])
    assert [p.split(":")[0] for p in caught.value.problems] == [str(tmp_path / "missing.crl"), str(junk)]
    assert "cannot be read" in caught.value.problems[0]
    assert "holds no CRL" in caught.value.problems[1]


def test_doctor_can_probe_the_revocation_urls_of_a_certificate(pki: Pki, server: CrlServer) -> None:
    """``sipfed doctor --live`` on our own certificate: the far side will fetch these URLs."""
    ocsp = pki.url.replace("/ca.crl", "/ocsp")
    up = bounded(probe_revocation_urls(pki.good, now(), TIMEOUT_SECONDS))
    assert [(p.url, p.kind, p.ok) for p in up] == [(pki.url, "crl", True), (ocsp, "ocsp", True)]
    assert up[0].words.startswith("current CRL of CN=tomt.it test CA,O=tomt.it, nextUpdate ")  # RFC 4514: CN first
    assert up[1].words == "reachable (HTTP 404 to a bare GET)"
    server.stop()
    down = bounded(probe_revocation_urls(pki.good, now(), TIMEOUT_SECONDS))
    assert down == (
        Probe(pki.url, "crl", False, "could not be fetched: connection refused"),
        Probe(ocsp, "ocsp", False, "unreachable: connection refused"),
    )


def test_a_settled_verdict_is_reused_for_the_same_chain_until_a_reload(pki: Pki) -> None:
    checker = RevocationChecker("hard-fail", [pki.ca], [pki.crl_pem], TIMEOUT_SECONDS)
    first = checker.check_cached([pki.revoked], now())
    assert first.outcome == "revoked"
    assert checker.check_cached([pki.revoked], now()) is first  # kept: no second walk of the chain
    checker.reload("hard-fail", [pki.ca], [])  # the CRL file is gone from the settings
    again = checker.check_cached([pki.revoked], now())
    assert again.outcome == "unknown"
    assert again.to_fetch == (pki.url,)
