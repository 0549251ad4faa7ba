"""What the gateway's parts share: the outputs for the edge, the SIP client transactions waiting for their
answers, the timers, and the observer. Time is always passed in (wall-clock seconds: stored deadlines
must mean the same after a restart)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from proxy.sip.message import Request, Response

#: A SIP client transaction the core will always end (its own 408 when the next hop is silent); this bound
#: only frees what an in-process failure would leave (RFC 3261 §17.1.2.2: 64*T1).
ANSWER_SECONDS = 32.0


@dataclass(slots=True)
class SendStanza:
    """Send ``stanza`` from our ``local`` domain to the partner's ``remote`` domain (the edge opens and
    authenticates the stream first). A ``token`` asks for ``Gateway.sent`` or ``Gateway.unsent``."""

    local: str
    """Our domain."""
    remote: str
    """The partner domain."""
    stanza: Element
    """A message, presence or iq in ``jabber:server``."""
    token: int = 0
    """0: nobody waits for the outcome."""


@dataclass(slots=True)
class SendSip:
    """Hand a SIP request or response to the proxy core, on the partner's in-process flow."""

    partner: str
    """The partner's name (its flow is bound to its domains)."""
    data: bytes
    """The serialised message."""


GatewayOutput = SendStanza | SendSip


class XmppObserver:
    """What the gateway and the streams report (``proxy/metrics.py`` counts it). Labels are bounded: partner
    names from the config, and the fixed words each docstring lists."""

    def stream(self, partner: str, direction: str, outcome: str) -> None:
        """direction: in, out; outcome: sasl, dialback, refused, failed, closed."""

    def stanza(self, partner: str, direction: str, kind: str, outcome: str) -> None:
        """direction: in (XMPP -> SIP), out (SIP -> XMPP); kind: message, presence, subscription, iq;
        outcome: relayed, refused, error, bounced, dropped."""

    def subscriptions(self, watches: int, watchers: int) -> None:
        """How many XMPP->SIP and SIP->XMPP subscriptions stand."""

    def keepalive(self, partner: str) -> None:
        """A whitespace keep-alive went out on an idle stream (RFC 6120 §4.6.1)."""


class Outbox:
    """Outputs, pending SIP transactions and timers of one gateway."""

    def __init__(self, observer: XmppObserver | None = None) -> None:
        self.observer = observer or XmppObserver()
        self.outputs: list[GatewayOutput] = []
        self.pending: dict[str, Callable[[Response | None, float], None]] = {}
        """Our branches -> what to do with the final response (None: none came)."""
        self._heap: list[tuple[float, int, str]] = []
        self._timers: dict[str, tuple[int, Callable[[float], None]]] = {}
        self._seq = itertools.count()

    def stanza(self, local: str, remote: str, stanza: Element, token: int = 0) -> None:
        self.outputs.append(SendStanza(local, remote, stanza, token))

    def sip(self, partner: str, message: Request | Response | bytes) -> None:
        self.outputs.append(SendSip(partner, message if isinstance(message, bytes) else message.to_bytes()))

    def request(
        self,
        partner: str,
        request: Request,
        branch: str,
        on_answer: Callable[[Response | None, float], None],
        now: float,
    ) -> None:
        """Send a request into the core; ``on_answer`` gets its final response (provisionals are ignored)."""
        self.pending[branch] = on_answer
        self.at(f"tx:{branch}", now + ANSWER_SECONDS, lambda t: self._unanswered(branch, t))
        self.sip(partner, request)

    def answered(self, response: Response, now: float) -> bool:
        """A response from the core for one of our requests; False when none waits for it."""
        if response.status < 200:
            return True
        branch = response.top_via.branch or ""
        on_answer = self.pending.pop(branch, None)
        if on_answer is None:
            return False
        self.cancel(f"tx:{branch}")
        on_answer(response, now)
        return True

    def _unanswered(self, branch: str, now: float) -> None:
        on_answer = self.pending.pop(branch, None)
        if on_answer is not None:
            on_answer(None, now)

    # -- timers (a heap; replaced or cancelled ones are skipped when they come up) ---------------------

    def at(self, key: str, when: float, callback: Callable[[float], None]) -> None:
        seq = next(self._seq)
        self._timers[key] = (seq, callback)
        heapq.heappush(self._heap, (when, seq, key))

    def cancel(self, key: str) -> None:
        self._timers.pop(key, None)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._timers.get(heap[0][2], (None,))[0] != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            current = self._timers.get(key)
            if current is not None and current[0] == seq:
                del self._timers[key]
                current[1](now)

    def take(self) -> list[GatewayOutput]:
        out, self.outputs = self.outputs, []
        return out
