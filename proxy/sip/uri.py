"""SIP and SIPS URIs (RFC 3261 §19.1), parsed just enough to route on.

Parameters keep their order, spelling and escaping, so an unknown parameter
(Lync's ``ms-*`` ones, for instance) survives a parse/serialise round trip.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from proxy.sip.errors import SipError, SipSyntaxError
from proxy.sip.grammar import HOST_RE, SCHEME_RE, digits, is_ip_literal

Param = tuple[str, str | None]

#: RFC 3261 §19.1.2: the default ports of the transports.
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


class UnsupportedScheme(SipError):
    """RFC 3261 §21.4.17 416 Unsupported URI Scheme (RFC 4475 §3.3.2)."""

    STATUS = 416


@dataclass(frozen=True, slots=True)
class SipUri:
    """A sip: or sips: URI."""

    scheme: str
    """"sip" or "sips", lower case."""
    user: str | None
    """The userinfo before "@" (user and password, still escaped), or None."""
    host: str
    """The host as written (case kept; compare with ``host.lower()``)."""
    port: int | None
    """The port, or None when the URI gives none."""
    params: tuple[Param, ...] = ()
    """uri-parameters in order, names and values as written."""
    headers: str | None = None
    """The ``?headers`` part, unparsed."""
    opaque: str | None = None
    """For a URI of another scheme (``isbn:…``, allowed in From/To, RFC 3261 §20.20): everything after ':'."""

    def param(self, name: str) -> str | None:
        """The value of the first parameter called ``name`` (case-insensitive), '' if valueless."""
        lname = name.lower()
        for key, value in self.params:
            if key.lower() == lname:
                return "" if value is None else value
        return None

    def has_param(self, name: str) -> bool:
        lname = name.lower()
        return any(key.lower() == lname for key, _ in self.params)

    def with_param(self, name: str, value: str | None) -> SipUri:
        """A copy with parameter ``name`` set to ``value`` in place (appended if absent)."""
        lname = name.lower()
        params = list(self.params)
        for i, (key, _) in enumerate(params):
            if key.lower() == lname:
                params[i] = (key, value)
                break
        else:
            params.append((name, value))
        return replace(self, params=tuple(params))

    @property
    def transport(self) -> str:
        """RFC 3263 §4.1: the transport this URI asks for; sips means TLS."""
        explicit = self.param("transport")
        if explicit:
            transport = explicit.lower()
            return "tls" if self.scheme == "sips" and transport == "tcp" else transport
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def explicit_transport(self) -> str | None:
        """The transport parameter (or "tls" for sips), None when the URI leaves it open."""
        explicit = self.param("transport")
        if explicit:
            return "tls" if self.scheme == "sips" else explicit.lower()
        return "tls" if self.scheme == "sips" else None

    @property
    def target_host(self) -> str:
        """RFC 3261 §19.1.1: maddr, when present, overrides the host as the address to reach."""
        return self.param("maddr") or self.host

    @property
    def host_is_ip(self) -> bool:
        return is_ip_literal(self.host)

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out += [self.user, "@"]
        out.append(self.host)
        if self.port is not None:
            out += [":", str(self.port)]
        for key, value in self.params:
            out += [";", key] if value is None else [";", key, "=", value]
        if self.headers is not None:
            out += ["?", self.headers]
        return "".join(out)


@functools.lru_cache(maxsize=8192)
def parse_uri(text: str, *, any_scheme: bool = False) -> SipUri:
    """Parse a sip:/sips: URI; another scheme raises UnsupportedScheme, or with ``any_scheme`` is kept
    opaque (From and To may hold any absoluteURI, RFC 4475 §3.3.4). SipSyntaxError if malformed."""
    scheme, colon, rest = text.partition(":")
    if not colon or SCHEME_RE.fullmatch(scheme) is None:
        raise SipSyntaxError(f"URI {text!r} has no valid scheme")  # RFC 4475 §3.1.2.7: <sip:...> is 400
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        if any_scheme and rest and not any(c in rest for c in " \t\r\n<>"):
            return SipUri(scheme, None, "", None, (), None, rest)
        raise UnsupportedScheme(f"Unsupported URI scheme {scheme!r}")
    if any(c in text for c in " \t\r\n<>"):
        raise SipSyntaxError(f"URI {text!r} contains whitespace or angle brackets")
    # RFC 3261 §25.1: userinfo (which may hold '?' and ';', RFC 4475 §3.1.1.2, §3.1.1.9) ends at the one
    # unescaped '@'; user, password, paramchar and hvalue have '@' only as %40. A second '@' is a syntax
    # error, never a later end of userinfo: ``sip:ceo@tomt.local;x=@tomt.it`` is not in domain tomt.it.
    user: str | None = None
    at = rest.find("@")
    if at >= 0:
        if rest.find("@", at + 1) >= 0:
            raise SipSyntaxError(f"URI {text[:80]!r} has more than one unescaped '@' (RFC 3261 §25.1)")
        user, rest = rest[:at], rest[at + 1 :]
        if not user:
            raise SipSyntaxError(f"URI {text!r} has an empty user part")
    rest, qmark, headers = rest.partition("?")
    hostport, *raw_params = rest.split(";")
    host, port = _split_hostport(hostport, text)
    params: list[Param] = []
    for raw in raw_params:
        key, eq, value = raw.partition("=")
        if not key:
            raise SipSyntaxError(f"URI {text!r} has an empty parameter")
        params.append((key, value if eq else None))
    return SipUri(scheme, user, host, port, tuple(params), headers if qmark else None)


def _split_hostport(hostport: str, text: str) -> tuple[str, int | None]:
    """hostport = host [ ":" port ]  (RFC 3261 §25.1)."""
    if hostport.startswith("["):
        end = hostport.find("]")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise SipSyntaxError(f"URI {text!r} has a malformed IPv6 reference")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_raw = hostport.partition(":")
        port_text = port_text_raw if colon else None
    if not host or HOST_RE.fullmatch(host) is None:
        raise SipSyntaxError(f"URI {text!r} has an invalid host {host!r}")
    if port_text is None:
        return host, None
    port = digits(port_text, 5)
    if port is None or not 0 < port < 65536:
        raise SipSyntaxError(f"URI {text[:80]!r} has an invalid port {port_text[:20]!r}")
    return host, port
