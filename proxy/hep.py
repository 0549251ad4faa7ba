"""HEP v3 encoding (sans-IO): one SIP message as sipfed saw it, in the Homer Encapsulation Protocol.

The layout is the sipcapture project's *HEP3 Network Protocol Specification* (rev. 37, 2025-06-25,
github.com/sipcapture/HEP, docs/HEP3_Network_Protocol_Specification_REV_37.pdf):

- a header: the 4-octet ID ``HEP3`` (0x48455033), then the total packet length (uint16, network byte
  order), counting the ID, the length field itself and every chunk (6-65535);
- then concatenated chunks, each a vendor ID (uint16; 0x0000: the spec's generic chunk types), a type ID
  (uint16) and the chunk's total length (uint16, these 6 octets included), then its payload.

The generic chunk types written here: 0x0001 IP protocol family (uint8), 0x0002 IP protocol ID (uint8),
0x0003/0x0004 IPv4 source/destination (inet4-addr), 0x0005/0x0006 IPv6 source/destination (inet6-addr),
0x0007/0x0008 source/destination port (uint16), 0x0009 timestamp seconds (uint32), 0x000a its microseconds
(uint32), 0x000b protocol type (uint8; 0x01 SIP), 0x000c capture agent ID (uint32), 0x000e authentication
key (octet-string), 0x000f captured packet payload (octet-string), 0x0011 correlation ID (octet-string).

Nothing here touches a socket or a clock: time and addresses are parameters.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from functools import lru_cache

MAGIC = b"HEP3"
GENERIC_VENDOR = 0x0000

IP_FAMILY = 0x0001
IP_PROTOCOL_ID = 0x0002
IPV4_SOURCE = 0x0003
IPV4_DESTINATION = 0x0004
IPV6_SOURCE = 0x0005
IPV6_DESTINATION = 0x0006
SOURCE_PORT = 0x0007
DESTINATION_PORT = 0x0008
TIMESTAMP_SECONDS = 0x0009
TIMESTAMP_MICROSECONDS = 0x000A
PROTOCOL_TYPE = 0x000B
CAPTURE_AGENT_ID = 0x000C
AUTH_KEY = 0x000E
PAYLOAD = 0x000F
CORRELATION_ID = 0x0011

PROTOCOL_TYPE_SIP = 0x01
#: Chunk 0x0001 carries the sender's AF_INET/AF_INET6 (the spec's example: 2 for IPv4); every implementation
#: (Kamailio, OpenSIPS, heplify, sngrep) writes Linux's values, and receivers compare against them.
FAMILY_IPV4 = 2
FAMILY_IPV6 = 10
#: Chunk 0x0002 is the IP protocol number. TLS runs over TCP, so a TLS leg is 6, as the spec's field says;
#: HEP3 has no TLS flag. (Kamailio's siptrace, sofia-sip and reSIProcate send 22, IPPROTO_IDP, as a "fake"
#: TLS marker; the Via header in the payload already says SIP/2.0/TLS to anyone reading the capture.)
IP_PROTOCOLS = {"udp": 17, "tcp": 6, "tls": 6}

MAX_PACKET_BYTES = 65535
"""The header's length field is a uint16: a HEP packet holds at most this much."""

_CHUNK = struct.Struct("!HHH")


def _chunk_header(type_id: int, value_bytes: int) -> bytes:
    return _CHUNK.pack(GENERIC_VENDOR, type_id, 6 + value_bytes)


# The fixed part, in the order of the spec's own hep_generic structure (hep-c, captagent, sngrep): family,
# protocol ID, ports, timestamp, protocol type, capture agent ID; the addresses follow. Fixed-layout readers
# (sngrep before 1.4.7) need exactly this order with the payload right after the addresses (and the key):
# so the correlation ID goes after the payload, which chunk-walking receivers (Homer, Kamailio, sngrep
# 1.4.7+) read wherever it is. The chunk headers are made once: a packet is one pack and one join.
_FIXED = struct.Struct("!4sH14s6sH6sH6sI6sI6sB6sI")
_FAMILY_AND_PROTOCOL = {
    (size, transport): _chunk_header(IP_FAMILY, 1)
    + bytes([family])
    + _chunk_header(IP_PROTOCOL_ID, 1)
    + bytes([number])
    for size, family in ((4, FAMILY_IPV4), (16, FAMILY_IPV6))
    for transport, number in IP_PROTOCOLS.items()
}
_PORTS = (_chunk_header(SOURCE_PORT, 2), _chunk_header(DESTINATION_PORT, 2))
_TIMESTAMP = (_chunk_header(TIMESTAMP_SECONDS, 4), _chunk_header(TIMESTAMP_MICROSECONDS, 4))
_AGENT = (_chunk_header(PROTOCOL_TYPE, 1), _chunk_header(CAPTURE_AGENT_ID, 4))
_ADDRESS_CHUNKS = {
    4: (_chunk_header(IPV4_SOURCE, 4), _chunk_header(IPV4_DESTINATION, 4)),
    16: (_chunk_header(IPV6_SOURCE, 16), _chunk_header(IPV6_DESTINATION, 16)),
}
_CALL_ID = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class HepTooLarge(ValueError):
    """The message does not fit in one HEP packet (the header's uint16 length)."""


def encode(
    payload: bytes,
    transport: str,
    source: tuple[str, int],
    destination: tuple[str, int],
    seconds: int,
    microseconds: int,
    capture_id: int,
    password: bytes = b"",
    correlation_id: bytes = b"",
) -> bytes:
    """One HEP3 packet for a SIP message that went from ``source`` to ``destination`` over ``transport``
    (``udp``, ``tcp`` or ``tls``) at ``seconds``.``microseconds`` (Unix time). The key (chunk 0x000e) and
    the correlation ID (0x0011) are written only when given."""
    src, dst = _packed(source[0]), _packed(destination[0])
    if len(src) != len(dst):  # one side IPv4, the other IPv4-mapped IPv6: both as IPv6
        src, dst = _as_ipv6(src), _as_ipv6(dst)
    size = len(src)
    src_chunk, dst_chunk = _ADDRESS_CHUNKS[size]
    total = (
        _FIXED.size
        + 2 * (6 + size)
        + 6
        + len(payload)
        + (6 + len(password) if password else 0)
        + (6 + len(correlation_id) if correlation_id else 0)
    )
    if total > MAX_PACKET_BYTES:
        raise HepTooLarge(f"a {len(payload)}-byte message makes a {total}-byte HEP packet (at most {MAX_PACKET_BYTES})")
    parts = [b"", src_chunk, src, dst_chunk, dst]
    if password:
        parts += (_chunk_header(AUTH_KEY, len(password)), password)
    parts += (_chunk_header(PAYLOAD, len(payload)), payload)
    if correlation_id:
        parts += (_chunk_header(CORRELATION_ID, len(correlation_id)), correlation_id)
    parts[0] = _FIXED.pack(
        MAGIC,
        total,
        _FAMILY_AND_PROTOCOL[size, transport],
        _PORTS[0],
        source[1],
        _PORTS[1],
        destination[1],
        _TIMESTAMP[0],
        seconds,
        _TIMESTAMP[1],
        microseconds,
        _AGENT[0],
        PROTOCOL_TYPE_SIP,
        _AGENT[1],
        capture_id,
    )
    return b"".join(parts)


def call_id(message: bytes) -> bytes:
    """The Call-ID header field value (or its compact form ``i``, RFC 3261 §20.8), b"" if there is none:
    what Homer groups a call's messages by (chunk 0x0011)."""
    match = _CALL_ID.search(message)  # stops at the header, which comes before any body
    if match is None or message.find(b"\r\n\r\n", 0, match.start() + 1) >= 0:
        return b""  # none in the header section (a body line is not a header)
    return match.group(1).strip()


@lru_cache(maxsize=4096)
def _packed(host: str) -> bytes:
    """An address as the spec's inet4-addr/inet6-addr (most significant octet first); IPv4-mapped IPv6
    (a dual-stack socket's view of an IPv4 peer) as the IPv4 it is; anything else as 0.0.0.0."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return bytes(4)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.packed
    return address.packed


def _as_ipv6(packed: bytes) -> bytes:
    return packed if len(packed) == 16 else bytes(10) + b"\xff\xff" + packed
