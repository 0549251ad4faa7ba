"""Subscription dialogs seen through sipfed (RFC 6665), for the active-subscriptions gauge."""

from __future__ import annotations

from proxy.relay.observe import Observer, event_label
from proxy.sip.message import Request, Response
from proxy.sip.transaction import Timer, TimerQueue


class SubscriptionBook:
    """Created, refreshed and terminated subscriptions, each forgotten when it expires unrefreshed."""

    def __init__(self, timers: TimerQueue, observer: Observer) -> None:
        self.timers = timers
        self.observer = observer
        #: (Call-ID, subscriber tag) -> (event package, expiry timer, the subscriber's trusted peer or None).
        self.active: dict[tuple[str, str], tuple[str, Timer, str | None]] = {}

    def track(self, request: Request, response: Response, now: float, peer: str | None = None) -> None:
        """RFC 6665 §4.1.2: a 2xx to SUBSCRIBE starts or refreshes a subscription (Expires 0 ends it);
        a NOTIFY whose Subscription-State is terminated ends it (§4.1.3). ``peer``: the sender's peer."""
        if request.method == "SUBSCRIBE":
            key = (request.call_id, request.from_.param("tag") or "")
            expires_text = (response.headers.get("expires") or request.headers.get("expires") or "600").strip()
            expires = int(expires_text) if expires_text.isascii() and expires_text.isdigit() else 600
        else:
            key = (request.call_id, request.to.param("tag") or "")
            state = (request.headers.get("subscription-state") or "").lower()
            if not state.startswith("terminated") or key not in self.active:
                return
            expires = 0
        event = event_label(request.headers.get("event"))
        known = self.active.pop(key, None)
        if known is not None:
            known[1].cancel()
        if expires == 0:
            if known is not None:
                self.observer.subscription(known[0], "terminated")
            return
        self.observer.subscription(event, "refreshed" if known else "created")
        timer = self.timers.schedule(now + min(expires, 86_400) + 32, lambda t: self.expire(key))
        self.active[key] = (event, timer, peer if known is None else known[2])

    def expire(self, key: tuple[str, str]) -> None:
        known = self.active.pop(key, None)
        if known is not None:
            self.observer.subscription(known[0], "terminated")
