"""Issue 14, "Bounded connections": what an inbound TCP/TLS connection may cost before it proves who it is.

``ConnectionGate`` keeps the counts and the per-source handshake buckets (its docstring has the rules),
``connection_cap`` fits ``max_connections`` to the open-files limit, and ``valid_sip`` says what proves a
connection. Apart from the asyncio protocols (proxy/net/connection.py, which asks the gate and re-exports these
names) because none of it touches a socket: time is a parameter, so unit tests drive it with hand-made time.
"""

from __future__ import annotations

from collections import OrderedDict

from proxy.relay.limits import WarnLimiter
from proxy.sip.errors import SipError
from proxy.sip.message import parse_message

#: File descriptors inbound connections leave to the rest of the process (outbound connections to next hops,
#: listeners, DNS, the metrics server, logs): an eighth of the open-files limit, at least this many.
RESERVED_FILES = 64


def connection_cap(max_connections: int, open_files: int | None) -> int:
    """``max_connections``, lowered when the open-files limit (RLIMIT_NOFILE; None: unlimited) could not hold
    that many inbound connections and still leave RESERVED_FILES (or an eighth) for outbound ones."""
    if open_files is None:
        return max_connections
    return max(1, min(max_connections, open_files - max(RESERVED_FILES, open_files // 8)))


class ConnectionGate:
    """Issue 14, "Bounded connections": what an inbound TCP/TLS connection must pass before sipfed spends
    more on it, and the counts behind that. Time is a parameter; the rules:

    1. At most ``max_connections`` inbound connections are open; one more is closed at once.
    2. At most ``per_source`` *unproven* connections per source address (0: no cap); one more is closed at
       once. A connection is proven once its certificate (or address) binds it to a ``[[peers]]`` entry, or a
       valid SIP message (a request, or a response to what sipfed sent on it) arrives on it.
    3. TLS handshakes per source address are a token bucket of ``handshakes_per_second`` (0: off),
       ``burst_seconds`` deep; a connection over it is closed before its handshake. The handshake of a
       connection that proves itself is given back: what is limited is handshakes that bought nothing
       (refused, failed, silent), so a peer reconnecting many times in a row is not.
    4. An inbound connection bound to no trusted peer is closed after ``idle_seconds`` without a valid SIP
       message (``StreamConnection._idle_check``); one bound to a trusted peer never is.
    """

    def __init__(
        self,
        max_connections: int = 4096,
        per_source: int = 64,
        handshakes_per_second: float = 20.0,
        burst_seconds: float = 2.0,
        idle_seconds: float = 60.0,
        max_sources: int = 65_536,
    ) -> None:
        self.inbound = 0
        """Inbound connections open (rule 1)."""
        self.unproven: dict[str, int] = {}
        """Unproven inbound connections per source address (rule 2); addresses at 0 are removed."""
        self._handshakes: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """Per source address: (tokens, when last counted), least recently used first (rule 3)."""
        self._max_sources = max_sources
        self.warnings = WarnLimiter()
        """A flood of refusals logs one line per reason each 10 s, with the count of the rest."""
        self.configure(max_connections, per_source, handshakes_per_second, burst_seconds, idle_seconds)

    def configure(
        self,
        max_connections: int,
        per_source: int,
        handshakes_per_second: float,
        burst_seconds: float,
        idle_seconds: float,
    ) -> None:
        """Apply (new) limits; what is open stays open and counted."""
        self.max_connections = max_connections
        self.per_source = per_source
        self.handshake_rate = handshakes_per_second
        self.handshake_burst = max(1.0, handshakes_per_second * burst_seconds)
        self.idle_seconds = idle_seconds

    def admit(self, source: str, handshake: bool, now: float) -> str | None:
        """A connection from ``source`` was accepted (``handshake``: TLS is to follow). None: admitted and
        counted as unproven; else why it is to be closed: ``max_connections``, ``per_source``, ``handshake_rate``."""
        if self.inbound >= self.max_connections:
            return "max_connections"
        unproven = self.unproven.get(source, 0)
        if self.per_source and unproven >= self.per_source:
            return "per_source"
        if handshake and self.handshake_rate and not self._take(source, now):
            return "handshake_rate"
        self.inbound += 1
        self.unproven[source] = unproven + 1
        return None

    def _take(self, source: str, now: float) -> bool:
        buckets = self._handshakes
        tokens, last = buckets.pop(source, (self.handshake_burst, now))
        tokens = min(self.handshake_burst, tokens + (now - last) * self.handshake_rate)
        allowed = tokens >= 1.0
        buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        if len(buckets) > self._max_sources:
            buckets.popitem(last=False)
        return allowed

    def proven(self, source: str, handshake: bool) -> None:
        """A counted connection from ``source`` proved itself (rule 2), its handshake is given back (rule 3)."""
        self._uncount(source)
        entry = self._handshakes.get(source) if handshake else None
        if entry is not None:
            self._handshakes[source] = (min(self.handshake_burst, entry[0] + 1.0), entry[1])

    def closed(self, source: str, proven: bool) -> None:
        """A counted connection from ``source`` closed."""
        self.inbound -= 1
        if not proven:
            self._uncount(source)

    def _uncount(self, source: str) -> None:
        left = self.unproven.get(source, 0) - 1
        if left > 0:
            self.unproven[source] = left
        else:
            self.unproven.pop(source, None)


def valid_sip(frame: bytes, max_headers: int, max_line_bytes: int) -> bool:
    """A whole framed message that parses as a SIP request or response (rule 4 of ConnectionGate)."""
    try:
        parse_message(frame, max_headers=max_headers, max_line_bytes=max_line_bytes, framed=True)
    except SipError:
        return False
    return True
