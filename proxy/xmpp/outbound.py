"""A stream sipfed opens to a partner (RFC 6120 §4-§6): we are the Initiating (Originating) Server for one of
our domains, or the Receiving Server asking the partner's Authoritative Server about a key (XEP-0220 §2.1.2).

Rules, per partner as ``[[xmpp.partners]]`` says:
1. STARTTLS when offered, unless ``tls = "not_supported"``; a ``tls = "required"`` partner that does not offer
   it is given up on, and so is one that requires TLS when we may not use it.
2. The partner's certificate is checked against its domain (RFC 6120 §13.7.1.2, RFC 6125); with ``sasl =
   "required"`` a certificate that fails is the end of the stream. Otherwise the stream may go on encrypted,
   authenticated by dialback (the partner is then known by DNS alone, as XEP-0220 §1 says).
3. SASL EXTERNAL (XEP-0178) when the partner offers it (it does when it accepts our certificate), unless
   ``sasl = "not_supported"``; ``sasl = "required"`` and no offer: given up, naming why.
4. Else dialback (XEP-0220 §2.1.1) when ``dialback = true``, with a key per XEP-0185.
5. A verify-only stream (``verify_only``) negotiates TLS and then only asks ``db:verify`` questions.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from proxy.xmpp.dialback import dialback_key
from proxy.xmpp.policy import Partner
from proxy.xmpp.stream import (
    DialbackAnswer,
    Failed,
    PeerCert,
    Ready,
    StartTls,
    StreamBase,
    remote_stream_error,
)
from proxy.xmpp.xml import (
    NS_DIALBACK,
    NS_DIALBACK_FEATURE,
    NS_SASL,
    NS_STREAM,
    NS_TLS,
    StreamOpened,
    element,
    stream_header,
)

_DB_RESULT = f"{{{NS_DIALBACK}}}result"
_DB_VERIFY = f"{{{NS_DIALBACK}}}verify"


@dataclass(slots=True)
class OutboundStream(StreamBase):
    """One outbound connection, across its stream restarts."""

    local: str = ""
    """Our domain (the stream's ``from``)."""
    remote: str = ""
    """The partner's domain (the stream's ``to``)."""
    partner: Partner | None = None
    secret: str = ""
    """XEP-0185's secret (rule 4)."""
    tls_available: bool = True
    """The edge can start TLS (it has a client context)."""
    verify_only: bool = False
    """Rule 5."""
    remote_id: str = ""
    """The id the partner gave the stream (dialback keys are bound to it)."""
    phase: str = "header"
    """header, features, starttls, sasl, dialback, ready."""
    method: str = ""
    """How we authenticated: sasl or dialback."""
    questions: list[tuple[str, str, str, str]] = field(default_factory=list)
    """db:verify to ask once negotiated: (receiving, originating, stream id, key)."""
    ready: bool = False

    def start(self) -> None:
        """RFC 6120 §4.2: our stream header (again after TLS and SASL, RFC 6120 §5.4.3.3, §6.4.6)."""
        self.send(stream_header(self.local, self.remote))
        self.phase = "header"

    def ask(self, receiving: str, originating: str, stream_id: str, key: str) -> None:
        """XEP-0220 §2.1.2 step 8: is this key from ``originating``? Sent once the stream is negotiated."""
        self.questions.append((receiving, originating, stream_id, key))
        if self.ready or (self.verify_only and self.phase == "verify"):
            self._ask_all()

    def _ask_all(self) -> None:
        for receiving, originating, stream_id, key in self.questions:
            attrs = {"from": receiving, "to": originating, "id": stream_id}
            self.send_element(element(_DB_VERIFY, attrs, key))
        self.questions.clear()

    def _on_header(self, event: StreamOpened) -> None:
        self.remote_id = event.attrs.get("id", "")
        self.phase = "features"
        if not event.attrs.get("version", "").startswith("1."):
            # RFC 6120 §4.7.5: a pre-1.0 server sends no features; only dialback without TLS is possible.
            self._authenticate(None)

    def _on_element(self, item: Element) -> None:
        tag = item.tag
        if tag == f"{{{NS_STREAM}}}features":
            self._on_features(item)
        elif tag == f"{{{NS_TLS}}}proceed" and self.phase == "starttls":
            self.events.append(StartTls())
        elif tag == f"{{{NS_SASL}}}success" and self.phase == "sasl":
            self.method = "sasl"
            self.xml.restart()
            self.start()  # the features of the new stream make it ready
        elif tag == _DB_RESULT and item.get("type") and self.phase == "dialback":
            self._dialback_result(item)
        elif tag == _DB_VERIFY and item.get("type"):
            self._verify_answer(item)
        elif tag == f"{{{NS_STREAM}}}error":
            condition, text = remote_stream_error(item)
            self.ended = True
            words = f"{self.remote} closed the stream: {condition}" + (f" ({text})" if text else "")
            self.events.append(Failed(condition, words, ours=False))
        elif tag in (f"{{{NS_TLS}}}failure", f"{{{NS_SASL}}}failure"):
            what = "STARTTLS" if tag.startswith(f"{{{NS_TLS}}}") else "SASL EXTERNAL"
            reason = next((child.tag.rpartition("}")[2] for child in item), "failure")
            self.fail("policy-violation", f"{self.remote} refused our {what} ({reason})")
        # Anything else (a stanza on our outbound stream) is not for us: streams are one-way (RFC 6120 §2.5).

    def tls_started(self, cert: PeerCert) -> None:
        StreamBase.tls_started(self, cert)  # (slotted dataclasses: no zero-argument super())
        self.start()

    def _on_features(self, features: Element) -> None:
        partner = self.partner
        assert partner is not None
        if self.method:  # the stream restarted after SASL (RFC 6120 §6.4.6): nothing more to negotiate
            self._now_ready()
            return
        starttls = features.find(f"{{{NS_TLS}}}starttls")
        if not self.secure:
            if starttls is not None and partner.tls != "not_supported" and self.tls_available:
                self.send_element(element(f"{{{NS_TLS}}}starttls"))
                self.phase = "starttls"
                return
            if partner.tls == "required":
                self.fail(
                    "policy-violation",
                    f'{self.remote} does not offer STARTTLS, and {partner.describe()} requires TLS (tls = "required")',
                )
                return
            if starttls is not None and starttls.find(f"{{{NS_TLS}}}required") is not None:
                self.fail(
                    "policy-violation",
                    f"{self.remote} requires TLS, and {partner.describe()} has tls = "
                    '"not_supported"; set tls = "optional" or "required"',
                )
                return
        elif partner.sasl == "required" and not self.cert.valid_for(self.remote):
            self.fail(
                "policy-violation",
                f"{partner.describe()} requires SASL with certificates, and "
                f"{self.remote}'s TLS certificate is not valid: {self.cert.why_not(self.remote)}",
            )
            return
        self._authenticate(features)

    def _authenticate(self, features: Element | None) -> None:
        partner = self.partner
        assert partner is not None
        if self.verify_only:
            self.phase = "verify"
            self._ask_all()
            return
        mechanisms = features.find(f"{{{NS_SASL}}}mechanisms") if features is not None else None
        offered = {(m.text or "").strip() for m in mechanisms} if mechanisms is not None else set()
        if self.secure and partner.sasl != "not_supported" and "EXTERNAL" in offered:
            # XEP-0178 §4 step 6: the authorization identity is our domain.
            authzid = base64.b64encode(self.local.encode()).decode()
            self.send_element(element(f"{{{NS_SASL}}}auth", {"mechanism": "EXTERNAL"}, authzid))
            self.phase = "sasl"
            return
        if partner.sasl == "required":
            why = "did not offer SASL EXTERNAL" + (
                " after TLS: it does not accept our certificate for " + self.local if self.secure else ""
            )
            self.fail("policy-violation", f"{self.remote} {why}, and {partner.describe()} requires SASL")
            return
        dialback = features is None or features.find(f"{{{NS_DIALBACK_FEATURE}}}dialback") is not None
        if partner.dialback and dialback:
            key = dialback_key(self.secret, self.remote, self.local, self.remote_id)
            self.send_element(element(_DB_RESULT, {"from": self.local, "to": self.remote}, key))
            self.phase = "dialback"
            return
        why = "dialback = false" if not partner.dialback else f"{self.remote} does not offer dialback"
        self.fail("policy-violation", f"no way to authenticate to {self.remote}: no SASL EXTERNAL offered and {why}")

    def _dialback_result(self, item: Element) -> None:
        """XEP-0220 §2.1.1 step 11."""
        if item.get("type") == "valid":
            self.method = "dialback"
            self._now_ready()
            return
        condition = next((child.tag.rpartition("}")[2] for error in item for child in error), "")
        self.fail(
            "not-authorized",
            f"{self.remote} refused our dialback key for {self.local} "
            f"({item.get('type')}{': ' + condition if condition else ''}); is _xmpp-server._tcp.{self.local} "
            "pointing at this sipfed, and does it reach our listener?",
        )

    def _verify_answer(self, item: Element) -> None:
        """XEP-0220 §2.1.2 step 9: the Authoritative Server's answer to ``ask``."""
        self.events.append(
            DialbackAnswer(
                (item.get("to") or "").lower(),
                (item.get("from") or "").lower(),
                item.get("id") or "",
                item.get("type") == "valid",
            )
        )

    def _now_ready(self) -> None:
        self.phase = "ready"
        self.ready = True
        self.events.append(Ready(self.local, self.remote, self.method))
        self._ask_all()
