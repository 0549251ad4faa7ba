"""What flows between the sans-IO proxy core and the asyncio edge: flows in, sends out."""

from __future__ import annotations

from dataclasses import dataclass, field

from acl.subjects import CertIdentity


@dataclass(frozen=True, slots=True)
class Flow:
    """Where a message came from: a connection (TLS/TCP) or a UDP socket and a remote address."""

    transport: str
    """``tls``, ``tcp`` or ``udp``."""
    listener: str
    """Name of the listener this flow belongs to (for outbound connections: the route's listener)."""
    remote: tuple[str, int]
    """The peer's IP address and port."""
    conn_id: int
    """The edge's connection id (UDP: 0)."""
    identity: CertIdentity = field(default_factory=CertIdentity)
    """The peer's verified TLS certificate, parsed; empty for TCP/UDP."""
    peer: str | None = None
    """The trusted peer this flow is bound to (by certificate subject and network), or None."""

    @property
    def peer_names(self) -> tuple[str, ...]:
        """The certificate's names (DNS SANs, else CN; IP SANs)."""
        return self.identity.names


@dataclass(frozen=True, slots=True)
class Identity:
    """How sipfed names itself on one listener's side."""

    listener: str
    """The listener's name."""
    transport: str
    """The listener's transport."""
    address: str
    """The bound IP address."""
    port: int
    """The bound port (the real one when the config said 0)."""
    fqdn: str
    """Name in Via and Record-Route."""
    federation_fqdn: str
    """Name in Record-Route maddr."""
    untrusted: str = "admit"
    """What requests from sources neither trusted nor exempt get: admit, challenge or refuse."""
    via_port: int = 0
    """UDP in worker mode: the worker's own socket's port, written in the Via of the requests it sends so that
    their answers come back to it and not to whichever worker the shared port would hand them (0: ``port``)."""


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a request goes next (RFC 3261 §16.6 step 7)."""

    transport: str
    """``tls``, ``tcp`` or ``udp``."""
    host: str
    """Name or IP address to connect to."""
    port: int
    """Port to connect to."""
    tls_name: str | None
    """The name the next hop's certificate must carry (TLS only)."""
    listener: str
    """The listener whose identity faces this hop."""
    route: str | None = None
    """The static route that chose this hop, for logs; None when a Route header or dialog did."""
    failover: bool = False
    """Chosen by a pool or DNS route for an out-of-dialog request: any of the route's candidates may take
    it (RFC 3263 §4.3). False for a hop a Route header or dialog names: that exact host, no other."""
    probe: bool = False
    """sipfed's own health check: failures are the check's result, not warnings of their own."""

    def __init__(
        self,
        transport: str,
        host: str,
        port: int,
        tls_name: str | None,
        listener: str,
        route: str | None = None,
        failover: bool = False,
        probe: bool = False,
    ) -> None:
        # Written out, not generated: mypyc compiles this one, and runs a generated __init__ as Python (the
        # SUBSCRIBE profile of issue 19: 1.7% of the process in NextHop's generated __init__ alone).
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "tls_name", tls_name)
        object.__setattr__(self, "listener", listener)
        object.__setattr__(self, "route", route)
        object.__setattr__(self, "failover", failover)
        object.__setattr__(self, "probe", probe)

    def __str__(self) -> str:
        return f"{self.host}:{self.port};transport={self.transport}"


@dataclass(slots=True)  # not frozen: one or two per message, and frozen instances cost 3x to make
class SendOnFlow:
    """Send bytes back on a flow (a response on the connection its request came in on)."""

    flow: Flow
    """The flow to send on."""
    data: bytes
    """The serialised message."""
    via: str = ""
    """The request's top Via as received (with ``received``): where a response goes on a new connection if the
    flow's has closed (RFC 3261 §18.2.2); '' for none."""

    def __init__(self, flow: Flow, data: bytes, via: str = "") -> None:
        # Written out, not generated: mypyc compiles this one, and runs a generated __init__ as Python (4x slower).
        self.flow = flow
        self.data = data
        self.via = via


@dataclass(slots=True)  # not frozen: one or two per message, and frozen instances cost 3x to make
class SendToHop:
    """Send a request toward a next hop, reusing an open connection or opening one."""

    hop: NextHop
    """Where to."""
    data: bytes
    """The serialised request."""
    token: int
    """Reported back with ``Proxy.hop_failed`` if the hop cannot be reached (0: nobody to tell)."""

    def __init__(self, hop: NextHop, data: bytes, token: int) -> None:
        # Written out, not generated: mypyc compiles this one, and runs a generated __init__ as Python (4x slower).
        self.hop = hop
        self.data = data
        self.token = token


@dataclass(frozen=True, slots=True)
class RegisterAlias:
    """RFC 5923: requests toward ``host:port`` over ``transport`` may reuse ``flow``."""

    flow: Flow
    """The connection to reuse."""
    host: str
    """The Via sent-by host the peer offered."""
    port: int
    """The Via sent-by port."""

    def __init__(self, flow: Flow, host: str, port: int) -> None:
        # Written out for mypyc (see NextHop): one per request that offers an alias.
        object.__setattr__(self, "flow", flow)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)


@dataclass(frozen=True, slots=True)
class HopUnavailable:
    """A candidate of a pool or DNS route answered 503 (RFC 3263 §4.3): the edge marks the candidate
    behind ``flow`` down, and the request is being retried on the next one."""

    flow: Flow
    """The flow the 503 came in on (it tells the edge which candidate answered)."""
    route: str
    """The route's name."""
    retry_after: int | None
    """The 503's Retry-After in seconds, if it gave one (else the route's ``down_seconds`` apply)."""
    reason: str
    """The 503's reason phrase, for the log."""


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    """The outcome of a request sipfed sent on its own (a health-check OPTIONS): the final status the
    destination answered, or 0 when no answer came (nothing in time, or the hop could not be reached)."""

    token: int
    """What ``Proxy.probe`` returned."""
    status: int
    """The final status, or 0 for no answer at all."""
    reason: str
    """Its reason phrase, or why the check failed."""


Output = SendOnFlow | SendToHop | RegisterAlias | HopUnavailable | ProbeAnswer
