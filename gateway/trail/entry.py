"""Trail entry bytes and leaf hashes (DESIGN §4).

An entry is ``gateway-trail/v1\\n`` followed by the RFC 8785 (JCS) canonical
JSON of the event; its leaf hash is ``SHA-256(0x00 || entry)`` (RFC 6962 §2.1),
so existing transparency-log tooling can prove inclusion of our entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import rfc8785

from gateway.trail.merkle import leaf_hash as merkle_leaf_hash

ENTRY_PREFIX = b"gateway-trail/v1\n"


class EventType(StrEnum):
    CONSENT_REQUESTED = "consent.requested"
    CONSENT_GRANTED = "consent.granted"
    CONSENT_DENIED = "consent.denied"
    CONSENT_REVOKED = "consent.revoked"
    CONSENT_EXPIRED = "consent.expired"
    CONSENT_EXHAUSTED = "consent.exhausted"
    TOKEN_ISSUED = "token.issued"  # noqa: S105 (an event name, not a secret)
    TRANSFER_AUTHORIZED = "transfer.authorized"
    TRANSFER_DENIED = "transfer.denied"
    TRANSFER_COMPLETED = "transfer.completed"
    TRANSFER_FAILED = "transfer.failed"
    POLICY_LOADED = "policy.loaded"
    KEY_ROTATED = "key.rotated"
    AUDIT_ACCESSED = "audit.accessed"
    NOTICE_DELIVERED = "notice.delivered"
    NOTICE_FAILED = "notice.failed"
    # A refused request outside the transfer path (authorize, token, consent
    # decision, revoke): the auditor sees attacks on those endpoints too.
    REQUEST_REFUSED = "request.refused"


def encode_entry(event: Mapping[str, Any]) -> bytes:
    """The exact bytes stored and hashed for one event."""
    return ENTRY_PREFIX + rfc8785.dumps(dict(event))


# The leaf hash of an entry is RFC 6962's, defined once in the Merkle module.
leaf_hash = merkle_leaf_hash
