"""The bench's ceiling arm: a bare byte relay on the proxies' path, with no SIP work at all (bench/README.md).

TCP/TLS: for every inbound connection (TLS with a client certificate required, or plain TCP) one upstream
connection to the UAS (TLS with the same certificate, the next hop's chain and name checked, or plain TCP);
bytes are pumped both ways until either side closes, then both are closed. UDP: one listening socket; each
client's datagrams go to the UAS from an upstream socket of that client's own, and what the UAS sends back
to that socket goes to the client. Standalone (stdlib only; uvloop when installed, as sipfed runs on it);
prints a ready line once listening, stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import cast

CHUNK = 65536
DRAIN_ABOVE = 256 * 1024
"""Bytes queued on a writer before the pump waits for it to drain."""

Address = tuple[str, int]


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _context(purpose: ssl.Purpose, args: argparse.Namespace) -> ssl.SSLContext:
    """The settings sipfed's ``[tls]`` makes in the bench config (proxy/net/tls.py), for either side."""
    context = ssl.create_default_context(purpose, cafile=args.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(args.cert_chain, args.key)
    context.verify_mode = ssl.CERT_REQUIRED  # a client certificate is required inbound; the chain checked outbound
    return context


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error, then close the writer (its peer's pump then sees EOF in turn)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            if writer.transport.get_write_buffer_size() > DRAIN_ABOVE:
                await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


class StreamRelay:
    """One upstream connection per inbound one."""

    def __init__(self, upstream: Address, context: ssl.SSLContext | None, tls_name: str) -> None:
        self.upstream = upstream
        self.context = context
        self.tls_name = tls_name

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                *self.upstream, ssl=self.context, server_hostname=self.tls_name if self.context else None
            )
        except (OSError, ssl.SSLError) as exc:
            print(f"bare-relay: upstream {self.upstream[0]}:{self.upstream[1]}: {exc}", file=sys.stderr, flush=True)
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        except asyncio.CancelledError:  # at exit; Python 3.11's start_server logs a cancelled handler as an error
            up_writer.close()
            writer.close()


class _Upstream(asyncio.DatagramProtocol):
    """A client's own socket toward the UAS: what arrives on it goes back to that client."""

    def __init__(self, send_to_client: Callable[[bytes], None]) -> None:
        self.send_to_client = send_to_client

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.send_to_client(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the UAS restarts: nothing to relay


class DatagramRelay(asyncio.DatagramProtocol):
    """The listening socket: each client address gets its upstream socket on its first datagram (kept for the
    process's life: a bench run has a few dozen clients)."""

    def __init__(self, upstream: Address) -> None:
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None
        self.clients: dict[Address, asyncio.DatagramTransport] = {}
        self.pending: dict[Address, list[bytes]] = {}
        self.opening: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        upstream = self.clients.get(addr)
        if upstream is not None:
            upstream.sendto(data)
        elif addr in self.pending:
            self.pending[addr].append(data)
        else:
            self.pending[addr] = [data]
            task = asyncio.get_running_loop().create_task(self._open(addr))
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)

    async def _open(self, client: Address) -> None:
        def send_to_client(data: bytes) -> None:
            assert self.transport is not None
            self.transport.sendto(data, client)

        try:
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Upstream(send_to_client), remote_addr=self.upstream
            )
        except OSError as exc:
            print(f"bare-relay: upstream socket for {client}: {exc}", file=sys.stderr, flush=True)
            del self.pending[client]  # the client's next datagram tries again
            return
        self.clients[client] = transport
        for data in self.pending.pop(client):
            transport.sendto(data)


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = _address(args.listen)
    upstream = _address(args.upstream)
    close: Callable[[], None]
    if args.transport == "udp":
        transport, _ = await loop.create_datagram_endpoint(lambda: DatagramRelay(upstream), local_addr=(host, port))
        close = transport.close
    else:
        inbound = _context(ssl.Purpose.CLIENT_AUTH, args) if args.transport == "tls" else None
        outbound = _context(ssl.Purpose.SERVER_AUTH, args) if args.upstream_transport == "tls" else None
        server = await asyncio.start_server(StreamRelay(upstream, outbound, args.tls_name), host, port, ssl=inbound)
        close = server.close
    print(f"bare-relay ready {args.transport} {host}:{port} -> {args.upstream_transport} {args.upstream}", flush=True)
    await stop.wait()
    close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/bare_relay.py", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--transport", choices=("tls", "tcp", "udp"), required=True, help="inbound")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the UAS (or its server stunnel)")
    parser.add_argument("--upstream-transport", choices=("tls", "tcp", "udp"), required=True)
    parser.add_argument("--cert-chain", help="our certificate chain (TLS, both sides)")
    parser.add_argument("--key")
    parser.add_argument("--ca", help="CA bundle the peers' chains are checked against")
    parser.add_argument("--tls-name", default="cups.tomt.local", help="the upstream certificate's name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.transport == "udp") != (args.upstream_transport == "udp"):
        parser.error("a byte pipe cannot carry datagrams over a stream or the reverse: UDP on both sides or neither")
    if "tls" in (args.transport, args.upstream_transport) and not (args.cert_chain and args.key and args.ca):
        parser.error("TLS needs --cert-chain, --key and --ca")
    try:  # as proxy/server.py runs sipfed
        import uvloop
    except ImportError:
        return asyncio.run(serve(args))
    if sys.version_info >= (3, 12):
        return uvloop.run(serve(args))
    uvloop.install()
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
