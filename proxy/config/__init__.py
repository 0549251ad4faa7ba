"""The TOML config: typed, documented fields, every problem reported at once with its key path.

A bad file never half-starts the proxy: ``load_config`` either returns a whole
``Config`` or raises ``ConfigError`` listing each problem as ``key.path: what is wrong``.

The package, by what each module holds:

- ``model``: the typed settings (``Config`` and one dataclass per section), what the rest of sipfed imports;
- ``loader``: ``load_config``: the file read, the sections checked against each other, ``ConfigError``;
- ``sections``: each section's parser, from its raw TOML table to its typed settings;
- ``fields``: the typed-field helpers every section's parser checks its values with.

Everything is imported from ``proxy.config`` itself, as when it was one module.
"""

from __future__ import annotations

from proxy.config.loader import TOP_KEYS, ConfigError, load_config
from proxy.config.model import (
    LIMIT_BOUNDS,
    Config,
    ControlConfig,
    HepConfig,
    LimitsConfig,
    ListenerConfig,
    MaddrRewrite,
    OwnSide,
    TlsConfig,
)
from proxy.config.sections import (
    CONTROL_KEYS,
    DEFAULT_METRICS_LISTEN,
    DNS_KEYS,
    HEP_KEYS,
    LISTENER_KEYS,
    PROXY_KEYS,
    TLS_KEYS,
    TRANSPORTS,
    UNIX_PATH_MAX,
    UNTRUSTED_POLICIES,
    parse_control,
)

__all__ = [
    "CONTROL_KEYS",
    "DEFAULT_METRICS_LISTEN",
    "DNS_KEYS",
    "HEP_KEYS",
    "LIMIT_BOUNDS",
    "LISTENER_KEYS",
    "PROXY_KEYS",
    "TLS_KEYS",
    "TOP_KEYS",
    "TRANSPORTS",
    "UNIX_PATH_MAX",
    "UNTRUSTED_POLICIES",
    "Config",
    "ConfigError",
    "ControlConfig",
    "HepConfig",
    "LimitsConfig",
    "ListenerConfig",
    "MaddrRewrite",
    "OwnSide",
    "TlsConfig",
    "load_config",
    "parse_control",
]
