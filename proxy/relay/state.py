"""The state a transaction-stateful proxy keeps: its settings and its server and client transactions (§17)."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.relay.limits import Limits
from proxy.relay.types import Flow, NextHop
from proxy.sip.message import Request
from proxy.sip.transaction import T1, ServerKey, TimerSet


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """The timing and size knobs of the core (from the config)."""

    transaction_timeout_seconds: float = 16.0
    """Non-INVITE: answer 408 when the next hop has not answered by then."""
    invite_timeout_seconds: float = 180.0
    """Timer C (§16.6 step 11)."""
    limits: Limits = field(default_factory=Limits)
    """Overload protection."""
    max_headers: int = 256
    """Header fields per message, at most (400 beyond)."""
    max_header_line_bytes: int = 8192
    """Length of one header field line, at most (400 beyond)."""


@dataclass(slots=True, eq=False)
class ServerTx:
    """A server transaction: the request as it came in and what we answered."""

    key: ServerKey
    request: Request
    flow: Flow
    invite: bool
    started: float = 0.0
    last_response: bytes | None = None
    final_status: int = 0
    client: ClientTx | None = None
    timers: TimerSet = field(default_factory=TimerSet)
    quiet: bool = False
    """Our own refusal to an unbound UDP source: sent once, never on Timer G (no amplification)."""


@dataclass(slots=True, eq=False)
class ClientTx:
    """A client transaction: the request as forwarded to one next hop."""

    id: int
    branch: str
    method: str
    hop: NextHop
    data: bytes
    request: Request
    server: ServerTx | None
    provisional: bool = False
    final_status: int = 0
    cancel_pending: bool = False
    interval: float = T1
    original_cseq: str | None = None
    """The sender's CSeq when sipfed renumbered the request (after answering a challenge)."""
    challenged: bool = False
    """This is already sipfed's retry with credentials: a second challenge goes no further."""
    attempt: int = 1
    """Which try of the request this is (RFC 3263 §4.3: the next candidate after a 503)."""
    deadline: float = 0.0
    """When the request as a whole times out (a retry keeps the first try's deadline); 0: from the start."""
    probe: bool = False
    """sipfed's own health-check OPTIONS: its outcome goes to the edge as a ``ProbeAnswer``."""
    sent_on: int | str | None = None
    """The connection id (streams) or the IP address (UDP) the request went out on: the only flow its
    responses are taken from; None until the edge has written it."""
    timers: TimerSet = field(default_factory=TimerSet)
