"""`sipfed doctor` for XMPP federation (issue 15): each offline finding from a config and certificates made in a
tmp dir with ``proxy.admin.certs``; and the judging of a partner's stream features (``--live``) without a network
(the network is in tests/integration/test_doctor_xmpp.py)."""

import asyncio
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.admin.certs import LabPki, issue_leaf, make_lab_pki
from proxy.admin.doctor import diagnose, run
from proxy.admin.findings import Finding
from proxy.admin.live_xmpp import NoDns, Probe, probe_listener, probe_partner
from proxy.admin.live_xmpp_dns import our_records, partner_targets
from proxy.admin.live_xmpp_offers import Negotiation, Offer, judge_negotiation, read_offer, stream_refused
from proxy.admin.xmpp_checks import check_xmpp_names, srv_record
from proxy.config import load_config
from proxy.net.xmpp_tls import ID_ON_DNSSRV, ID_ON_XMPPADDR
from proxy.xmpp.policy import Partner, XmppConfig
from proxy.xmpp.stream import PeerCert
from proxy.xmpp.xml import parse_document
from routes.dns import Answer, NoRecords, Query, Rdata, Srv

SIP_NAMES = ["sipfed.tomt.local", "sipfed.tomt.it"]
XMPP_NAMES = ["sipfed.tomt.local", "tomt.local", "tomt.it"]
SECRET = "0123456789abcdef0123456789abcdef"
GOOD_PARTNER = 'name = "jabber"\nprimary_domain = "xmpp.test"\ntls = "required"\nsasl = "optional"\n'


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    out = tmp_path_factory.mktemp("pki")
    made = make_lab_pki(out, [SIP_NAMES], key_type="ec")
    issue_leaf(out, XMPP_NAMES, key_type="ec", file_stem="xmpp")
    issue_leaf(out, ["sipfed.tomt.local"], key_type="ec", file_stem="sip-only")
    return made


@pytest.fixture
def certs(pki: LabPki, tmp_path: Path) -> Path:
    """A private copy of the module's PKI as `certs/` beside the config."""
    return Path(shutil.copytree(pki.ca_cert.parent, tmp_path / "certs"))


def write_config(
    tmp_path: Path,
    *,
    chain: str | None = "xmpp.pem",
    key: str = "xmpp.key",
    bundle: str | None = None,
    listen: str = "127.0.0.1:5269",
    secret: str | None = SECRET,
    partner: str = GOOD_PARTNER,
    with_tls: bool = True,
) -> Path:
    tls = (
        '[tls]\ncert_chain = "certs/sipfed.tomt.local.pem"\nkey = "certs/sipfed.tomt.local.key"\n'
        'ca_bundle = "certs/ca.crt"\n'
    )
    lines = [f'listen = "{listen}"', 'domains = ["tomt.local", "tomt.it"]']
    if chain is not None:
        lines += [f'cert_chain = "certs/{chain}"', f'key = "certs/{key}"']
    if bundle is not None:
        lines.append(f'ca_bundle = "certs/{bundle}"')
    if secret is not None:
        lines.append(f'dialback_secret = "{secret}"')
    path = tmp_path / "sipfed.toml"
    path.write_text(f"""
[proxy]
fqdn = "sipfed.tomt.local"

{tls if with_tls else ""}
[[listeners]]
name = "cisco"
transport = "{"tls" if with_tls else "tcp"}"
address = "127.0.0.1"
port = 5061

[xmpp]
{chr(10).join(lines)}

[[xmpp.partners]]
{partner}
""")
    return path


def xmpp_findings(path: Path, now: datetime | None = None) -> list[Finding]:
    return [f for f in diagnose(load_config(path), now or datetime.now(UTC)) if f.check.startswith("xmpp.")]


def only(findings: list[Finding], severity: str, check: str) -> Finding:
    [found] = [f for f in findings if f.severity == severity and f.check == check]
    return found


# --- a good setup ---------------------------------------------------------------------------------------------


def test_a_good_setup_has_every_xmpp_check_ok(tmp_path: Path, certs: Path) -> None:
    path = write_config(tmp_path)
    findings = xmpp_findings(path)
    assert [f for f in findings if f.severity != "ok"] == []
    assert {f.check for f in findings} == {
        "xmpp.partner.tls",
        "xmpp.partner.auth",
        "xmpp.dialback_secret",
        "xmpp.listen",
        "xmpp.cert.names",
        "xmpp.cert.validity",
        "xmpp.cert.eku",
        "xmpp.cert.key",
        "xmpp.ca.bundle",
    }
    names = only(findings, "ok", "xmpp.cert.names")
    assert "tomt.local, tomt.it" in names.cause
    assert run(path, False) == 0


def test_no_xmpp_section_no_xmpp_findings(tmp_path: Path, certs: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().split("[xmpp]")[0])
    assert xmpp_findings(path) == []


# --- our certificate ----------------------------------------------------------------------------------------


def test_a_certificate_naming_only_the_sip_host_is_an_error_naming_the_domains(tmp_path: Path, certs: Path) -> None:
    path = write_config(tmp_path, chain="sip-only.pem", key="sip-only.key")
    error = only(xmpp_findings(path), "error", "xmpp.cert.names")
    assert error.subject == "certs/sip-only.pem"
    assert "names sipfed.tomt.local, not the XMPP domain(s) tomt.local, tomt.it" in error.cause
    assert "RFC 6120 §13.7.1.2" in error.cause
    assert "tomt.local, tomt.it as DNS subjectAltNames" in error.fix
    assert "'sipfed certs --name sipfed.tomt.local,tomt.local,tomt.it'" in error.fix
    assert run(path, False) == 1


def test_the_shared_tls_certificate_is_checked_for_names_only(tmp_path: Path, certs: Path) -> None:
    findings = xmpp_findings(write_config(tmp_path, chain=None))
    error = only(findings, "error", "xmpp.cert.names")
    assert error.subject == "certs/sipfed.tomt.local.pem"
    assert "not the XMPP domain(s) tomt.local, tomt.it" in error.cause
    assert "cert.* findings" in only(findings, "ok", "xmpp.cert.shared").cause
    assert not [f for f in findings if f.check in ("xmpp.cert.eku", "xmpp.cert.validity", "xmpp.cert.key")]
    assert "[tls] ca_bundle" in only(findings, "ok", "xmpp.ca.bundle").cause


def self_signed(
    dns: Sequence[str] = (), *, srv: Sequence[str] = (), xmpp_addr: Sequence[str] = (), cn: str = "cn.example"
) -> x509.Certificate:
    """A certificate with the given reference identifiers: dNSName, SRV-ID (RFC 4985), XmppAddr (RFC 6120)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.OtherName(ID_ON_DNSSRV, der_string(0x16, f"_xmpp-server.{n}")) for n in srv]
    sans += [x509.OtherName(ID_ON_XMPPADDR, der_string(0x0C, n)) for n in xmpp_addr]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def der_string(tag: int, text: str) -> bytes:
    data = text.encode()
    return bytes([tag, len(data)]) + data


@pytest.mark.parametrize(
    ("cert", "domain", "severity"),
    [
        (lambda: self_signed(["*.tomt.local"]), "xmpp.tomt.local", "ok"),
        (lambda: self_signed(["*.tomt.local"]), "tomt.local", "error"),
        (lambda: self_signed(["*.tomt.local"]), "a.b.tomt.local", "error"),
        (lambda: self_signed(srv=["tomt.local"]), "tomt.local", "ok"),
        (lambda: self_signed(xmpp_addr=["tomt.local"]), "tomt.local", "ok"),
        (lambda: self_signed(cn="tomt.local"), "tomt.local", "ok"),
        (lambda: self_signed(["other.example"], cn="tomt.local"), "tomt.local", "error"),
    ],
    ids=["wildcard", "wildcard-not-the-parent", "wildcard-one-label", "srv-id", "xmppaddr", "cn-alone", "cn-with-sans"],
)
def test_names_are_read_and_matched_as_the_proxy_does(
    cert: Callable[[], x509.Certificate], domain: str, severity: str
) -> None:
    [finding] = check_xmpp_names(cert(), [domain], "cert.pem")
    assert finding.severity == severity


@pytest.mark.parametrize(
    ("days", "severity", "words"),
    [(10, "warning", "expires on"), (-1, "error", "expired on")],
    ids=["expiring", "expired"],
)
def test_validity(tmp_path: Path, certs: Path, days: int, severity: str, words: str) -> None:
    now = datetime.now(UTC)
    start = now - timedelta(days=30)
    issue_leaf(certs, XMPP_NAMES, key_type="ec", file_stem="dated", not_before=start, not_after=now + timedelta(days))
    finding = only(
        xmpp_findings(write_config(tmp_path, chain="dated.pem", key="dated.key")), severity, "xmpp.cert.validity"
    )
    assert words in finding.cause
    assert finding.subject.startswith("certs/dated.pem #1")


def test_no_client_auth_eku_is_an_error_for_sasl_external(tmp_path: Path, certs: Path) -> None:
    issue_leaf(certs, XMPP_NAMES, key_type="ec", file_stem="server-only", eku=("serverAuth",))
    error = only(
        xmpp_findings(write_config(tmp_path, chain="server-only.pem", key="server-only.key")), "error", "xmpp.cert.eku"
    )
    assert "Client Authentication" in error.cause
    assert "SASL EXTERNAL (XEP-0178)" in error.cause
    assert "Client Authentication" in error.fix


def test_a_key_of_another_certificate_is_an_error(tmp_path: Path, certs: Path) -> None:
    error = only(xmpp_findings(write_config(tmp_path, key="sipfed.tomt.local.key")), "error", "xmpp.cert.key")
    assert "is not the private key of 'sipfed.tomt.local'" in error.cause


def test_a_ca_bundle_without_a_ca_is_an_error(tmp_path: Path, certs: Path) -> None:
    error = only(xmpp_findings(write_config(tmp_path, bundle="xmpp.crt")), "error", "xmpp.ca.bundle")
    assert "no CA" in error.cause


@pytest.mark.parametrize(("sasl", "severity"), [("required", "error"), ("optional", "warning")])
def test_no_ca_bundle_at_all(tmp_path: Path, certs: Path, sasl: str, severity: str) -> None:
    partner = f'name = "jabber"\nprimary_domain = "xmpp.test"\nsasl = "{sasl}"\n'
    finding = only(xmpp_findings(write_config(tmp_path, with_tls=False, partner=partner)), severity, "xmpp.ca.bundle")
    assert "no partner's certificate can verify" in finding.cause
    assert ("jabber (sasl = required) are always refused" in finding.cause) is (sasl == "required")


# --- settings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "check", "words", "fix"),
    [
        ('tls = "optional"', "xmpp.partner.tls", "TLS negotiation Optional", 'set tls = "required"'),
        (
            'tls = "not_supported"\nsasl = "not_supported"',
            "xmpp.partner.tls",
            "crosses the network in clear",
            'set tls = "required"',
        ),
        (
            'tls = "not_supported"\nsasl = "not_supported"',
            "xmpp.partner.auth",
            "dialback with no TLS: xmpp.test is known from DNS only, in clear",
            'sasl = "optional"',
        ),
        (
            'partner_type = "public_unverified"\nsasl = "required"',
            "xmpp.partner.auth",
            "unusual: Partner type Public unverified with SASL negotiation Required",
            'partner_type = "federated"',
        ),
    ],
    ids=["tls-optional", "tls-not-supported", "dialback-in-clear", "public-unverified-sasl-required"],
)
def test_weak_but_valid_partner_settings_are_warnings(
    tmp_path: Path, certs: Path, settings: str, check: str, words: str, fix: str
) -> None:
    partner = f'name = "jabber"\nprimary_domain = "xmpp.test"\n{settings}\n'
    warning = only(xmpp_findings(write_config(tmp_path, partner=partner)), "warning", check)
    assert warning.subject == "xmpp partner jabber"
    assert words in warning.cause
    assert fix in warning.fix


@pytest.mark.parametrize(
    ("secret", "words"),
    [(None, "random one at each start"), ("short", "only 5 characters")],
    ids=["unset", "short"],
)
def test_dialback_secret(tmp_path: Path, certs: Path, secret: str | None, words: str) -> None:
    warning = only(xmpp_findings(write_config(tmp_path, secret=secret)), "warning", "xmpp.dialback_secret")
    assert words in warning.cause
    assert "openssl rand -hex 32" in warning.fix


def test_no_dialback_no_secret_finding(tmp_path: Path, certs: Path) -> None:
    partner = GOOD_PARTNER + "dialback = false\n"
    assert not [f for f in xmpp_findings(write_config(tmp_path, secret=None, partner=partner)) if "secret" in f.check]


def test_a_listener_off_5269_names_the_srv_record_to_publish(tmp_path: Path, certs: Path) -> None:
    warning = only(xmpp_findings(write_config(tmp_path, listen="0.0.0.0:5270")), "warning", "xmpp.listen")
    assert "port 5270, not 5269" in warning.cause
    assert "_xmpp-server._tcp.tomt.local. 3600 IN SRV 0 5 5270 sipfed.tomt.local." in warning.fix
    assert "port 0" in only(xmpp_findings(write_config(tmp_path, listen="127.0.0.1:0")), "warning", "xmpp.listen").cause


def test_srv_record_is_in_zone_file_form() -> None:
    assert (
        srv_record("tomt.local", "sipfed.tomt.local.")
        == "_xmpp-server._tcp.tomt.local. 3600 IN SRV 0 5 5269 sipfed.tomt.local."
    )


# --- --live: the partner's features against its settings (no network) ---------------------------------------

PARTNER = Partner("jabber", "xmpp.test")  # tls required, sasl optional, dialback on
VALID = PeerCert(True, True, ("xmpp.test",))


def features(xml: str) -> Offer:
    ns = "xmlns:stream='http://etherx.jabber.org/streams'"
    return read_offer(parse_document(f"<stream:features {ns}>{xml}</stream:features>".encode()))


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def test_features_are_read() -> None:
    offer = features(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>"
        "<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>"
    )
    assert offer == Offer(True, True, ("EXTERNAL",), True)
    assert offer.describe() == "STARTTLS (required), SASL EXTERNAL, dialback"
    assert features("").describe() == "nothing"


def test_sasl_external_after_tls_is_all_ok() -> None:
    done = Negotiation(Offer(True, True), Offer(mechanisms=("EXTERNAL",), dialback=True), VALID, "TLSv1.3")
    found = judge_negotiation(PARTNER, "tomt.local", "127.0.0.3:5269", done)
    assert [f.severity for f in found] == ["ok"] * 4
    checks = by_check(found)
    assert (
        "reachable at 127.0.0.3:5269 and offers STARTTLS (required); after STARTTLS (TLSv1.3)"
        in checks["live.xmpp.connect"].cause
    )
    assert "offers SASL EXTERNAL to tomt.local" in checks["live.xmpp.auth"].cause


def test_partner_requiring_tls_with_our_setting_not_supported_is_an_error_naming_the_fix() -> None:
    partner = Partner("jabber", "xmpp.test", tls="not_supported", sasl="not_supported")
    found = by_check(judge_negotiation(partner, "tomt.local", "h:5269", Negotiation(Offer(True, True, (), True))))
    error = found["live.xmpp.tls"]
    assert error.severity == "error"
    assert 'sipfed\'s setting for it is tls = "not_supported"' in error.cause
    assert 'set tls = "required" (Lync: TLS negotiation Required)' in error.fix
    assert "live.xmpp.auth" not in found  # sipfed gives up before authenticating


def test_no_starttls_for_a_tls_required_partner_is_an_error() -> None:
    found = by_check(judge_negotiation(PARTNER, "tomt.local", "h:5269", Negotiation(Offer(dialback=True))))
    assert found["live.xmpp.tls"].severity == "error"
    assert "does not offer STARTTLS" in found["live.xmpp.tls"].cause


def test_sasl_required_without_external_is_an_error() -> None:
    partner = Partner("jabber", "xmpp.test", sasl="required", dialback=False)
    done = Negotiation(Offer(True, True), Offer(dialback=True), VALID, "TLSv1.3")
    error = by_check(judge_negotiation(partner, "tomt.local", "h:5269", done))["live.xmpp.auth"]
    assert error.severity == "error"
    assert "does not accept our certificate for tomt.local" in error.cause
    assert "trust our CA" in error.fix


def test_an_unverified_partner_certificate_falls_back_to_dialback_or_fails_with_sasl_required() -> None:
    untrusted = PeerCert(True, False, ("xmpp.test",), "unable to get local issuer certificate")
    done = Negotiation(Offer(True, True), Offer(dialback=True), untrusted, "TLSv1.3")
    found = by_check(judge_negotiation(PARTNER, "tomt.local", "h:5269", done))
    assert found["live.xmpp.cert"].severity == "warning"
    assert "dialback only" in found["live.xmpp.cert"].cause
    assert found["live.xmpp.auth"].severity == "ok"
    assert "authenticate by dialback" in found["live.xmpp.auth"].cause
    strict = Partner("jabber", "xmpp.test", sasl="required", dialback=False)
    found = by_check(judge_negotiation(strict, "tomt.local", "h:5269", done))
    assert found["live.xmpp.cert"].severity == "error"
    assert "unable to get local issuer certificate" in found["live.xmpp.cert"].cause
    assert "live.xmpp.auth" not in found


def test_a_refused_stream_names_the_reason() -> None:
    finding = stream_refused(PARTNER, "h:5269", "tomt.local", "host-unknown", "")
    assert finding.severity == "error"
    assert "stream error host-unknown" in finding.cause
    assert "does not serve xmpp.test" in finding.fix


# --- --live: DNS, from a fake source (no network) ---------------------------------------------------------


class FakeDns:
    """``routes.resolver.DnsSource`` from a table: (name, type) -> records; a missing name is NXDOMAIN."""

    def __init__(self, table: dict[tuple[str, str], tuple[Rdata, ...]]) -> None:
        self.table = table

    async def query(self, query: Query) -> Answer:
        records = self.table.get((query.name, query.rdtype))
        if records is None:
            raise NoRecords(query, nxdomain=True)
        return Answer(query, records, 60)


def xmpp_config(listen: tuple[str, int]) -> XmppConfig:
    return XmppConfig(listen, ("tomt.local", "tomt.it"), (PARTNER,))


def ours(table: dict[tuple[str, str], tuple[Rdata, ...]], listen: tuple[str, int]) -> dict[str, Finding]:
    found = asyncio.run(our_records(xmpp_config(listen), "sipfed.tomt.local", FakeDns(table)))
    return {f.subject.removeprefix("xmpp domain "): f for f in found}


def srv_to(target: str, port: int) -> tuple[Rdata, ...]:
    return (Srv(0, 5, port, target),)


@pytest.mark.parametrize(
    ("listen", "address", "severity", "words"),
    [
        (("127.0.0.1", 5269), "127.0.0.1", "ok", "an address sipfed listens on"),
        (("0.0.0.0", 5269), "127.0.0.5", "ok", "an address sipfed listens on"),
        (("127.0.0.1", 5269), "127.0.0.5", "error", "an address of this host, but sipfed listens on 127.0.0.1 only"),
        (("0.0.0.0", 5269), "192.0.2.1", "warning", "not an address of this host"),
        (("0.0.0.0", 5270), "127.0.0.1", "error", "port 5269, but sipfed listens on 5270"),
    ],
    ids=["the-listen-address", "local-under-wildcard", "another-local-address", "not-local", "wrong-port"],
)
def test_our_srv_records_lead_to_our_listener(listen: tuple[str, int], address: str, severity: str, words: str) -> None:
    table: dict[tuple[str, str], tuple[Rdata, ...]] = {
        ("_xmpp-server._tcp.tomt.local", "SRV"): srv_to("gw.tomt.local", 5269),
        ("_xmpp-server._tcp.tomt.it", "SRV"): srv_to("gw.tomt.local", 5269),
        ("gw.tomt.local", "A"): (address,),
    }
    finding = ours(table, listen)["tomt.it"]
    assert finding.severity == severity
    assert words in finding.cause


def test_a_missing_srv_record_is_given_in_zone_file_form() -> None:
    table: dict[tuple[str, str], tuple[Rdata, ...]] = {
        ("_xmpp-server._tcp.tomt.local", "SRV"): srv_to("gw.tomt.local", 5270),
        ("gw.tomt.local", "A"): ("127.0.0.1",),
    }
    found = ours(table, ("0.0.0.0", 5270))
    assert found["tomt.local"].severity == "ok"
    assert found["tomt.it"].fix == "publish: _xmpp-server._tcp.tomt.it. 3600 IN SRV 0 5 5270 gw.tomt.local."
    alone = ours({}, ("0.0.0.0", 5269))["tomt.it"]  # no record anywhere: the proxy's fqdn is the target
    assert alone.fix == "publish: _xmpp-server._tcp.tomt.it. 3600 IN SRV 0 5 5269 sipfed.tomt.local."


def test_a_target_without_an_address_is_an_error() -> None:
    table: dict[tuple[str, str], tuple[Rdata, ...]] = {
        ("_xmpp-server._tcp.tomt.local", "SRV"): srv_to("gw.tomt.local", 5269),
    }
    finding = ours(table, ("0.0.0.0", 5269))["tomt.local"]
    assert (finding.severity, "gw.tomt.local has no address (A) record" in finding.cause) == ("error", True)


def test_partner_servers_in_srv_order_then_the_domain_itself() -> None:
    two = Partner("jabber", "xmpp.test", ("chat.test",))
    table: dict[tuple[str, str], tuple[Rdata, ...]] = {
        ("_xmpp-server._tcp.xmpp.test", "SRV"): (Srv(10, 5, 5270, "b.xmpp.test"), Srv(0, 5, 5269, "a.xmpp.test")),
        ("a.xmpp.test", "A"): ("192.0.2.1",),
        ("b.xmpp.test", "A"): ("192.0.2.2",),
        ("chat.test", "A"): ("192.0.2.3",),
    }
    targets, findings = asyncio.run(partner_targets(two, FakeDns(table)))
    assert targets == [("192.0.2.1", 5269), ("192.0.2.2", 5270)]
    assert [f.severity for f in findings] == ["ok", "warning"]
    assert "sipfed falls back to chat.test itself on port 5269" in findings[1].cause
    _, [error] = asyncio.run(partner_targets(Partner("jabber", "nowhere.test"), FakeDns({})))
    assert error.severity == "error"
    assert "no SRV record _xmpp-server._tcp.nowhere.test and no A record" in error.cause
    targets, [note] = asyncio.run(partner_targets(Partner("j", "x.test", address=("192.0.2.9", 5299)), FakeDns({})))
    assert (targets, note.severity) == ([("192.0.2.9", 5299)], "ok")


# --- --live: the stream probe against scripted peers on loopback ---------------------------------------------

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" id='s1' version='1.0'>"
)


def probe_against(answer: bytes, *, listener: bool = False, timeout: float = 5.0) -> list[Finding]:
    """A peer on 127.0.0.1 that reads our stream header and answers ``answer`` (then waits for our close);
    probed as the partner's server, or as our own listener."""
    heard: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heard.append(await reader.read(4096))
        writer.write(answer)
        await writer.drain()
        await reader.read(4096)  # our </stream:stream>, or the close
        writer.close()

    async def main() -> list[Finding]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        partner = Partner("jabber", "xmpp.test", address=("127.0.0.1", port))
        listen = ("127.0.0.1", port) if listener else ("127.0.0.1", 5269)
        probe = Probe(XmppConfig(listen, ("tomt.local",), (partner,)), NoDns("none"), timeout, None)
        async with server:
            found = await (probe_listener(probe) if listener else probe_partner(partner, probe))
        return found

    found = asyncio.run(main())
    [header] = heard
    assert header.startswith(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server'")
    return [f for f in found if f.check != "live.xmpp.dns"]


def test_a_stream_error_instead_of_features_is_named() -> None:
    error = b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    [finding] = probe_against(HEADER + error)
    assert (finding.severity, finding.check) == ("error", "live.xmpp.stream")
    assert "127.0.0.1:" in finding.cause
    assert "with stream error host-unknown" in finding.cause


def test_an_answer_that_is_not_xmpp_is_named() -> None:
    [finding] = probe_against(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert (finding.severity, finding.check) == ("error", "live.xmpp.connect")
    assert "not with an XMPP stream" in finding.cause


def test_features_without_starttls_are_judged() -> None:
    features = b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
    found = by_check(probe_against(HEADER + features))
    assert "offers dialback" in found["live.xmpp.connect"].cause
    assert found["live.xmpp.tls"].severity == "error"  # tls = "required" (the default)


def test_a_peer_that_never_offers_features_is_bounded_by_the_timeout() -> None:
    [finding] = probe_against(HEADER, timeout=0.5)
    assert (finding.severity, finding.check) == ("error", "live.xmpp.connect")
    assert "within 0.5 s" in finding.cause


@pytest.mark.parametrize(
    ("answer", "severity", "words"),
    [
        (
            HEADER + b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
            "ok",
            "answers with stream error policy-violation",
        ),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "error", "does not answer an XMPP stream header"),
    ],
    ids=["xmpp", "something-else"],
)
def test_our_listener_is_probed_as_a_partner_would(answer: bytes, severity: str, words: str) -> None:
    [finding] = probe_against(answer, listener=True)
    assert (finding.check, finding.severity) == ("live.xmpp.listener", severity)
    assert words in finding.cause
