"""Cost of the sans-IO core per relayed MESSAGE + 200, without sockets: where the CPU goes.

python bench/core_profile.py [N] [--profile]
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

from prometheus_client import CollectorRegistry

from acl.subjects import CertIdentity
from proxy.metrics import Metrics
from proxy.relay.core import Proxy, RelaySettings
from proxy.relay.forwarding import RelayPolicy
from proxy.relay.types import Flow, Identity, SendToHop
from routes import RouteTable, StaticRoute

IN = Flow("tls", "lync", ("127.0.0.3", 40001), 1, CertIdentity(dns_names=("lync01.tomt.it",)))
OUT = Flow("tls", "cisco", ("127.0.0.2", 5062), 2, CertIdentity(dns_names=("cups.tomt.local",)))


def make() -> Proxy:
    identities = [
        Identity("cisco", "tls", "127.0.0.1", 5061, "sipfed.tomt.local", "sipfed.tomt.local"),
        Identity("lync", "tls", "127.0.0.1", 5062, "sipfed.tomt.it", "sipfed.tomt.it"),
    ]
    routes = RouteTable([StaticRoute("cisco", "tomt.local", "127.0.0.2", 5062, "tls", "cups.tomt.local", "cisco")])
    return Proxy(
        RelayPolicy.build(identities, routes, {}, frozenset()),
        RelaySettings(16, 180),
        observer=Metrics(CollectorRegistry()),
    )


def message(i: int) -> bytes:
    return (
        f"MESSAGE sip:alice@tomt.local SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.3:5061;branch=z9hG4bK{i:x}ab\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:sipp@tomt.it>;tag={i}SIPpTag00\r\nTo: <sip:alice@tomt.local>\r\n"
        f"Call-ID: {i}-bench@127.0.0.3\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n"
        f"Content-Length: 22\r\n\r\nhello from sipp call {i % 10}"
    ).encode()


def answer(forwarded: bytes) -> bytes:
    head = forwarded.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    keep = [h for h in head[1:] if h.split(b":", 1)[0].lower() in (b"via", b"from", b"to", b"call-id", b"cseq")]
    keep = [h + b";tag=uas1" if h.lower().startswith(b"to:") else h for h in keep]
    return b"\r\n".join([b"SIP/2.0 200 OK", *keep, b"Content-Length: 0", b"", b""])


def run(proxy: Proxy, n: int) -> float:
    start = time.perf_counter()
    now = 0.0
    for i in range(n):
        now += 0.0001
        proxy.receive(IN, message(i), now, framed=True)
        sent = [o for o in proxy.take_outputs() if isinstance(o, SendToHop)]
        proxy.sent_on(sent[0].token, OUT.conn_id)  # as the edge reports it: the 200 must come on that flow
        proxy.receive(OUT, answer(sent[0].data), now, framed=True)
        proxy.take_outputs()
        proxy.handle_timer(now)
    return (time.perf_counter() - start) / n


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 20000
    proxy = make()
    run(proxy, 2000)
    if "--profile" in sys.argv:
        profiler = cProfile.Profile()
        profiler.enable()
        run(proxy, n)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    else:
        print(f"{run(proxy, n) * 1e6:.1f} µs per MESSAGE + 200 through the core (incl. building the test bytes)")
