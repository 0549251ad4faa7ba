"""``ms-diagnostics-public`` on sipfed's own error responses to a Microsoft peer ([MS-OCER] §2.2.1.2).

Lync and Skype for Business show this header in Snooper and the CLS logs next to the status line, so a
Lync admin reads *why* sipfed refused a request without asking the other side. Its grammar:

    ms-diagnostics-public = "ms-diagnostics-public" HCOLON ErrorId SEMI reason-param *(SEMI generic-param)
    reason-param          = "reason=" quoted-string

Rules:
1. Only toward a ``[[peers]]`` entry with ``microsoft = true``, only on sipfed's own answers of 400 and
   above (never on a response relayed from a next hop: that one is the next hop's to annotate), and at
   most one per response (§2.2.1.2: a server MUST NOT add more than one).
2. No ``source`` parameter (§2.2.1.2 forbids it) and nothing internal: the ``reason`` is a fixed text
   from ``TABLE``, never sipfed's own reason phrase, which may name internal hosts
   (``Request Timeout (no answer from 10.1.1.5 …)``). The header crosses the trust boundary.
3. ErrorIds: where [MS-OCER] §8.2 (SipStack, 1000-1999) documents the same condition, its id and
   reason text (a Lync admin knows them); sipfed's other conditions use 52000-52099, outside the ranges
   Microsoft documents for its servers. The table is in README.md ("Errors Lync admins can read").
4. 487 after a CANCEL is the caller's own doing, not an error to explain: no header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEADER = "ms-diagnostics-public"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One row of the table: which of sipfed's answers it explains, and what the peer is told."""

    statuses: frozenset[int]
    """The SIP statuses it applies to."""
    phrases: tuple[str, ...]
    """Lower-case fragments of sipfed's reason phrase, any one of which selects the row; empty: any."""
    error_id: int
    """The ErrorId (rule 3)."""
    reason: str
    """The public reason text (rule 2): fixed, no host, address or configuration name."""


TABLE: tuple[Diagnostic, ...] = (
    Diagnostic(frozenset({404}), ("no route for domain",), 1005, "Cannot route to destination domain"),
    Diagnostic(frozenset({503}), ("shutting down",), 52003, "The federation proxy is shutting down; retry later"),
    Diagnostic(
        frozenset({503}), ("overloaded", "rate limit"), 52002, "The federation proxy is overloaded; retry later"
    ),
    Diagnostic(
        frozenset({503}),
        ("certificate", "tls handshake"),
        1010,
        "Certificate trust with next-hop server could not be established",
    ),
    Diagnostic(frozenset({503}), (), 1007, "Temporarily cannot route"),
    Diagnostic(frozenset({408}), (), 52001, "The next hop did not answer in time"),
    Diagnostic(
        frozenset({403}),
        ("may not speak for domain",),
        52010,
        "The sending server may not send requests for this From domain",
    ),
    Diagnostic(
        frozenset({403}),
        ("not a configured destination",),
        52011,
        "The Request-URI or Route leads to a host the federation proxy does not route to",
    ),
    Diagnostic(
        frozenset({403}),
        ("demanded digest",),
        52012,
        "The next hop demanded authentication the federation proxy cannot answer for this sender",
    ),
    Diagnostic(frozenset({403}), (), 52013, "The federation proxy's trust policy refused the request"),
    Diagnostic(
        frozenset({404}),
        ("addressed to the proxy itself",),
        52014,
        "The request is addressed to the federation proxy itself",
    ),
)
#: Any other status of 400 and above: this id, with the status's own phrase (``Loop Detected``, …).
FALLBACK_ID = 52000
#: Statuses that get no header (rule 4).
SILENT = frozenset({487})
_PHRASE = re.compile(r"[^A-Za-z0-9 /.,'-]")


def ms_diagnostics_public(status: int, reason: str) -> tuple[tuple[str, str], ...]:
    """The header for sipfed's answer ``status reason`` to a Microsoft peer: one (name, value), or none."""
    if status < 400 or status in SILENT:
        return ()
    row = diagnostic_for(status, reason)
    if row is not None:
        error_id, text = row.error_id, row.reason
    else:
        # The status's own phrase, without sipfed's parenthesised detail: "Loop Detected", "Bad Extension".
        error_id, text = FALLBACK_ID, _PHRASE.sub("", reason.split("(", 1)[0]).strip()[:60] or str(status)
    return ((HEADER, f'{error_id};reason="{text}"'),)


def diagnostic_for(status: int, reason: str) -> Diagnostic | None:
    """The first row of ``TABLE`` for this answer, if any."""
    lowered = reason.lower()
    for row in TABLE:
        if status in row.statuses and (not row.phrases or any(p in lowered for p in row.phrases)):
            return row
    return None
