"""sd_notify(3) without libsystemd: tell systemd (``Type=notify``) that sipfed is ready, reloading or stopping.

The protocol is one datagram of ``KEY=VALUE`` lines on the Unix socket named by ``$NOTIFY_SOCKET``: a path,
or an abstract-namespace name when it starts with ``@`` (systemd's own form; the kernel's is a leading NUL).
Outside systemd the variable is unset and every call is a no-op. A failure to send is logged, never raised:
systemd then times the start out (``TimeoutStartSec=``) and says so, which is the honest outcome.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("sipfed")

SEND_TIMEOUT_SECONDS = 1.0
"""At most this long blocked on a full receive queue (systemd drains it at once; this bounds the odd case)."""


def notify(*states: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STATUS=…"``) as one message; True when one was sent."""
    target = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not target:
        return False
    if target.startswith("@"):
        address = "\0" + target[1:]
    elif target.startswith("/"):
        address = target
    else:  # vsock:CID:PORT (systemd 253+, for VMs) has no stdlib address form here
        log.warning(
            "NOTIFY_SOCKET=%s: only Unix socket paths and @abstract names are supported; systemd was not told %s",
            target,
            states[0] if states else "anything",
        )
        return False
    message = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_SECONDS)
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning(
            "could not notify systemd at NOTIFY_SOCKET=%s (%s): %s", target, exc.strerror or exc, " ".join(states)
        )
        return False
    return True


def reloading(status: str) -> tuple[str, ...]:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` systemd 253+ asks for (``Type=notify-reload``); older ones
    ignore the stamp. CLOCK_MONOTONIC is the clock ``time.monotonic_ns`` reads on Linux."""
    return "RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", f"STATUS={status}"
