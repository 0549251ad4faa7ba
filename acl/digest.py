"""SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760): MD5 and SHA-256, ``qop=auth``.

Sans-IO: time is a parameter. Nonces carry their issue time and an HMAC under a server
secret, so they need no table to verify; a small table of the highest nonce-count seen
per nonce refuses replays (RFC 7616 §3.4.5 ``nc``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


def h(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode("utf-8")).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """RFC 7616 §3.4.2: A1 = username ":" realm ":" passwd."""
    return h(algorithm, f"{username}:{realm}:{password}")


def response(algorithm: str, ha1_value: str, nonce: str, method: str, uri: str, *, nc: str = "", cnonce: str = "",
             qop: str = "") -> str:
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
    """Right credentials on an expired nonce: challenge again with stale=true."""
    BAD = "bad"
    """Wrong password, unknown user, forged nonce, malformed header: 403."""
    REPLAY = "replay"
    """A nonce-count not above the last one seen for that nonce: 403."""
    OTHER_REALM = "other-realm"
    """Credentials for someone else's realm: not ours to judge (RFC 3261 §22.3)."""
    URI_MISMATCH = "uri-mismatch"
    """The digest ``uri`` is not the Request-URI: 400 (RFC 2617 §3.2.2.5)."""


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
    _counts: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def nonce(self, now: float) -> str:
        stamp = f"{int(now):x}"
        return stamp + "." + hmac.new(self.secret, f"{stamp}:{self.realm}".encode(), hashlib.sha256).hexdigest()[:32]

    def challenges(self, now: float, *, stale: bool = False) -> list[str]:
        """One Proxy-Authenticate value per algorithm, preferred first (RFC 8760 §2.4)."""
        nonce = self.nonce(now)
        tail = ", stale=true" if stale else ""
        return [f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={alg}, qop="auth"{tail}'
                for alg in self.algorithms]

    def verify(self, method: str, value: str, now: float, request_uri: str | None = None) -> tuple[Verdict, str]:
        """Check one Proxy-Authorization value for ``method`` (and, when given, the Request-URI it
        must be bound to); returns the verdict and the username."""
        scheme, p = parse_auth(value)
        if scheme != "digest":
            return Verdict.BAD, ""
        if p.get("realm") != self.realm:
            return Verdict.OTHER_REALM, ""
        user = p.get("username", "")
        algorithm = p.get("algorithm", "MD5").upper()
        stored = self.users.get(user, {}).get(algorithm)
        nonce = p.get("nonce", "")
        if algorithm not in self.algorithms or stored is None or not self._authentic(nonce):
            return Verdict.BAD, user
        if request_uri is not None and p.get("uri") != request_uri:
            return Verdict.URI_MISMATCH, user
        if p.get("qop") != "auth" or not re.fullmatch(r"[0-9a-fA-F]{8}", p.get("nc", "")):
            return Verdict.BAD, user  # RFC 7616 requires qop; without nc there is no replay protection
        expected = response(algorithm, stored, nonce, method, p.get("uri", ""), nc=p["nc"],
                            cnonce=p.get("cnonce", ""), qop="auth")
        if not hmac.compare_digest(expected, p.get("response", "").lower()):
            return Verdict.BAD, user
        if now - int(nonce.split(".")[0], 16) > self.nonce_ttl_seconds:
            return Verdict.STALE, user
        return (Verdict.OK if self._count_ok(nonce, int(p["nc"], 16)) else Verdict.REPLAY), user

    def _authentic(self, nonce: str) -> bool:
        stamp, _, mac = nonce.partition(".")
        if not stamp or not mac or not re.fullmatch(r"[0-9a-f]+", stamp):
            return False
        good = hmac.new(self.secret, f"{stamp}:{self.realm}".encode(), hashlib.sha256).hexdigest()[:32]
        return hmac.compare_digest(good, mac)

    def _count_ok(self, nonce: str, nc: int) -> bool:
        last = self._counts.get(nonce, 0)
        if nc <= last:
            return False
        self._counts[nonce] = nc
        self._counts.move_to_end(nonce)
        while len(self._counts) > self.max_tracked_nonces:
            self._counts.popitem(last=False)
        return True


def authorization(challenge: str, method: str, uri: str, username: str, password: str, cnonce: str,
                  nc: int = 1) -> str:
    """Answer a far side's 401/407 challenge (RFC 7616 §3.4) as a client."""
    _, p = parse_auth(challenge)
    algorithm = p.get("algorithm", "MD5").upper()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported digest algorithm {algorithm}")
    realm, nonce = p.get("realm", ""), p.get("nonce", "")
    qop = "auth" if "auth" in [q.strip() for q in p.get("qop", "").split(",")] else ""
    nc_text = f"{nc:08x}"
    digest = response(algorithm, ha1(algorithm, username, realm, password), nonce, method, uri,
                      nc=nc_text, cnonce=cnonce, qop=qop)
    parts = [f'username="{username}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"',
             f'response="{digest}"', f"algorithm={algorithm}"]
    if qop:
        parts += [f'cnonce="{cnonce}"', "qop=auth", f"nc={nc_text}"]
    if "opaque" in p:
        parts.append(f'opaque="{p["opaque"]}"')
    return "Digest " + ", ".join(parts)
