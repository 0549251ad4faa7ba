"""One error family for everything a SIP message can get wrong.

Each error carries the status a server answers with (RFC 3261 §21) and a reason
phrase that names the fault, so the sender's log says what to fix.
"""

from __future__ import annotations

from typing import ClassVar


class SipError(Exception):
    """A message (or a request for an action) that SIP processing must refuse."""

    STATUS: ClassVar[int] = 400
    """The status of this kind of error; an instance may be given another (``status``)."""

    def __init__(self, reason: str, status: int | None = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        # An instance attribute, not a class attribute overridden per instance: the same in compiled code
        # (tools/mypyc_build.py), where a subclass's class attribute did not reach its instances.
        self.status: int = self.STATUS if status is None else status
        self.headers = headers
        """Extra header fields for the answer (e.g. Unsupported with a 420)."""


class SipSyntaxError(SipError):
    """RFC 3261 §21.4.1 400 Bad Request: the message does not follow the grammar."""

    STATUS = 400


class MessageTooLarge(SipError):
    """RFC 3261 §21.5.14 513 Message Too Large."""

    STATUS = 513


class UnsupportedVersion(SipError):
    """RFC 3261 §21.5.6 505 Version Not Supported."""

    STATUS = 505
