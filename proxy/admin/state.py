"""`sipfed doctor --live`, last part: each route destination as the *running* sipfed sees it.

The running process publishes ``sipfed_destination_up{route, destination}`` on its ``[metrics] listen``
address (1: requests go there first; 0: marked down by failed health checks or failed requests). The
doctor reads that page, so its report joins what its own probes find now with what sipfed has learnt
over time — including pool members and DNS-resolved targets the doctor's per-route probe does not visit.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from proxy.admin.findings import Finding
from proxy.config import Config

METRIC = "sipfed_destination_up"


def running_state(config: Config, timeout: float = 2.0) -> list[Finding]:
    """One finding per destination the running sipfed reports, or one saying why none could be read (an
    ``ok`` finding: not running yet is no fault of the config)."""
    if not config.routes:
        return []
    if config.metrics_listen is None:
        return [
            Finding(
                "ok",
                "live.state",
                "[metrics]",
                "metrics are off, so the running sipfed's view of "
                "its destinations cannot be read (set [metrics] listen to see it here)",
            )
        ]
    host, port = config.metrics_listen
    where = "running sipfed"
    if port == 0:
        return [
            Finding(
                "ok",
                "live.state",
                where,
                "[metrics] listen uses port 0 (any free port), so the doctor "
                "cannot know where the running sipfed serves its metrics (set a fixed port to see it here)",
            )
        ]
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as answer:
            text = answer.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        return [
            Finding(
                "ok",
                "live.state",
                where,
                f"no sipfed answered at http://{host}:{port}/metrics "
                f"({reason}): destination state comes only from the probes above",
            )
        ]
    findings = []
    for family in text_string_to_metric_families(text):
        if family.name != METRIC:
            continue
        for sample in family.samples:
            route, destination = sample.labels.get("route", "?"), sample.labels.get("destination", "?")
            if sample.value >= 1:
                findings.append(
                    Finding("ok", "live.state", f"route {route}", f"the running sipfed sends to {destination} (up)")
                )
            else:
                findings.append(
                    Finding(
                        "error",
                        "live.state",
                        f"route {route}",
                        f"the running sipfed has {destination} marked down: requests try the route's other "
                        "destinations first and this one last",
                        f"look for 'route {route}: destination' and 'candidate' lines in sipfed's log for the failed "
                        "health checks or requests, and fix that destination",
                    )
                )
    if not findings:
        findings.append(
            Finding(
                "warning",
                "live.state",
                where,
                f"the page has no {METRIC} series (an older sipfed, or another program on that port)",
                "check [metrics] listen",
            )
        )
    return findings
