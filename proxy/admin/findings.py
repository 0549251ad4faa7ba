"""The unit of every ``sipfed doctor`` report, offline and live: a ``Finding``; and how a report is printed."""

from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Literal

from routes import StaticRoute

Severity = Literal["error", "warning", "ok"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "ok": 2}


@dataclass(frozen=True, slots=True)
class Finding:
    """One result of one check: what was looked at, what is wrong (or fine), and what to do."""

    severity: Severity
    """``error`` (federation will fail), ``warning`` (will fail later or may fail), ``ok`` (checked, fine)."""
    check: str
    """Short id of the check, e.g. ``cert.eku``; stable for scripts reading ``--json``."""
    subject: str
    """What the finding is about: a file, ``listener lync``, ``route cisco``."""
    cause: str
    """What is wrong, in plain words (for ``ok``: what was verified)."""
    fix: str = ""
    """What the admin should do; empty for ``ok``."""


def by_severity(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then ok; each group in the order the checks ran."""
    return sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity])


def route_subject(route: StaticRoute) -> str:
    """A route as the SUBJECT column names it."""
    return f"route {route.name}"


def bracketed(host: str) -> str:
    """An IPv6 address in brackets, as a URI or ``host:port`` needs it (RFC 3986 §3.2.2)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def route_address(route: StaticRoute) -> str:
    """The route's ``destination:port``."""
    return f"{bracketed(route.destination)}:{route.port}"


def render_json(findings: Iterable[Finding]) -> str:
    """A JSON list of objects with the Finding fields, for scripts."""
    return json.dumps([dataclasses.asdict(f) for f in findings], indent=2)


def render_table(findings: Sequence[Finding], *, width: int | None = None) -> str:
    """An aligned table (severity, check, subject, cause, fix); long cells wrap inside their column."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    header = ("SEVERITY", "CHECK", "SUBJECT", "CAUSE", "FIX")
    rows = [header, *((f.severity, f.check, f.subject, f.cause, f.fix or "-") for f in findings)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    widths[2] = min(widths[2], 28)
    free = max(width - sum(widths) - 2 * 4, 48)  # 4 gaps of 2 spaces
    fix_width = min(free * 2 // 5, max(len(row[4]) for row in rows))
    widths += [free - fix_width, fix_width]
    cells = [[_wrap(text, w) for text, w in zip(row, widths, strict=True)] for row in rows]
    spaced = any(len(lines) > 1 for row in cells for lines in row)  # blank lines only help wrapped rows
    out: list[str] = []
    for row in cells:
        for parts in zip_longest(*row, fillvalue=""):
            out.append("  ".join(p.ljust(w) for p, w in zip(parts, widths, strict=True)).rstrip())
        if spaced:
            out.append("")
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITY_ORDER}
    out.append(f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['ok']} ok")
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]
