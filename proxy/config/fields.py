"""The typed-field helpers of the section parsers: one TOML value checked and converted, and when it is not what
the field needs, a problem appended with its key path (``listeners[1].port: 70000 must be ...``) and a default
returned, so that parsing goes on and every problem is reported at once.

Apart because every section's parser uses them and they know no section.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from routes.table import is_host


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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
