"""``sipfed`` command line: run, check-config, certs, ctl, --version."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy import __version__, ctl, logs
from proxy.admin import certs
from proxy.config import ConfigError, LimitsConfig, load_config
from proxy.workers import SlotError, WorkerSlot


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipfed", description="SIP presence federation proxy")
    parser.add_argument("--version", action="version", version=f"sipfed {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("--config", required=True, help="TOML config file")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override proxy.log_level")
    run.add_argument("--log-format", choices=["text", "json"], default="text", help="one line per event, text or JSON")
    run.add_argument("--trace", metavar="FILE", help="append every SIP message sent and received to FILE")
    check = commands.add_parser("check-config", help="validate a config file and print what it sets up")
    check.add_argument("--config", required=True, help="TOML config file")
    certs.add_arguments(commands.add_parser("certs", help="create a lab CA and leaf certificates"))
    ctl.add_arguments(commands.add_parser("ctl", help="ask the running proxy over its control socket ([control])"))
    routes_cmd = commands.add_parser("routes", help="print each route's next hops in the order they would be tried")
    routes_cmd.add_argument("--config", required=True, help="TOML config file")
    routes_cmd.add_argument("--resolve", action="store_true", help="resolve DNS routes now (RFC 3263)")
    doctor = commands.add_parser("doctor", help="find why a federation would fail: certificates, names, routes")
    doctor.add_argument("--config", required=True, help="TOML config file")
    doctor.add_argument("--json", action="store_true", help="print the findings as a JSON list, for scripts")
    doctor.add_argument(
        "--live",
        action="store_true",
        help="also probe each static route: TCP, TLS with our certificate, the peer's chain, OPTIONS",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "certs":
        return certs.run(args)
    if args.command == "ctl":
        return ctl.run(args)
    if args.command == "doctor":
        from proxy.admin import doctor

        return doctor.run(args.config, args.json, live=args.live)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(describe(config))
        return 0
    if args.command == "routes":
        return print_routes(config, args.resolve)
    try:
        slot = WorkerSlot.from_environ(os.environ)
    except SlotError as exc:
        print(f"sipfed: {exc}", file=sys.stderr)
        return 2
    logs.setup(args.log_level or config.log_level, args.log_format, slot.index if slot is not None else None)
    from proxy.server import StartupError
    from proxy.server import run as run_server

    trace = Path(args.trace) if args.trace else None
    try:
        if slot is None and config.workers > 1:
            from proxy.supervisor import supervise

            return supervise(config, list(sys.argv[1:] if argv is None else argv))
        return run_server(config, trace=trace, slot=slot)
    except StartupError as exc:
        print(f"sipfed: {exc}", file=sys.stderr)
        return 2


def describe(config: object) -> str:
    """What a valid config sets up, one line per listener and route."""
    from proxy.config import Config

    assert isinstance(config, Config)
    lines = [f"{config.path}: OK", f"proxy fqdn {config.fqdn}, Record-Route maddr {config.federation_fqdn}"]
    if config.workers > 1:
        lines.append(
            f"workers: {config.workers} processes share every listener (SO_REUSEPORT), under a supervisor; "
            "[limits] apply in each"
        )
    for lst in config.listeners:
        mtls = ", client certificate required" if lst.transport == "tls" and lst.require_client_cert else ""
        lines.append(
            f"listener {lst.name}: {lst.transport} {lst.address}:{lst.port} as {lst.fqdn} "
            f"(maddr {lst.federation_fqdn}){mtls}"
        )
    for route in config.routes:
        lines.append(
            f"route {route.name}: {route.match_uri} -> {route.destination}:{route.port} {route.transport} "
            f"(certificate name {route.tls_name}, via listener {route.listener or 'inbound'})"
        )
    for rewrite in config.maddr_rewrites:
        lines.append(f"maddr rewrite: {rewrite.internal} <-> {rewrite.external}")
    lines.append(describe_connection_limits(config.limits))
    lines.extend(describe_trust(config))
    lines.extend(f"warning: {w}" for w in config.warnings)
    return "\n".join(lines)


def describe_connection_limits(limits: LimitsConfig) -> str:
    """What [limits] allows inbound connections before they prove who they are (issue 14)."""
    per_source = limits.max_connections_per_source
    rate = limits.handshakes_per_source_per_second
    parts = [
        f"at most {limits.max_connections} inbound (fewer if the open-files limit is lower)",
        f"{per_source} unproven per source address" if per_source else "no per-source cap",
        f"{rate:g} TLS handshakes per source per second" if rate else "no handshake rate limit",
    ]
    return (
        f"connections: {', '.join(parts)}; one bound to no peer is closed after "
        f"{limits.unauthenticated_idle_seconds:g} s without a valid SIP message"
    )


def describe_trust(config: object) -> list[str]:
    """What each trusted peer, ACL entry and credential will match."""
    from proxy.config import Config

    assert isinstance(config, Config)
    trust = config.trust
    lines = []
    for peer in trust.peers:
        who = " or ".join(str(p) for p in peer.subjects) or "any certificate"
        nets = f" from {', '.join(map(str, peer.networks))}" if peer.networks else ""
        domains = ", ".join(peer.domains) or "any domain"
        auth = "treated as authenticated" if peer.treat_as_authenticated else "must still authenticate"
        shield = "; never sent a challenge" if not peer.answers_digest else ""
        lines.append(f"peer {peer.name}: certificate {who}{nets}; speaks for {domains}; {auth}{shield}")
    for i, entry in enumerate(trust.incoming):
        lines.append(f"acl.incoming[{i}] never challenged: {entry.describe()}")
    for i, entry in enumerate(trust.outgoing):
        lines.append(f"acl.outgoing[{i}] never forwarded a challenge: {entry.describe()}")
    for credential in trust.credentials:
        realm = credential.realm or "any realm"
        lines.append(
            f"credentials: answers challenges from route {credential.route} ({realm}) as {credential.username}"
        )
    if trust.digest is not None:
        lines.append(
            f"digest realm {trust.digest.realm}: {', '.join(trust.digest.algorithms)}, "
            f"{len(trust.digest.users)} user(s), nonces valid {trust.digest.nonce_ttl_seconds:g} s"
        )
    verbs = {"admit": "admitted", "challenge": "challenged (407)", "refuse": "refused (403)"}
    lines.extend(f"listener {lst.name}: untrusted sources are {verbs[lst.untrusted]}" for lst in config.listeners)
    return lines


def print_routes(config: object, resolve: bool) -> int:
    """``sipfed routes``: for each route, the candidates in try order (up ones in RFC 2782 order)."""
    import asyncio
    import random
    import time

    from proxy.config import Config
    from routes import Health, order
    from routes.dns import ResolutionError
    from routes.resolver import DnspythonSource, Resolver

    assert isinstance(config, Config)
    resolver = Resolver(DnspythonSource(timeout_seconds=config.connect_timeout_seconds))
    status = 0
    for route in config.routes:
        print(f"route {route.name} ({route.match_uri}):")
        if route.resolve and not resolve:
            print(f"  resolves {route.resolve} by DNS (RFC 3263); add --resolve to look it up now")
            continue
        try:
            found = (
                asyncio.run(resolver.candidates_for(route, time.monotonic()))
                if route.resolve
                else list(route.static_candidates)
            )
        except ResolutionError as exc:
            print(f"  DNS: {exc}")
            status = 1
            continue
        for i, candidate in enumerate(order(found, Health(), 0.0, random.Random()), 1):
            print(
                f"  {i}. {candidate} (priority {candidate.priority}, weight {candidate.weight}, "
                f"certificate name {candidate.tls_name or '-'}, from {candidate.source})"
            )
    return status
