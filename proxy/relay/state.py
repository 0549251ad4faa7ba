"""The state a transaction-stateful proxy keeps: its settings and its server and client transactions (§17)."""

from __future__ import annotations

import enum
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


class TxState(enum.Enum):
    """The states of RFC 3261 §17 (with RFC 6026's Accepted for INVITE's 2xx); each kind uses its own
    subset, and ``SERVER_NEXT``/``CLIENT_NEXT`` say which state may follow which."""

    CALLING = "Calling"
    """INVITE client: sent, nothing heard yet (§17.1.1.2)."""
    TRYING = "Trying"
    """Non-INVITE: the client sent, or the server received, the request (§17.1.2.2, §17.2.2)."""
    PROCEEDING = "Proceeding"
    """A provisional response was received (client) or sent (server); an INVITE server starts here."""
    COMPLETED = "Completed"
    """A final response (INVITE: a non-2xx) was received or sent; retransmissions are absorbed."""
    ACCEPTED = "Accepted"
    """INVITE: a 2xx was received or sent; its retransmissions travel on (RFC 6026 §7.1, §7.2)."""
    CONFIRMED = "Confirmed"
    """INVITE server: the ACK for our non-2xx arrived (§17.2.1)."""
    TERMINATED = "Terminated"
    """Done: forgotten by the proxy."""


_S = TxState
#: (INVITE?, state) -> the states that may follow (§17.2.1 Figure 7 + RFC 6026 Figure 5; §17.2.2 Figure 8).
SERVER_NEXT: dict[tuple[bool, TxState], frozenset[TxState]] = {
    (True, _S.PROCEEDING): frozenset({_S.COMPLETED, _S.ACCEPTED, _S.TERMINATED}),
    (True, _S.COMPLETED): frozenset({_S.CONFIRMED, _S.TERMINATED}),
    (True, _S.ACCEPTED): frozenset({_S.TERMINATED}),
    (True, _S.CONFIRMED): frozenset({_S.TERMINATED}),
    (False, _S.TRYING): frozenset({_S.PROCEEDING, _S.COMPLETED, _S.TERMINATED}),
    (False, _S.PROCEEDING): frozenset({_S.COMPLETED, _S.TERMINATED}),
    (False, _S.COMPLETED): frozenset({_S.TERMINATED}),
}
#: (INVITE?, state) -> the states that may follow (§17.1.1.2 Figure 5 + RFC 6026 Figure 4; §17.1.2.2 Figure 6).
CLIENT_NEXT: dict[tuple[bool, TxState], frozenset[TxState]] = {
    (True, _S.CALLING): frozenset({_S.PROCEEDING, _S.COMPLETED, _S.ACCEPTED, _S.TERMINATED}),
    (True, _S.PROCEEDING): frozenset({_S.COMPLETED, _S.ACCEPTED, _S.TERMINATED}),
    (True, _S.COMPLETED): frozenset({_S.TERMINATED}),
    (True, _S.ACCEPTED): frozenset({_S.TERMINATED}),
    (False, _S.TRYING): frozenset({_S.PROCEEDING, _S.COMPLETED, _S.TERMINATED}),
    (False, _S.PROCEEDING): frozenset({_S.COMPLETED, _S.TERMINATED}),
    (False, _S.COMPLETED): frozenset({_S.TERMINATED}),
}


class IllegalTransition(Exception):
    """A transaction was asked to move to a state §17 does not allow from where it is (a bug, not input)."""


def _move(
    table: dict[tuple[bool, TxState], frozenset[TxState]], kind: str, invite: bool, state: TxState, new: TxState
) -> TxState:
    if new is state:
        return state
    if new not in table.get((invite, state), ()):
        raise IllegalTransition(
            f"{'INVITE' if invite else 'non-INVITE'} {kind} transaction: {state.value} -> {new.value}"
        )
    return new


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
    """The status of the final response sent; 0 before (the state says the rest)."""
    client: ClientTx | None = None
    timers: TimerSet = field(default_factory=TimerSet)
    quiet: bool = False
    """Our own refusal to an unbound UDP source: sent once, never on Timer G (no amplification)."""
    state: TxState = TxState.TRYING
    """§17.2: where it is (an INVITE server transaction is created in Proceeding)."""

    def __init__(self, key: ServerKey, request: Request, flow: Flow, invite: bool, started: float = 0.0) -> None:
        # Written out, not generated: mypyc compiles this one, and runs a generated __init__ as Python (4x slower).
        self.key = key
        self.request = request
        self.flow = flow
        self.invite = invite
        self.started = started
        self.last_response = None
        self.final_status = 0
        self.client = None
        self.timers = TimerSet()
        self.quiet = False
        self.state = TxState.PROCEEDING if invite else TxState.TRYING

    def to(self, new: TxState) -> None:
        """Move to ``new`` if §17.2 allows it from here; ``IllegalTransition`` otherwise."""
        self.state = _move(SERVER_NEXT, "server", self.invite, self.state, new)


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
    state: TxState = TxState.TRYING
    """§17.1: where it is (an INVITE client transaction starts in Calling)."""

    def __init__(
        self,
        id: int,
        branch: str,
        method: str,
        hop: NextHop,
        data: bytes,
        request: Request,
        server: ServerTx | None,
        *,
        original_cseq: str | None = None,
        challenged: bool = False,
        attempt: int = 1,
        deadline: float = 0.0,
        probe: bool = False,
    ) -> None:
        # Written out, not generated: mypyc compiles this one, and runs a generated __init__ as Python (4x slower).
        self.id = id
        self.branch = branch
        self.method = method
        self.hop = hop
        self.data = data
        self.request = request
        self.server = server
        self.provisional = False
        self.final_status = 0
        self.cancel_pending = False
        self.interval = T1
        self.original_cseq = original_cseq
        self.challenged = challenged
        self.attempt = attempt
        self.deadline = deadline
        self.probe = probe
        self.sent_on = None
        self.state = TxState.CALLING if method == "INVITE" else TxState.TRYING
        self.timers = TimerSet()

    def to(self, new: TxState) -> None:
        """Move to ``new`` if §17.1 allows it from here; ``IllegalTransition`` otherwise."""
        self.state = _move(CLIENT_NEXT, "client", self.method == "INVITE", self.state, new)

    timers: TimerSet = field(default_factory=TimerSet)
