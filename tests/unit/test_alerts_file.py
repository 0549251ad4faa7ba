"""examples/alerts.yml without a YAML library: the rules it promises, each with ``for``, a severity and words for
the admin, over series and labels sipfed really exports. promtool checks and runs the file in
tests/integration/test_alerts.py."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from proxy.metrics import Metrics
from tests.unit.test_examples import SCRAPE_LABELS, exported_series, label_names, metric_names

ALERTS = Path(__file__).resolve().parents[2] / "examples" / "alerts.yml"
RULE = re.compile(r"^ +- alert: (\w+)$", re.MULTILINE)
#: Prometheus's own series: one per scrape target.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
EXPECTED = [
    ("SipfedCertificateExpiresSoon", "warning"),
    ("SipfedCertificateExpiresSoon", "critical"),
    ("SipfedDestinationDown", "warning"),
    ("SipfedTlsHandshakeFailures", "warning"),
    ("SipfedReloadRefused", "warning"),
    ("SipfedChallengesBlocked", "warning"),
    ("SipfedDown", "critical"),
]


def rules() -> list[tuple[str, str]]:
    """(alert name, the rule's text) in file order."""
    text = ALERTS.read_text()
    starts = list(RULE.finditer(text))
    ends = [m.start() for m in starts[1:]] + [len(text)]
    return [(m.group(1), text[m.start() : end]) for m, end in zip(starts, ends, strict=True)]


def value(rule: str, key: str) -> str | None:
    """``key``'s scalar in a rule: inline, or a folded block (``>-``) joined with spaces as YAML folds it."""
    found = re.search(rf"^( +){key}:(?: +(.*))?$", rule, re.MULTILINE)
    if found is None:
        return None
    inline = (found.group(2) or "").strip()
    if inline not in ("", ">-"):
        return inline
    indent, lines = len(found.group(1)), []
    for line in rule[found.end() :].splitlines()[1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        lines.append(line.strip())
    return " ".join(line for line in lines if line)


def annotations(rule: str) -> tuple[str | None, str | None]:
    """(summary, description), through a YAML alias (``annotations: *name``) to the rule that anchors it."""
    alias = re.search(r"^ +annotations: \*(\w+)$", rule, re.MULTILINE)
    if alias is not None:
        rule = next(text for _, text in rules() if re.search(rf"annotations: &{alias.group(1)}$", text, re.MULTILINE))
    return value(rule, "summary"), value(rule, "description")


def test_the_promised_rules_each_with_for_severity_and_words() -> None:
    assert [(name, value(rule, "severity")) for name, rule in rules()] == EXPECTED
    for name, rule in rules():
        assert re.fullmatch(r"[1-9]\d*[smh]", value(rule, "for") or ""), name
        summary, description = annotations(rule)
        assert summary, name
        assert description is not None, name
        assert len(description) > 100, name
    assert "\t" not in ALERTS.read_text()  # YAML forbids tabs for indentation


def test_every_expr_uses_only_series_and_labels_that_sipfed_exports() -> None:
    series = {**exported_series(), **PROMETHEUS_SERIES}
    for name, rule in rules():
        expr = value(rule, "expr") or ""
        names = metric_names(expr)
        assert names, name
        assert names <= set(series), f"{name}: unknown series {names - set(series)}"
        known = set().union(*(series[n] for n in names)) | SCRAPE_LABELS
        assert label_names(expr) <= known, f"{name}: unknown labels {label_names(expr) - known}"


def test_the_words_name_the_fix_for_each_role_and_reason() -> None:
    texts = {name: " ".join(filter(None, annotations(rule))) for name, rule in rules()}
    certificate = texts["SipfedCertificateExpiresSoon"]
    for words in ('eq $labels.role "ours"', '"peer"', "[tls] cert_chain", "[xmpp]", "sipfed ctl reload", "tls_name"):
        assert words in certificate, words
    tls = texts["SipfedTlsHandshakeFailures"]
    for reason in ("unknown_ca", "certificate_expired", "name_mismatch", "no_client_certificate", "protocol"):
        assert f'eq $labels.reason "{reason}"' in tls, reason
    assert "[[acl.credentials]]" in texts["SipfedChallengesBlocked"]
    assert "check-config" in texts["SipfedReloadRefused"]


def test_counters_the_rules_take_increase_of_exist_at_zero_from_the_start() -> None:
    """increase() over a series that appears at 1 sees no step: the first refusal would never alert."""
    registry = CollectorRegistry()
    Metrics(registry)
    increased = [re.search(r"increase\((\w+)\{(\w+)=\"(\w+)\"\}", value(rule, "expr") or "") for _, rule in rules()]
    assert len([found for found in increased if found]) == 2
    for found in filter(None, increased):
        name, label, label_value = found.groups()
        assert registry.get_sample_value(name, {label: label_value}) == 0.0, name
