"""The typed settings a config file becomes: ``Config``, and a frozen dataclass per section, each field
documented with its unit and default.

Apart from the parsers (``proxy.config.sections``) so that what sipfed runs on reads in one place, and a
module that only takes a ``Config`` imports no parsing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from acl.peers import Trust
from proxy.xmpp.policy import XmppConfig
from routes import StaticRoute

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
    # Inbound TCP/TLS connections (issue 14, "Bounded connections"); proxy.net.gate.ConnectionGate.
    "max_connections": (1, 1_000_000),
    "max_connections_per_source": (0, 1_000_000),
    "handshakes_per_source_per_second": (0.0, 1_000_000.0),
    "unauthenticated_idle_seconds": (1.0, 86400.0),
}


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
    revocation: str = "soft-fail"
    """Revocation checking of peers' certificates by CRL (proxy/relay/revocation.py): ``off``, ``soft-fail``
    (refuse a revoked certificate, admit one whose status is unknown with a warning) or ``hard-fail`` (refuse
    both)."""
    crl_files: tuple[Path, ...] = ()
    """Local CRL files (DER or PEM), used besides the CRLs fetched from the certificates' distribution points."""
    crl_timeout_seconds: float = 2.0
    """How long fetching one CRL may take (name lookup, connect and download)."""


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
class OwnSide:
    """What the running proxy knows of its own certificate (proxy/config/own.py rule 3)."""

    subject: str = ""
    """Our certificate's CN (or DN), for log lines."""
    missing_intermediate: str = ""
    """The issuer the chain file should carry and does not ('' when the chain is complete)."""
    client_auth: bool = True
    """Usable as a TLS client certificate (no EKU restriction, or clientAuth present)."""
    not_after: datetime | None = None
    """When it expires."""


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
    workers: int = 1
    """``[proxy] workers``: processes sharing the listeners (SO_REUSEPORT, proxy/supervisor.py); 1: one process,
    no supervisor."""
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
    own: OwnSide = field(default_factory=lambda: OwnSide())
    """What sipfed knows of its own certificate (``proxy.config.own`` rule 3): failures explain themselves with
    it; empty when there is no [tls]."""
    warnings: tuple[str, ...] = ()
    """Things that work but an admin should know (plaintext passwords, open admission)."""
