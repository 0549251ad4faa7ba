"""examples/prometheus.yml and examples/grafana-dashboard.json use only what sipfed really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from proxy.config import DEFAULT_METRICS_LISTEN
from proxy.metrics import HotCounters, Metrics
from proxy.net.health import DestinationState

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# The series a sample name can take per family type (client_python's exposition).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
# Labels Prometheus adds at scrape time, and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job", "le"}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}
REQUIRED = {
    "sipfed_requests_received_total",
    "sipfed_requests_relayed_total",
    "sipfed_requests_refused_total",
    "sipfed_responses_total",
    "sipfed_relay_latency_seconds_bucket",
    "sipfed_route_misses_total",
    "sipfed_next_hop_failures_total",
    "sipfed_tls_handshakes_total",
    "sipfed_open_connections",
    "sipfed_subscriptions_active",
    "sipfed_digest_total",
    "sipfed_challenges_shielded_total",
    "sipfed_malformed_messages_total",
}


def exported_series() -> dict[str, set[str]]:
    """Every sample name ``Metrics`` registers, with the label names it can carry."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.watch_destinations(lambda: [DestinationState("route", "tls:10.0.0.1:5061", True, True, "200 OK")])
    labels_of_family = {name: set(labels) for name, (_, labels) in HotCounters.FAMILIES.items()}
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase):
            labels_of_family[next(iter(wrapper.describe())).name] = set(wrapper._labelnames)
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        labels = labels_of_family.get(family.name, set()).union(*(s.labels for s in family.samples))
        for suffix in SUFFIXES[family.type]:
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    return data


def exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    words = re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\(?)", text)
    return {word for word, call in words if not call and word not in PROMQL_KEYWORDS}


def label_names(expr: str) -> set[str]:
    """Label names in matchers ``{a="x"}`` and in ``by (a, b)`` / ``without (...)`` clauses."""
    matchers = {
        name for block in re.findall(r"\{([^}]*)\}", expr) for name in re.findall(r"(\w+)\s*(?:=|!=|=~|!~)", block)
    }
    grouped = {
        name.strip()
        for block in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for name in block.split(",")
        if name.strip()
    }
    return matchers | grouped


def test_dashboard_is_a_grafana_dashboard() -> None:
    data = dashboard()
    assert 36 <= data["schemaVersion"] <= 39
    assert data["title"]
    assert data["uid"]
    panels = data["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        assert grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        assert panel["datasource"]["uid"] == "${datasource}"
    assert {var["name"] for var in data["templating"]["list"]} == {"datasource", "instance"}


def test_every_expr_uses_only_series_and_labels_that_metrics_registers() -> None:
    series = exported_series()
    for expr in exprs():
        names = metric_names(expr)
        assert names, expr
        assert names <= set(series), f"{expr}: unknown series {names - set(series)}"
        known = set().union(*(series[name] for name in names)) | SCRAPE_LABELS
        assert label_names(expr) <= known, f"{expr}: unknown labels {label_names(expr) - known}"


def test_dashboard_covers_the_main_series_and_latency_quantiles() -> None:
    used = set().union(*(metric_names(expr) for expr in exprs()))
    assert used >= REQUIRED, REQUIRED - used
    quantiles = [expr for expr in exprs() if "histogram_quantile" in expr]
    assert any(expr.startswith("histogram_quantile(0.5,") for expr in quantiles)
    assert any(expr.startswith("histogram_quantile(0.99,") for expr in quantiles)
    assert all("by (le" in expr for expr in quantiles)
    assert any("reason" in label_names(expr) and "sipfed_tls_handshakes_total" in expr for expr in exprs())


def test_dashboard_exprs_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool not installed: make test installs Debian's prometheus package"
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules += [f"      - record: dashboard:expr_{i}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "rules.yml"
    path.write_text("\n".join(rules) + "\n")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_scrapes_the_default_metrics_address_every_5s() -> None:
    text = (EXAMPLES / "prometheus.yml").read_text()
    assert re.search(r"^scrape_configs:\s*$", text, re.MULTILINE)
    assert re.search(r"^\s+- job_name: sipfed\s*$", text, re.MULTILINE)
    assert re.search(rf'^\s+- targets: \["{re.escape(DEFAULT_METRICS_LISTEN)}"\]\s*$', text, re.MULTILINE)
    assert DEFAULT_METRICS_LISTEN == "127.0.0.1:9561"
    assert re.search(r"^\s+scrape_interval: 5s\s*$", text, re.MULTILINE)
    assert "\t" not in text  # YAML forbids tabs for indentation


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool not installed: make test installs Debian's prometheus package"
    result = subprocess.run(
        [promtool, "check", "config", str(EXAMPLES / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
