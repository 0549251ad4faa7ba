"""The asyncio edge of routing: dnspython's asyncio resolver behind ``DnsSource``, and ``Resolver``,
which runs ``routes.dns.locate`` plans through a ``DnsCache``, one batch of queries at a time in parallel.

Not imported by ``routes/__init__``: the sans-IO core may import ``routes`` without pulling in asyncio.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Sequence
from typing import Protocol, cast

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.NAPTR
import dns.rdtypes.IN.SRV
import dns.resolver

from routes.candidates import Candidate
from routes.dns import (
    Answer,
    DnsCache,
    DnsFailure,
    LocatePolicy,
    Naptr,
    NoRecords,
    Plan,
    Query,
    Rdata,
    Result,
    Srv,
    from_cache,
    locate,
)
from routes.table import StaticRoute


class DnsSource(Protocol):
    """Where answers come from: returns an ``Answer`` or raises ``NoRecords`` / ``DnsFailure``."""

    async def query(self, query: Query) -> Answer: ...


class DnspythonSource:
    """``dns.asyncresolver.Resolver`` (never blocks the event loop). ``nameservers=None`` reads the
    system's resolver configuration; tests give a loopback server and its ``port``."""

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        port: int = 53,
        *,
        timeout_seconds: float = 2.0,
        lifetime_seconds: float = 4.0,
    ) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        if nameservers is not None:
            self._resolver.nameservers = list(nameservers)
        self._resolver.port = port
        self._resolver.timeout = timeout_seconds
        self._resolver.lifetime = lifetime_seconds
        self.lifetime_seconds = lifetime_seconds

    async def query(self, query: Query) -> Answer:
        try:
            answer = await self._resolver.resolve(query.name, query.rdtype, search=False)
        except dns.resolver.NXDOMAIN as exc:
            responses = cast(dict[dns.name.Name, dns.message.Message], exc.kwargs.get("responses", {}))
            raise NoRecords(query, nxdomain=True, ttl_seconds=negative_ttl(responses.values())) from None
        except dns.resolver.NoAnswer as exc:
            response = cast(dns.message.Message, exc.kwargs["response"])
            raise NoRecords(query, nxdomain=False, ttl_seconds=negative_ttl([response])) from None
        except dns.resolver.NoNameservers:
            raise DnsFailure(query, "every name server failed (SERVFAIL, REFUSED or a bad reply)") from None
        except dns.exception.Timeout:
            raise DnsFailure(query, f"no answer within {self.lifetime_seconds:g} s") from None
        except dns.exception.DNSException as exc:
            raise DnsFailure(query, str(exc) or type(exc).__name__) from None
        records = tuple(_rdata(rdata) for rdata in answer)
        return Answer(query, records, answer.chaining_result.minimum_ttl)


def negative_ttl(responses: Iterable[dns.message.Message]) -> int | None:
    """RFC 2308 §5: a negative answer lives for min(SOA TTL, SOA MINIMUM); None without a SOA."""
    ttls = [
        min(rrset.ttl, cast(dns.rdtypes.ANY.SOA.SOA, rrset[0]).minimum)
        for response in responses
        for rrset in response.authority
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset)
    ]
    return min(ttls) if ttls else None


def _rdata(rdata: dns.rdata.Rdata) -> Rdata:
    if isinstance(rdata, dns.rdtypes.IN.SRV.SRV):
        return Srv(rdata.priority, rdata.weight, rdata.port, _name(rdata.target))
    if isinstance(rdata, dns.rdtypes.IN.NAPTR.NAPTR):
        return Naptr(
            rdata.order,
            rdata.preference,
            rdata.flags.decode(errors="replace"),
            rdata.service.decode(errors="replace"),
            _name(rdata.replacement),
        )
    return str(rdata.to_text())  # A and AAAA: the address


def _name(name: dns.name.Name) -> str:
    text = name.to_text(omit_final_dot=True).lower()
    return text or "."


class Resolver:
    """Candidates for a route: its static destinations, or RFC 3263 resolution through the cache.
    Concurrent lookups of one question share one query. Time is passed in (monotonic seconds)."""

    def __init__(
        self, source: DnsSource, cache: DnsCache | None = None, address_types: tuple[str, ...] = ("A", "AAAA")
    ) -> None:
        self.source = source
        self.cache = cache if cache is not None else DnsCache()
        self.address_types = address_types
        self.queries_sent = 0
        """Questions sent to ``source`` (cache misses that were not already in flight)."""
        self.cache_hits = 0
        """Questions answered from the cache, positively or negatively."""
        self._in_flight: dict[Query, asyncio.Future[Result]] = {}

    async def candidates_for(self, route: StaticRoute, now: float) -> list[Candidate]:
        """Every candidate of ``route``, unordered (``routes.order`` makes the list to try).
        Raises ``routes.dns.ResolutionError`` when DNS gives nowhere to go."""
        if route.resolve is None:
            return list(route.static_candidates)
        return await self._run(locate(route.resolve, self.policy(route)), now)

    def cached_candidates(self, route: StaticRoute, now: float) -> list[Candidate] | None:
        """``candidates_for`` without I/O: None when an answer it needs is not cached."""
        if route.resolve is None:
            return list(route.static_candidates)
        return from_cache(route.resolve, self.policy(route), self.cache, now)

    def policy(self, route: StaticRoute) -> LocatePolicy:
        return LocatePolicy.for_route(route, self.address_types)

    async def _run(self, plan: Plan, now: float) -> list[Candidate]:
        try:
            batch = next(plan)
            while True:
                results = await asyncio.gather(*(self._lookup(query, now) for query in batch))
                batch = plan.send(dict(zip(batch, results, strict=True)))
        except StopIteration as done:
            candidates: list[Candidate] = done.value
            return candidates

    async def _lookup(self, query: Query, now: float) -> Result:
        cached = self.cache.get(query, now)
        if cached is not None:
            self.cache_hits += 1
            return cached
        pending = self._in_flight.get(query)
        if pending is None:
            pending = asyncio.ensure_future(self._ask(query, now))
            self._in_flight[query] = pending
            pending.add_done_callback(functools.partial(self._forget, query))
        # shield: one caller giving up (its request timed out) must not cancel the others' query
        return await asyncio.shield(pending)

    def _forget(self, query: Query, done: asyncio.Future[Result]) -> None:
        if self._in_flight.get(query) is done:
            del self._in_flight[query]
        if not done.cancelled():
            done.exception()  # retrieved, so a query every caller gave up on logs no "never retrieved"

    async def _ask(self, query: Query, now: float) -> Result:
        self.queries_sent += 1
        result: Result
        try:
            result = await self.source.query(query)
        except (NoRecords, DnsFailure) as exc:
            result = exc
        if not isinstance(result, DnsFailure):
            self.cache.put(result, now)
        return result
