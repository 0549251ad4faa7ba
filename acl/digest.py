"""SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760): MD5 and SHA-256, ``qop=auth``.

Sans-IO: time is a parameter. ``now`` (the driver's monotonic clock) times the throttle; ``wall``
(wall-clock seconds, defaulting to ``now``) dates nonces. Rules:

1. A fresh nonce per challenge (RFC 7616 §3.3): its issue time, the issuing server's ``instance`` and
   96 random bits, under an HMAC with the secret. Checking one needs no table; forging one needs the secret.
2. A nonce is good for ``nonce_ttl_seconds``, and only at the server (one loaded config) that issued it:
   after a restart or reload a right answer on an older nonce is stale (407, ``stale=true``), so a captured
   Proxy-Authorization cannot replay where its nonce-count is no longer known (RFC 7616 §5.5).
3. The nonce-count is kept per nonce for that nonce alone (RFC 7616 §3.4 ``nc``), from its first good use
   until it expires; the table is capped, and a nonce pushed out of it is stale, never used "first" twice.
4. Failed attempts are counted per source and per configured username; past the limit in the window,
   every attempt (the right password too) is refused for a lockout that doubles each time (RFC 7616 §5.7,
   online dictionary attacks).
5. A user may only use the From identities configured for it (``may_use_from``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import unquote

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')
#: stamp (hex seconds) "." instance (hex, may be empty) "." 96 random bits "." HMAC-SHA-256/128.
_NONCE_RE = re.compile(r"([0-9a-f]{1,16})\.([0-9a-f]{0,32})\.([0-9a-f]{24})\.([0-9a-f]{32})")


def h(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode("utf-8")).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """RFC 7616 §3.4.2: A1 = username ":" realm ":" passwd."""
    return h(algorithm, f"{username}:{realm}:{password}")


def response(
    algorithm: str, ha1_value: str, nonce: str, method: str, uri: str, *, nc: str = "", cnonce: str = "", qop: str = ""
) -> str:
    """RFC 7616 §3.4.1 ``response`` for qop=auth; without qop the RFC 2069 form (§3.4.1 compat)."""
    ha2 = h(algorithm, f"{method}:{uri}")
    if qop:
        return h(algorithm, f"{ha1_value}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return h(algorithm, f"{ha1_value}:{nonce}:{ha2}")


def parse_auth(value: str) -> tuple[str, dict[str, str]]:
    """``Digest k=v, k="v"`` -> ('digest', {k: v}) with quotes and escapes removed."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _PARAM_RE.finditer(rest):
        key, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key] = raw
    return scheme.lower(), params


class Verdict(Enum):
    """What a Proxy-Authorization header proves."""

    OK = "ok"
    STALE = "stale"
    """Right credentials on an expired nonce, or one another server instance issued: challenge again, stale=true."""
    BAD = "bad"
    """Wrong password, unknown user, forged nonce, malformed header: 403."""
    REPLAY = "replay"
    """A nonce-count not above the last one seen for that nonce: 403."""
    OTHER_REALM = "other-realm"
    """Credentials for someone else's realm: not ours to judge (RFC 3261 §22.3)."""
    URI_MISMATCH = "uri-mismatch"
    """The digest ``uri`` is not the Request-URI: 400 (RFC 2617 §3.2.2.5)."""
    THROTTLED = "throttled"
    """Too many failures from this source or for this user: 403 until the lockout ends, password unchecked."""


@dataclass(frozen=True, slots=True)
class FromIdentities:
    """The From identities one digest user may use: ``[[auth.users]] from_uris`` and ``from_domains``.

    Without either key a user may use only its own identity, ``sip:USERNAME@REALM`` (as Kamailio's
    ``check_from``); with either, exactly what they list. ``from_domains = ["*"]`` allows any From.
    """

    uris: frozenset[tuple[str, str]] = frozenset()
    """``from_uris = ["sip:alice@tomt.local"]`` as (user, host): the user unescaped and case-sensitive
    (RFC 3261 §19.1.4), the host lower case; sip: and sips: alike."""
    domains: tuple[str, ...] = ()
    """``from_domains = ["partner.example"]``: any user at these domains or their subdomains (lower case)."""

    def allows(self, user: str, host: str) -> bool:
        host = host.lower()
        if (unquote(user), host) in self.uris:
            return True
        return any(d == "*" or host == d or host.endswith("." + d) for d in self.domains)


@dataclass(slots=True)
class _Failures:
    count: int = 0
    since: float = 0.0
    """Start of the window ``count`` covers."""
    lockouts: int = 0
    """Lockouts in a row: the exponent of the next one."""
    until: float = float("-inf")
    """End of the current lockout."""


@dataclass(slots=True)
class Throttle:
    """Failed digest attempts per source and per username, with doubling lockouts (RFC 7616 §5.7).

    Past ``max_failures_per_*`` failures within ``failure_window_seconds``, a source or user is locked
    out for ``lockout_seconds``, doubled at each lockout that follows, up to ``max_lockout_seconds``;
    a lockout forgiven once it lies ``max_lockout_seconds`` in the past. The per-user limit is the
    looser one, so that one guessing source locks itself out before it locks out the user it guesses.
    """

    max_failures_per_source: int = 5
    """``[auth] max_failures_per_source``: a source address (an IPv6 /64) with this many failures is locked out."""
    max_failures_per_user: int = 20
    """``[auth] max_failures_per_user``: a configured username with this many failures, from anywhere."""
    failure_window_seconds: float = 60.0
    """``[auth] failure_window_seconds``: failures older than this are not counted."""
    lockout_seconds: float = 5.0
    """``[auth] lockout_seconds``: the first lockout."""
    max_lockout_seconds: float = 300.0
    """``[auth] max_lockout_seconds``: the longest."""
    max_tracked_sources: int = 10_000
    """Sources remembered at most (the oldest forgotten first); users are bounded by the config."""
    _tables: dict[str, OrderedDict[str, _Failures]] = field(
        default_factory=lambda: {"source": OrderedDict(), "user": OrderedDict()}
    )

    def lockout(self, keys: list[tuple[str, str]], now: float) -> tuple[str, float] | None:
        """The scope ('source' or 'user') that refuses an attempt now, and the seconds its lockout has left."""
        for scope, key in keys:
            record = self._tables[scope].get(key)
            if record is not None and record.until > now:
                return scope, record.until - now
        return None

    def failed(self, keys: list[tuple[str, str]], now: float) -> None:
        for scope, key in keys:
            table = self._tables[scope]
            record = table.pop(key, None) or _Failures(since=now)
            table[key] = record  # the most recent failure last: the oldest are forgotten first
            if now - record.since > self.failure_window_seconds:
                if now - record.until > self.max_lockout_seconds:
                    record.lockouts = 0
                record.count, record.since = 0, now
            record.count += 1
            limit = self.max_failures_per_source if scope == "source" else self.max_failures_per_user
            if record.count >= limit:
                seconds = self.lockout_seconds * 2 ** min(record.lockouts, 32)
                record.until = now + min(seconds, self.max_lockout_seconds)
                record.lockouts += 1
                record.count, record.since = 0, now
        self._forget(now)

    def passed(self, keys: list[tuple[str, str]]) -> None:
        """A right answer clears its source's count, not the user's: other sources may be guessing it."""
        for scope, key in keys:
            record = self._tables[scope].get(key)
            if scope == "source" and record is not None:
                record.count = 0

    def _forget(self, now: float) -> None:
        for scope, table in self._tables.items():
            while table:
                key, record = next(iter(table.items()))
                done = max(record.since + self.failure_window_seconds, record.until) + self.max_lockout_seconds
                if done >= now and (scope == "user" or len(table) <= self.max_tracked_sources):
                    break
                del table[key]


def source_key(address: str) -> str:
    """An IPv4 address, or the /64 an IPv6 address is in (one host usually holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(slots=True)
class DigestServer:
    """Issues challenges and checks credentials for one realm."""

    realm: str
    secret: bytes
    users: dict[str, dict[str, str]]
    """username -> {algorithm: HA1 hex}."""
    nonce_ttl_seconds: float = 300.0
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    max_tracked_nonces: int = 100_000
    instance: str = ""
    """Hex tag in every nonce; nonces of another tag are stale here (rule 2). ``parse_trust`` draws one per
    loaded config; empty: servers sharing the secret accept each other's nonces (tests, a next hop's stand-in)."""
    from_identities: dict[str, FromIdentities] | None = None
    """username -> the From identities it may use; a user without an entry may use none. None: no From
    rule at all (servers built in code; ``parse_trust`` always gives one, see FromIdentities)."""
    throttle: Throttle = field(default_factory=Throttle)
    _counts: OrderedDict[str, tuple[int, int]] = field(default_factory=OrderedDict)
    """nonce -> (its stamp, the highest nonce-count seen), in the order of first good use."""
    _forgotten_stamp: int = -1
    """The latest stamp of a nonce dropped from ``_counts``: an untracked nonce this old or older is stale."""

    def nonce(self, now: float) -> str:
        """A fresh nonce stamped ``now`` (wall-clock seconds, or whatever clock ``verify`` is given)."""
        stamp, token = f"{max(int(now), 0):x}", secrets.token_hex(12)
        return f"{stamp}.{self.instance}.{token}.{self._mac(stamp, self.instance, token)}"

    def challenges(self, now: float, *, stale: bool = False, wall: float | None = None) -> list[str]:
        """One Proxy-Authenticate value per algorithm, preferred first (RFC 8760 §2.4), all with one fresh nonce."""
        nonce = self.nonce(now if wall is None else wall)
        tail = ", stale=true" if stale else ""
        return [
            f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={alg}, qop="auth"{tail}'
            for alg in self.algorithms
        ]

    def verify(
        self,
        method: str,
        value: str,
        now: float,
        request_uri: str | None = None,
        *,
        source: str | None = None,
        wall: float | None = None,
    ) -> tuple[Verdict, str]:
        """Check one Proxy-Authorization value for ``method`` (and, when given, the Request-URI it must be
        bound to) from ``source`` (an address, for the throttle); returns the verdict and the username."""
        scheme, p = parse_auth(value)
        if scheme == "digest" and p.get("realm") != self.realm:
            return Verdict.OTHER_REALM, ""
        user = p.get("username", "")
        keys = self._throttle_keys(user, source)
        if self.throttle.lockout(keys, now) is not None:
            return Verdict.THROTTLED, user
        verdict = (
            self._check(method, p, request_uri, now if wall is None else wall) if scheme == "digest" else Verdict.BAD
        )
        if verdict is Verdict.BAD:
            self.throttle.failed(keys, now)
        elif verdict is Verdict.OK:
            self.throttle.passed(keys)
        return verdict, user

    def lockout(self, user: str, now: float, source: str | None = None) -> tuple[str, int] | None:
        """Why ``user`` from ``source`` is THROTTLED: the scope ('source' or 'user') and whole seconds left."""
        found = self.throttle.lockout(self._throttle_keys(user, source), now)
        return None if found is None else (found[0], int(found[1]) + (found[1] % 1 > 0))

    def may_use_from(self, username: str, from_user: str, from_host: str) -> bool:
        """Rule 5: may ``username`` send a request whose From is ``from_user@from_host``?"""
        if self.from_identities is None:
            return True
        rule = self.from_identities.get(username)
        return rule is not None and rule.allows(from_user, from_host)

    def _check(self, method: str, p: dict[str, str], request_uri: str | None, wall: float) -> Verdict:
        algorithm = p.get("algorithm", "MD5").upper()
        stored = self.users.get(p.get("username", ""), {}).get(algorithm)
        nonce = p.get("nonce", "")
        issued = self._issued(nonce)
        if algorithm not in self.algorithms or stored is None or issued is None:
            return Verdict.BAD
        if request_uri is not None and p.get("uri") != request_uri:
            return Verdict.URI_MISMATCH
        if p.get("qop") != "auth" or not re.fullmatch(r"[0-9a-fA-F]{8}", p.get("nc", "")):
            return Verdict.BAD  # RFC 7616 requires qop; without nc there is no replay protection
        expected = response(
            algorithm, stored, nonce, method, p.get("uri", ""), nc=p["nc"], cnonce=p.get("cnonce", ""), qop="auth"
        )
        if not hmac.compare_digest(expected, p.get("response", "").lower()):
            return Verdict.BAD
        stamp, instance = issued
        # A stamp ahead of the clock means the clock was set back: stale, and the next nonce is dated right.
        if instance != self.instance or not 0 <= wall - stamp <= self.nonce_ttl_seconds:
            return Verdict.STALE
        return self._count(nonce, stamp, int(p["nc"], 16), wall)

    def _mac(self, stamp: str, instance: str, token: str) -> str:
        text = f"{stamp}.{instance}.{token}:{self.realm}"
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()[:32]

    def _issued(self, nonce: str) -> tuple[int, str] | None:
        """(stamp, instance) of a nonce this secret made; None for anything else."""
        match = _NONCE_RE.fullmatch(nonce)
        if match is None:
            return None
        stamp, instance, token, mac = match.groups()
        if not hmac.compare_digest(self._mac(stamp, instance, token), mac):
            return None
        return int(stamp, 16), instance

    def _count(self, nonce: str, stamp: int, nc: int, wall: float) -> Verdict:
        """Rule 3: a nonce-count above the last one seen for this nonce."""
        entry = self._counts.get(nonce)
        if entry is None:
            if stamp <= self._forgotten_stamp:
                return Verdict.STALE
            self._forget(wall)
        elif nc <= entry[1]:
            return Verdict.REPLAY
        self._counts[nonce] = (stamp, nc)
        return Verdict.OK

    def _forget(self, wall: float) -> None:
        """Drop expired nonces from the front, and the oldest past the cap (they become stale)."""
        while self._counts:
            nonce, (stamp, _) = next(iter(self._counts.items()))
            if wall - stamp <= self.nonce_ttl_seconds and len(self._counts) < self.max_tracked_nonces:
                break
            del self._counts[nonce]
            self._forgotten_stamp = max(self._forgotten_stamp, stamp)

    def _throttle_keys(self, user: str, source: str | None) -> list[tuple[str, str]]:
        keys = [("source", source_key(source))] if source else []
        if user in self.users:  # unknown names are the source's problem: the user table stays bounded
            keys.append(("user", user))
        return keys


def authorization(challenge: str, method: str, uri: str, username: str, password: str, cnonce: str, nc: int = 1) -> str:
    """Answer a far side's 401/407 challenge (RFC 7616 §3.4) as a client."""
    _, p = parse_auth(challenge)
    algorithm = p.get("algorithm", "MD5").upper()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported digest algorithm {algorithm}")
    realm, nonce = p.get("realm", ""), p.get("nonce", "")
    qop = "auth" if "auth" in [q.strip() for q in p.get("qop", "").split(",")] else ""
    nc_text = f"{nc:08x}"
    digest = response(
        algorithm, ha1(algorithm, username, realm, password), nonce, method, uri, nc=nc_text, cnonce=cnonce, qop=qop
    )
    parts = [
        f'username="{username}"',
        f'realm="{realm}"',
        f'nonce="{nonce}"',
        f'uri="{uri}"',
        f'response="{digest}"',
        f"algorithm={algorithm}",
    ]
    if qop:
        parts += [f'cnonce="{cnonce}"', "qop=auth", f"nc={nc_text}"]
    if "opaque" in p:
        parts.append(f'opaque="{p["opaque"]}"')
    return "Digest " + ", ".join(parts)
