"""One error family for everything a SIP message can get wrong.

Each error carries the status a server answers with (RFC 3261 §21) and a reason
phrase that names the fault, so the sender's log says what to fix.
"""

from __future__ import annotations


class SipError(Exception):
    """A message (or a request for an action) that SIP processing must refuse."""

    status: int = 400

    def __init__(self, reason: str, status: int | None = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers
        """Extra header fields for the answer (e.g. Unsupported with a 420)."""
        if status is not None:
            self.status = status


class SipSyntaxError(SipError):
    """RFC 3261 §21.4.1 400 Bad Request: the message does not follow the grammar."""

    status = 400


class MessageTooLarge(SipError):
    """RFC 3261 §21.5.14 513 Message Too Large."""

    status = 513


class UnsupportedVersion(SipError):
    """RFC 3261 §21.5.6 505 Version Not Supported."""

    status = 505
