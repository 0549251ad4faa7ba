"""Revocation by CRL (proxy/relay/revocation.py, crl_cache.py), sans-IO: CAs, leaves and CRLs made in memory,
time passed in. One test per rule of the modules' docstrings, and the three modes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from proxy.relay.crl_cache import CrlCache
from proxy.relay.revocation import (
    MODES,
    Decision,
    Known,
    KnownCrl,
    Mode,
    Outcome,
    Verdict,
    decide,
    distribution_points,
    evaluate,
)
from proxy.x509 import ocsp_urls, parse_crls

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
LEAF_URL = "http://pki.tomt.it/issuing.crl"
INTERMEDIATE_URL = "http://pki.tomt.it/root.crl"


@dataclasses.dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(
    subject: str,
    issuer: Issued | None,
    *,
    ca: bool,
    urls: Sequence[str] = (),
    key_usage_crl_sign: bool = True,
    extra: Sequence[x509.ExtensionType] = (),
) -> Issued:
    """A CA (self-signed when ``issuer`` is None) or a leaf, with CRL distribution points ``urls``."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer.cert.subject if issuer else name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 30 * DAY)
        .not_valid_after(NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, key_usage_crl_sign, False, False)
        builder = builder.add_extension(usage, critical=True)
    if urls:
        points = [x509.DistributionPoint([x509.UniformResourceIdentifier(u) for u in urls], None, None, None)]
        builder = builder.add_extension(x509.CRLDistributionPoints(points), critical=False)
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def crl(
    issuer: Issued,
    revoked: Sequence[tuple[x509.Certificate, x509.ReasonFlags | None]] = (),
    *,
    this_update: datetime = NOW - DAY,
    next_update: datetime = NOW + 7 * DAY,
    signer: ec.EllipticCurvePrivateKey | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(this_update)
        .next_update(next_update)
    )
    for cert, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(NOW - 2 * DAY)
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    for extension in extensions:
        builder = builder.add_extension(extension, critical=isinstance(extension, x509.DeltaCRLIndicator))
    return builder.sign(signer or issuer.key, hashes.SHA256())


@pytest.fixture(scope="module")
def root() -> Issued:
    return issue("tomt root CA", None, ca=True)


@pytest.fixture(scope="module")
def intermediate(root: Issued) -> Issued:
    return issue("tomt issuing CA", root, ca=True, urls=[INTERMEDIATE_URL])


@pytest.fixture(scope="module")
def leaf(intermediate: Issued) -> Issued:
    return issue("lync01.tomt.it", intermediate, ca=False, urls=["ldap:///CN=tomt,CN=CDP", LEAF_URL])


@pytest.fixture(scope="module")
def other_leaf(intermediate: Issued) -> Issued:
    return issue("lync02.tomt.it", intermediate, ca=False, urls=[LEAF_URL])


def known(*crls: tuple[str, x509.CertificateRevocationList], failures: dict[str, str] | None = None) -> Known:
    return Known(tuple(KnownCrl(source, c) for source, c in crls), MappingProxyType(failures or {}))


def verdict_for(leaf: Issued, intermediate: Issued, root: Issued, facts: Known, now: datetime = NOW) -> Verdict:
    return evaluate([leaf.cert, intermediate.cert], [root.cert], facts, now)


# -- good and revoked --------------------------------------------------------------------------------------


def test_a_leaf_not_on_its_issuers_current_crl_is_good(leaf: Issued, intermediate: Issued, root: Issued) -> None:
    verdict = verdict_for(leaf, intermediate, root, known((LEAF_URL, crl(intermediate))))
    assert (verdict.outcome, verdict.reason) == ("good", "good")
    assert "CN=lync01.tomt.it" in verdict.words
    assert LEAF_URL in verdict.words
    assert verdict.statuses[0].crl == LEAF_URL
    assert verdict.to_fetch == (INTERMEDIATE_URL,)  # the intermediate's CRL would be checked too, once fetched


def test_a_revoked_leaf_is_named_with_serial_date_reason_and_crl(
    leaf: Issued, intermediate: Issued, root: Issued
) -> None:
    facts = known((LEAF_URL, crl(intermediate, [(leaf.cert, x509.ReasonFlags.key_compromise)])))
    verdict = verdict_for(leaf, intermediate, root, facts)
    assert (verdict.outcome, verdict.reason) == ("revoked", "revoked")
    status = verdict.statuses[0]
    assert status.serial == leaf.cert.serial_number
    assert status.revoked_at == NOW - 2 * DAY
    assert status.revocation_reason == "keyCompromise"
    for part in ("CN=lync01.tomt.it", f"{leaf.cert.serial_number:#x}", "keyCompromise", LEAF_URL, "2026-04-29"):
        assert part in verdict.words


def test_another_leaf_on_the_same_crl_stays_good(
    leaf: Issued, other_leaf: Issued, intermediate: Issued, root: Issued
) -> None:
    facts = known((LEAF_URL, crl(intermediate, [(leaf.cert, None)])))
    assert verdict_for(other_leaf, intermediate, root, facts).outcome == "good"


def test_a_revoked_intermediate_revokes_the_chain(leaf: Issued, intermediate: Issued, root: Issued) -> None:
    facts = known(
        (LEAF_URL, crl(intermediate)),
        (INTERMEDIATE_URL, crl(root, [(intermediate.cert, x509.ReasonFlags.ca_compromise)])),
    )
    verdict = verdict_for(leaf, intermediate, root, facts)
    assert (verdict.outcome, verdict.reason) == ("revoked", "revoked")
    assert "CN=tomt issuing CA" in verdict.words
    assert "cACompromise" in verdict.words
    assert [s.outcome for s in verdict.statuses] == ["good", "revoked"]


def test_an_intermediate_without_a_known_crl_does_not_make_the_chain_unknown(
    leaf: Issued, intermediate: Issued, root: Issued
) -> None:
    """Rule 1: intermediates are checked only where their issuer's CRL is known."""
    verdict = verdict_for(leaf, intermediate, root, known((LEAF_URL, crl(intermediate))))
    assert verdict.outcome == "good"
    assert verdict.statuses[1].outcome == "unknown"


def test_the_leaf_alone_will_do_when_the_bundle_holds_its_issuer(
    leaf: Issued, intermediate: Issued, root: Issued
) -> None:
    """Python 3.11 gives only the leaf (getpeercert(binary_form=True)): the CA bundle supplies the issuer."""
    leaf_der = leaf.cert.public_bytes(serialization.Encoding.DER)
    facts = known((LEAF_URL, crl(intermediate, [(leaf.cert, None)])))
    verdict = evaluate([leaf_der], [root.cert, intermediate.cert.public_bytes(serialization.Encoding.DER)], facts, NOW)
    assert verdict.outcome == "revoked"


def test_without_its_issuer_no_crl_can_be_verified(leaf: Issued, intermediate: Issued) -> None:
    verdict = evaluate([leaf.cert], [], known((LEAF_URL, crl(intermediate))), NOW)
    assert (verdict.outcome, verdict.reason) == ("unknown", "issuer_unknown")
    assert "CN=tomt issuing CA" in verdict.words


# -- CRLs that do not count ------------------------------------------------------------------------------


def test_a_crl_signed_by_another_key_is_ignored(leaf: Issued, intermediate: Issued, root: Issued) -> None:
    """Rule 3, §6.3.3 (g): same issuer name, another key: its revocations count for nothing."""
    forger = ec.generate_private_key(ec.SECP256R1())
    forged = crl(intermediate, [(leaf.cert, x509.ReasonFlags.key_compromise)], signer=forger)
    verdict = verdict_for(leaf, intermediate, root, known((LEAF_URL, forged)))
    assert (verdict.outcome, verdict.reason) == ("unknown", "crl_invalid")
    assert "not signed by the issuer's key" in verdict.words
    genuine = known((LEAF_URL, forged), ("file /etc/sipfed/issuing.crl", crl(intermediate)))
    assert verdict_for(leaf, intermediate, root, genuine).outcome == "good"


def test_a_crl_from_another_issuer_at_the_url_is_ignored(leaf: Issued, intermediate: Issued, root: Issued) -> None:
    verdict = verdict_for(leaf, intermediate, root, known((LEAF_URL, crl(root, [(leaf.cert, None)]))))
    assert (verdict.outcome, verdict.reason) == ("unknown", "crl_invalid")
    assert "not the certificate's issuer" in verdict.words


def test_an_issuer_without_crl_sign_cannot_vouch_for_a_crl(root: Issued) -> None:
    issuing = issue("no cRLSign CA", root, ca=True, key_usage_crl_sign=False)
    peer = issue("peer.example", issuing, ca=False, urls=[LEAF_URL])
    verdict = evaluate([peer.cert], [root.cert, issuing.cert], known((LEAF_URL, crl(issuing))), NOW)
    assert (verdict.outcome, verdict.reason) == ("unknown", "crl_invalid")
    assert "cRLSign" in verdict.words


@pytest.mark.parametrize(
    ("extension", "words"),
    [
        (x509.DeltaCRLIndicator(1), "delta CRL"),
        (x509.IssuingDistributionPoint(None, None, False, True, None, False, False), "CA certificates only"),
        (x509.IssuingDistributionPoint(None, None, False, False, frozenset({x509.ReasonFlags.key_compromise}),
                                       False, False), "part of its scope"),
        (x509.IssuingDistributionPoint([x509.UniformResourceIdentifier("http://elsewhere/x.crl")], None, False,
                                       False, None, False, False), "another distribution point"),
    ],
)  # fmt: skip
def test_a_crl_that_does_not_cover_the_leaf_completely_is_ignored(
    leaf: Issued, intermediate: Issued, root: Issued, extension: x509.ExtensionType, words: str
) -> None:
    """§5.2.4, §5.2.5, §6.3.3 (b)(2): a delta CRL, or one partitioned away from this certificate."""
    partial = crl(intermediate, [(leaf.cert, None)], extensions=[extension])
    verdict = verdict_for(leaf, intermediate, root, known((LEAF_URL, partial)))
    assert (verdict.outcome, verdict.reason) == ("unknown", "crl_invalid")
    assert words in verdict.words


def test_an_issuing_distribution_point_naming_the_leafs_point_covers_it(
    leaf: Issued, intermediate: Issued, root: Issued
) -> None:
    point = x509.IssuingDistributionPoint(
        [x509.UniformResourceIdentifier(LEAF_URL)], None, True, False, None, False, False
    )
    facts = known((LEAF_URL, crl(intermediate, [(leaf.cert, None)], extensions=[point])))
    assert verdict_for(leaf, intermediate, root, facts).outcome == "revoked"


@pytest.mark.parametrize(
    ("this_update", "next_update", "words"),
    [
        (NOW - 8 * DAY, NOW - DAY, "nextUpdate 2026-04-30 12:00:00 UTC has passed"),
        (NOW - 8 * DAY, NOW, "has passed"),  # nextUpdate is the first moment it is no longer current
        (NOW + DAY, NOW + 8 * DAY, "not valid before its thisUpdate"),
    ],
)
def test_a_crl_outside_its_window_is_stale(
    leaf: Issued,
    intermediate: Issued,
    root: Issued,
    this_update: datetime,
    next_update: datetime,
    words: str,
) -> None:
    """§6.3.3 (a), §5.1.2.4-5: a stale CRL says nothing, even about a revoked certificate on it."""
    stale = crl(intermediate, [(leaf.cert, None)], this_update=this_update, next_update=next_update)
    verdict = verdict_for(leaf, intermediate, root, known((LEAF_URL, stale)))
    assert (verdict.outcome, verdict.reason) == ("unknown", "crl_stale")
    assert words in verdict.words


def test_the_newest_usable_crl_decides(leaf: Issued, intermediate: Issued, root: Issued) -> None:
    """A certificateHold lifted in the next CRL: the newer one wins, whichever source it came from."""
    held = crl(intermediate, [(leaf.cert, x509.ReasonFlags.certificate_hold)], this_update=NOW - 2 * DAY)
    released = crl(intermediate, this_update=NOW - DAY)
    assert verdict_for(leaf, intermediate, root, known(("file a.crl", held), (LEAF_URL, released))).outcome == "good"
    assert verdict_for(leaf, intermediate, root, known(("file a.crl", held))).outcome == "revoked"


# -- no CRL at all ---------------------------------------------------------------------------------------


def test_a_crl_not_fetched_yet_is_unknown_and_named_to_fetch(leaf: Issued, intermediate: Issued, root: Issued) -> None:
    verdict = verdict_for(leaf, intermediate, root, Known())
    assert (verdict.outcome, verdict.reason) == ("unknown", "crl_missing")
    assert verdict.to_fetch == (LEAF_URL, INTERMEDIATE_URL)
    assert "ldap" not in verdict.words


def test_an_unreachable_crl_is_unknown_with_the_cause(leaf: Issued, intermediate: Issued, root: Issued) -> None:
    facts = known(failures={LEAF_URL: "connection refused"})
    verdict = verdict_for(leaf, intermediate, root, facts)
    assert (verdict.outcome, verdict.reason) == ("unknown", "crl_unreachable")
    assert f"CRL {LEAF_URL} could not be fetched: connection refused" in verdict.words
    assert verdict.to_fetch == (INTERMEDIATE_URL,)  # a failed URL waits for its retry


def test_a_leaf_naming_no_distribution_point_has_no_crl(intermediate: Issued, root: Issued) -> None:
    bare = issue("cups.tomt.local", intermediate, ca=False)
    verdict = evaluate([bare.cert, intermediate.cert], [root.cert], Known(), NOW)
    assert (verdict.outcome, verdict.reason) == ("unknown", "no_crl")
    assert verdict.to_fetch == (INTERMEDIATE_URL,)
    local = known(("file /etc/sipfed/issuing.crl", crl(intermediate, [(bare.cert, None)])))
    assert evaluate([bare.cert, intermediate.cert], [root.cert], local, NOW).outcome == "revoked"


def test_only_http_distribution_points_are_used(intermediate: Issued) -> None:
    """Rule 4: ldap (AD's first point), https and points with a cRLIssuer or reasons are ignored."""
    points = [
        x509.DistributionPoint([x509.UniformResourceIdentifier("ldap:///CN=x,CN=CDP")], None, None, None),
        x509.DistributionPoint([x509.UniformResourceIdentifier("https://pki.example/a.crl")], None, None, None),
        x509.DistributionPoint(
            [x509.UniformResourceIdentifier("http://pki.example/b.crl")], None, None, [x509.DirectoryName(name("x"))]
        ),
        x509.DistributionPoint(
            [x509.UniformResourceIdentifier("http://pki.example/c.crl")],
            None,
            frozenset({x509.ReasonFlags.key_compromise}),
            None,
        ),
        x509.DistributionPoint([x509.UniformResourceIdentifier("HTTP://pki.example/d.crl")], None, None, None),
    ]
    peer = issue("peer.example", intermediate, ca=False, extra=[x509.CRLDistributionPoints(points)])
    assert distribution_points(peer.cert) == ("HTTP://pki.example/d.crl",)


def test_ocsp_urls_are_read_from_authority_information_access(intermediate: Issued) -> None:
    access = x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier("http://ocsp/")),
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier("http://pki/ca.crt")
            ),
        ]
    )
    peer = issue("peer.example", intermediate, ca=False, extra=[access])
    assert ocsp_urls(peer.cert) == ("http://ocsp/",)
    assert ocsp_urls(intermediate.cert) == ()


def test_evaluate_wants_a_leaf_and_an_aware_now(leaf: Issued) -> None:
    with pytest.raises(ValueError, match="empty chain"):
        evaluate([], [], Known(), NOW)
    with pytest.raises(ValueError, match="aware"):
        evaluate([leaf.cert], [], Known(), NOW.replace(tzinfo=None))


def test_parse_crls_reads_der_and_several_pem(intermediate: Issued, root: Issued) -> None:
    first, second = crl(intermediate), crl(root)
    der = first.public_bytes(serialization.Encoding.DER)
    pem = b"junk\n" + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (first, second))
    assert parse_crls(der) == (first,)
    assert parse_crls(pem) == (first, second)
    with pytest.raises(ValueError, match="neither a DER CRL nor PEM"):
        parse_crls(b"<html>404</html>")


# -- the modes ---------------------------------------------------------------------------------------------

POLICY: dict[tuple[Mode, Outcome], tuple[bool, bool]] = {
    # (mode, outcome) -> (admitted, with a warning)
    ("off", "good"): (True, False),
    ("off", "revoked"): (True, False),
    ("off", "unknown"): (True, False),
    ("soft-fail", "good"): (True, False),
    ("soft-fail", "revoked"): (False, False),
    ("soft-fail", "unknown"): (True, True),
    ("hard-fail", "good"): (True, False),
    ("hard-fail", "revoked"): (False, False),
    ("hard-fail", "unknown"): (False, False),
}
VERDICTS: dict[Outcome, Verdict] = {
    "good": Verdict("good", "good", "… is not on CRL …"),
    "revoked": Verdict("revoked", "revoked", "… was revoked on …"),
    "unknown": Verdict("unknown", "crl_unreachable", "CRL http://x could not be fetched: connection refused"),
}


@pytest.mark.parametrize(("mode", "outcome"), list(POLICY))
def test_each_mode_admits_and_refuses_as_documented(mode: Mode, outcome: Outcome) -> None:
    decision = decide(mode, VERDICTS[outcome])
    assert (decision.admit, decision.warning) == POLICY[mode, outcome]
    if mode != "off":
        assert decision.reason == VERDICTS[outcome].reason
        assert VERDICTS[outcome].words in decision.words
    assert set(MODES) == {m for m, _ in POLICY}


def test_hard_and_soft_fail_say_so_in_words() -> None:
    unknown = VERDICTS["unknown"]
    assert decide("soft-fail", unknown).words.startswith("admitted with revocation unknown (soft-fail)")
    assert decide("hard-fail", unknown).words.startswith("refused with revocation unknown (hard-fail)")
    assert decide("off", unknown) == Decision(True, "off", False, "revocation checking is off")
    assert Verdict.unchecked().reason == "off"


def test_verdicts_are_frozen_and_slotted() -> None:
    verdict = VERDICTS["good"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.outcome = "revoked"  # type: ignore[misc]
    assert not hasattr(verdict, "__dict__")


# -- the cache ---------------------------------------------------------------------------------------------


def test_a_cached_crl_counts_until_its_next_update(leaf: Issued, intermediate: Issued, root: Issued) -> None:
    cache = CrlCache(retry_seconds=60)
    entry = cache.put(LEAF_URL, crl(intermediate, next_update=NOW + DAY), NOW)
    assert entry.expires_at == NOW + DAY
    just_before = NOW + DAY - timedelta(seconds=1)
    assert cache.get(LEAF_URL, just_before) is entry
    assert verdict_for(leaf, intermediate, root, cache.known(just_before), just_before).outcome == "good"
    assert cache.due([LEAF_URL], just_before) == ()
    assert cache.get(LEAF_URL, NOW + DAY) is None  # at nextUpdate: gone, to be fetched again
    assert len(cache) == 0
    verdict = verdict_for(leaf, intermediate, root, cache.known(NOW + DAY), NOW + DAY)
    assert (verdict.reason, verdict.to_fetch[0]) == ("crl_missing", LEAF_URL)


def test_a_stale_crl_is_kept_only_for_the_retry_interval(intermediate: Issued) -> None:
    cache = CrlCache(retry_seconds=60)
    entry = cache.put(LEAF_URL, crl(intermediate, this_update=NOW - 9 * DAY, next_update=NOW - DAY), NOW)
    assert entry.expires_at == NOW + timedelta(seconds=60)


def test_a_negative_entry_holds_off_the_url_until_its_retry(leaf: Issued, intermediate: Issued, root: Issued) -> None:
    cache = CrlCache(retry_seconds=30)
    entry = cache.put_error(LEAF_URL, "timed out after 2 s", NOW)
    assert (entry.crl, entry.error, entry.expires_at) == (None, "timed out after 2 s", NOW + timedelta(seconds=30))
    within = NOW + timedelta(seconds=29)
    assert cache.due([LEAF_URL, INTERMEDIATE_URL], within) == (INTERMEDIATE_URL,)
    verdict = verdict_for(leaf, intermediate, root, cache.known(within), within)
    assert (verdict.reason, verdict.to_fetch) == ("crl_unreachable", (INTERMEDIATE_URL,))
    assert "timed out after 2 s" in verdict.words
    after = NOW + timedelta(seconds=30)
    assert cache.due([LEAF_URL], after) == (LEAF_URL,)
    assert dict(cache.known(after).failures) == {}


def test_a_success_replaces_a_negative_entry(intermediate: Issued) -> None:
    cache = CrlCache(retry_seconds=30)
    cache.put_error(LEAF_URL, "HTTP 404 Not Found", NOW)
    cache.put(LEAF_URL, crl(intermediate), NOW + timedelta(seconds=31))
    facts = cache.known(NOW + timedelta(seconds=31))
    assert (len(facts.crls), dict(facts.failures)) == (1, {})


def test_the_cache_is_bounded_expired_first_then_soonest_to_expire(intermediate: Issued) -> None:
    cache = CrlCache(max_entries=2, retry_seconds=60)
    cache.put("http://a/1.crl", crl(intermediate, next_update=NOW + 3 * DAY), NOW)
    cache.put_error("http://a/2.crl", "connection refused", NOW)  # expires in 60 s: the soonest
    cache.put("http://a/3.crl", crl(intermediate, next_update=NOW + 2 * DAY), NOW)
    assert len(cache) == 2
    assert cache.get("http://a/2.crl", NOW) is None
    later = NOW + 2 * DAY  # 3.crl has expired: it goes, not 1.crl
    cache.put("http://a/4.crl", crl(intermediate, next_update=NOW + 9 * DAY), later)
    assert {c.source for c in cache.known(later).crls} == {"http://a/1.crl", "http://a/4.crl"}


def test_the_cache_wants_sane_bounds() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        CrlCache(max_entries=0)
    with pytest.raises(ValueError, match="retry_seconds"):
        CrlCache(retry_seconds=0)


def test_a_partitioned_cas_other_crl_is_no_problem_of_this_certificate(intermediate: Issued, root: Issued) -> None:
    """§5.2.5: CRL a.crl covers only the certificates naming a.crl; a certificate naming b.crl, not fetched
    yet, is ``crl_missing`` — a.crl not covering it is no fault of either."""
    a_url, b_url = "http://pki.tomt.it/a.crl", "http://pki.tomt.it/b.crl"
    point = x509.IssuingDistributionPoint(
        [x509.UniformResourceIdentifier(a_url)], None, False, False, None, False, False
    )
    peer = issue("peer.tomt.it", intermediate, ca=False, urls=[b_url])
    verdict = evaluate(
        [peer.cert], [root.cert, intermediate.cert], known((a_url, crl(intermediate, extensions=[point]))), NOW
    )
    assert (verdict.reason, verdict.words.count("CRL ")) == ("crl_missing", 1)


def test_a_full_chain_with_its_root_checks_all_but_the_root(leaf: Issued, intermediate: Issued, root: Issued) -> None:
    """What ``SSLObject.get_verified_chain`` gives (leaf, intermediate, root): the root is a trust anchor."""
    facts = known((LEAF_URL, crl(intermediate)), (INTERMEDIATE_URL, crl(root)))
    verdict = evaluate([leaf.cert, intermediate.cert, root.cert], [], facts, NOW)
    assert [s.subject for s in verdict.statuses] == ["CN=lync01.tomt.it", "CN=tomt issuing CA"]
    assert [s.outcome for s in verdict.statuses] == ["good", "good"]
