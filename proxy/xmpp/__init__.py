"""XMPP server-to-server federation for sipfed's SIP domains, sans-IO (issue 15).

- ``xml``: the restricted XML stream (RFC 6120 §11) fed bytes, handing back stream events and stanzas;
  the serializer for what we send.
- ``jid``: JIDs (RFC 7622) and the SIP <-> XMPP address mapping (RFC 7247 §5).
- ``dialback``: Server Dialback keys (XEP-0220, XEP-0185).
- ``stream``: the S2S stream state machines (RFC 6120 §4-§6, XEP-0178, XEP-0220): inbound, outbound, verify.
- ``policy``: ``[xmpp]`` and ``[[xmpp.partners]]`` in Lync's vocabulary, checked.
- ``presence``, ``errors``: the RFC 8048 presence and RFC 7247 §7 error mappings.
- ``gateway``, ``sipua``: the SIP <-> XMPP gateway (RFC 7572 messages, RFC 8048 subscriptions).

Nothing here opens a socket or reads a clock: ``proxy/net/xmpp*.py`` is the asyncio edge.
"""
