"""Server Dialback keys (XEP-0220 §2.1.1, generated as XEP-0185 §2 recommends).

The key proves that the server sending it speaks for the Originating Server's domain: only the
Authoritative Server (sipfed itself, for its own domains) can compute it, from a secret nobody else knows.
"""

from __future__ import annotations

import hashlib
import hmac


def dialback_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185 §2: HMAC-SHA256 keyed with the hex SHA-256 of the secret, over
    ``receiving + ' ' + originating + ' ' + stream_id``, in hex (the XEP's own example is a unit test)."""
    key = hashlib.sha256(secret.encode()).hexdigest().encode()
    message = f"{receiving} {originating} {stream_id}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def key_is_valid(secret: str, receiving: str, originating: str, stream_id: str, key: str) -> bool:
    """XEP-0220 §2.4.2 step 9, as the Authoritative Server: compare in constant time."""
    expected = dialback_key(secret, receiving, originating, stream_id)
    return hmac.compare_digest(expected, key.strip().lower())
