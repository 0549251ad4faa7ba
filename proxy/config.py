"""The TOML config: typed, documented fields, every problem reported at once with its key path.

A bad file never half-starts the proxy: ``load_config`` either returns a whole
``Config`` or raises ``ConfigError`` listing each problem as ``key.path: what is wrong``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from acl.config import parse_trust
from acl.peers import Trust, TrustedPeer
from proxy.xmpp.policy import XmppConfig, parse_xmpp
from routes import StaticRoute, parse_routes
from routes.table import DOMAIN_RE, is_host

TRANSPORTS = ("tls", "tcp", "udp")
PROXY_KEYS = {
    "fqdn",
    "federation_fqdn",
    "tolerated_option_tags",
    "transaction_timeout_seconds",
    "invite_timeout_seconds",
    "connect_timeout_seconds",
    "max_message_bytes",
    "log_level",
    "keepalive_seconds",
    "keepalive_timeout_seconds",
    "in_dialog_networks",
}
DNS_KEYS = {"nameservers", "port", "timeout_seconds"}
LISTENER_KEYS = {"name", "transport", "address", "port", "fqdn", "federation_fqdn", "require_client_cert", "untrusted"}
UNTRUSTED_POLICIES = ("admit", "challenge", "refuse")
TLS_KEYS = {"cert_chain", "key", "ca_bundle", "min_version", "ciphers"}
TOP_KEYS = {
    "proxy",
    "tls",
    "listeners",
    "routes",
    "maddr_rewrite",
    "peers",
    "auth",
    "acl",
    "metrics",
    "limits",
    "dns",
    "control",
    "hep",
    "xmpp",
}
#: [limits] keys: (lowest, highest); rates of 0, and a per-source cap of 0, switch that limit off. The defaults
#: and which keys are whole numbers (an ``int`` field) are LimitsConfig's.
LIMIT_BOUNDS: dict[str, tuple[float, float]] = {
    "max_headers": (16, 4096),
    "max_header_line_bytes": (256, 65536),
    "incomplete_message_timeout_seconds": (0.5, 600.0),
    "tls_handshake_timeout_seconds": (0.5, 600.0),
    "max_in_flight_transactions": (1, 1_000_000),
    "per_source_requests_per_second": (0.0, 1_000_000.0),
    "per_peer_requests_per_second": (0.0, 1_000_000.0),
    "burst_seconds": (0.1, 60.0),
    "retry_after_seconds": (1, 3600),
    # Inbound TCP/TLS connections (issue 14, "Bounded connections"); proxy.net.connection.ConnectionGate.
    "max_connections": (1, 1_000_000),
    "max_connections_per_source": (0, 1_000_000),
    "handshakes_per_source_per_second": (0.0, 1_000_000.0),
    "unauthenticated_idle_seconds": (1.0, 86400.0),
}
DEFAULT_METRICS_LISTEN = "127.0.0.1:9561"


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``, typed: counts as ints, the rest as floats; LIMIT_BOUNDS says what each may be."""

    max_headers: int = 256
    """Header fields per message (400 beyond)."""
    max_header_line_bytes: int = 8192
    """One header field line (400 beyond)."""
    incomplete_message_timeout_seconds: float = 10.0
    """A stream that holds an incomplete message this long is closed (a slow sender)."""
    tls_handshake_timeout_seconds: float = 10.0
    """A TLS handshake that takes longer is closed."""
    max_in_flight_transactions: int = 10_000
    """Server transactions waiting for their final response (503 beyond)."""
    per_source_requests_per_second: float = 0.0
    """New requests per source not bound to a trusted peer (503 beyond; 0: off)."""
    per_peer_requests_per_second: float = 0.0
    """New requests per trusted peer, all its connections together (503 beyond; 0: off)."""
    burst_seconds: float = 2.0
    """A token bucket holds this many seconds' worth of requests or handshakes."""
    retry_after_seconds: int = 5
    """The Retry-After of sipfed's own 503s."""
    max_connections: int = 4096
    """Inbound TCP/TLS connections (closed at once beyond; lowered to fit the open-files limit)."""
    max_connections_per_source: int = 64
    """Unproven inbound connections per source address (0: no cap)."""
    handshakes_per_source_per_second: float = 20.0
    """TLS handshakes per source address that proved nothing (0: off)."""
    unauthenticated_idle_seconds: float = 60.0
    """An inbound connection bound to no trusted peer closes after this long without a valid SIP message."""


HEP_KEYS = {"address", "capture_id", "password"}
CONTROL_KEYS = {"socket", "mode"}
#: sockaddr_un.sun_path holds 108 bytes on Linux, the terminating NUL included.
UNIX_PATH_MAX = 107


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` lists each as ``key.path: what to do``."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"config error in {self.path}:\n{lines}")


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """A socket sipfed accepts SIP on, and the identity it shows on that side."""

    name: str
    """Short name (``cisco``, ``lync``) used by routes, logs and metrics."""
    transport: str
    """``tls``, ``tcp`` or ``udp``."""
    address: str
    """IP address to bind."""
    port: int
    """Port to bind (0: any free port, for tests)."""
    fqdn: str
    """The name put in Via and Record-Route on this side (our certificate carries it)."""
    federation_fqdn: str
    """The name put in Record-Route ``maddr`` on this side (CUP's Federation Routing FQDN); default:
    the listener's own ``fqdn`` if it sets one, else ``proxy.federation_fqdn``."""
    require_client_cert: bool = True
    """Mutual TLS: refuse a TLS client that presents no certificate the CA bundle verifies."""
    untrusted: str = "admit"
    """What a request from a source that is neither a trusted peer nor exempt gets: ``admit``,
    ``challenge`` (407, digest) or ``refuse`` (403). Default: challenge when [auth] is set, else
    refuse when [[peers]] are set, else admit."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Our certificate and the CAs we trust, for listeners and outbound connections alike."""

    cert_chain: Path
    """PEM: our certificate followed by its intermediates (the chain peers need)."""
    key: Path
    """PEM: the private key of ``cert_chain``."""
    ca_bundle: Path
    """PEM: the CA certificates that peers' chains must end in."""
    min_version: str = "1.2"
    """Lowest TLS version accepted: ``1.2`` or ``1.3``."""
    ciphers: str | None = None
    """OpenSSL cipher list for TLS 1.2, or None for the library default."""


@dataclass(frozen=True, slots=True)
class MaddrRewrite:
    """Record-Route ``maddr`` mapping: ``internal`` (e.g. a peer's private IP) <-> ``external`` (an FQDN)."""

    internal: str
    """The value a peer puts in its own Record-Route maddr."""
    external: str
    """The value the other side is shown instead (and that maps back on in-dialog Route)."""


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """``[control]``: the Unix socket ``sipfed ctl`` talks to (proxy.net.control)."""

    socket: Path
    """The socket file (relative paths: to the config file); its directory must exist."""
    mode: int = 0o600
    """The socket file's permission bits: who may connect (0600: sipfed's own user, and root)."""


@dataclass(frozen=True, slots=True)
class HepConfig:
    """``[hep]``: where a decrypted copy of every SIP message goes, HEP3 over UDP (Homer, sngrep)."""

    host: str
    """The HEP receiver's IP address or name (resolved when sipfed starts or reloads)."""
    port: int
    """Its UDP port (Homer's heplify-server and sngrep's examples use 9060)."""
    capture_id: int
    """HEP capture agent ID (chunk 0x000c, uint32): what the receiver tells this sipfed apart by."""
    password: str | None = None
    """HEP authentication key (chunk 0x000e), if the receiver checks one; it travels in clear text."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything sipfed runs on."""

    path: Path
    """The file this came from."""
    fqdn: str
    """The proxy's default FQDN (Via, Record-Route)."""
    federation_fqdn: str
    """The default federation FQDN for Record-Route maddr."""
    listeners: tuple[ListenerConfig, ...]
    """Where sipfed accepts SIP."""
    tls: TlsConfig | None
    """TLS material, required when any listener or route uses TLS."""
    routes: tuple[StaticRoute, ...] = ()
    """Static routes by MatchUri."""
    maddr_rewrites: tuple[MaddrRewrite, ...] = ()
    """Record-Route maddr rewrite rules."""
    tolerated_option_tags: frozenset[str] = field(default_factory=frozenset)
    """Proxy-Require option tags passed on instead of refused with 420 (e.g. ``ms-benotify``)."""
    in_dialog_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Opt-in that weakens "no open relay": addresses outside every configured route that a Route header or
    an in-dialog Request-URI may send a request to (e.g. a Contact straight at a client). Empty (the
    default): only destinations the routes account for, the trusted peers' own connections, and the
    ``networks`` of peers bound by network alone. Requests that came over TLS still leave over TLS."""
    transaction_timeout_seconds: float = 16.0
    """Non-INVITE next-hop timeout before answering 408; below the sender's 32 s Timer F (RFC 4320)."""
    invite_timeout_seconds: float = 180.0
    """Timer C (RFC 3261 §16.6 step 11): how long an INVITE may ring."""
    connect_timeout_seconds: float = 5.0
    """How long a TCP connect plus TLS handshake to a next hop may take before 503."""
    max_message_bytes: int = 65535
    """Largest message accepted; larger gets 513 (RFC 3261 §21.5.14)."""
    log_level: str = "info"
    """Python logging level name."""
    keepalive_seconds: float = 90.0
    """RFC 5626 §4.4.1: a CRLFCRLF ping on a connection sipfed opened that was idle this long; 0: off."""
    keepalive_timeout_seconds: float = 10.0
    """A peer that answered pings before and leaves one unanswered this long has a dead connection."""
    dns_nameservers: tuple[str, ...] | None = None
    """``[dns] nameservers``: the servers RFC 3263 lookups ask; None: the system's (/etc/resolv.conf)."""
    dns_port: int = 53
    """``[dns] port``."""
    dns_timeout_seconds: float = 2.0
    """``[dns] timeout_seconds``: one lookup (all its retries) may take this long."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """``[limits]``: sizes, slow-sender timeouts, rate limits, the in-flight cap, connection bounds."""
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9561)
    """Where Prometheus scrapes ``/metrics`` (``[metrics] listen``); None: off."""
    control: ControlConfig | None = None
    """``[control]``: the control socket of ``sipfed ctl``; None (no section): no control socket."""
    hep: HepConfig | None = None
    """``[hep]``: HEP export of every SIP message; None (no section): off."""
    trust: Trust = field(default_factory=Trust)
    """Trusted peers, digest realm, exemption ACLs, outgoing credentials (and one ``xmpp:<partner>`` peer per
    XMPP partner: the gateway's in-process flow, bound to the partner's domains)."""
    xmpp: XmppConfig | None = None
    """``[xmpp]``: XMPP server-to-server federation for our SIP domains; None (no section): off."""
    xmpp_routes: tuple[StaticRoute, ...] = ()
    """One route per XMPP partner domain, to the gateway (transport ``xmpp``, listener ``xmpp``)."""
    warnings: tuple[str, ...] = ()
    """Things that work but an admin should know (plaintext passwords, open admission)."""


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; raise ConfigError with every problem found."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    problems: list[str] = []
    config = _build(raw, path, problems)
    if problems or config is None:
        raise ConfigError(path, problems)
    return config


def _build(raw: Mapping[str, Any], path: Path, problems: list[str]) -> Config | None:
    for key in sorted(set(raw) - TOP_KEYS):
        problems.append(f"{key}: unknown section (known: {', '.join(sorted(TOP_KEYS))})")
    proxy = _table(raw, "proxy", problems)
    _unknown(proxy, PROXY_KEYS, "proxy", problems)
    fqdn = _domain(proxy, "fqdn", "proxy", problems, required=True)
    federation_fqdn = _domain(proxy, "federation_fqdn", "proxy", problems) or fqdn
    listeners = _listeners(raw.get("listeners"), fqdn, federation_fqdn, problems)
    routes, route_problems = parse_routes(raw.get("routes"))
    problems.extend(route_problems)
    names = {listener.name for listener in listeners}
    for i, route in enumerate(routes):
        if route.listener is not None and route.listener not in names:
            problems.append(
                f"routes[{i}].listener: no listener is named {route.listener!r} "
                f"(listeners: {', '.join(sorted(names)) or 'none'})"
            )
    needs_tls = any(lst.transport == "tls" for lst in listeners) or any(r.transport == "tls" for r in routes)
    tls = _tls(raw.get("tls"), path.parent, needs_tls, problems)
    settings = _settings(proxy, problems)
    rewrites = _rewrites(raw.get("maddr_rewrite"), problems)
    warnings: list[str] = []
    metrics_listen = _metrics(raw.get("metrics"), problems)
    control = parse_control(raw.get("control"), path.parent, problems, warnings)
    hep = _hep(raw.get("hep"), problems)
    limits = _limits(raw.get("limits"), problems)
    settings.update(_dns(raw.get("dns"), problems))
    trust = parse_trust(raw, problems, warnings, {r.name for r in routes})
    listeners = _untrusted_policies(raw.get("listeners"), listeners, trust, problems, warnings)
    xmpp = parse_xmpp(raw.get("xmpp"), path.parent, problems)
    xmpp_routes: tuple[StaticRoute, ...] = ()
    if xmpp is not None:
        xmpp_routes, trust = _xmpp_federation(xmpp, tls, routes, trust, problems)
    if problems:
        return None
    return Config(
        path,
        fqdn,
        federation_fqdn,
        tuple(listeners),
        tls,
        tuple(routes),
        tuple(rewrites),
        **settings,
        limits=limits,
        metrics_listen=metrics_listen,
        control=control,
        hep=hep,
        trust=trust,
        xmpp=xmpp,
        xmpp_routes=xmpp_routes,
        warnings=tuple(warnings),
    )


def _xmpp_federation(
    xmpp: XmppConfig, tls: TlsConfig | None, routes: list[StaticRoute], trust: Trust, problems: list[str]
) -> tuple[tuple[StaticRoute, ...], Trust]:
    """[xmpp] against the rest: TLS material for partners that use TLS, partner domains no [[routes]] entry
    claims; the gateway's routes and its per-partner peers (bound to nothing on the network)."""
    uses_tls = any(p.tls != "not_supported" for p in xmpp.partners)
    if uses_tls and (xmpp.cert_chain is None or xmpp.key is None) and tls is None:
        problems.append(
            'xmpp: partners use TLS (tls is not "not_supported"): set [tls] cert_chain and key, or '
            "xmpp.cert_chain and xmpp.key"
        )
    for path_key in ("cert_chain", "key", "ca_bundle"):
        value = getattr(xmpp, path_key)
        if value is not None and not value.is_file():
            problems.append(f"xmpp.{path_key}: {value} is not a readable file")
    claimed = {r.match_uri.lower(): r.name for r in routes}
    gateway_routes = []
    for partner in xmpp.partners:
        for domain in partner.domains:
            if domain in claimed:
                problems.append(
                    f"xmpp.partners: {domain} is XMPP partner {partner.name}'s domain, and "
                    f"[[routes]] {claimed[domain]!r} also matches it; remove one"
                )
            gateway_routes.append(StaticRoute(f"xmpp:{partner.name}", domain, domain, 0, "xmpp", "", "xmpp"))
    peers = tuple(
        TrustedPeer(f"xmpp:{p.name}", (), (), p.domains, treat_as_authenticated=True, answers_digest=False)
        for p in xmpp.partners
    )
    return tuple(gateway_routes), replace(trust, peers=trust.peers + peers)


def _limits(raw: object, problems: list[str]) -> LimitsConfig:
    table = raw if isinstance(raw, Mapping) else {}
    if raw is not None and not isinstance(raw, Mapping):
        problems.append("limits: must be a table ([limits])")
    _unknown(table, set(LIMIT_BOUNDS), "limits", problems)
    defaults = LimitsConfig()
    given: dict[str, Any] = {}
    for item in dataclasses.fields(LimitsConfig):
        key, whole = item.name, item.type == "int"
        if key not in table:
            continue
        value, (low, high) = table[key], LIMIT_BOUNDS[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
            problems.append(f"limits.{key}: {value!r} must be a number from {low:g} to {high:g}")
        elif whole and value != int(value):
            problems.append(f"limits.{key}: {value!r} must be a whole number")
        else:
            given[key] = int(value) if whole else float(value)
    limits = dataclasses.replace(defaults, **given)
    if limits.max_connections_per_source > limits.max_connections:
        problems.append(
            f"limits.max_connections_per_source: {limits.max_connections_per_source} is above "
            f"limits.max_connections ({limits.max_connections}); lower it (0: no per-source cap)"
        )
    return limits


def _metrics(raw: object, problems: list[str]) -> tuple[str, int] | None:
    """``[metrics] listen = "127.0.0.1:9561"`` (default), or ``"off"``."""
    table = raw if isinstance(raw, Mapping) else {}
    if raw is not None and not isinstance(raw, Mapping):
        problems.append("metrics: must be a table ([metrics])")
    _unknown(table, {"listen"}, "metrics", problems)
    listen = table.get("listen", DEFAULT_METRICS_LISTEN)
    if listen == "off":
        return None
    host, _, port = str(listen).rpartition(":")
    if (
        not host
        or not (port.isascii() and port.isdigit() and len(port) <= 5)
        or not 0 <= int(port) < 65536
        or not is_host(host.strip("[]"))
    ):
        problems.append(f"metrics.listen: {listen!r} must be ADDRESS:PORT (port 0: any free port) or 'off'")
        return None
    return host.strip("[]"), int(port)


def _hep(raw: object, problems: list[str]) -> HepConfig | None:
    """``[hep] address = "HOST:PORT"``, ``capture_id``, optional ``password``; no section: off."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.append("hep: must be a table ([hep])")
        return None
    _unknown(raw, HEP_KEYS, "hep", problems)
    address = _string(raw, "address", "hep", problems, required=True)
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # [IPv6]:PORT
        host = host[1:-1] if ":" in host else ""
    elif ":" in host:
        host = ""  # an IPv6 address needs its brackets, or the port is ambiguous
    valid = (
        bool(host)
        and port.isascii()
        and port.isdigit()
        and len(port) <= 5
        and 0 < int(port) < 65536
        and is_host(host.lower())
    )
    if address and not valid:
        problems.append(
            f"hep.address: {address!r} must be HOST:PORT of the HEP receiver, e.g. '10.0.0.9:9060' "
            "or '[2001:db8::9]:9060' (UDP, port 1-65535)"
        )
    capture_id = raw.get("capture_id")
    if capture_id is None:
        problems.append("hep.capture_id: missing (required): the capture agent ID Homer shows for this sipfed")
    elif not isinstance(capture_id, int) or isinstance(capture_id, bool) or not 0 <= capture_id <= 0xFFFFFFFF:
        problems.append(f"hep.capture_id: {capture_id!r} must be a whole number 0-4294967295")
        capture_id = None
    password = raw.get("password")
    if password is not None and (not isinstance(password, str) or not password or len(password) > 1024):
        problems.append("hep.password: must be a non-empty string (the receiver's HEP authentication key)")
        password = None
    if not valid or capture_id is None:
        return None
    return HepConfig(host.lower(), int(port), capture_id, password)


def parse_control(raw: object, base: Path, problems: list[str], warnings: list[str]) -> ControlConfig | None:
    """``[control] socket = "/run/sipfed/ctl.sock"``, optional ``mode`` (default 0o600); no section: off.
    ``sipfed ctl --config`` reads the socket's path with it too."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.append("control: must be a table ([control])")
        return None
    _unknown(raw, CONTROL_KEYS, "control", problems)
    text = _string(raw, "socket", "control", problems, required=True)
    socket = base / text if text else Path()
    if text and len(os.fsencode(socket)) > UNIX_PATH_MAX:
        problems.append(
            f"control.socket: {str(socket)!r} is longer than a Unix socket path may be "
            f"({UNIX_PATH_MAX} bytes); choose a shorter one, e.g. '/run/sipfed/ctl.sock'"
        )
    mode = raw.get("mode", 0o600)
    if isinstance(mode, str):  # '0660' as chmod writes it; TOML's own 0o660 arrives as an int
        digits = mode.removeprefix("0o")
        mode = int(digits, 8) if digits and set(digits) <= set("01234567") else mode
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        shown = f"{mode:#o}" if isinstance(mode, int) and not isinstance(mode, bool) else repr(raw.get("mode"))
        problems.append(f"control.mode: {shown} must be permission bits 0o000-0o777, e.g. 0o600 or '0660'")
        return None
    if mode & 0o600 != 0o600:
        problems.append(
            f"control.mode: {mode:#o} must let the owner read and write (0o600 at least), or not "
            "even sipfed's own user can connect"
        )
    elif mode & 0o007:
        warnings.append(
            f"control.mode {mode:#o} lets every local user connect to the control socket: reload, "
            "trace the decrypted SIP; prefer 0o600, or 0o660 and a group"
        )
    return ControlConfig(socket, mode) if text else None


def _untrusted_policies(
    raw: object, listeners: list[ListenerConfig], trust: Trust, problems: list[str], warnings: list[str]
) -> list[ListenerConfig]:
    """Resolve each listener's ``untrusted`` policy and check it can be carried out."""
    default = "challenge" if trust.digest else "refuse" if trust.peers else "admit"
    entries = raw if isinstance(raw, list) else []
    out = []
    for i, listener in enumerate(listeners):
        entry = entries[i] if i < len(entries) and isinstance(entries[i], Mapping) else {}
        policy = str(entry.get("untrusted", default))
        if policy not in UNTRUSTED_POLICIES:
            problems.append(f"listeners[{i}].untrusted: {policy!r} must be one of {', '.join(UNTRUSTED_POLICIES)}")
        elif policy == "challenge" and trust.digest is None:
            problems.append(f"listeners[{i}].untrusted: 'challenge' needs an [auth] section with a realm and users")
        elif policy == "admit" and not trust.peers:
            warnings.append(
                f"listener {listener.name!r} admits every source (no [[peers]], no [auth]): any client "
                "with a certificate from tls.ca_bundle may relay"
            )
        out.append(replace(listener, untrusted=policy))
    return out


def _listeners(raw: object, fqdn: str, federation_fqdn: str, problems: list[str]) -> list[ListenerConfig]:
    if raw is None:
        # The field notes' topology: 5061 faces the Cisco side, 5062 (peer-auth) the Lync side.
        raw = [{"name": "cisco", "port": 5061}, {"name": "lync", "port": 5062}]
    if not isinstance(raw, list) or not raw:
        problems.append("listeners: must be a non-empty list of tables ([[listeners]])")
        return []
    out: list[ListenerConfig] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        where = f"listeners[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: must be a table")
            continue
        _unknown(entry, LISTENER_KEYS, where, problems)
        name = _string(entry, "name", where, problems, default=f"listener{i}")
        if name in seen:
            problems.append(f"{where}.name: {name!r} is already used by listeners[{seen[name]}]")
        seen[name] = i
        transport = _string(entry, "transport", where, problems, default="tls").lower()
        if transport not in TRANSPORTS:
            problems.append(f"{where}.transport: {transport!r} must be one of {', '.join(TRANSPORTS)}")
        address = _string(entry, "address", where, problems, default="0.0.0.0")
        if not is_host(address) or (DOMAIN_RE.fullmatch(address) and not address[0].isdigit()):
            problems.append(f"{where}.address: {address!r} must be an IP address to bind")
        port = _port(entry, "port", where, problems, default=5061)
        require = entry.get("require_client_cert", True)
        if not isinstance(require, bool):
            problems.append(f"{where}.require_client_cert: must be true or false")
        own_fqdn = _domain(entry, "fqdn", where, problems)
        # A listener that names itself shows that name in maddr too, unless told otherwise.
        own_federation = _domain(entry, "federation_fqdn", where, problems) or own_fqdn or federation_fqdn
        out.append(ListenerConfig(name, transport, address, port, own_fqdn or fqdn, own_federation, bool(require)))
    _clashing_ports(out, problems)
    return out


def _clashing_ports(listeners: list[ListenerConfig], problems: list[str]) -> None:
    taken: dict[tuple[str, str, int], str] = {}
    for listener in listeners:
        kind = "udp" if listener.transport == "udp" else "stream"
        key = (kind, listener.address, listener.port)
        if listener.port and key in taken:
            problems.append(
                f"listeners: {listener.name!r} and {taken[key]!r} both bind {listener.address}:{listener.port}"
            )
        taken[key] = listener.name


def _tls(raw: object, base: Path, needed: bool, problems: list[str]) -> TlsConfig | None:
    if raw is None:
        if needed:
            problems.append(
                "tls: missing; a TLS listener or route needs cert_chain, key and ca_bundle "
                "(make lab certificates with 'sipfed certs')"
            )
        return None
    if not isinstance(raw, Mapping):
        problems.append("tls: must be a table")
        return None
    _unknown(raw, TLS_KEYS, "tls", problems)
    files = {}
    for key in ("cert_chain", "key", "ca_bundle"):
        text = _string(raw, key, "tls", problems, required=True)
        file = (base / text).resolve() if text else Path()
        if text and not file.is_file():
            problems.append(f"tls.{key}: {text!r} is not a readable file (looked at {file})")
        files[key] = file
    min_version = str(raw.get("min_version", "1.2"))
    if min_version not in ("1.2", "1.3"):
        problems.append(f"tls.min_version: {min_version!r} must be '1.2' or '1.3'")
    ciphers = raw.get("ciphers")
    if ciphers is not None and not isinstance(ciphers, str):
        problems.append("tls.ciphers: must be an OpenSSL cipher string")
    return TlsConfig(files["cert_chain"], files["key"], files["ca_bundle"], min_version, ciphers)


def _settings(proxy: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, default in (
        ("transaction_timeout_seconds", 16.0),
        ("invite_timeout_seconds", 180.0),
        ("connect_timeout_seconds", 5.0),
    ):
        value = proxy.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            problems.append(f"proxy.{key}: {value!r} must be a positive number of seconds")
        out[key] = float(value) if isinstance(value, int | float) else default
    size = proxy.get("max_message_bytes", 65535)
    if not isinstance(size, int) or isinstance(size, bool) or not 1024 <= size <= 1048576:
        problems.append(f"proxy.max_message_bytes: {size!r} must be 1024-1048576")
    out["max_message_bytes"] = size if isinstance(size, int) else 65535
    tags = proxy.get("tolerated_option_tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        problems.append("proxy.tolerated_option_tags: must be a list of option tags, e.g. ['ms-benotify']")
        tags = []
    out["tolerated_option_tags"] = frozenset(t.lower() for t in tags)
    out["in_dialog_networks"] = _networks(proxy.get("in_dialog_networks", []), "proxy.in_dialog_networks", problems)
    for key, default, low, high in (
        ("keepalive_seconds", 90.0, 1.0, 3600.0),
        ("keepalive_timeout_seconds", 10.0, 0.5, 60.0),
    ):
        value = proxy.get(key, default)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not (low <= value <= high or (key == "keepalive_seconds" and value == 0))
        ):
            off = " (0: off)" if key == "keepalive_seconds" else ""
            problems.append(f"proxy.{key}: {value!r} must be a number of seconds from {low:g} to {high:g}{off}")
            value = default
        out[key] = float(value)
    level = str(proxy.get("log_level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        problems.append(f"proxy.log_level: {level!r} must be debug, info, warning or error")
    out["log_level"] = level
    return out


def _dns(raw: object, problems: list[str]) -> dict[str, Any]:
    """``[dns]``: which name servers RFC 3263 lookups ask (default: the system's), on which port."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append("dns: must be a table ([dns])")
        return {}
    _unknown(raw, DNS_KEYS, "dns", problems)
    out: dict[str, Any] = {}
    servers = raw.get("nameservers")
    if servers is not None:
        if not isinstance(servers, list) or not servers or not all(isinstance(s, str) for s in servers):
            problems.append("dns.nameservers: must be a non-empty list of IP addresses, e.g. ['127.0.0.53']")
        else:
            bad = [s for s in servers if not _is_ip(s)]
            if bad:
                problems.append(f"dns.nameservers: {', '.join(map(repr, bad))} is not an IP address")
            out["dns_nameservers"] = tuple(servers)
    port = raw.get("port", 53)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        problems.append(f"dns.port: {port!r} must be a whole number 1-65535")
    else:
        out["dns_port"] = port
    timeout = raw.get("timeout_seconds", 2.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0.1 <= timeout <= 30:
        problems.append(f"dns.timeout_seconds: {timeout!r} must be a number of seconds from 0.1 to 30")
    else:
        out["dns_timeout_seconds"] = float(timeout)
    return out


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _rewrites(raw: object, problems: list[str]) -> list[MaddrRewrite]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append("maddr_rewrite: must be a list of tables ([[maddr_rewrite]])")
        return []
    out = []
    for i, entry in enumerate(raw):
        where = f"maddr_rewrite[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: must be a table with 'internal' and 'external'")
            continue
        _unknown(entry, {"internal", "external"}, where, problems)
        internal = _string(entry, "internal", where, problems, required=True)
        external = _string(entry, "external", where, problems, required=True)
        for key, value in (("internal", internal), ("external", external)):
            if value and not is_host(value.lower()):
                problems.append(f"{where}.{key}: {value!r} is not an IP address or FQDN")
        out.append(MaddrRewrite(internal.lower(), external.lower()))
    return out


def _table(raw: Mapping[str, Any], key: str, problems: list[str]) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        problems.append(f"{key}: must be a table ([{key}])")
        return {}
    return value


def _unknown(entry: Mapping[str, Any], known: set[str], where: str, problems: list[str]) -> None:
    for key in sorted(set(entry) - known):
        problems.append(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")


def _string(
    entry: Mapping[str, Any], key: str, where: str, problems: list[str], *, required: bool = False, default: str = ""
) -> str:
    value = entry.get(key)
    if value is None:
        if required:
            problems.append(f"{where}.{key}: missing (required)")
        return default
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}.{key}: must be a non-empty string, got {value!r}")
        return default
    return value.strip()


def _domain(entry: Mapping[str, Any], key: str, where: str, problems: list[str], *, required: bool = False) -> str:
    value = _string(entry, key, where, problems, required=required).lower()
    if value and not is_host(value):
        problems.append(f"{where}.{key}: {value!r} is not a valid FQDN")
    return value


def _port(entry: Mapping[str, Any], key: str, where: str, problems: list[str], *, default: int) -> int:
    value = entry.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 65536:
        problems.append(f"{where}.{key}: {value!r} must be a whole number 0-65535 (0: any free port)")
        return default
    return value


def _networks(
    raw: object, where: str, problems: list[str]
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A list of networks in CIDR notation (``["10.1.0.0/16", "192.0.2.7"]``)."""
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        problems.append(f"{where}: must be a list of networks, e.g. ['10.1.0.0/16']")
        return ()
    networks = []
    for i, value in enumerate(raw):
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            problems.append(f"{where}[{i}]: {value!r} is not an address or a network (CIDR)")
    return tuple(networks)
