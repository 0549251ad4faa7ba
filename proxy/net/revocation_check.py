"""Revocation checks at the connection edge (issue 16): the peer's chain out of the TLS object, the checker's
verdict (from the cache at once; fetching only what is missing, bounded by ``tls.crl_timeout_seconds``), the
``tls.revocation`` decision, and that decision in the log and the metrics, with the fix.

Inbound, a connection holds what it decrypted until its peer's chain is decided (StreamConnection); outbound,
the chain is decided before the first request goes (proxy/net/connect.py). The rules themselves are
proxy/relay/revocation.py; fetching and caching CRLs is proxy/net/crl_fetch.py.
"""

from __future__ import annotations

import _ssl
import logging
import ssl
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from proxy.net.crl_fetch import RevocationChecker
from proxy.net.tls_words import CertificateRefused
from proxy.relay.revocation import Decision, Verdict

if TYPE_CHECKING:
    from acl.subjects import CertIdentity
    from proxy.net.connection import StreamConnection
    from proxy.net.driver import Driver
    from proxy.relay.types import NextHop

log = logging.getLogger("sipfed.net")

#: What to do about each reason a chain was refused (or admitted unchecked, under soft-fail).
FIXES = {
    "revoked": "its CA revoked it: the peer's admin must install a new certificate (CUP: cup-xmpp/cup certificate "
    "regenerate and upload; Lync: the Certificate Wizard)",
    "crl_unreachable": "let sipfed reach that URL over HTTP (firewall, proxy), or keep a current copy of the CRL in "
    'tls.crl_files; tls.revocation = "soft-fail" admits such peers with a warning',
    "crl_stale": "the CA has not published a current CRL: ask its admin to publish one (or refresh tls.crl_files)",
    "crl_invalid": "the distribution point serves no CRL of this certificate's CA: ask the CA's admin to fix it",
    "crl_missing": "the CRL could not be fetched in time: see the CRL warning above",
    "no_crl": "the certificate names no http CRL distribution point (ldap ones are not fetched): put its CA's CRL "
    'in tls.crl_files, or set tls.revocation = "soft-fail"',
    "issuer_unknown": "add the peer's issuing CA (intermediate) to tls.ca_bundle",
}


def metric_reason(verdict: Verdict) -> str:
    """The TLS failure reason (proxy/net/tls_words.py REASONS) of a refused chain."""
    if verdict.outcome == "revoked":
        return "revoked"
    return "crl_unreachable" if verdict.reason in ("crl_unreachable", "crl_missing") else "revocation_unknown"


def peer_chain(ssl_object: ssl.SSLObject | None) -> tuple[bytes, ...]:
    """The peer's verified chain, leaf first, DER; the leaf alone where the chain cannot be had (Python 3.11
    has ``get_verified_chain`` on the private ``_sslobj`` only); () when the peer sent no certificate."""
    if ssl_object is None:
        return ()
    getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is not None:
        try:
            verified = getter()  # None when the client sent no certificate (require_client_cert = false)
            if verified:
                return tuple(cert.public_bytes(_ssl.ENCODING_DER) for cert in verified)
        except (ssl.SSLError, ValueError, AttributeError, TypeError):
            pass
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


def checking(driver: Driver) -> RevocationChecker | None:
    checker = driver.revocation
    return checker if checker is not None and checker.mode != "off" else None


def cached_verdict(checker: RevocationChecker, chain: tuple[bytes, ...]) -> Verdict:
    try:
        return checker.check_cached(chain, datetime.now(UTC))
    except (ValueError, TypeError) as exc:  # a certificate the cryptography package cannot read
        return _unreadable(exc)


async def fetched_verdict(checker: RevocationChecker, chain: tuple[bytes, ...]) -> Verdict:
    try:
        return await checker.check(chain, datetime.now(UTC))
    except (ValueError, TypeError) as exc:
        return _unreadable(exc)


def _unreadable(exc: Exception) -> Verdict:
    log.warning("revocation: the peer's chain could not be read: %s", exc)
    return Verdict("unknown", "issuer_unknown", f"revocation unknown: the peer's chain could not be read ({exc})")


def judge(driver: Driver, checker: RevocationChecker, verdict: Verdict, direction: str, who: str) -> Decision:
    """The mode's decision on ``verdict``, counted in ``sipfed_revocation_checks_total``; an admission with the
    status unknown (soft-fail) is logged here, rate-limited per peer and reason. A refusal is the caller's to log
    and count, as the TLS failure it is (``refused``)."""
    decision = checker.decide(verdict)
    driver.observer.revocation_check(direction, verdict.reason, decision.admit)
    if decision.admit and decision.warning:
        # A PKI without http distribution points says so at debug, not as a warning on every connect.
        level = logging.DEBUG if verdict.reason == "no_crl" else logging.WARNING
        fix = FIXES.get(verdict.reason, "")
        key = f"revocation {who} {verdict.reason}"
        driver.warnings.warn(log, key, driver.loop.time(), "%s: %s; fix: %s", who, decision.words, fix, level=level)
    return decision


def refused(verdict: Verdict, decision: Decision) -> CertificateRefused:
    return CertificateRefused(metric_reason(verdict), f"{decision.words}; fix: {FIXES.get(verdict.reason, '')}")


async def check_outbound(driver: Driver, conn: StreamConnection, hop: NextHop) -> None:
    """A next hop's chain (proxy/net/connect.py, right after the handshake): CertificateRefused, the connection
    closed, when ``tls.revocation`` refuses it."""
    checker = checking(driver)
    if checker is None or conn.transport is None:
        return
    chain = peer_chain(conn.transport.get_extra_info("ssl_object"))
    if not chain:
        return
    verdict = cached_verdict(checker, chain)
    if verdict.to_fetch:
        verdict = await fetched_verdict(checker, chain)
    decision = judge(driver, checker, verdict, "outbound", f"next hop {hop}")
    if not decision.admit:
        conn.transport.close()
        raise refused(verdict, decision)


def hold_inbound(conn: StreamConnection, identity: CertIdentity, plaintext: bytes) -> bool:
    """A client's chain, right after the handshake (StreamConnection): False to go on at once (no check, or the
    cached verdict admits it); True when the connection was refused, or waits for a CRL fetch with its reads
    paused and what it decrypted held (``conn.held``) until the verdict."""
    checker = checking(conn.driver)
    if checker is None or conn.session is None or conn.transport is None:
        return False
    chain = peer_chain(conn.session.obj)
    if not chain:
        return False
    who = f"client {conn.remote[0]}:{conn.remote[1]} on listener {conn.listener}"
    verdict = cached_verdict(checker, chain)
    if not verdict.to_fetch:
        decision = judge(conn.driver, checker, verdict, "inbound", who)
        if not decision.admit:
            conn.refused(refused(verdict, decision))
        return not decision.admit
    conn.held = [plaintext]
    conn.transport.pause_reading()
    conn.revocation_task = conn.driver.loop.create_task(_decide_later(conn, checker, chain, identity, who))
    return True


async def _decide_later(
    conn: StreamConnection, checker: RevocationChecker, chain: tuple[bytes, ...], identity: CertIdentity, who: str
) -> None:
    """The CRLs fetched (each within ``tls.crl_timeout_seconds``), the held connection goes on or is refused."""
    verdict = await fetched_verdict(checker, chain)
    conn.revocation_task = None
    transport = conn.transport
    if transport is None or transport.is_closing():
        return
    decision = judge(conn.driver, checker, verdict, "inbound", who)
    held, conn.held = conn.held or [], None
    if not decision.admit:
        conn.refused(refused(verdict, decision))
        return
    conn.established(identity)
    driver = conn.driver
    driver.read_started()  # as a read callback would: what the held messages queue is written at the end
    try:
        for data in held:
            if data and not transport.is_closing():
                conn.frames(data)
    finally:
        driver.read_ended()
    transport.resume_reading()
