"""Appending to and reading the trail table.

Appends happen inside the caller's transaction, so an event and the state
change it records commit together or not at all: no transfer is relayed
without its ``transfer.authorized`` entry, no consent changes without its
entry. The next index is read under a lock held for the transaction
(PostgreSQL advisory lock; SQLite's ``BEGIN IMMEDIATE``), so indexes form one
gap-free sequence even with several processes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.models import trail_entries
from gateway.trail.entry import EventType, encode_entry, leaf_hash

# Arbitrary constant naming the trail's advisory lock on PostgreSQL.
_PG_TRAIL_LOCK = 0x7472_6169  # "trai"


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
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class StoredEntry:
    index: int
    entry: bytes
    leaf_hash: bytes


class Trail:
    """The append-only trail; ``policy_digest`` is stamped on every event."""

    def __init__(self, policy_digest: str) -> None:
        self.policy_digest = policy_digest

    def event_object(self, event: TrailEvent, *, now: datetime) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "time": _rfc3339(now),
            "type": str(event.type),
            "policy": self.policy_digest,
        }
        for name in ("client_id", "consent_id", "transfer_id", "provider", "resource", "subject"):
            value = getattr(event, name)
            if value is not None:
                obj[name] = value
        if event.details:
            obj["details"] = dict(event.details)
        return obj

    async def append(
        self, conn: AsyncConnection, events: Sequence[TrailEvent], *, now: datetime
    ) -> list[int]:
        """Append events in the caller's transaction; returns their indexes."""
        if not events:
            return []
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_TRAIL_LOCK})
        next_index = (
            await conn.execute(select(func.coalesce(func.max(trail_entries.c.idx) + 1, 0)))
        ).scalar_one()
        rows = []
        for offset, event in enumerate(events):
            entry = encode_entry(self.event_object(event, now=now))
            rows.append(
                {
                    "idx": next_index + offset,
                    "entry": entry,
                    "leaf_hash": leaf_hash(entry),
                    "type": str(event.type),
                    "time": now,
                    "client_id": event.client_id,
                    "consent_id": event.consent_id,
                    "transfer_id": event.transfer_id,
                    "provider": event.provider,
                }
            )
        await conn.execute(insert(trail_entries), rows)
        return [r["idx"] for r in rows]

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
        import json

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
