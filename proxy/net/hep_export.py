"""``[hep]``: a copy of every SIP message sipfed receives and sends, decrypted, to a HEP receiver over UDP.

The relay's cost is one bounded ``deque.append`` per message (``capture``); encoding (``proxy.hep``) and
sending happen once per turn of the event loop, in ``_flush``. Nothing waits on the receiver: a full queue,
a full socket buffer, a message too large for HEP or a receiver that cannot be reached drops the copy, and
``sipfed_hep_dropped_total{reason}`` counts it; ``sipfed_hep_sent_total`` counts what went out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from proxy.hep import HepTooLarge, call_id, encode
from proxy.relay.limits import WarnLimiter

log = logging.getLogger("sipfed.hep")

Address = tuple[str, int]

QUEUE_MESSAGES = 10_000
"""Copies waiting for the next flush (or for the receiver's socket) before new ones are dropped."""
SEND_BUFFER_BYTES = 1 << 20
"""What the UDP transport may hold unsent (the kernel pushed back) before copies are dropped."""
RETRY_SECONDS = 30.0
"""After the receiver's address could not be resolved or bound to, try again this much later."""


class HepExport:
    """One HEP receiver: ``capture`` on the hot path; ``start`` and ``close`` around it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        capture_id: int,
        password: bytes = b"",
        *,
        count_sent: Callable[[int], None] = lambda n: None,
        count_dropped: Callable[[str, int], None] = lambda reason, n: None,
        queue_messages: int = QUEUE_MESSAGES,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.capture_id = capture_id
        self.password = password
        self.count_sent = count_sent
        self.count_dropped = count_dropped
        self.queue_messages = queue_messages
        self.transport: asyncio.DatagramTransport | None = None
        self._queue: deque[tuple[float, str, Address, Address, bytes]] = deque()
        self._dropped: dict[str, int] = {}
        """Drops not yet added to the metric (it is told once per flush, not once per message)."""
        self._scheduled = False
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self.warnings = WarnLimiter(every_seconds=60.0)

    def capture(self, transport: str, source: Address, destination: Address, data: bytes) -> None:
        """A SIP message went from ``source`` to ``destination`` on one of sipfed's legs (the hot path)."""
        queue = self._queue
        if len(queue) >= self.queue_messages:
            self._dropped["queue_full"] = self._dropped.get("queue_full", 0) + 1
        else:
            queue.append((time.time(), transport, source, destination, data))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._flush)

    def start(self) -> None:
        """Open the UDP socket toward the receiver (resolving its name off the hot path)."""
        self._retry = None
        if not self._closed:
            self._task = self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            transport, _ = await self.loop.create_datagram_endpoint(
                lambda: _Receiver(self), remote_addr=(self.host, self.port)
            )
        except OSError as exc:
            log.warning(
                "hep: cannot send to %s:%d (%s); copies are dropped, trying again in %g s",
                self.host,
                self.port,
                exc.strerror or exc,
                RETRY_SECONDS,
            )
            self._drop_queued("unreachable")
            self._publish_drops()
            self._retry = self.loop.call_later(RETRY_SECONDS, self.start)
            return
        if self._closed:
            transport.close()
            return
        self.transport = transport
        log.info(
            "hep: copying SIP messages to %s:%d (HEP3 over UDP, capture id %d)", self.host, self.port, self.capture_id
        )
        self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        transport, queue = self.transport, self._queue
        if transport is not None and transport.is_closing():
            self.transport = transport = None
            if self._retry is None and not self._closed:
                self._retry = self.loop.call_later(RETRY_SECONDS, self.start)
        if transport is not None and queue:
            sent = 0
            capture_id, password = self.capture_id, self.password
            # asyncio's and uvloop's UDP transports both count what the kernel refused (typeshed lists the method
            # for write transports only).
            buffered: Callable[[], int] = transport.get_write_buffer_size  # type: ignore[attr-defined]
            while queue:
                if buffered() > SEND_BUFFER_BYTES:
                    self._drop_queued("queue_full")
                    break
                stamp, kind, source, destination, data = queue.popleft()
                seconds = int(stamp)
                try:
                    packet = encode(
                        data,
                        kind,
                        source,
                        destination,
                        seconds,
                        int((stamp - seconds) * 1e6),
                        capture_id,
                        password,
                        call_id(data),
                    )
                except HepTooLarge:
                    self._dropped["too_large"] = self._dropped.get("too_large", 0) + 1
                    continue
                transport.sendto(packet)
                sent += 1
            if sent:
                self.count_sent(sent)
        elif transport is None and (self._closed or self._retry is not None or self._task is None):
            self._drop_queued("unreachable")  # closed, waiting to try again, never started: only a connect waits
        self._publish_drops()

    def _drop_queued(self, reason: str) -> None:
        if self._queue:
            self._dropped[reason] = self._dropped.get(reason, 0) + len(self._queue)
            self._queue.clear()

    def _publish_drops(self) -> None:
        if self._dropped:
            dropped, self._dropped = self._dropped, {}
            for reason, count in dropped.items():
                self.count_dropped(reason, count)

    def error_received(self, exc: Exception) -> None:
        """The kernel reported the receiver unreachable (ICMP port unreachable, ...): say so now and then."""
        self.warnings.warn(
            log, "error", self.loop.time(), "hep: sending to %s:%d failed: %s", self.host, self.port, exc
        )

    def close(self) -> None:
        """Send what is queued, then close; copies captured after this are dropped."""
        self._flush()
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class _Receiver(asyncio.DatagramProtocol):
    """The UDP socket's protocol: nothing is expected back, errors are reported."""

    def __init__(self, export: HepExport) -> None:
        self.export = export

    def error_received(self, exc: Exception) -> None:
        self.export.error_received(exc)
