"""The parsers of the config's own sections: ``[proxy]`` settings, ``[[listeners]]`` (with their ``untrusted``
policy), ``[tls]``, ``[dns]``, ``[[maddr_rewrite]]``, ``[limits]``, ``[metrics]``, ``[hep]`` and ``[control]``.

Each turns its raw TOML table into typed settings (``proxy.config.model``) and appends every problem it finds,
with its key path, instead of stopping at the first. Apart from the loader, which reads the file and checks the
sections against each other; ``[[routes]]``, ``[[peers]]``/``[auth]``/``[acl]`` and ``[xmpp]`` are parsed by
their own packages (routes, acl, proxy.xmpp.policy).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from acl.peers import Trust
from proxy.config.fields import _domain, _is_ip, _networks, _port, _string, _unknown
from proxy.config.model import (
    LIMIT_BOUNDS,
    ControlConfig,
    HepConfig,
    LimitsConfig,
    ListenerConfig,
    MaddrRewrite,
    TlsConfig,
)
from proxy.x509 import read_crl_file
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
    "workers",
}
DNS_KEYS = {"nameservers", "port", "timeout_seconds"}
LISTENER_KEYS = {"name", "transport", "address", "port", "fqdn", "federation_fqdn", "require_client_cert", "untrusted"}
UNTRUSTED_POLICIES = ("admit", "challenge", "refuse")
TLS_KEYS = {
    "cert_chain",
    "key",
    "ca_bundle",
    "min_version",
    "ciphers",
    "revocation",
    "crl_files",
    "crl_timeout_seconds",
}
REVOCATION_MODES = ("off", "soft-fail", "hard-fail")
DEFAULT_METRICS_LISTEN = "127.0.0.1:9561"
HEP_KEYS = {"address", "capture_id", "password"}
CONTROL_KEYS = {"socket", "mode"}
#: sockaddr_un.sun_path holds 108 bytes on Linux, the terminating NUL included.
UNIX_PATH_MAX = 107
MAX_WORKERS = 64
"""``[proxy] workers``: at most this many processes (a 2-core lab gains nothing past 2; a big host past ~32)."""


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
    revocation, crl_files, crl_timeout = _revocation(raw, base, problems)
    return TlsConfig(
        files["cert_chain"], files["key"], files["ca_bundle"], min_version, ciphers, revocation, crl_files, crl_timeout
    )


def _revocation(raw: Mapping[str, Any], base: Path, problems: list[str]) -> tuple[str, tuple[Path, ...], float]:
    """``tls.revocation``, ``tls.crl_files`` (each read and parsed now, so a bad file stops start and reload)
    and ``tls.crl_timeout_seconds``."""
    mode = raw.get("revocation", "soft-fail")
    if mode not in REVOCATION_MODES:
        problems.append(f"tls.revocation: {mode!r} must be one of {', '.join(REVOCATION_MODES)}")
        mode = "soft-fail"
    files: list[Path] = []
    listed = raw.get("crl_files", [])
    if not isinstance(listed, list) or not all(isinstance(item, str) and item for item in listed):
        problems.append("tls.crl_files: must be a list of file names, e.g. ['/etc/sipfed/issuing-ca.crl']")
        listed = []
    for text in listed:
        file = (base / text).resolve()
        try:
            crls = read_crl_file(file)
        except ValueError as exc:
            problems.append(f"tls.crl_files: {text!r} {exc} (looked at {file})")
            continue
        if crls:
            files.append(file)
    timeout = raw.get("crl_timeout_seconds", 2.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0.1 <= timeout <= 60:
        problems.append(f"tls.crl_timeout_seconds: {timeout!r} must be 0.1-60 seconds")
        timeout = 2.0
    return str(mode), tuple(files), float(timeout)


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
    workers = proxy.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        problems.append(f"proxy.workers: {workers!r} must be a whole number of processes from 1 to {MAX_WORKERS}")
        workers = 1
    out["workers"] = workers
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
