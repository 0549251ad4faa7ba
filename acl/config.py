"""The ``[[peers]]``, ``[auth]`` and ``[acl]`` config sections, validated with every problem reported."""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

from acl.allow import AclEntry, AclError, Network, parse_allow
from acl.digest import ALGORITHMS, DigestServer, FromIdentities, Throttle, ha1
from acl.peers import Credential, Trust, TrustedPeer
from acl.subjects import SubjectError, SubjectPattern, parse_subject

PEER_KEYS = {"name", "subjects", "networks", "domains", "treat_as_authenticated", "answers_digest", "microsoft"}
#: ``[auth]`` keys of the failed-attempt throttle (see acl.digest.Throttle): default, and whether whole.
THROTTLE_KEYS = {
    "max_failures_per_source": (5, True),
    "max_failures_per_user": (20, True),
    "failure_window_seconds": (60, False),
    "lockout_seconds": (5, False),
    "max_lockout_seconds": (300, False),
}
AUTH_KEYS = {"realm", "nonce_ttl_seconds", "algorithms", "users", "secret", *THROTTLE_KEYS}
USER_KEYS = {"username", "password", "ha1_md5", "ha1_sha256", "from_uris", "from_domains"}
#: ``from_uris`` entries: sip:user@host or sips:user@host, nothing more (no port, parameters or headers).
_FROM_URI_RE = re.compile(r"(?i)sips?:([^@:;?<>\s\"]+)@([a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)")
_DOMAIN_RE = re.compile(r"(?i)[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")
ACL_KEYS = {"incoming", "outgoing", "credentials"}
CREDENTIAL_KEYS = {"route", "username", "password", "realm"}


def parse_trust(raw: Mapping[str, Any], problems: list[str], warnings: list[str], route_names: set[str]) -> Trust:
    """Build the Trust from the whole config table; append problems and warnings."""
    peers = _peers(raw.get("peers"), problems)
    names = {p.name for p in peers}
    digest = _auth(raw.get("auth"), problems, warnings)
    acl = raw.get("acl", {})
    if not isinstance(acl, Mapping):
        problems.append("acl: must be a table ([acl])")
        acl = {}
    _unknown(acl, ACL_KEYS, "acl", problems)
    incoming = _entries(acl.get("incoming"), "acl.incoming", names, route_names, problems)
    outgoing = _entries(acl.get("outgoing"), "acl.outgoing", names, route_names, problems)
    credentials = _credentials(acl.get("credentials"), route_names, problems, warnings)
    for peer in peers:
        if (
            not peer.answers_digest
            and not peer.treat_as_authenticated
            and not any(e.kind == "peer" and e.value == peer.name for e in incoming)
        ):
            problems.append(
                f"peers: {peer.name!r} cannot answer digest (answers_digest = false) but is neither "
                "treat_as_authenticated nor exempt in acl.incoming: sipfed would have to challenge "
                'it. Set treat_as_authenticated = true or add {peer = "' + peer.name + '"} to '
                "acl.incoming"
            )
    return Trust(tuple(peers), tuple(incoming), tuple(outgoing), digest, tuple(credentials))


def _peers(raw: object, problems: list[str]) -> list[TrustedPeer]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append("peers: must be a list of tables ([[peers]])")
        return []
    peers: list[TrustedPeer] = []
    for i, entry in enumerate(raw):
        where = f"peers[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: must be a table")
            continue
        _unknown(entry, PEER_KEYS, where, problems)
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}.name: missing (required)")
            continue
        subjects = _subjects(entry.get("subjects", []), f"{where}.subjects", problems)
        networks = _networks(entry.get("networks", []), f"{where}.networks", problems)
        if not subjects and not networks:
            problems.append(f"{where}: give subjects (certificate names) or networks, or it matches nobody")
        domains = _strings(entry.get("domains", []), f"{where}.domains", problems)
        flags = [
            _bool(entry, key, default, where, problems)
            for key, default in (("treat_as_authenticated", True), ("answers_digest", True), ("microsoft", False))
        ]
        if name in {p.name for p in peers}:
            problems.append(f"{where}.name: {name!r} is used by another peer")
        peers.append(TrustedPeer(name, tuple(subjects), tuple(networks), tuple(d.lower() for d in domains), *flags))
    return peers


def _subjects(raw: object, where: str, problems: list[str]) -> list[SubjectPattern]:
    out = []
    for i, text in enumerate(_strings(raw, where, problems)):
        try:
            out.append(parse_subject(text))
        except SubjectError as exc:
            problems.append(f"{where}[{i}]: {exc}")
    return out


def _networks(raw: object, where: str, problems: list[str]) -> list[Network]:
    out = []
    for i, text in enumerate(_strings(raw, where, problems)):
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            problems.append(f"{where}[{i}]: {text!r} is not an address or CIDR block")
    return out


def _auth(raw: object, problems: list[str], warnings: list[str]) -> DigestServer | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.append("auth: must be a table ([auth])")
        return None
    _unknown(raw, AUTH_KEYS, "auth", problems)
    realm = raw.get("realm")
    if not isinstance(realm, str) or not realm:
        problems.append("auth.realm: missing (required): the realm sipfed challenges with")
        realm = ""
    algorithms = tuple(
        a.upper() for a in _strings(raw.get("algorithms", ["SHA-256", "MD5"]), "auth.algorithms", problems)
    )
    for algorithm in algorithms:
        if algorithm not in ALGORITHMS:
            problems.append(f"auth.algorithms: {algorithm!r} must be MD5 or SHA-256")
    ttl = _positive(raw, "nonce_ttl_seconds", 300, False, problems)
    secret = raw.get("secret")
    if secret is not None and (not isinstance(secret, str) or not secret):
        problems.append("auth.secret: must be a non-empty string (leave it out for a random one per start)")
        secret = None
    identities: dict[str, FromIdentities] = {}
    users = _users(raw.get("users", []), realm, identities, problems, warnings)
    # A fresh instance per loaded config: nonces from before a restart or reload are stale (acl.digest rule 2).
    return DigestServer(
        realm,
        secret.encode() if isinstance(secret, str) else secrets.token_bytes(32),
        users,
        ttl,
        algorithms or ("MD5",),
        instance=secrets.token_hex(8),
        from_identities=identities,
        throttle=_throttle(raw, problems),
    )


def _throttle(raw: Mapping[str, Any], problems: list[str]) -> Throttle:
    values = {key: _positive(raw, key, default, whole, problems) for key, (default, whole) in THROTTLE_KEYS.items()}
    if values["lockout_seconds"] > values["max_lockout_seconds"]:
        problems.append(
            f"auth.lockout_seconds: {values['lockout_seconds']:g} is more than "
            f"auth.max_lockout_seconds ({values['max_lockout_seconds']:g})"
        )
    return Throttle(
        int(values["max_failures_per_source"]),
        int(values["max_failures_per_user"]),
        values["failure_window_seconds"],
        values["lockout_seconds"],
        values["max_lockout_seconds"],
    )


def _positive(raw: Mapping[str, Any], key: str, default: float, whole: bool, problems: list[str]) -> float:
    value = raw.get(key, default)
    if not isinstance(value, int if whole else int | float) or isinstance(value, bool) or value <= 0:
        problems.append(f"auth.{key}: {value!r} must be a positive {'whole ' if whole else ''}number")
        return float(default)
    return float(value)


def _users(
    raw: object, realm: str, identities: dict[str, FromIdentities], problems: list[str], warnings: list[str]
) -> dict[str, dict[str, str]]:
    users: dict[str, dict[str, str]] = {}
    if not isinstance(raw, list):
        problems.append("auth.users: must be a list of tables ([[auth.users]])")
        return users
    for i, entry in enumerate(raw):
        where = f"auth.users[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("username"), str):
            problems.append(f"{where}: needs a username")
            continue
        _unknown(entry, USER_KEYS, where, problems)
        name = entry["username"]
        stored = {
            alg: str(entry[key]).lower() for alg, key in (("MD5", "ha1_md5"), ("SHA-256", "ha1_sha256")) if key in entry
        }
        if "password" in entry:
            warnings.append(
                f"{where}.password: a plaintext password in the config; store ha1_md5/ha1_sha256 "
                f"(H(username:realm:password)) instead"
            )
            stored = {alg: ha1(alg, name, realm, str(entry["password"])) for alg in ALGORITHMS} | stored
        if not stored:
            problems.append(f"{where}: give ha1_md5 and/or ha1_sha256 (or password)")
        if name in users:
            problems.append(f"{where}.username: {name!r} is configured twice")
        users[name] = stored
        identities[name] = _from_identities(entry, name, realm, where, problems)
    return users


def _from_identities(
    entry: Mapping[str, Any], name: str, realm: str, where: str, problems: list[str]
) -> FromIdentities:
    """``from_uris`` / ``from_domains``; neither: the user's own ``sip:name@realm`` (see FromIdentities)."""
    if "from_uris" not in entry and "from_domains" not in entry:
        return FromIdentities(frozenset({(name, realm.lower())}))
    uris = set()
    for j, text in enumerate(_strings(entry.get("from_uris", []), f"{where}.from_uris", problems)):
        match = _FROM_URI_RE.fullmatch(text)
        if match is None:
            problems.append(
                f"{where}.from_uris[{j}]: {text!r} must be sip:user@domain (no port or parameters; "
                "for every user of a domain use from_domains)"
            )
            continue
        uris.add((unquote(match.group(1)), match.group(2).lower()))
    domains = []
    for j, text in enumerate(_strings(entry.get("from_domains", []), f"{where}.from_domains", problems)):
        if text != "*" and not _DOMAIN_RE.fullmatch(text):
            problems.append(f'{where}.from_domains[{j}]: {text!r} must be a domain name, or "*" for any From')
            continue
        domains.append(text.lower())
    return FromIdentities(frozenset(uris), tuple(domains))


def _entries(
    raw: object, where: str, peer_names: set[str], route_names: set[str], problems: list[str]
) -> list[AclEntry]:
    entries: list[AclEntry] = []
    if raw is None:
        return entries
    if not isinstance(raw, list):
        problems.append(f"{where}: must be a list of 'Allow from ...' strings or {{peer = ...}} tables")
        return entries
    for i, item in enumerate(raw):
        path = f"{where}[{i}]"
        entry = _entry(item, path, peer_names, route_names, problems)
        if entry is None:
            continue
        for j, earlier in enumerate(entries):
            if earlier.covers(entry):
                problems.append(
                    f"{path}: never used — {where}[{j}] ({earlier.value}) already matches all it "
                    "matches; remove it or put it first"
                )
                break
        entries.append(entry)
    return entries


def _entry(
    item: object, path: str, peer_names: set[str], route_names: set[str], problems: list[str]
) -> AclEntry | None:
    methods: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()
    if isinstance(item, Mapping):
        _unknown(item, {"peer", "from", "methods", "routes"}, path, problems)
        methods = frozenset(m.upper() for m in _strings(item.get("methods", []), f"{path}.methods", problems))
        routes = frozenset(_strings(item.get("routes", []), f"{path}.routes", problems))
        for route in sorted(routes - route_names):
            problems.append(f"{path}.routes: no route is named {route!r}")
        if "peer" in item:
            peer = item["peer"]
            if peer not in peer_names:
                problems.append(f"{path}.peer: no peer is named {peer!r} (peers: {', '.join(sorted(peer_names))})")
                return None
            return AclEntry("peer", str(peer), methods=methods, routes=routes)
        item = item.get("from")
    if not isinstance(item, str):
        problems.append(f"{path}: must be 'Allow from ...' or a table with 'peer' or 'from'")
        return None
    try:
        return replace(parse_allow(item, methods), routes=routes)
    except AclError as exc:
        problems.append(f"{path}: {exc}")
        return None


def _credentials(raw: object, route_names: set[str], problems: list[str], warnings: list[str]) -> list[Credential]:
    out: list[Credential] = []
    if raw is None:
        return out
    if not isinstance(raw, list):
        problems.append("acl.credentials: must be a list of tables ([[acl.credentials]])")
        return out
    for i, entry in enumerate(raw):
        where = f"acl.credentials[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: must be a table")
            continue
        _unknown(entry, CREDENTIAL_KEYS, where, problems)
        values = {k: entry.get(k) for k in ("route", "username", "password")}
        missing = [k for k, v in values.items() if not isinstance(v, str) or not v]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        if values["route"] not in route_names:
            problems.append(f"{where}.route: no route is named {values['route']!r}")
        warnings.append(
            f"{where}.password: answering a next hop's digest challenge needs the password itself; "
            "keep this file readable by sipfed only"
        )
        realm = entry.get("realm")
        out.append(
            Credential(
                str(values["route"]), str(values["username"]), str(values["password"]), str(realm) if realm else None
            )
        )
    return out


def _strings(raw: object, where: str, problems: list[str]) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        problems.append(f"{where}: must be a list of strings")
        return []
    return [x.strip() for x in raw]


def _bool(entry: Mapping[str, Any], key: str, default: bool, where: str, problems: list[str]) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"{where}.{key}: must be true or false")
        return default
    return value


def _unknown(entry: Mapping[str, Any], known: set[str], where: str, problems: list[str]) -> None:
    for key in sorted(set(entry) - known):
        problems.append(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
