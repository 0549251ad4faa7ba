"""``load_config``: the file read as TOML, each section handed to its parser, the sections checked against each
other (a route's listener, the TLS material that TLS listeners and routes need, ``[xmpp]`` partners against
``[[routes]]``), and one ``ConfigError`` that lists every problem found.

Apart from the section parsers (``proxy.config.sections``), which each know only their own table.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from acl.config import parse_trust
from acl.peers import Trust, TrustedPeer
from proxy.config.fields import _domain, _table, _unknown
from proxy.config.model import Config, ControlConfig, OwnSide, TlsConfig
from proxy.config.own import check_own_side
from proxy.config.sections import (
    PROXY_KEYS,
    UNIX_PATH_MAX,
    _dns,
    _hep,
    _limits,
    _listeners,
    _metrics,
    _rewrites,
    _settings,
    _tls,
    _untrusted_policies,
    parse_control,
)
from proxy.xmpp.policy import XmppConfig, parse_xmpp
from routes import StaticRoute, parse_routes

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


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` lists each as ``key.path: what to do``."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"config error in {self.path}:\n{lines}")


def load_config(path: Path | str, *, check_own: bool = True) -> Config:
    """Read and validate a config file; raise ConfigError with every problem found. ``check_own=False`` leaves
    our certificate and key unjudged (``sipfed doctor`` reads a broken config to say what is wrong with it)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    problems: list[str] = []
    config = _build(raw, path, problems, check_own)
    if problems or config is None:
        raise ConfigError(path, problems)
    return config


def _build(raw: Mapping[str, Any], path: Path, problems: list[str], check_own: bool = True) -> Config | None:
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
    if settings["workers"] > 1:
        _workers_against(settings["workers"], xmpp, control, problems)
    own = OwnSide()
    if tls is not None and check_own and not problems:  # our own side first (issue 16), once the files exist
        own = check_own_side(tls, listeners, problems, warnings, None)
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
        own=own,
        warnings=tuple(warnings),
    )


def _workers_against(workers: int, xmpp: XmppConfig | None, control: ControlConfig | None, problems: list[str]) -> None:
    """``[proxy] workers`` > 1 against the sections a worker process cannot share."""
    if xmpp is not None:
        problems.append(
            f"proxy.workers: {workers} processes cannot share [xmpp]: its S2S streams, dialback keys and the "
            "gateway's presence state live in one process; set workers = 1 to federate with XMPP"
        )
    if control is not None and len(os.fsencode(control.socket)) + len(f".{workers - 1}") > UNIX_PATH_MAX:
        problems.append(
            f"control.socket: with workers = {workers} each worker's socket is {str(control.socket)!r} plus "
            f"'.N', longer than a Unix socket path may be ({UNIX_PATH_MAX} bytes); choose a shorter path"
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
