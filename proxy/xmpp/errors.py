"""Errors both ways between SIP responses and XMPP stanza errors (RFC 7247 §7), and the stanza errors themselves
(RFC 6120 §8.3).

Rules:
1. RFC 7247 §7.2, SIP to XMPP: the response code picks the defined condition (``SIP_TO_XMPP``); any 3xx is
   ``redirect``. A code the table does not name is read as the x00 code of its class, as RFC 3261 §8.1.3.2 tells a
   client to read an unknown response (499 as 400, 580 as 500, 699 as 600).
2. The error type is the one RFC 6120 §8.3.3 recommends for the condition (``ERROR_TYPE``); where it offers two
   (feature-not-implemented, policy-violation, unexpected-request) the first.
3. RFC 7247 §7.1, XMPP to SIP: the condition picks the response code (``XMPP_TO_SIP``); where the RFC offers two
   codes the one a gateway can send without more context: 410 for gone (301 needs the new address as a Contact),
   404 for remote-server-not-found, 501 for feature-not-implemented, 400 for unexpected-request. A condition no
   RFC defines is a 500 whose reason phrase names it.
4. RFC 6120 §8.3.1: an error stanza is the original with 'from' and 'to' swapped, ``type='error'``, its payload
   kept, and one ``<error>``; an error stanza is never answered with another (the loop a hostile peer would want).
"""

from __future__ import annotations

import copy
import re
from xml.etree.ElementTree import Element

from proxy.xmpp.xml import NS_STANZAS, XML_LANG, element

ERROR_TYPES = frozenset({"auth", "cancel", "continue", "modify", "wait"})
"""RFC 6120 §8.3.2."""

#: Rule 2: RFC 6120 §8.3.3 defined condition -> the error type it recommends.
ERROR_TYPE: dict[str, str] = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}

#: Rule 1: RFC 7247 §7.2, SIP response code -> XMPP defined condition (3xx apart: all are redirect).
SIP_TO_XMPP: dict[int, str] = {
    400: "bad-request",
    401: "not-authorized",
    402: "bad-request",  # Payment Required is reserved; XMPP dropped payment-required (RFC 6120 §8.3.3)
    403: "forbidden",
    404: "item-not-found",
    405: "feature-not-implemented",
    406: "not-acceptable",
    407: "not-authorized",
    408: "remote-server-timeout",
    410: "gone",
    413: "policy-violation",
    414: "policy-violation",
    415: "bad-request",
    416: "jid-malformed",
    420: "feature-not-implemented",
    421: "feature-not-implemented",
    423: "resource-constraint",
    430: "recipient-unavailable",  # Flow Failed (RFC 5626 §11.5)
    439: "feature-not-implemented",  # First Hop Lacks Outbound Support (RFC 5626 §11.6)
    440: "policy-violation",  # Max-Breadth Exceeded (RFC 5393 §5.1)
    480: "recipient-unavailable",
    481: "item-not-found",
    482: "not-acceptable",
    483: "not-acceptable",
    484: "item-not-found",
    485: "item-not-found",
    486: "recipient-unavailable",
    487: "service-unavailable",
    488: "not-acceptable",
    489: "policy-violation",  # Bad Event (RFC 6665 §8.3.2)
    491: "unexpected-request",
    493: "bad-request",
    500: "internal-server-error",
    501: "feature-not-implemented",
    502: "remote-server-not-found",
    503: "service-unavailable",
    504: "remote-server-timeout",
    505: "not-acceptable",
    513: "policy-violation",
    600: "service-unavailable",
    603: "service-unavailable",
    604: "item-not-found",
    606: "not-acceptable",
}

#: Rule 3: RFC 7247 §7.1, XMPP defined condition -> SIP response.
XMPP_TO_SIP: dict[str, tuple[int, str]] = {
    "bad-request": (400, "Bad Request"),
    "conflict": (400, "Bad Request"),  # SIP has no 409 since RFC 3261
    "feature-not-implemented": (501, "Not Implemented"),
    "forbidden": (403, "Forbidden"),
    "gone": (410, "Gone"),
    "internal-server-error": (500, "Server Internal Error"),
    "item-not-found": (404, "Not Found"),
    "jid-malformed": (400, "Bad Request"),
    "not-acceptable": (406, "Not Acceptable"),
    "not-allowed": (405, "Method Not Allowed"),
    # RFC 3261 §21.4.2: a 401 carries a WWW-Authenticate challenge; the gateway that sends one adds it.
    "not-authorized": (401, "Unauthorized"),
    "policy-violation": (403, "Forbidden"),
    "recipient-unavailable": (480, "Temporarily Unavailable"),
    "redirect": (302, "Moved Temporarily"),
    "registration-required": (400, "Bad Request"),
    "remote-server-not-found": (404, "Not Found"),
    "remote-server-timeout": (408, "Request Timeout"),
    "resource-constraint": (500, "Server Internal Error"),
    "service-unavailable": (503, "Service Unavailable"),
    "subscription-required": (400, "Bad Request"),
    "undefined-condition": (400, "Bad Request"),
    "unexpected-request": (400, "Bad Request"),
}

_CONDITION_WORDS = re.compile(r"[a-z0-9-]{1,64}", re.ASCII)
# XML 1.0 §2.2 Char. The text often is a SIP peer's reason phrase: one NUL in it would make our stream
# not-well-formed and the XMPP peer would close the link for every user on it (RFC 6120 §4.9.3.13).
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
MAX_TEXT_CHARS = 1_024
"""The longest error text copied out of a peer's stanza."""


def sip_to_xmpp_error(status: int) -> tuple[str, str]:
    """Rules 1-2: a SIP final error response (300-699) as (error type, defined condition)."""
    if not 300 <= status <= 699:
        raise ValueError(f"SIP status {status} is not an error response (300-699)")
    condition = "redirect" if status < 400 else SIP_TO_XMPP.get(status, SIP_TO_XMPP[status // 100 * 100])
    return ERROR_TYPE[condition], condition


def xmpp_to_sip_status(condition: str) -> tuple[int, str]:
    """Rule 3: an XMPP stanza error condition as (SIP status, reason phrase)."""
    known = XMPP_TO_SIP.get(condition)
    if known is not None:
        return known
    # The name comes from a peer: only a short, plain token reaches a reason phrase (no CR/LF, no header tricks).
    name = condition if _CONDITION_WORDS.fullmatch(condition) else "unknown condition"
    return 500, f"Server Internal Error (XMPP {name})"


def error_stanza(original: Element, error_type: str, condition: str, text: str | None = None) -> Element:
    """Rule 4 (RFC 6120 §8.3.1, §8.3.2): the error answer to ``original``, which is left untouched."""
    if original.get("type") == "error":
        raise ValueError("an error stanza is never answered with an error stanza (RFC 6120 §8.3.1)")
    if error_type not in ERROR_TYPES:
        raise ValueError(f"error type {error_type!r} is not one of {', '.join(sorted(ERROR_TYPES))}")
    if condition not in ERROR_TYPE:
        raise ValueError(f"{condition!r} is not a defined condition of RFC 6120 §8.3.3")
    error_tag = original.tag[: original.tag.rfind("}") + 1] + "error"  # the stanza's namespace, jabber:server
    answer = copy.deepcopy(original)
    answer.attrib.pop("from", None)
    answer.attrib.pop("to", None)
    swapped = {"from": original.get("to"), "to": original.get("from")}
    answer.attrib.update({key: value for key, value in swapped.items() if value is not None})
    answer.set("type", "error")
    details = [element(f"{{{NS_STANZAS}}}{condition}")]
    words = _NOT_XML_CHAR.sub("", text or "")[:MAX_TEXT_CHARS]
    if words.strip():
        details.append(element(f"{{{NS_STANZAS}}}text", {XML_LANG: "en"}, words))
    answer.append(element(error_tag, {"type": error_type}, None, *details))
    return answer


def stanza_error_condition(stanza: Element) -> tuple[str, str | None]:
    """RFC 6120 §8.3.2: (defined condition, text) of an error stanza; ``undefined-condition`` when it names none.
    The text is bounded (``MAX_TEXT_CHARS``)."""
    error = next((child for child in stanza if child.tag.rpartition("}")[2] == "error"), None)
    if error is None:
        return "undefined-condition", None
    condition, text = "undefined-condition", None
    prefix = f"{{{NS_STANZAS}}}"
    for child in error:
        if not child.tag.startswith(prefix):
            continue  # an application-specific condition (§8.3.4) qualifies the defined one, never replaces it
        local = child.tag.removeprefix(prefix)
        if local == "text":
            text = (child.text or "").strip()[:MAX_TEXT_CHARS] or None
        elif condition == "undefined-condition":
            condition = local
    return condition, text
