"""Transaction state for a transaction-stateful proxy (RFC 3261 §17), driven by hand-made time.

The proxy core owns the transactions; this module holds their state, their keys
(§17.2.3 server matching, §17.1.3 client matching) and one timer queue that the
asyncio edge turns into a single re-armed timer.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass

from proxy.sip.grammar import MAGIC_COOKIE
from proxy.sip.message import Request

# RFC 3261 §17.1.1.1 / Table 4 timer values, in seconds.
T1 = 0.5
T2 = 4.0
T4 = 5.0
TIMER_B = 64 * T1  # INVITE client transaction timeout
TIMER_F = 64 * T1  # non-INVITE client transaction timeout
TIMER_H = 64 * T1  # wait for ACK after a non-2xx final response
TIMER_J = 64 * T1  # absorb retransmitted non-INVITE requests (unreliable transports)
TIMER_C = 180.0  # §16.6 step 11: proxy INVITE timer, > 3 minutes
TIMER_L = 64 * T1  # RFC 6026 §8.7: forward retransmitted 2xx to INVITE

ServerKey = tuple[str, ...]


def server_key(request: Request) -> ServerKey:
    """§17.2.3: the key that matches a request to its server transaction.

    ACK and CANCEL are keyed apart: an ACK for a non-2xx final matches the INVITE's
    transaction (method INVITE), a CANCEL has a transaction of its own.
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):  # a bare cookie is no identifier
        return (branch, via.sent_by.lower(), method)
    # RFC 2543 peers (§17.2.3 last paragraph): match on the request's identity instead.
    number, _ = request.cseq
    return (
        "2543",
        request.uri,
        request.call_id,
        str(number),
        request.from_.param("tag") or "",
        request.to.param("tag") or "" if request.method != "ACK" else "",
        via.sent_by.lower(),
        method,
    )


class TimerQueue:
    """One heap of deadlines. A cancelled timer stays in the heap and is skipped when due; when more than
    half the heap is cancelled timers (a refreshed subscription's old expiry, the timeouts of answered
    requests), they are dropped in one pass, so the heap stays within twice the live timers."""

    __slots__ = ("_heap", "_ids", "cancelled")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._ids = itertools.count()
        self.cancelled = 0
        """Cancelled timers still in the heap."""

    def schedule(self, deadline: float, callback: Callable[[float], None]) -> Timer:
        timer = Timer(deadline, callback, self)
        heap = self._heap
        heapq.heappush(heap, (deadline, next(self._ids), timer))
        if self.cancelled > 512 and 2 * self.cancelled > len(heap):  # O(1) per schedule, amortised
            heap[:] = [entry for entry in heap if not entry[2].cancelled]
            heapq.heapify(heap)
            self.cancelled = 0
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self.cancelled -= 1
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                self.cancelled -= 1
            else:
                timer.fire(now)

    def __len__(self) -> int:
        return len(self._heap)


class DeadlineQueue:
    """Deadlines that come in order (one fixed delay from a monotonic now), each for a transaction id: a
    deque instead of a heap timer per transaction. An id whose transaction has ended is skipped, so
    nothing is cancelled; ``push`` refuses a deadline earlier than the last one (the caller uses the heap)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: collections.deque[tuple[float, int]] = collections.deque()

    def push(self, deadline: float, ident: int) -> bool:
        items = self._items
        if items and items[-1][0] > deadline:
            return False
        items.append((deadline, ident))
        return True

    def next_deadline(self, live: Container[int]) -> float | None:
        """The first deadline of a transaction still in ``live`` (ended ones at the front are dropped)."""
        items = self._items
        while items and items[0][1] not in live:
            items.popleft()
        return items[0][0] if items else None

    def pop_due(self, now: float) -> Iterator[int]:
        """The ids whose deadline has come, oldest first (the caller checks each is still live)."""
        items = self._items
        while items and items[0][0] <= now:
            yield items.popleft()[1]

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class Timer:
    """A scheduled callback; ``cancel()`` makes it a no-op."""

    deadline: float
    callback: Callable[[float], None]
    queue: TimerQueue | None = None
    """While in the queue's heap and not cancelled: the queue (which counts cancelled timers)."""
    cancelled: bool = False

    def __init__(
        self,
        deadline: float,
        callback: Callable[[float], None],
        queue: TimerQueue | None = None,
        cancelled: bool = False,
    ) -> None:
        # Written out, not generated: mypyc compiles this one, and runs a generated __init__ as Python.
        self.deadline = deadline
        self.callback = callback
        self.queue = queue
        self.cancelled = cancelled

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self.queue is not None:
                self.queue.cancelled += 1
                self.queue = None
        self.callback = _nothing  # the heap keeps the Timer until its deadline; not what it points at

    def fire(self, now: float) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.queue = None  # popped already: not counted as a cancelled timer in the heap
            callback, self.callback = self.callback, _nothing
            callback(now)


def _nothing(now: float) -> None:
    """What a cancelled or fired timer points at."""


class TimerSet(dict[str, Timer]):
    """The timers one transaction holds by name, cancelled together when it ends (a dict: most
    transactions never set one, and an empty dict is the cheapest thing to make per transaction)."""

    __slots__ = ()

    def set(self, name: str, timer: Timer) -> None:
        old = self.get(name)
        if old is not None:
            old.cancel()
        self[name] = timer

    def cancel(self, name: str) -> None:
        timer = self.pop(name, None)
        if timer is not None:
            timer.cancel()

    def cancel_all(self) -> None:
        if self:
            for timer in self.values():
                timer.cancel()
            self.clear()
