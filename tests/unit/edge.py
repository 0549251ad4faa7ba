"""The sans-IO core as proxy/net/driver.py drives it, for unit tests: every request the core sends toward a
next hop is reported written on a connection (``Proxy.sent_on``), so that the hop's responses, which a test
feeds in on that connection's flow, are taken (issue 14: a response belongs to the flow its request went out
on). UDP hops to an address are bound by the core itself."""

from __future__ import annotations

from typing import Any

from proxy.relay.core import Proxy
from proxy.relay.types import Output, SendToHop


class BoundProxy:
    """A ``Proxy`` whose stream sends all go out on connection ``out_conn`` (the tests' ``CISCO_OUT``: 2),
    or on the connection ``hop_conns`` names for a hop's (host, port).

    It wraps the core rather than subclassing it, so the same tests run against the compiled core too
    (tools/mypyc_build.py: a compiled class cannot have interpreted subclasses); every other attribute is
    the core's."""

    out_conn = 2
    hop_conns: dict[tuple[str, int], int] = {}  # noqa: RUF012 - read-only per class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "core", Proxy(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.core, name, value)

    def take_outputs(self) -> list[Output]:
        outputs = self.core.take_outputs()
        for output in outputs:
            if isinstance(output, SendToHop) and output.token and output.hop.transport != "udp":
                hop = output.hop
                self.core.sent_on(output.token, self.hop_conns.get((hop.host, hop.port), self.out_conn))
        return outputs
