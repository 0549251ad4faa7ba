"""Wires a Config to listeners, the proxy core and the driver, and runs until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import ssl
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from proxy.config import Config
from proxy.metrics import Metrics
from proxy.net.driver import DatagramEndpoint, Driver
from proxy.net.tls import client_context, server_context
from proxy.net.trace import Trace
from proxy.relay.core import Proxy, RelaySettings
from proxy.relay.forwarding import RelayPolicy
from proxy.relay.types import Identity
from routes import RouteTable

log = logging.getLogger("sipfed")


async def serve(config: Config, ready: asyncio.Event | None = None, trace: Path | None = None) -> int:
    """Bind every listener, print the readiness line, relay until told to stop."""
    loop = asyncio.get_running_loop()
    metrics = Metrics(CollectorRegistry())
    client_ssl = client_context(config.tls) if config.tls else None
    proxy = Proxy(RelayPolicy.build([], RouteTable(()), {}, frozenset()))  # replaced once ports are known
    driver = Driver(proxy, loop, client_ssl=client_ssl, connect_timeout=config.connect_timeout_seconds,
                    max_message_bytes=config.max_message_bytes, trust=config.trust, observer=metrics)
    driver.trace = Trace(trace) if trace is not None else None
    servers: list[asyncio.Server] = []
    identities: list[Identity] = []
    for listener in config.listeners:
        if listener.transport == "udp":
            endpoint = DatagramEndpoint(driver, listener.name)
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_same, endpoint), local_addr=(listener.address, listener.port))
            driver.udp[listener.name] = endpoint
            port = transport.get_extra_info("sockname")[1]
        else:
            context: ssl.SSLContext | None = None
            if listener.transport == "tls":
                assert config.tls is not None
                context = server_context(config.tls, listener)
            # TLS runs inside StreamConnection (MemoryBIO) so refused clients get their alert.
            server = await loop.create_server(driver.stream_factory(listener.transport, listener.name, context),
                                              listener.address, listener.port, reuse_address=True)
            servers.append(server)
            port = server.sockets[0].getsockname()[1]
        identities.append(Identity(listener.name, listener.transport, listener.address, port, listener.fqdn,
                                   listener.federation_fqdn, listener.untrusted))
    rewrites = {r.internal: r.external for r in config.maddr_rewrites}
    policy = RelayPolicy.build(identities, RouteTable(config.routes), rewrites, config.tolerated_option_tags)
    driver.proxy = Proxy(policy, RelaySettings(config.transaction_timeout_seconds, config.invite_timeout_seconds),
                         config.trust, metrics)
    for warning in config.warnings:
        log.warning("config: %s", warning)
    listening = " ".join(f"{i.listener}={i.transport}:{i.address}:{i.port}" for i in identities)
    if config.metrics_listen is not None:
        http, _ = start_http_server(config.metrics_listen[1], config.metrics_listen[0], registry=metrics.registry)
        listening += f" metrics=http:{config.metrics_listen[0]}:{http.server_port}"
    print(f"sipfed ready {listening}", flush=True)
    log.info("%d listener(s), %d route(s) from %s", len(identities), len(config.routes), config.path)
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    for server in servers:
        server.close()
    await driver.close()
    return 0


def _same(endpoint: DatagramEndpoint) -> DatagramEndpoint:
    return endpoint


def run(config: Config, trace: Path | None = None) -> int:
    """Run the proxy on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(config, trace=trace))
    if sys.version_info >= (3, 12):
        return uvloop.run(serve(config, trace=trace))
    uvloop.install()
    return asyncio.run(serve(config, trace=trace))
