"""The gateway's SIP side as a user agent (RFC 3261 §8, §12): requests it originates for XMPP contacts,
responses it gives, and the dialogs of subscriptions and IM sessions. Messages are built as ``Request`` /
``Response`` objects and go through sipfed's own proxy core (its admission, routes and Record-Route), never
straight onto the network.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from proxy.sip.errors import SipError
from proxy.sip.headers import parse_name_addr
from proxy.sip.message import Headers, Request, Response, make_response
from proxy.xmpp.store import Dialog

VIA_HOST = "xmpp-gateway.invalid"
"""Our Via sent-by: RFC 6761's ``.invalid``, a name that resolves nowhere (responses come back on the
in-process flow, never by Via)."""
USER_AGENT = "sipfed-xmpp-gateway"
MAGIC = "z9hG4bK"


def new_tag() -> str:
    """RFC 3261 §19.3: at least 32 random bits."""
    return secrets.token_hex(6)


def new_branch() -> str:
    """RFC 3261 §8.1.1.7: the magic cookie and 64 random bits."""
    return MAGIC + "gw" + secrets.token_hex(8)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(10)}@{host}"


def build_request(
    method: str,
    uri: str,
    *,
    from_uri: str,
    from_tag: str,
    to_uri: str,
    to_tag: str = "",
    call_id: str,
    cseq: int,
    contact: str | None = None,
    routes: Iterable[str] = (),
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> tuple[Request, str]:
    """RFC 3261 §8.1.1: a request with the mandatory header fields, and its branch."""
    branch = new_branch()
    items = [
        ("via", "Via", f"SIP/2.0/XMPP {VIA_HOST};branch={branch}"),
        ("max-forwards", "Max-Forwards", "70"),
        *[("route", "Route", route) for route in routes],
        ("from", "From", f"<{from_uri}>;tag={from_tag}"),
        ("to", "To", f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else "")),
        ("call-id", "Call-ID", call_id),
        ("cseq", "CSeq", f"{cseq} {method}"),
    ]
    headers = Headers(items)
    if contact:
        headers.append("Contact", f"<{contact}>")
    for name, value in extra:
        headers.append(name, value)
    headers.append("User-Agent", USER_AGENT)
    if content_type and body:
        headers.append("Content-Type", content_type)
    headers.append("Content-Length", str(len(body)))
    return Request(headers, body, "SIP/2.0", method, uri), branch


def in_dialog(
    dialog: Dialog,
    method: str,
    *,
    contact: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> tuple[Request, str]:
    """RFC 3261 §12.2.1.1: a request within ``dialog`` (its CSeq advanced)."""
    dialog.local_cseq += 1
    return build_request(
        method,
        dialog.remote_target,
        from_uri=dialog.local_uri,
        from_tag=dialog.local_tag,
        to_uri=dialog.remote_uri,
        to_tag=dialog.remote_tag,
        call_id=dialog.call_id,
        cseq=dialog.local_cseq,
        contact=contact,
        routes=dialog.route_set,
        extra=extra,
        body=body,
        content_type=content_type,
    )


def uac_dialog(request: Request, response: Response, local_tag: str) -> Dialog:
    """RFC 3261 §12.1.2: the dialog a 2xx to our request creates (route set: Record-Route reversed)."""
    contact = response.headers.get("contact")
    target = str(parse_name_addr(contact).uri) if contact else request.uri
    return Dialog(
        call_id=request.call_id,
        local_tag=local_tag,
        remote_tag=response.to.param("tag") or "",
        local_uri=str(request.from_.uri),
        remote_uri=str(request.to.uri),
        remote_target=target,
        route_set=tuple(reversed(response.headers.get_all("record-route"))),
        local_cseq=request.cseq[0],
    )


def uas_dialog(request: Request, local_tag: str) -> Dialog:
    """RFC 3261 §12.1.1: the dialog we accept (route set: Record-Route in order). Raises ``SipError`` 400
    when the request gives no Contact to send in-dialog requests to."""
    contact = request.headers.get("contact")
    if not contact:
        raise SipError("Bad Request (no Contact: nowhere to send NOTIFY)", 400)
    return Dialog(
        call_id=request.call_id,
        local_tag=local_tag,
        remote_tag=request.from_.param("tag") or "",
        local_uri=str(request.to.uri),
        remote_uri=str(request.from_.uri),
        remote_target=str(parse_name_addr(contact).uri),
        route_set=tuple(request.headers.get_all("record-route")),
        local_cseq=0,
    )


def answer(request: Request, status: int, reason: str, to_tag: str, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """RFC 3261 §8.2.6: our response (To tag added to any but a 100)."""
    return make_response(request, status, reason, to_tag=to_tag, extra=extra).to_bytes()


def expires_of(message: Request | Response, default: int) -> int:
    """RFC 6665 §4.1.2.1, §4.2.1.1: the Expires header field, else ``default``."""
    value = (message.headers.get("expires") or "").strip()
    return int(value) if value.isdigit() and len(value) < 10 else default


def subscription_state(request: Request) -> tuple[str, dict[str, str]]:
    """RFC 6665 §8.2.3: ``active;expires=600`` -> ("active", {"expires": "600"})."""
    value = request.headers.get("subscription-state") or ""
    state, *params = [part.strip() for part in value.split(";")]
    parsed = {}
    for param in params:
        name, _, val = param.partition("=")
        parsed[name.strip().lower()] = val.strip()
    return state.lower(), parsed
