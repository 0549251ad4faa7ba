"""A stream another server opened to us (RFC 6120 §4-§6): we are its Receiving Server, and the Authoritative
Server of our own domains for its dialback checks (XEP-0220 §2.4).

Rules, each enforced per partner exactly as ``[[xmpp.partners]]`` says:
1. The header must be addressed to one of our domains (``host-unknown``) and come from a configured partner's
   domain (``policy-violation``: nobody else federates); version 1.0 (``unsupported-version``).
2. STARTTLS is offered unless ``tls = "not_supported"``, with ``<required/>`` for ``tls = "required"``; until it
   is done, a ``required`` partner gets nothing but the offer (RFC 6120 §5.3.1).
3. SASL EXTERNAL (XEP-0178) is offered only after TLS, unless ``sasl = "not_supported"``, and only when the
   partner's certificate chains to our CAs and names its domain (RFC 6120 §13.7.1.2); a ``sasl = "required"``
   partner without such a certificate is refused at once (``not-authorized``, naming what is wrong).
4. Dialback is offered when ``dialback = true`` and SASL is not required; each key is checked with the
   partner's Authoritative Server (the edge does that) before the domain counts as authenticated.
5. ``db:verify`` asks us, as Authoritative Server, whether a key we generated is genuine: answered whatever
   the stream's authentication, by recomputing it (XEP-0185).
6. Stanzas flow only between authenticated domain pairs: from an unauthenticated domain ``not-authorized``,
   a ``from`` outside the stream's domains ``invalid-from``, a ``to`` that is not ours ``host-unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from proxy.xmpp.dialback import key_is_valid
from proxy.xmpp.jid import JidError, parse_jid
from proxy.xmpp.policy import Partner, XmppConfig
from proxy.xmpp.stream import (
    STANZA_TAGS,
    Authenticated,
    DialbackRequest,
    Incoming,
    StartTls,
    StreamBase,
    sasl_external_authzid,
)
from proxy.xmpp.xml import (
    NS_DIALBACK,
    NS_DIALBACK_FEATURE,
    NS_SASL,
    NS_STANZAS,
    NS_STREAM,
    NS_TLS,
    StreamOpened,
    element,
    stream_header,
)

_DB_RESULT = f"{{{NS_DIALBACK}}}result"
_DB_VERIFY = f"{{{NS_DIALBACK}}}verify"


@dataclass(slots=True)
class InboundStream(StreamBase):
    """One inbound connection, across its stream restarts."""

    config: XmppConfig | None = None
    stream_id: str = ""
    """Ours for this connection (a new one after each restart would break pending dialback keys)."""
    secret: str = ""
    """XEP-0185's secret, for rule 5."""
    tls_available: bool = True
    """The edge has a certificate to offer STARTTLS with."""
    local: str = ""
    """Our domain the header named."""
    remote: str = ""
    """The partner domain the header named."""
    partner: Partner | None = None
    authenticated: set[str] = field(default_factory=set)
    """Remote domains proven on this stream (rule 6)."""
    pending: set[tuple[str, str]] = field(default_factory=set)
    """(originating, receiving) dialback keys being verified."""
    sasl_offered: bool = False

    # -- rules 1-4: the header and the features -------------------------------------------------------

    def _on_header(self, event: StreamOpened) -> None:
        assert self.config is not None
        to = (event.attrs.get("to") or "").lower().rstrip(".")
        remote = (event.attrs.get("from") or "").lower().rstrip(".")
        header = stream_header(to or (self.config.domains[0]), remote, self.stream_id)
        if not event.attrs.get("version", "").startswith("1."):
            self.fail("unsupported-version", "sipfed speaks XMPP streams version 1.0 (RFC 6120 §4.7.5)", header)
        elif to not in self.config.domains:
            self.fail("host-unknown", f"{to or 'no to'} is not a domain of this server", header)
        elif self.remote and remote != self.remote:
            self.fail("invalid-from", f"the restarted stream says from {remote}, not {self.remote}", header)
        elif (partner := self.config.partner_for(remote)) is None:
            why = f"{remote} is not an XMPP allowed partner" if remote else "the stream header names no 'from'"
            self.fail("policy-violation", f"{why} of {to}; add it under [[xmpp.partners]] to federate", header)
        else:
            self.local, self.remote, self.partner = to, remote, partner
            # XEP-0220 §2.1: the db prefix says we do dialback; not to a partner with dialback = false.
            self.send(header if partner.dialback else stream_header(to, remote, self.stream_id, dialback=False))
            self._features(partner)

    def _features(self, partner: Partner) -> None:
        offers: list[Element] = []
        if not self.secure and partner.tls != "not_supported" and self.tls_available:
            required = [element(f"{{{NS_TLS}}}required")] if partner.tls == "required" else []
            offers.append(element(f"{{{NS_TLS}}}starttls", None, None, *required))
        if self.secure or partner.tls != "required":
            can_sasl = self.secure and partner.sasl != "not_supported" and self.cert.valid_for(self.remote)
            refused = partner.sasl == "required" and not can_sasl and self.remote not in self.authenticated
            if refused and (self.secure or not offers):
                why = self.cert.why_not(self.remote) if self.secure else "the stream is not encrypted"
                self.fail("not-authorized", f"{partner.describe()} requires SASL EXTERNAL, but {why}")
                return
            if can_sasl and self.remote not in self.authenticated:
                self.sasl_offered = True
                mechanism = element(f"{{{NS_SASL}}}mechanism", None, "EXTERNAL")
                offers.append(element(f"{{{NS_SASL}}}mechanisms", None, None, mechanism))
            if partner.dialback and partner.sasl != "required":
                offers.append(
                    element(
                        f"{{{NS_DIALBACK_FEATURE}}}dialback", None, None, element(f"{{{NS_DIALBACK_FEATURE}}}errors")
                    )
                )
        self.send_element(element(f"{{{NS_STREAM}}}features", None, None, *offers))

    # -- what the other server sends ------------------------------------------------------------------------

    def _on_element(self, item: Element) -> None:
        partner = self.partner
        assert partner is not None
        tag = item.tag
        if tag == f"{{{NS_TLS}}}starttls":
            self._starttls(partner)
        elif tag == _DB_VERIFY and not item.get("type"):
            self._db_verify(item)
        elif not self.secure and partner.tls == "required":
            self.fail(
                "policy-violation",
                f"{partner.describe()}: TLS is required before anything else (tls = "
                '"required"); the partner must use STARTTLS',
            )
        elif tag == f"{{{NS_SASL}}}auth":
            self._sasl(item)
        elif tag == _DB_RESULT and not item.get("type"):
            self._db_result(item, partner)
        elif tag in STANZA_TAGS:
            self._stanza(item)
        elif tag == f"{{{NS_STREAM}}}error":
            self.ended = True
        else:
            self.fail("unsupported-stanza-type", f"sipfed does not handle {tag} on a server-to-server stream")

    def _starttls(self, partner: Partner) -> None:
        if self.secure or partner.tls == "not_supported" or not self.tls_available:
            why = "TLS is already up" if self.secure else f'{partner.describe()} has tls = "not_supported"'
            self.send_element(element(f"{{{NS_TLS}}}failure"))
            self.fail("policy-violation", f"STARTTLS refused: {why}")
            return
        self.send_element(element(f"{{{NS_TLS}}}proceed"))
        self.events.append(StartTls())

    def _sasl(self, item: Element) -> None:
        """XEP-0178 §4 steps 7-9, RFC 6120 §6.4: EXTERNAL, with the authzid empty or the stream's domain."""
        if not self.sasl_offered or item.get("mechanism") != "EXTERNAL":
            self._sasl_failure("invalid-mechanism", "only EXTERNAL is offered, and only with a valid certificate")
            return
        authzid = sasl_external_authzid(item.text)
        if authzid is None:
            self._sasl_failure("incorrect-encoding", "the authorization identity is not base64")
        elif authzid not in ("", self.remote):
            self._sasl_failure("invalid-authzid", f"{authzid} is not the stream's domain {self.remote}")
        else:
            self.send_element(element(f"{{{NS_SASL}}}success"))
            self.authenticated.add(self.remote)
            self.sasl_offered = False
            self.events.append(Authenticated(self.local, self.remote, "sasl"))
            self.xml.restart()  # RFC 6120 §6.4.6: the initiating server opens a new stream

    def _sasl_failure(self, condition: str, why: str) -> None:
        self.send_element(element(f"{{{NS_SASL}}}failure", None, None, element(f"{{{NS_SASL}}}{condition}")))
        self.fail("not-authorized", f"SASL EXTERNAL from {self.remote} refused ({condition}): {why}")

    def _db_result(self, item: Element, partner: Partner) -> None:
        """XEP-0220 §2.1.1 step 4 as Receiving Server: a key to verify with the Authoritative Server."""
        assert self.config is not None
        originating = (item.get("from") or "").lower()
        receiving = (item.get("to") or "").lower()
        if not partner.dialback or partner.sasl == "required":
            why = "dialback = false" if not partner.dialback else 'sasl = "required"'
            self.fail("not-authorized", f"{partner.describe()}: dialback refused ({why})")
        elif receiving not in self.config.domains:
            self._db_error(item, "item-not-found", f"{receiving} is not a domain of this server")
        elif originating not in partner.domains:
            self._db_error(item, "forbidden", f"{originating} is not a domain of partner {partner.name}")
        elif (originating, receiving) not in self.pending:
            self.pending.add((originating, receiving))
            self.events.append(DialbackRequest(originating, receiving, self.stream_id, (item.text or "").strip()))

    def _db_error(self, item: Element, condition: str, text: str) -> None:
        """XEP-0220 §2.4 (dialback errors): the request fails, the stream stays."""
        reply = element(
            _DB_RESULT,
            {"from": item.get("to") or "", "to": item.get("from") or "", "type": "error"},
            None,
            element(
                "{jabber:server}error",
                {"type": "cancel"},
                None,
                element(f"{{{NS_STANZAS}}}{condition}"),
                element(f"{{{NS_STANZAS}}}text", None, text),
            ),
        )
        self.send_element(reply)

    def dialback_verified(self, originating: str, receiving: str, valid: bool, problem: str = "") -> None:
        """The Authoritative Server's verdict (XEP-0220 §2.1.2 step 10): tell the Originating Server; an
        invalid key ends the stream. ``problem``: the check could not be made (then an error, not a verdict)."""
        if (originating, receiving) not in self.pending or self.ended:
            return
        self.pending.discard((originating, receiving))
        if problem:
            fake = element(_DB_RESULT, {"from": originating, "to": receiving})
            self._db_error(fake, "remote-server-timeout", problem)
            return
        kind = "valid" if valid else "invalid"
        self.send_element(element(_DB_RESULT, {"from": receiving, "to": originating, "type": kind}))
        if valid:
            self.authenticated.add(originating)
            self.events.append(Authenticated(receiving, originating, "dialback"))
        else:
            self.fail("not-authorized", f"the Authoritative Server of {originating} says the dialback key is invalid")

    def _db_verify(self, item: Element) -> None:
        """Rule 5, XEP-0220 §2.1.2 step 9: are we the origin of this key?"""
        assert self.config is not None
        receiving = (item.get("from") or "").lower()
        originating = (item.get("to") or "").lower()
        stream_id = item.get("id") or ""
        ours = originating in self.config.domains
        valid = ours and key_is_valid(self.secret, receiving, originating, stream_id, item.text or "")
        self.send_element(
            element(
                _DB_VERIFY,
                {"from": originating, "to": receiving, "id": stream_id, "type": "valid" if valid else "invalid"},
            )
        )

    def _stanza(self, item: Element) -> None:
        """Rule 6 (RFC 6120 §4.9.3.10, §4.9.3.12, §8.1.1.2)."""
        try:
            sender = parse_jid(item.get("from") or "")
            target = parse_jid(item.get("to") or "")
        except JidError as exc:
            self.fail("improper-addressing", f"a stanza with a bad address: {exc}")
            return
        if sender.domain not in self.authenticated:
            self.fail("not-authorized", f"{sender.domain} has not authenticated on this stream (SASL or dialback)")
        elif self.partner is None or sender.domain not in self.partner.domains:
            self.fail("invalid-from", f"{sender.domain} is not a domain of partner {self.remote}")
        elif self.config is None or target.domain not in self.config.domains:
            self.fail("host-unknown", f"{target.domain} is not a domain of this server")
        else:
            self.events.append(Incoming(item, target.domain, sender.domain))
