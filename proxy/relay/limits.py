"""Overload protection without unbounded queues: token buckets per source and per peer (in the
spirit of Kamailio's pike), and a cap on transactions in flight. Over a limit, a new request is
answered 503 with Retry-After (RFC 3261 §21.5.4) at once: never dropped silently, never queued.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """The knobs (from ``[limits]``); a rate of 0 switches that limit off."""

    max_in_flight: int = 10_000
    """Server transactions waiting for a final response, at most."""
    per_source_rate: float = 0.0
    """New requests per second from one source address not bound to a trusted peer."""
    per_peer_rate: float = 0.0
    """New requests per second from one trusted peer (all its connections together)."""
    burst_seconds: float = 2.0
    """A bucket holds this many seconds' worth of requests."""
    retry_after_seconds: int = 5
    """What the 503 tells the sender to wait."""


class TokenBuckets:
    """One bucket per key, at most ``max_keys`` of them (least recently used ones are forgotten)."""

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int = 65_536) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
