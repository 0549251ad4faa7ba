"""``sipfed doctor``, ``cert.chain``: our chain file against tls.ca_bundle, and which of them to fix.

When no certificate of the bundle issues our chain, three cases read alike in OpenSSL's words and want
different fixes:

- the chain file holds our certificate alone: its intermediate is missing (the field notes' failure), and
  tls.ca_bundle presumably holds the root above it: append the intermediate;
- the chain file holds our certificate and its intermediate(s), or a whole path up to a root, and the bundle
  holds neither the top of that path nor its issuer: tls.ca_bundle is another CA's; appending anything to
  the chain file does not help, the bundle must hold the CA that issued the peers' certificates (ours too,
  when it is the same CA);
- the bundle holds the intermediate but no root above it: peers that trust only the root fail.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509

from proxy.admin.findings import Finding
from proxy.x509 import build_path, is_ca, self_issued, short_name

NO_ISSUER = "unable to get local issuer certificate"
#: How many of the bundle's CAs a finding names (a system bundle holds a hundred).
MAX_NAMED = 4


def check_chain(chain: Sequence[x509.Certificate], bundle: Sequence[x509.Certificate], subject: str) -> list[Finding]:
    """RFC 5246 §7.4.2: we send our certificate and the intermediates up to a CA the peer trusts."""
    path, anchor = build_path(chain, bundle)
    last = path[-1]
    if anchor is None and (self_issued(last) or len(path) > 1):
        return [_another_ca(path, bundle, subject)]
    if anchor is None:
        return [
            Finding(
                "error",
                "cert.chain",
                subject,
                f"the chain stops at {short_name(last.subject)!r}: its issuer {short_name(last.issuer)!r} "
                f"is in neither the chain file nor tls.ca_bundle; peers that trust only the root fail with "
                f"'{NO_ISSUER}'",
                f"{_append_fix(last)}; tls.ca_bundle must hold the root that {short_name(last.issuer)!r} "
                f"chains to (it holds {bundle_names(bundle)})",
            )
        ]
    if not self_issued(anchor):
        return [
            Finding(
                "warning",
                "cert.chain",
                subject,
                f"the chain reaches the CA {short_name(anchor.subject)!r} only through tls.ca_bundle, which "
                f"is not a root; peers that trust only the root fail with '{NO_ISSUER}'",
                _append_fix(last),
            )
        ]
    steps = " -> ".join(short_name(cert.subject) for cert in [*path, anchor])
    return [Finding("ok", "cert.chain", subject, f"chain verifies to a CA in tls.ca_bundle: {steps}")]


def _another_ca(path: Sequence[x509.Certificate], bundle: Sequence[x509.Certificate], subject: str) -> Finding:
    """Our chain file goes up past our certificate, and no certificate of the bundle issues any of it."""
    last = path[-1]
    steps = " -> ".join(short_name(cert.subject) for cert in path)
    if self_issued(last):
        where = f"our chain ({steps}) ends at the root {short_name(last.subject)!r}, which is not in it"
        hedge = ""
    else:
        where = (
            f"our chain ({steps}) goes up to {short_name(last.subject)!r}, whose issuer "
            f"{short_name(last.issuer)!r} is not in it either"
        )
        hedge = (
            f" (should {short_name(last.issuer)!r} be an intermediate under one of the bundle's CAs, append it "
            "to the chain file instead)"
        )
    ours = short_name(last.subject if self_issued(last) else last.issuer)
    return Finding(
        "error",
        "cert.chain",
        subject,
        f"tls.ca_bundle is another CA's: it holds {bundle_names(bundle)}, none of which issued our chain; "
        f"{where}. Peers that trust only the bundle's CA refuse our certificate (unknown CA)",
        "put the CA that issued the peers' certificates in tls.ca_bundle, and ours "
        f"({ours!r}) too if the peers' certificates come from the same CA{hedge}",
    )


def _append_fix(last: x509.Certificate) -> str:
    return (
        f"append the certificate of {short_name(last.issuer)!r} (the intermediate) after ours in the chain file, "
        "e.g. 'cat ours.crt intermediate.crt > chain.pem'"
    )


def bundle_names(bundle: Sequence[x509.Certificate]) -> str:
    """The bundle's CAs (its certificates, when it holds no CA) by name, the first few of them."""
    cas = [cert for cert in bundle if is_ca(cert)] or list(bundle)
    names = list(dict.fromkeys(repr(short_name(cert.subject)) for cert in cas))
    more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
    return ", ".join(names[:MAX_NAMED]) + more
