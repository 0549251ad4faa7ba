"""A small authoritative DNS server for tests, on loopback: dnspython's zone and message APIs, no system
package. It binds UDP and TCP on one port of 127.0.0.1, answers authoritatively from zone text (NXDOMAIN
and NODATA with the zone's SOA, so negative TTLs are real), truncates UDP answers that do not fit, and
counts every question it gets."""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections import Counter

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

HOST = "127.0.0.1"


class TinyAuthoritativeServer:
    """Authoritative DNS over UDP and TCP on one loopback port, from zone text; counts questions."""

    def __init__(self, zones: dict[str, str]) -> None:
        self.zones = {
            dns.name.from_text(origin): dns.zone.from_text(text, origin, relativize=False)
            for origin, text in zones.items()
        }
        self.asked: Counter[tuple[str, str, str]] = Counter()
        self.udp, self.tcp = _bind_pair()
        self.port = int(self.udp.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def count(self, name: str, rdtype: str, proto: str | None = None) -> int:
        return sum(n for (q, t, p), n in self.asked.items() if (q, t) == (name, rdtype) and proto in (None, p))

    def total(self) -> int:
        return sum(self.asked.values())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.udp.close()
        self.tcp.close()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.udp, selectors.EVENT_READ)
            selector.register(self.tcp, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(0.1):
                    if key.fileobj is self.udp:
                        wire, peer = self.udp.recvfrom(65535)
                        self.udp.sendto(self.answer(wire, "udp"), peer)
                    else:
                        conn, _ = self.tcp.accept()
                        self._serve_tcp(conn)

    def _serve_tcp(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2.0)
            try:
                while header := _read_exactly(conn, 2):
                    wire = _read_exactly(conn, struct.unpack("!H", header)[0])
                    reply = self.answer(wire, "tcp")
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                pass

    def answer(self, wire: bytes, proto: str) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        self.asked[(question.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(question.rdtype), proto)] += 1
        origin = next((o for o in self.zones if question.name.is_subdomain(o)), None)
        if origin is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        zone = self.zones[origin]
        node = zone.get_node(question.name)
        rdataset = node.get_rdataset(dns.rdataclass.IN, question.rdtype) if node is not None else None
        if rdataset is not None:
            response.answer.append(dns.rrset.from_rdata_list(question.name, rdataset.ttl, list(rdataset)))
        else:
            if node is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            soa = zone.find_rdataset(origin, dns.rdatatype.SOA)
            response.authority.append(dns.rrset.from_rdata_list(origin, soa.ttl, list(soa)))
        limit = 65535 if proto == "tcp" else (query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()


def _bind_pair() -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same free loopback port (dnspython uses one port for both)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((HOST, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind((HOST, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        return udp, tcp
    raise RuntimeError("no free port for both UDP and TCP on loopback")


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data
