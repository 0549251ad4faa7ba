"""What the proxy reports about itself, as plain method calls: no Prometheus in the sans-IO core.

``proxy/metrics.py`` implements this with prometheus-client; tests can record the calls. Every
label value passed here is from a bounded set: a method from KNOWN_METHODS or 'other', a
configured peer or route name, a status, or one of the fixed reasons named in each docstring.
"""

from __future__ import annotations

from proxy.sip.message import KNOWN_METHODS

KNOWN_EVENTS = frozenset(
    {
        "presence",
        "presence.winfo",
        "dialog",
        "message-summary",
        "reg",
        "refer",
        "conference",
        "vnd-microsoft-roaming-contacts",
        "vnd-microsoft-roaming-self",
        "vnd-microsoft-provisioning-v2",
    }
)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def event_label(event: str | None) -> str:
    package = (event or "").split(";")[0].strip().lower()
    return package if package in KNOWN_EVENTS else "other"


class Observer:
    """No-op observer; subclasses record. All methods are cheap calls on the hot path."""

    def request_received(self, method: str, peer: str) -> None:
        """A request arrived from ``peer`` (a configured peer name, or 'none')."""

    def request_relayed(self, method: str, peer: str, route: str) -> None:
        """A request was forwarded toward ``route`` (a route name, or 'dialog' for Route-set hops)."""

    def request_refused(self, method: str, status: int) -> None:
        """sipfed answered a request itself with a 4xx/5xx (validation, trust, no route)."""

    def final_response(self, method: str, status: int, seconds: float) -> None:
        """A final response went upstream, ``seconds`` after its request came in."""

    def route_miss(self) -> None:
        """No static route for an out-of-dialog request's domain (404)."""

    def hop_failure(self, route: str, reason: str) -> None:
        """A next hop failed: reason in connect_refused, tls_failure, timeout, unavailable (503), other."""

    def digest(self, outcome: str) -> None:
        """sipfed's own digest: challenged, passed, failed, stale, replayed."""

    def digest_throttled(self, scope: str) -> None:
        """A digest attempt refused unchecked by a lockout after failed attempts: scope ``source`` or ``user``."""

    def shielded(self, action: str) -> None:
        """A next hop's challenge kept from a source that cannot answer it: answered or blocked."""

    def overload(self, reason: str) -> None:
        """A request refused with 503 by a limit: in_flight, source_rate, peer_rate."""

    def malformed(self, kind: str) -> None:
        """A message that did not parse: request (answered 4xx), response (dropped), stream (framing)."""

    def subscription(self, event: str, change: str) -> None:
        """A subscription dialog changed: created, refreshed, terminated."""

    def tls_handshake(self, listener: str, direction: str, outcome: str, reason: str) -> None:
        """A TLS handshake (inbound/outbound) succeeded or failed; reason from the fixed set in net/tls.py."""

    def revocation_check(self, direction: str, reason: str, admitted: bool) -> None:
        """A peer's chain checked against CRLs (``tls.revocation``): the verdict's reason (proxy/relay/revocation.py
        REASONS) and whether the mode admitted it."""

    def slow_sender(self, listener: str, stage: str) -> None:
        """A connection closed because a message (stage 'message') or handshake ('handshake') stalled."""

    def connection(self, listener: str, peer: str, delta: int) -> None:
        """A connection opened (+1) or closed (-1) on ``listener`` bound to ``peer``."""

    def health_check(self, route: str, result: str) -> None:
        """An OPTIONS health check of one of ``route``'s destinations: pass or fail."""

    def security_drop(self, reason: str) -> None:
        """A message a security rule stopped without an answer (issue 14): ``stateless_refused`` (an ACK or
        BENOTIFY that admission refused), ``response_off_flow`` (a response on another flow than its
        request went out on), ``identity_removed`` (a P-Asserted/P-Preferred-Identity value its source may not
        assert, taken out)."""

    def keepalive(self, result: str) -> None:
        """An RFC 5626 CRLF keep-alive: sent, answered, unanswered (connection closed), unsupported."""

    def connection_refused(self, listener: str, reason: str) -> None:
        """An accepted connection closed at once (issue 14, bounded connections): ``max_connections``,
        ``per_source`` (unproven connections from its address) or ``handshake_rate`` (before its TLS handshake)."""

    def connection_closed(self, listener: str, reason: str) -> None:
        """An open connection closed by a rule: ``unauthenticated_idle`` (bound to no peer, no valid SIP message
        for limits.unauthenticated_idle_seconds) or ``trust_reload`` (its certificate no longer binds it to
        its peer)."""

    def topology_problem(self, listener: str, kind: str) -> None:
        """What an inbound TLS connection showed about the setup (proxy/net/inbound_check.py): ``wrong_listener``,
        ``unlisted_certificate``, ``no_certificate``."""

    def certificate_expiry(self, role: str, name: str, not_after: float | None) -> None:
        """A certificate's not-after time (Unix seconds), labelled by configured names only: role ``ours`` (a
        TLS listener's name, or ``xmpp`` for an [xmpp] cert_chain of its own) read at start and on each reload;
        ``peer`` (a [[peers]] name) when an inbound TLS connection binds to that peer; ``route`` (a route name)
        when a connection to one of its next hops first answers. None: the name left the configuration."""
