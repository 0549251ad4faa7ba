"""A next hop's digest challenge answered on behalf of a sender that cannot answer it (RFC 3261 §22.2).

sipfed re-sends the request with credentials and the next CSeq (§8.1.3.5: a new transaction), then
keeps shifting that sender's CSeq for the rest of the dialog so the far side sees them increase.
"""

from __future__ import annotations

import re
import secrets

from acl.digest import authorization
from proxy.relay.local import with_branch
from proxy.sip.message import Request

_REALM_RE = re.compile(r'realm\s*=\s*"([^"]*)"')


def challenge_realm(challenge: str) -> str:
    match = _REALM_RE.search(challenge)
    return match.group(1) if match else ""


def retried_request(
    forwarded: Request, old_branch: str, branch: str, status: int, challenge: str, username: str, password: str
) -> Request:
    """The forwarded request again: a new branch on our Via, CSeq + 1, and (Proxy-)Authorization."""
    retry = with_branch(forwarded, old_branch, branch)
    number, method = retry.cseq
    retry.headers.set("CSeq", f"{number + 1} {method}")
    name = "Authorization" if status == 401 else "Proxy-Authorization"
    retry.headers.append(name, authorization(challenge, method, retry.uri, username, password, secrets.token_hex(8)))
    return retry


class CSeqShifts:
    """(Call-ID, From tag) -> how far sipfed moved that sender's CSeq by answering challenges for it."""

    def __init__(self, max_dialogs: int = 100_000) -> None:
        self.offsets: dict[tuple[str, str], int] = {}
        self.max_dialogs = max_dialogs

    def shift(self, call_id: str, from_tag: str) -> None:
        key = (call_id, from_tag)
        self.offsets[key] = self.offsets.get(key, 0) + 1
        if len(self.offsets) > self.max_dialogs:  # bounded: the oldest dialogs are forgotten first
            del self.offsets[next(iter(self.offsets))]

    def renumber(self, request: Request) -> str | None:
        """Shift the CSeq of a dialog sipfed renumbered; return the sender's value if changed."""
        if not self.offsets:
            return None
        offset = self.offsets.get((request.call_id, request.from_.param("tag") or ""))
        if not offset:
            return None
        original = request.headers.get("cseq")
        number, method = request.cseq
        request.headers.set("CSeq", f"{number + offset} {method}")
        return original
