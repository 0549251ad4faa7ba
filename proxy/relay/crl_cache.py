"""CRLs fetched from distribution points, kept by URL (RFC 5280 §5.1.2.5: a CRL stands until its nextUpdate),
sans-IO: time is a parameter, ``proxy.net.crl_fetch`` does the fetching.

Rules:
1. A CRL is kept until its nextUpdate; one already past it (or without one) only for ``retry_seconds``, so a
   CA that stopped publishing is asked again soon but not on every connection.
2. A URL that gave no CRL keeps a negative entry, with the reason in words, for ``retry_seconds``: until then
   it is not fetched again (an unreachable CRL server costs one timeout per interval, not one per connection).
3. At most ``max_entries`` URLs: expired entries go first, then the ones that would expire soonest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from cryptography import x509

from proxy.relay.revocation import Known, KnownCrl


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What one CRL distribution point gave at its last fetch: a CRL, or why none."""

    url: str
    """The distribution point's URL: the cache key."""
    crl: x509.CertificateRevocationList | None
    """The CRL it served, parsed; None for a negative entry."""
    error: str | None
    """Why there is no CRL, in words (``connection refused``, ``HTTP 404 Not Found``); None with a CRL."""
    fetched_at: datetime
    """When it was fetched (or failed)."""
    expires_at: datetime
    """When it stops counting and the URL is due again (rules 1 and 2)."""


class CrlCache:
    """Distribution point URL -> its latest ``CacheEntry`` (rules 1-3); ``now`` is an aware UTC datetime."""

    def __init__(self, max_entries: int = 256, retry_seconds: float = 60.0) -> None:
        if max_entries < 1 or retry_seconds <= 0:
            raise ValueError("a CRL cache needs max_entries >= 1 and retry_seconds > 0")
        self.max_entries = max_entries
        self.retry = timedelta(seconds=retry_seconds)
        self._entries: dict[str, CacheEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, url: str, crl: x509.CertificateRevocationList, now: datetime) -> CacheEntry:
        """Rule 1: keep the CRL ``url`` served until its nextUpdate (a stale one for the retry interval)."""
        next_update = crl.next_update_utc
        expires = next_update if next_update is not None and next_update > now else now + self.retry
        return self._store(CacheEntry(url, crl, None, now, expires), now)

    def put_error(self, url: str, error: str, now: datetime) -> CacheEntry:
        """Rule 2: ``url`` gave no CRL, for ``error``; not to be tried again before the retry interval."""
        return self._store(CacheEntry(url, None, error, now, now + self.retry), now)

    def get(self, url: str, now: datetime) -> CacheEntry | None:
        """The live entry for ``url``; an expired one is dropped and None returned."""
        entry = self._entries.get(url)
        if entry is not None and now >= entry.expires_at:
            del self._entries[url]
            return None
        return entry

    def due(self, urls: Iterable[str], now: datetime) -> tuple[str, ...]:
        """Those of ``urls`` without a live entry: the ones to fetch."""
        return tuple(url for url in dict.fromkeys(urls) if self.get(url, now) is None)

    def known(self, now: datetime, local: Iterable[KnownCrl] = ()) -> Known:
        """What ``evaluate`` needs: the live CRLs (after ``local`` ones, e.g. from CRL files) and failures."""
        self._expire(now)
        entries = self._entries.values()
        crls = (*local, *(KnownCrl(e.url, e.crl) for e in entries if e.crl is not None))
        failures = {e.url: e.error for e in entries if e.error is not None}
        return Known(crls, MappingProxyType(failures))

    def _store(self, entry: CacheEntry, now: datetime) -> CacheEntry:
        self._entries.pop(entry.url, None)
        if len(self._entries) >= self.max_entries:
            self._expire(now)
        while len(self._entries) >= self.max_entries:  # rule 3: the soonest to expire makes room
            del self._entries[min(self._entries.values(), key=lambda e: e.expires_at).url]
        self._entries[entry.url] = entry
        return entry

    def _expire(self, now: datetime) -> None:
        for url in [url for url, entry in self._entries.items() if now >= entry.expires_at]:
            del self._entries[url]
