"""The trail: an append-only log of consent and transfer events (RFC 6962 leaves)."""

from gateway.trail.entry import ENTRY_PREFIX, EventType, encode_entry, leaf_hash
from gateway.trail.store import Trail, TrailEvent

__all__ = ["ENTRY_PREFIX", "EventType", "Trail", "TrailEvent", "encode_entry", "leaf_hash"]
