"""Trail events and reading the trail table.

Appending is the group-commit writer's job (:mod:`gateway.trail.writer`): an
event and the state change it records commit in the same batch or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.ids import random_id
from gateway.storage.models import trail_entries
from gateway.trail.entry import EventType


@dataclass(frozen=True)
class TrailEvent:
    """One event to record. ``details`` holds codes and digests, never personal data."""

    type: EventType
    client_id: str | None = None
    consent_id: str | None = None
    transfer_id: str | None = None
    provider: str | None = None
    resource: str | None = None
    subject: str | None = None  # the person's trail pseudonym
    details: Mapping[str, Any] = field(default_factory=dict)


def _rfc3339(t: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (RFC 3339 §5.6, always six fraction digits)."""
    # The "Z" is only true of UTC: convert, and refuse a time whose zone is unknown.
    if t.tzinfo is None:
        raise ValueError("naive datetime given as a trail time")
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    # isoformat ends a UTC time with "+00:00", for which RFC 3339 also allows "Z".
    return t.isoformat(timespec="microseconds")[:-6] + "Z"


@dataclass(frozen=True)
class StoredEntry:
    index: int
    entry: bytes
    leaf_hash: bytes


class Trail:
    """The append-only trail; ``policy_digest`` is stamped on every event."""

    def __init__(self, policy_digest: str) -> None:
        self.policy_digest = policy_digest
        # The last time written and its text: every entry of a batch shares one clock.
        self._time: tuple[datetime | None, str] = (None, "")

    def event_object(self, event: TrailEvent, *, now: datetime) -> dict[str, Any]:
        """The JSON object recorded for ``event``: a random id, the time, the ids that are set."""
        stamped, text = self._time  # one read: another thread may replace the pair
        if stamped is not now:
            text = _rfc3339(now)
            self._time = (now, text)
        obj: dict[str, Any] = {
            "id": random_id(),
            "time": text,
            "type": str(event.type),
            "policy": self.policy_digest,
        }
        # Spelled out rather than a getattr loop: this runs for every entry.
        if event.client_id is not None:
            obj["client_id"] = event.client_id
        if event.consent_id is not None:
            obj["consent_id"] = event.consent_id
        if event.transfer_id is not None:
            obj["transfer_id"] = event.transfer_id
        if event.provider is not None:
            obj["provider"] = event.provider
        if event.resource is not None:
            obj["resource"] = event.resource
        if event.subject is not None:
            obj["subject"] = event.subject
        if event.details:
            obj["details"] = dict(event.details)
        return obj

    @staticmethod
    async def read(
        conn: AsyncConnection, start: int = 0, end: int | None = None
    ) -> list[StoredEntry]:
        query = select(trail_entries.c.idx, trail_entries.c.entry, trail_entries.c.leaf_hash).where(
            trail_entries.c.idx >= start
        )
        if end is not None:
            query = query.where(trail_entries.c.idx < end)
        result = await conn.execute(query.order_by(trail_entries.c.idx))
        return [StoredEntry(r.idx, bytes(r.entry), bytes(r.leaf_hash)) for r in result]

    @staticmethod
    async def latest_policy_digest(conn: AsyncConnection) -> str | None:
        """Digest recorded by the newest ``policy.loaded`` entry, if any."""
        row = (
            await conn.execute(
                select(trail_entries.c.entry)
                .where(trail_entries.c.type == str(EventType.POLICY_LOADED))
                .order_by(trail_entries.c.idx.desc())
                .limit(1)
            )
        ).first()
        if row is None:
            return None
        body = json.loads(bytes(row.entry).split(b"\n", 1)[1])
        digest = body.get("policy")
        return digest if isinstance(digest, str) else None
