"""Messages the proxy core writes itself rather than relays: the CANCEL and ACK of its client
transactions (§9.1, §17.1.1.3), its health-check OPTIONS (RFC 3261 §11), the answer to a request
that did not parse (§8.2, §21.4), a retry's new branch, and what a finished transaction keeps."""

from __future__ import annotations

import secrets

from proxy.relay.forwarding import via_value
from proxy.relay.state import ClientTx
from proxy.relay.types import Flow, Identity, NextHop
from proxy.sip.errors import SipError
from proxy.sip.headers import canonical
from proxy.sip.message import Headers, Request, Response

#: What sipfed answers in Allow to OPTIONS addressed to itself.
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, SUBSCRIBE, NOTIFY, PUBLISH, INFO, REFER, UPDATE"
OPTIONS_EXTRA = (("Allow", ALLOW), ("Accept", "application/sdp, application/pidf+xml, text/plain"), ("Supported", ""))


def health_check(identity: Identity, hop: NextHop, branch: str, from_tag: str, number: int) -> Request:
    """An OPTIONS to ``hop`` from ``identity``. Max-Forwards 0: the destination answers it itself and
    never relays it (§16.3 step 3), so a proxy that does not know its own name cannot bounce it around."""
    uri = f"sip:{hop.tls_name or hop.host}:{hop.port};transport={hop.transport}"
    headers = Headers()
    headers.append("Via", via_value(identity, hop.transport, branch))
    headers.append("Max-Forwards", "0")
    headers.append("From", f"<sip:sipfed@{identity.fqdn}>;tag={from_tag}")
    headers.append("To", f"<{uri}>")
    headers.append("Call-ID", f"hc{secrets.token_hex(8)}@{identity.fqdn}")
    headers.append("CSeq", f"{number % 2**31} OPTIONS")
    headers.append("Content-Length", "0")
    return Request(headers, b"", "SIP/2.0", "OPTIONS", uri)


def with_branch(request: Request, old: str, new: str) -> Request:
    """A copy of a forwarded request with a new branch on our Via: a new client transaction (§16.6 step 8)."""
    copy = request.copy()
    top = copy.headers.get("via") or ""
    copy.headers.set("Via", top.replace(f"branch={old}", f"branch={new}"))
    return copy


def reply_to_unparsed(data: bytes, exc: SipError) -> tuple[bytes | None, str]:
    """The answer to a request that did not parse, if it can be addressed (Via, From, To, Call-ID, CSeq
    copied as written); else None and why it is dropped (a response, an ACK, no Via)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    start = lines[0]
    if start.startswith("SIP/") or start.startswith("ACK ") or not start.strip():
        return None, "malformed message"
    copied = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon and canonical(name.strip()) in ("via", "from", "to", "call-id", "cseq"):
            copied.append(name.strip(), value.strip())
    if "via" not in copied:
        return None, "malformed request (no Via to answer)"
    for name, value in exc.headers:
        copied.append(name, value)
    copied.append("Content-Length", "0")
    reason = " ".join(exc.reason.split())
    return Response(copied, b"", "SIP/2.0", exc.status, reason).to_bytes(), ""


def hop_request(ctx: ClientTx, method: str, to: str) -> Request:
    """A CANCEL or ACK built from the forwarded request of a client transaction (§9.1, §17.1.1.3)."""
    fwd = ctx.request
    headers = Headers()
    headers.append("Via", fwd.headers.get("via") or "")
    for value in fwd.headers.get_all("route"):
        headers.append("Route", value)
    headers.append("Max-Forwards", "70")
    headers.append("From", fwd.headers.get("from") or "")
    headers.append("To", to)
    headers.append("Call-ID", fwd.call_id)
    headers.append("CSeq", f"{fwd.cseq[0]} {method}")
    headers.append("Content-Length", "0")
    return Request(headers, b"", "SIP/2.0", method, fwd.uri)


def log_fields(call_id: str, flow: Flow | None, route: str | None = None) -> dict[str, str]:
    """Log fields: the Call-ID and where the request came from."""
    out = {"call_id": call_id}
    if flow is not None:
        out["peer"] = flow.peer or "none"
        out["remote"] = f"{flow.remote[0]}:{flow.remote[1]}"
    if route:
        out["route"] = route
    return out
