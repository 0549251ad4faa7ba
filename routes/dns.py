"""RFC 3263 §4 server location, sans-IO: NAPTR -> SRV -> A/AAAA as a plan that asks for DNS answers.

``locate(domain, policy)`` is a generator: it yields a batch of ``Query`` objects and is sent back a
``dict`` of their results (``Answer``, ``NoRecords`` or ``DnsFailure``), at most three rounds (NAPTR;
SRV; addresses), and returns the candidates. ``routes.resolver`` drives it over the network with
dnspython; ``from_cache`` drives it from a ``DnsCache`` alone; tests drive it with canned answers.

Choices, each against its RFC:

- Transports: RFC 3263 §4.1 lets a client discard transports it does not want; a route accepts only
  its ``transports`` (TLS alone by default), and ranks them before the NAPTR order, so TLS is preferred
  even where a domain's NAPTR records put TCP first.
- NAPTR records that give nothing usable (none, none for an accepted transport, or a failed query:
  some middleboxes drop NAPTR queries) fall through to the configured SRV names, as when none exist.
- A failed query (timeout, SERVFAIL) is not "no records": when no SRV query answered and one failed,
  resolution fails rather than fall back to the domain's A record (§4.2 falls back on *no* SRV records).
- A lone SRV target of "." (RFC 2782) means the service is decidedly not offered: no fallback for it.
- Certificate names (RFC 5922 §4.1): by default every DNS candidate must present the *domain* that was
  resolved (or the route's fixed ``tls_name``): DNS is not authenticated, and the domain is the only
  name the route's author chose. ``tls_name_from = "target"`` checks the SRV target name instead, as
  Lync/Skype Edge deployments whose certificates do not carry the bare domain need; a spoofed SRV answer
  can then redirect to any host with a valid certificate for its own name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass

from routes.candidates import Candidate
from routes.table import DEFAULT_PORTS, StaticRoute, service_transport

NAPTR_SERVICES = {"SIPS+D2T": "tls", "SIP+D2T": "tcp", "SIP+D2U": "udp"}
"""RFC 3263 §4.1 / RFC 3261 §26: the NAPTR services sipfed can use, and their transports."""


@dataclass(frozen=True, slots=True)
class Query:
    """One DNS question."""

    name: str
    """The owner name, lower case, without the final dot."""
    rdtype: str
    """``NAPTR``, ``SRV``, ``A`` or ``AAAA``."""

    def __str__(self) -> str:
        return f"{self.rdtype} {self.name}"


@dataclass(frozen=True, slots=True)
class Naptr:
    """RFC 3403 NAPTR RDATA (the fields RFC 3263 uses)."""

    order: int
    preference: int
    flags: str
    service: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Srv:
    """RFC 2782 SRV RDATA."""

    priority: int
    weight: int
    port: int
    target: str
    """The target name without the final dot; "." means "no service here"."""


Rdata = Naptr | Srv | str
"""A and AAAA records are their address text."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A positive answer."""

    query: Query
    """The question answered."""
    records: tuple[Rdata, ...]
    """The records of the question's type (after any CNAME)."""
    ttl_seconds: int
    """How long it may be cached: the smallest TTL of the answer and any CNAME on the way."""


class NoRecords(Exception):
    """NXDOMAIN, or the name exists without records of that type (NODATA): cached negatively."""

    def __init__(self, query: Query, *, nxdomain: bool, ttl_seconds: int | None = None) -> None:
        super().__init__(f"{query}: {'no such name' if nxdomain else 'no records of that type'}")
        self.query = query
        self.nxdomain = nxdomain
        self.ttl_seconds = ttl_seconds
        """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) from the authority section; None without a SOA."""


class DnsFailure(Exception):
    """No usable answer (timeout, SERVFAIL, refused): not cached, and never taken for "no records"."""

    def __init__(self, query: Query, reason: str) -> None:
        super().__init__(f"{query}: {reason}")
        self.query = query
        self.reason = reason


class ResolutionError(Exception):
    """RFC 3263 resolution found nowhere to send to; ``problems`` says what each step found."""

    def __init__(self, domain: str, problems: list[str]) -> None:
        super().__init__(f"DNS gave no next hop for {domain}: {'; '.join(problems) or 'no records'}")
        self.domain = domain
        self.problems = problems


Result = Answer | NoRecords | DnsFailure
Plan = Generator[tuple[Query, ...], Mapping[Query, Result], list[Candidate]]


@dataclass(frozen=True, slots=True)
class LocatePolicy:
    """What a route asks of RFC 3263 resolution."""

    transports: tuple[str, ...]
    """Accepted transports, most preferred first."""
    srv_services: tuple[str, ...]
    """SRV service names tried, in order, when NAPTR gives nothing usable."""
    naptr: bool = True
    """Query NAPTR first."""
    tls_name: str | None = None
    """The name every candidate's certificate must carry; None: each SRV target's own name."""
    address_types: tuple[str, ...] = ("A", "AAAA")
    """Address queries, in the order their results are tried."""

    @classmethod
    def for_route(cls, route: StaticRoute, address_types: tuple[str, ...] = ("A", "AAAA")) -> LocatePolicy:
        tls_name = None if route.tls_name_from == "target" else route.tls_name
        return cls(route.accepted_transports, route.srv_services, route.naptr, tls_name, address_types)


@dataclass(frozen=True, slots=True)
class _Service:
    """An SRV name to query, with the transport it stands for and its rank."""

    name: str
    transport: str
    rank: int
    source: str


def locate(domain: str, policy: LocatePolicy) -> Plan:
    """RFC 3263 §4.1 (transport), §4.2 (port and address), in three batched rounds."""
    domain = domain.lower().rstrip(".")
    problems: list[str] = []
    services: list[_Service] = []
    if policy.naptr:
        naptr = Query(domain, "NAPTR")
        services = _naptr_services((yield (naptr,))[naptr], policy, problems)
    if not services:
        services = _configured_services(domain, policy)
    targets: list[tuple[_Service, Srv]] = []
    if services:
        queries = tuple(Query(s.name, "SRV") for s in services)
        results = yield queries
        targets = _srv_targets(services, [results[q] for q in queries], problems)
    if not targets:
        if any(p.startswith("SRV") for p in problems):
            raise ResolutionError(domain, problems)  # a failed or "." SRV answer is not "no SRV records"
        fallback = policy.transports[0]
        source = _Service(domain, fallback, 0, f"A/AAAA {domain} (no SRV)")
        targets = [(source, Srv(0, 0, DEFAULT_PORTS[fallback], domain))]
    names = list(dict.fromkeys(srv.target for _, srv in targets))
    queries = tuple(Query(name, rdtype) for name in names for rdtype in policy.address_types)
    results = yield queries
    candidates = _address_candidates(domain, targets, results, policy, problems)
    if not candidates:
        raise ResolutionError(domain, problems)
    return candidates


def _naptr_services(result: Result, policy: LocatePolicy, problems: list[str]) -> list[_Service]:
    """§4.1: keep "s"-flag records for services we accept; our transport preference, then order and
    preference (RFC 3403 §4.1)."""
    if isinstance(result, DnsFailure):
        problems.append(f"NAPTR failed ({result.reason}); trying SRV names")
        return []
    if isinstance(result, NoRecords):
        return []
    usable = [
        r
        for r in result.records
        if isinstance(r, Naptr)
        and r.flags.lower() == "s"
        and NAPTR_SERVICES.get(r.service.upper()) in policy.transports
        and r.replacement not in ("", ".")
    ]
    if not usable and result.records:
        problems.append("NAPTR has no SIPS+D2T/SIP+D2T/SIP+D2U record for an accepted transport; trying SRV names")

    def rank(record: Naptr) -> tuple[int, int, int]:
        return (policy.transports.index(NAPTR_SERVICES[record.service.upper()]), record.order, record.preference)

    usable.sort(key=rank)
    return [
        _Service(
            r.replacement.lower().rstrip("."),
            NAPTR_SERVICES[r.service.upper()],
            i,
            f"NAPTR {r.service.upper()} -> SRV {r.replacement.lower().rstrip('.')}",
        )
        for i, r in enumerate(usable)
    ]


def _configured_services(domain: str, policy: LocatePolicy) -> list[_Service]:
    """§4.1 without NAPTR: an SRV query per configured service the route's transports allow."""
    accepted = [s for s in policy.srv_services if service_transport(s) in policy.transports]
    accepted.sort(key=lambda s: policy.transports.index(service_transport(s)))
    return [_Service(f"{s}.{domain}", service_transport(s), i, f"SRV {s}.{domain}") for i, s in enumerate(accepted)]


def _srv_targets(services: list[_Service], results: list[Result], problems: list[str]) -> list[tuple[_Service, Srv]]:
    targets: list[tuple[_Service, Srv]] = []
    for service, result in zip(services, results, strict=True):
        if isinstance(result, DnsFailure):
            problems.append(f"SRV {service.name} failed ({result.reason})")
        elif isinstance(result, Answer):
            records = [r for r in result.records if isinstance(r, Srv)]
            if len(records) == 1 and records[0].target in ("", "."):
                problems.append(f"SRV {service.name} says the service is not offered (target '.')")
            targets.extend((service, r) for r in records if r.target not in ("", "."))
    return targets


def _address_candidates(
    domain: str,
    targets: list[tuple[_Service, Srv]],
    results: Mapping[Query, Result],
    policy: LocatePolicy,
    problems: list[str],
) -> list[Candidate]:
    """§4.2: every address of every target, each as a candidate; the addresses of one target stay
    together in ``rfc2782_order`` (RFC 3263 §4.3: "try each in turn")."""
    candidates: list[Candidate] = []
    seen: set[tuple[str, str, int]] = set()
    for service, srv in targets:
        addresses = _addresses(srv.target, results, policy, problems)
        for address in addresses:
            key = (service.transport, address, srv.port)
            if key in seen:
                continue
            seen.add(key)
            tls_name = policy.tls_name or srv.target
            candidates.append(
                Candidate(
                    address,
                    srv.port,
                    service.transport,
                    tls_name,
                    srv.priority,
                    srv.weight,
                    service.source,
                    srv.target,
                    service.rank,
                )
            )
    if not candidates:
        problems.append(f"no A/AAAA records for {', '.join(dict.fromkeys(t.target for _, t in targets)) or domain}")
    return candidates


def _addresses(name: str, results: Mapping[Query, Result], policy: LocatePolicy, problems: list[str]) -> list[str]:
    found: list[str] = []
    for rdtype in policy.address_types:
        result = results[Query(name, rdtype)]
        if isinstance(result, DnsFailure):
            problems.append(f"{rdtype} {name} failed ({result.reason})")
        elif isinstance(result, Answer):
            found.extend(r for r in result.records if isinstance(r, str))
    return found


class DnsCache:
    """Answers kept for their TTL (at most ``max_ttl_seconds``), "no records" for the RFC 2308 negative
    TTL (at most ``negative_seconds``, which is also used when no SOA came with it); ``max_entries`` in
    all, least recently used dropped first. Time is passed in (monotonic seconds)."""

    __slots__ = ("_entries", "max_entries", "max_ttl_seconds", "negative_seconds")

    def __init__(
        self, max_entries: int = 4096, negative_seconds: float = 30.0, max_ttl_seconds: float = 86400.0
    ) -> None:
        self.max_entries = max_entries
        self.negative_seconds = negative_seconds
        self.max_ttl_seconds = max_ttl_seconds
        self._entries: OrderedDict[Query, tuple[float, Answer | NoRecords]] = OrderedDict()

    def get(self, query: Query, now: float) -> Answer | NoRecords | None:
        entry = self._entries.get(query)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[query]
            return None
        self._entries.move_to_end(query)
        return entry[1]

    def put(self, result: Answer | NoRecords, now: float) -> None:
        """Store an answer or a negative answer; a TTL of 0 means "do not cache"."""
        if isinstance(result, Answer):
            seconds = min(float(result.ttl_seconds), self.max_ttl_seconds)
        else:
            ttl = result.ttl_seconds
            seconds = min(self.negative_seconds, float(ttl) if ttl is not None else self.negative_seconds)
        if seconds <= 0:
            return
        self._entries[result.query] = (now + seconds, result)
        self._entries.move_to_end(result.query)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def drive(plan: Plan, lookup: Callable[[Query], Result | None]) -> list[Candidate] | None:
    """Run a plan with answers from ``lookup``, which has no I/O; None as soon as it lacks one.
    Raises ``ResolutionError`` when the answers say there is nowhere to go."""
    try:
        batch = next(plan)
        while True:
            results: dict[Query, Result] = {}
            for query in batch:
                result = lookup(query)
                if result is None:
                    plan.close()
                    return None
                results[query] = result
            batch = plan.send(results)
    except StopIteration as done:
        candidates: list[Candidate] = done.value
        return candidates


def from_cache(domain: str, policy: LocatePolicy, cache: DnsCache, now: float) -> list[Candidate] | None:
    """The candidates if every answer needed is cached, else None: the sans-IO core's fast path
    before it asks ``routes.resolver.Resolver`` (which awaits the network)."""
    return drive(locate(domain, policy), lambda query: cache.get(query, now))
