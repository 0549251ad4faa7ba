"""Overload protection without unbounded queues: token buckets per source and per peer (in the
spirit of Kamailio's pike), and a cap on transactions in flight. Over a limit, a new request is
answered 503 with Retry-After (RFC 3261 §21.5.4) at once: never dropped silently, never queued.
"""

from __future__ import annotations

import logging
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


class WarnLimiter:
    """Repeated warnings, rate-limited (issue 14 row 15): the first of a kind is logged, then at most one per
    ``every_seconds``, saying how many were suppressed since. Time is a parameter; the kinds are bounded."""

    __slots__ = ("_last", "every_seconds", "max_kinds")

    def __init__(self, every_seconds: float = 10.0, max_kinds: int = 1024) -> None:
        self.every_seconds = every_seconds
        self.max_kinds = max_kinds
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def allow(self, kind: str, now: float) -> int | None:
        """None: suppress this one; else the count suppressed since the last one logged (log it now)."""
        last, quiet = self._last.get(kind, (-1e18, 0))
        if now - last < self.every_seconds:
            self._last[kind] = (last, quiet + 1)
            return None
        self._last.pop(kind, None)
        self._last[kind] = (now, 0)
        if len(self._last) > self.max_kinds:
            self._last.popitem(last=False)
        return quiet

    def warn(
        self,
        logger: logging.Logger,
        kind: str,
        now: float,
        message: str,
        *args: object,
        level: int = logging.WARNING,
        extra: dict[str, str] | None = None,
    ) -> None:
        """``logger.log(level, message, *args)`` unless suppressed; with the count of suppressed ones."""
        quiet = self.allow(kind, now)
        if quiet is None:
            return
        if quiet:
            message += f" ({quiet} more like it suppressed in the last {self.every_seconds:g} s)"
        logger.log(level, message, *args, extra=extra)
