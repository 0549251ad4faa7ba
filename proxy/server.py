"""Wires a Config to listeners, the proxy core and the driver, and runs until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import cast

from OpenSSL import SSL
from prometheus_client import CollectorRegistry

from proxy import build_kind
from proxy.config import Config, ConfigError, ListenerConfig, TlsConfig, load_config
from proxy.config.topology import topology
from proxy.metrics import Metrics, XmppMetrics
from proxy.net.cert_expiry import report_ours
from proxy.net.connection import DatagramEndpoint, connection_cap
from proxy.net.control import ControlError, ControlServer, Reloaded, open_control
from proxy.net.crl_fetch import RevocationChecker
from proxy.net.driver import Driver
from proxy.net.hep_export import HepExport
from proxy.net.notify import notify, reloading
from proxy.net.status import Readiness, StatusServer, readiness
from proxy.net.tls import client_context, server_context
from proxy.net.trace import Trace
from proxy.net.xmpp import XmppEdge
from proxy.net.xmpp_store import open_store
from proxy.net.xmpp_tls import tls_context as xmpp_tls_context
from proxy.relay.core import Proxy, RelaySettings
from proxy.relay.forwarding import RelayPolicy
from proxy.relay.limits import Limits
from proxy.relay.revocation import Mode
from proxy.relay.types import Identity
from proxy.workers import BACKLOG, OUT_SUFFIX, WorkerSlot, ready_message
from proxy.x509 import load_certificates
from proxy.xmpp.policy import XmppConfig
from routes import RouteTable
from routes.resolver import DnspythonSource, Resolver

log = logging.getLogger("sipfed")


class StartupError(Exception):
    """sipfed cannot start (a port in use, ...): one line for the admin, exit status 2."""


class Server:
    """The running proxy: listeners bound once; routes, trust, TLS material re-read on reload."""

    def __init__(self, config: Config, trace: Path | None = None, slot: WorkerSlot | None = None) -> None:
        self.config = config
        self.slot = slot
        """Worker mode: this process's slot (its inherited sockets); None when it runs alone."""
        self.via_ports: dict[str, int] = {}
        """Worker mode: each UDP listener's own socket's port, for the Via of the requests this worker sends."""
        self.loop = asyncio.get_running_loop()
        self.metrics = Metrics(CollectorRegistry())
        self.driver = Driver(
            Proxy(RelayPolicy.build([], RouteTable(()), {}, frozenset())),
            self.loop,
            client_ssl=None,
            connect_timeout=config.connect_timeout_seconds,
            max_message_bytes=config.max_message_bytes,
            trust=config.trust,
            observer=self.metrics,
        )
        self.driver.trace = Trace(trace) if trace is not None else None
        self.servers: list[asyncio.Server] = []
        self._dns_settings: tuple[object, ...] = ()
        self.metrics.watch_destinations(self.driver.liveness.states_threadsafe)
        self.ports: dict[str, int] = {}
        self.started_at = time.time()
        self.config_loaded_at = self.started_at
        """Wall-clock time the running config was read (``sipfed ctl status``)."""
        self.control: ControlServer | None = None
        """``[control]``: the socket ``sipfed ctl`` talks to (proxy/net/control.py)."""
        self.open_files = raise_open_files()
        """The soft RLIMIT_NOFILE in force (None: unlimited): inbound connections leave room below it."""
        self._cap_warned: tuple[int, int] | None = None
        self.listening = False
        """Every listener is bound (``/ready``)."""
        self.status: StatusServer | None = None
        """``/metrics``, ``/healthz``, ``/ready`` (proxy/net/status.py), when ``[metrics] listen`` is on."""
        self.xmpp: XmppEdge | None = None
        """``[xmpp]``: the S2S listener, outbound streams and the SIP<->XMPP gateway (proxy/net/xmpp.py)."""
        self.xmpp_metrics = XmppMetrics(self.metrics.registry)

    async def bind(self) -> str:
        """Bind every listener; return the readiness line."""
        for listener in self.config.listeners:
            try:
                await self._bind_listener(listener)
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {listener.address}:{listener.port} ({listener.transport}) "
                    f"for listener {listener.name!r}: {exc.strerror or exc}"
                ) from None
        xmpp = self.config.xmpp
        if xmpp is not None:
            self.xmpp = XmppEdge(self.loop, self.driver, self.xmpp_metrics)
            try:
                self.ports["xmpp"] = await self.xmpp.bind(xmpp)
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {xmpp.listen[0]}:{xmpp.listen[1]} for XMPP ([xmpp] listen): "
                    f"{exc.strerror or exc}"
                ) from None
        self.apply(self.config)
        if self.xmpp is not None and xmpp is not None:
            self.xmpp.start_gateway(open_store(xmpp, self.config.path))
        self.listening = True
        line = " ".join(
            f"{lst.name}={lst.transport}:{lst.address}:{self.ports[lst.name]}" for lst in self.config.listeners
        )
        if xmpp is not None:
            line += f" xmpp=xmpp:{xmpp.listen[0]}:{self.ports['xmpp']}"
        if self.config.metrics_listen is not None:
            host, port = self.config.metrics_listen
            if self.slot is not None:  # worker mode: the supervisor serves [metrics] listen and asks us here
                host, port = "127.0.0.1", 0
            try:
                self.status = StatusServer(host, port, self.metrics.registry, self.loop, self.readiness)
            except OSError as exc:
                raise StartupError(
                    f"cannot serve metrics on {host}:{port} ([metrics] listen): {exc.strerror or exc}"
                ) from None
            line += f" metrics=http:{host}:{self.status.port}"
        if self.config.control is not None:  # last: only a proxy that is up answers ``sipfed ctl``
            control = self.config.control
            if self.slot is not None:  # worker mode: ours beside the supervisor's, which asks every worker's
                control = replace(control, socket=Path(self.slot.suffixed(str(control.socket))))
            try:
                self.control = await open_control(self, control)
            except ControlError as exc:
                raise StartupError(str(exc)) from None
        return f"sipfed ready {line}"

    def readiness(self) -> Readiness:
        """``/ready``, on the event loop (the status server's thread asks through ``on_loop``)."""
        return readiness(
            self.listening, bool(self.driver.proxy.draining), self.driver.routes, self.driver.liveness.states()
        )

    def summary(self) -> str:
        """systemd's STATUS= line."""
        return f"relaying: {len(self.config.listeners)} listener(s), {len(self.config.routes)} route(s)"

    async def _bind_listener(self, listener: ListenerConfig) -> None:
        inherited = self.slot.sockets if self.slot is not None else {}
        if listener.transport == "udp":
            endpoint = DatagramEndpoint(self.driver, listener.name)
            if listener.name in inherited:  # worker mode: the supervisor's SO_REUSEPORT copy, and our own socket
                transport, _ = await self.loop.create_datagram_endpoint(
                    functools.partial(_same, endpoint), sock=socket.socket(fileno=inherited[listener.name])
                )
                own = DatagramEndpoint(self.driver, listener.name)
                out, _ = await self.loop.create_datagram_endpoint(
                    functools.partial(_same, own), sock=socket.socket(fileno=inherited[listener.name + OUT_SUFFIX])
                )
                self.driver.udp_out[listener.name] = own
                self.via_ports[listener.name] = out.get_extra_info("sockname")[1]
            else:
                transport, _ = await self.loop.create_datagram_endpoint(
                    functools.partial(_same, endpoint), local_addr=(listener.address, listener.port)
                )
            self.driver.udp[listener.name] = endpoint
            self.ports[listener.name] = transport.get_extra_info("sockname")[1]
        else:
            # TLS runs inside StreamConnection (MemoryBIO) so refused clients get their alert.
            factory = self.driver.stream_factory(listener.transport, listener.name)
            if listener.name in inherited:
                server = await self.loop.create_server(
                    factory, sock=socket.socket(fileno=inherited[listener.name]), backlog=BACKLOG
                )
            else:
                server = await self.loop.create_server(factory, listener.address, listener.port, reuse_address=True)
            self.servers.append(server)
            self.ports[listener.name] = server.sockets[0].getsockname()[1]

    def apply(self, config: Config) -> None:
        """Put a (new) config's routes, trust, timers and certificates into effect."""
        identities = [
            Identity(
                lst.name,
                lst.transport,
                lst.address,
                self.ports[lst.name],
                lst.fqdn,
                lst.federation_fqdn,
                lst.untrusted,
                self.via_ports.get(lst.name, 0),
            )
            for lst in config.listeners
        ]
        if config.xmpp is not None and "xmpp" in self.ports:  # the gateway's side: its own Via and Record-Route
            host, _ = config.xmpp.listen
            identities.append(
                Identity("xmpp", "xmpp", host, self.ports["xmpp"], config.fqdn, config.federation_fqdn, "refuse")
            )
        rewrites = {r.internal: r.external for r in config.maddr_rewrites}
        # In-dialog targets outside the routes: the opt-in networks, and those of peers bound by network alone
        # (a TCP/UDP peer's network is that peer: its Contacts are in it).
        dialog_networks = config.in_dialog_networks + tuple(
            network for peer in config.trust.peers if not peer.subjects for network in peer.networks
        )
        policy = RelayPolicy.build(
            identities,
            RouteTable(config.routes + config.xmpp_routes),
            rewrites,
            config.tolerated_option_tags,
            dialog_networks,
        )
        lim = config.limits
        settings = RelaySettings(
            config.transaction_timeout_seconds,
            config.invite_timeout_seconds,
            Limits(
                lim.max_in_flight_transactions,
                lim.per_source_requests_per_second,
                lim.per_peer_requests_per_second,
                lim.burst_seconds,
                lim.retry_after_seconds,
            ),
            lim.max_headers,
            lim.max_header_line_bytes,
        )
        proxy = self.driver.proxy
        if not proxy.policy.identities:  # first time: a fresh core
            self.driver.proxy = Proxy(policy, settings, config.trust, self.metrics)
        else:  # reload: in-flight transactions keep running on the same core
            proxy.policy, proxy.trust = policy, config.trust
            proxy.configure(settings)
        self.driver.trust = config.trust
        self.driver.own = config.own
        self.driver.topology = topology(config)
        self.driver.client_cert_required = {lst.name: lst.require_client_cert for lst in config.listeners}
        self.driver.routes = {route.name: route for route in config.routes}
        dns_settings = (config.dns_nameservers, config.dns_port, config.dns_timeout_seconds)
        if any(route.resolve for route in config.routes) and (
            self.driver.resolver is None or dns_settings != self._dns_settings
        ):
            self.driver.resolver = Resolver(
                DnspythonSource(
                    config.dns_nameservers,
                    config.dns_port,
                    timeout_seconds=min(2.0, config.dns_timeout_seconds),
                    lifetime_seconds=config.dns_timeout_seconds,
                )
            )
            self._dns_settings = dns_settings
        self.driver.liveness.configure(list(config.routes), config.keepalive_seconds, config.keepalive_timeout_seconds)
        self.driver.connect_timeout = config.connect_timeout_seconds
        self.driver.handshake_timeout = config.limits.tls_handshake_timeout_seconds
        self.driver.incomplete_timeout = config.limits.incomplete_message_timeout_seconds
        self._configure_gate(config)
        self._configure_hep(config)
        if config.tls is not None:
            self.driver.revocation = revocation_checker(self.driver.revocation, config.tls)
            self.driver.client_ssl = client_context(config.tls)
            self.driver.server_contexts = {
                lst.name: server_context(config.tls, lst) for lst in config.listeners if lst.transport == "tls"
            }
        if self.xmpp is not None and config.xmpp is not None:
            self._configure_xmpp(config, config.xmpp)
        for warning in config.warnings:
            log.warning("config: %s", warning)
        report_ours(self.metrics, config, self.config)
        self.config = config

    def _configure_xmpp(self, config: Config, xmpp: XmppConfig) -> None:
        """[xmpp]'s partners, TLS contexts (its own certificate, else [tls]'s) and DNS (the [dns] servers)."""
        assert self.xmpp is not None
        chain = xmpp.cert_chain or (config.tls.cert_chain if config.tls else None)
        key = xmpp.key or (config.tls.key if config.tls else None)
        ca = xmpp.ca_bundle or (config.tls.ca_bundle if config.tls else None)
        contexts = {}
        if chain is not None and key is not None:
            contexts = {server: xmpp_tls_context(chain, key, ca, server) for server in (True, False)}
        dns = DnspythonSource(
            config.dns_nameservers,
            config.dns_port,
            timeout_seconds=min(2.0, config.dns_timeout_seconds),
            lifetime_seconds=config.dns_timeout_seconds,
        )
        self.xmpp.configure(
            xmpp, contexts, dns, xmpp.listen[0] if xmpp.listen[0] not in ("0.0.0.0", "::") else "127.0.0.1"
        )

    def _configure_hep(self, config: Config) -> None:
        """[hep] on, off or to a new receiver; an unchanged section keeps its socket and queue."""
        hep, current = config.hep, self.driver.hep
        password = hep.password.encode() if hep is not None and hep.password else b""
        wanted = (hep.host, hep.port, hep.capture_id, password) if hep is not None else None
        if current is not None and wanted == (current.host, current.port, current.capture_id, current.password):
            return
        if current is not None:
            current.close()
            self.driver.hep = None
            log.info("hep: stopped copying to %s:%d", current.host, current.port)
        if hep is not None:
            self.driver.hep = HepExport(
                self.loop,
                hep.host,
                hep.port,
                hep.capture_id,
                password,
                count_sent=self.metrics.hep_sent,
                count_dropped=self.metrics.hep_dropped,
            )
            self.driver.hep.start()

    def _configure_gate(self, config: Config) -> None:
        """[limits]' connection rules into the Driver's gate, the cap kept below the open-files limit."""
        lim = config.limits
        wanted = lim.max_connections
        cap = connection_cap(wanted, self.open_files)
        if cap < wanted and self._cap_warned != (wanted, cap):
            log.warning(
                "limits.max_connections %d lowered to %d: the open-files limit (RLIMIT_NOFILE) is %s and "
                "inbound connections leave the rest to outbound ones; raise it (ulimit -n, systemd "
                "LimitNOFILE=) for more",
                wanted,
                cap,
                self.open_files,
            )
            self._cap_warned = (wanted, cap)
        self.driver.gate.configure(
            cap,
            lim.max_connections_per_source,
            lim.handshakes_per_source_per_second,
            lim.burst_seconds,
            lim.unauthenticated_idle_seconds,
        )

    def reload(self) -> Reloaded:
        """SIGHUP and ``sipfed ctl reload``: re-read the file; a bad one is refused and the running config
        stays. After a good one, every open connection is bound again against the new [[peers]]
        (StreamConnection.rebind). Returns the problems, or what changed."""
        old = self.config
        try:
            config = load_config(self.config.path)
            if _listener_layout(config) != _listener_layout(self.config):
                raise ConfigError(config.path, ["listeners: adding, removing or moving a listener needs a restart"])
            if config.workers != self.config.workers:
                log.warning(
                    "proxy.workers: %d -> %d takes effect at the next restart (processes are not added or "
                    "stopped by a reload)",
                    self.config.workers,
                    config.workers,
                )
            self.apply(config)
        except (ConfigError, OSError, ssl.SSLError, SSL.Error) as exc:
            log.error("reload refused, the running config stays: %s", exc)
            self.metrics.config_reloads.labels("refused").inc()
            return Reloaded.refused(
                old.path,
                exc.problems
                if isinstance(exc, ConfigError)
                else [f"tls: cannot load the certificate, key or CA bundle: {exc}"],
            )
        self.config_loaded_at = time.time()
        outcomes = [conn.rebind(config.trust) for conn in list(self.driver.connections.values())]
        log.info(
            "reloaded %s: %d route(s), %d peer(s); open connections: %d re-bound, %d closed (no longer bound "
            "to their peer)",
            config.path,
            len(config.routes),
            len(config.trust.peers),
            outcomes.count("rebound"),
            outcomes.count("closed"),
        )
        self.metrics.config_reloads.labels("applied").inc()
        return Reloaded.applied(old, config, outcomes)

    async def drain(self, limit: float) -> None:
        """SIGTERM (issue 14, "Drain loses nothing"): stop accepting connections; new out-of-dialog requests
        on open ones get 503 with Retry-After, and from half of ``limit`` on every new request (ACK and
        CANCEL pass); transactions in flight may finish until ``limit``, then the rest are answered 503, those
        answers are written, and the connections closed. Logs how many were left unanswered: 0."""
        if self.control is not None:
            self.control.close()
            self.control = None
        for server in self.servers:
            server.close()
        proxy, loop = self.driver.proxy, self.loop
        proxy.start_drain()
        started = loop.time()
        halfway, deadline = started + limit / 2, started + limit
        dialogs_too = False
        for _ in range(int(limit / 0.05) + 2):  # bounded in count and time; the condition: nothing pending
            now = loop.time()
            if not proxy.pending() or now >= deadline:
                break
            if not dialogs_too and now >= halfway:
                proxy.start_drain(dialogs_too=True)
                dialogs_too = True
            await asyncio.sleep(min(0.05, deadline - now))
        answered = proxy.answer_pending(loop.time())
        self.driver.pump()  # the 503s into the connections' queues ...
        self.driver.flush()  # ... and written
        left = proxy.pending()
        if self.xmpp is not None:
            await self.xmpp.close()
        await self.driver.close()
        for _ in range(20):  # bounded: let the closing connections write what they hold (1 s at most)
            if not self.driver.connections:
                break
            await asyncio.sleep(0.05)
        (log.warning if left else log.info)(
            "stopped: %d transaction(s) answered by the drain, %d unanswered (drained %.1f s of %g s)",
            answered,
            left,
            loop.time() - started,
            limit,
        )


def raise_open_files() -> int | None:
    """Raise the soft open-files limit (RLIMIT_NOFILE) to the hard one, as servers do: a connection is a file
    descriptor. Returns the soft limit now in force; None when it is unlimited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # e.g. an unlimited hard limit the kernel will not grant as a soft one
            log.debug("could not raise the open-files limit from %d to %d", soft, hard)
    return None if soft == resource.RLIM_INFINITY else soft


def _listener_layout(config: Config) -> list[tuple[str, str, str, int]]:
    return [(lst.name, lst.transport, lst.address, lst.port) for lst in config.listeners]


async def serve(
    config: Config, ready: asyncio.Event | None = None, trace: Path | None = None, slot: WorkerSlot | None = None
) -> int:
    """Bind every listener, print the readiness line, relay until SIGTERM/SIGINT; SIGHUP reloads. A worker
    (``slot``) tells its supervisor instead of printing, and stops when the supervisor is gone."""
    if slot is not None and trace is not None:
        trace = Path(slot.suffixed(str(trace)))
    server = Server(config, trace, slot)
    line = await server.bind()
    if slot is None:
        print(line, flush=True)
    else:
        with os.fdopen(slot.ready_fd, "wb") as pipe:
            pipe.write(ready_message(os.getpid(), line, server.status.port if server.status else None))
    # Everything loaded so far lives for the whole run: keep it out of the collector's way. A relayed
    # transaction leaves no garbage cycles (tests/unit/test_relay.py), so what a collector pass scans is
    # only what survived since the last one; a pass costs ~1 µs per object, so passes are kept small
    # (5,000: a few ms) rather than rare and long (50,000: ~60 ms stalls, UDP drops behind them).
    gc.collect()
    gc.freeze()
    gc.set_threshold(5_000, 10, 10)
    server.metrics.watch_gc()
    log.info(
        "%d listener(s), %d route(s) from %s; SIP core: %s",
        len(config.listeners),
        len(config.routes),
        config.path,
        "compiled (mypyc)" if build_kind() == "mypyc" else "pure Python",
    )
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, functools.partial(_reload, server))
    # Type=notify: every listener is bound, and a SIGHUP from now on reloads rather than kills.
    notify("READY=1", f"STATUS={server.summary()}")
    watch = loop.create_task(_watch_supervisor(slot, stop)) if slot is not None else None
    await stop.wait()
    if watch is not None:
        watch.cancel()
    log.info("stopping: draining transactions in flight")
    notify("STOPPING=1", "STATUS=draining transactions in flight")
    await server.drain(server.config.transaction_timeout_seconds + 1)
    if server.status is not None:
        await loop.run_in_executor(None, server.status.close)
    return 0


async def _watch_supervisor(slot: WorkerSlot, stop: asyncio.Event) -> None:
    """A worker whose supervisor is gone (killed outright: it could not pass the SIGTERM on) drains and stops
    rather than serve on unsupervised."""
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != slot.supervisor:
            log.error("worker %d: the supervisor (pid %d) is gone; stopping", slot.index, slot.supervisor)
            stop.set()


def _reload(server: Server) -> None:
    """SIGHUP, told to systemd (``systemctl reload`` shows "reloading" until READY=1 comes back)."""
    notify(*reloading(f"reloading {server.config.path}"))
    server.reload()
    notify("READY=1", f"STATUS={server.summary()}")


def _same(endpoint: DatagramEndpoint) -> DatagramEndpoint:
    return endpoint


def run(config: Config, trace: Path | None = None, slot: WorkerSlot | None = None) -> int:
    """Run the proxy on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(config, trace=trace, slot=slot))
    if sys.version_info >= (3, 12):
        return uvloop.run(serve(config, trace=trace, slot=slot))
    uvloop.install()
    return asyncio.run(serve(config, trace=trace, slot=slot))


def revocation_checker(checker: RevocationChecker | None, tls: TlsConfig) -> RevocationChecker:
    """``[tls] revocation``: a new checker at start; on reload the same one with the new settings, so the CRLs
    it fetched stay cached. The CA bundle's certificates are the anchors a peer's chain is walked up to."""
    anchors = load_certificates(tls.ca_bundle)
    mode = cast(Mode, tls.revocation)
    if checker is None:
        return RevocationChecker(mode, anchors, tls.crl_files, tls.crl_timeout_seconds)
    checker.reload(mode, anchors, tls.crl_files)
    checker.timeout_seconds = tls.crl_timeout_seconds
    return checker
