"""Group commit: many handlers' units of work, one transaction, one durable batch.

A handler describes what it changes as a *unit of work*: an async function that
gets a :class:`Tx` (the shared connection, the batch's clock, and ``record`` to
append trail events) and returns a value. :meth:`TrailWriter.run` queues the
unit and waits. The writer task takes everything queued, opens one transaction
(SQLite ``BEGIN IMMEDIATE``; on PostgreSQL a transaction-scoped advisory lock,
held per batch and not per entry), runs each unit inside its own SAVEPOINT —
a unit that raises is rolled back alone and its caller gets the exception —
appends the Merkle hashes of the batch's new leaves, commits, and only then
releases every waiting handler. If the commit fails, every unit of the batch
fails: no handler continues believing its entry is durable.

The next index and the tree are read from storage inside the locked
transaction, never from a counter in memory, so several processes on one
database write one linear log. While a batch is being written, new units
queue up and form the next batch: an idle writer flushes at once, a busy one
batches (``max_batch`` units at most, after waiting ``linger_seconds`` for
company when asked to).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import gateway.trail.merkle as merkle
from gateway.storage.engine import write_first
from gateway.storage.models import trail_entries, trail_hashes
from gateway.trail.entry import encode_entry
from gateway.trail.store import Trail, TrailEvent

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Arbitrary constant naming the trail's advisory lock on PostgreSQL.
PG_TRAIL_LOCK = 0x7472_6169  # "trai"


class Tx:
    """What a unit of work may use: the shared connection and ``record``."""

    def __init__(self, conn: AsyncConnection, now: datetime, batch: _Batch) -> None:
        self.conn = conn
        self.now = now
        self._batch = batch

    async def record(self, events: Sequence[TrailEvent]) -> list[int]:
        """Append events to the trail in this batch; returns their indexes."""
        return self._batch.append(events, self.now)


Work = Callable[[Tx], Awaitable[T]]


@dataclass
class _Item:
    work: Work[Any]
    future: asyncio.Future[Any]


@dataclass
class _Batch:
    trail: Trail
    start: int  # tree size when the batch began
    leaves: list[bytes] = field(default_factory=list)  # leaf hashes, in index order
    # Entry rows, inserted once for the whole batch (one executemany) before the
    # hashes; a unit that fails drops its own rows with its leaves.
    rows: list[dict[str, Any]] = field(default_factory=list)

    def forget_from(self, mark: int) -> None:
        del self.leaves[mark:]
        del self.rows[mark:]

    @property
    def next_index(self) -> int:
        return self.start + len(self.leaves)

    def append(self, events: Sequence[TrailEvent], now: datetime) -> list[int]:
        rows: list[dict[str, Any]] = []
        for event in events:
            entry = encode_entry(self.trail.event_object(event, now=now))
            index = self.next_index
            leaf = merkle.leaf_hash(entry)
            self.leaves.append(leaf)
            rows.append(
                {
                    "idx": index,
                    "entry": entry,
                    "leaf_hash": leaf,
                    "type": str(event.type),
                    "time": now,
                    "client_id": event.client_id,
                    "consent_id": event.consent_id,
                    "transfer_id": event.transfer_id,
                    "provider": event.provider,
                }
            )
        self.rows.extend(rows)
        return [int(r["idx"]) for r in rows]

    async def flush(self, conn: AsyncConnection) -> None:
        if self.rows:
            await conn.execute(insert(trail_entries), self.rows)


async def tree_size(conn: AsyncConnection) -> int:
    """Entries in the log, from storage (max index + 1)."""
    value = (
        await conn.execute(select(func.coalesce(func.max(trail_entries.c.idx) + 1, 0)))
    ).scalar_one()
    return int(value)


async def read_hashes(conn: AsyncConnection, indexes: Sequence[int]) -> dict[int, bytes]:
    if not indexes:
        return {}
    rows = await conn.execute(
        select(trail_hashes.c.idx, trail_hashes.c.hash).where(trail_hashes.c.idx.in_(list(indexes)))
    )
    return {int(r.idx): bytes(r.hash) for r in rows}


async def _store_hashes(conn: AsyncConnection, start: int, leaves: Sequence[bytes]) -> None:
    """Append the stored hashes (Go tlog layout) for leaves ``start .. start+len-1``."""
    if not leaves:
        return
    known: dict[int, bytes] = {}
    needed = merkle.hashes_to_store_indexes(start, len(leaves))
    known.update(await read_hashes(conn, needed))
    missing = set(needed) - set(known)
    if missing:
        raise RuntimeError(f"trail hashes missing from storage: {sorted(missing)[:5]}")
    new = merkle.hashes_to_store(start, leaves, lambda idx: [known[i] for i in idx])
    await conn.execute(insert(trail_hashes), [{"idx": i, "hash": h} for i, h in new])


class TrailWriter:
    """The single writer of one process; see the module docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        trail: Trail,
        clock: Callable[[], datetime],
        *,
        max_batch: int = 256,
        linger_seconds: float = 0.0,
    ) -> None:
        self.engine = write_first(engine)
        self.trail = trail
        self.clock = clock
        self.max_batch = max_batch
        self.linger_seconds = linger_seconds
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches_written = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="trail-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("trail writer stopped"))

    async def run(self, work: Work[T]) -> T:
        """Run ``work`` in the next batch; return once its batch is committed."""
        self.start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(work, future))
        return await future

    async def _loop(self) -> None:
        while True:
            items: list[_Item] = []
            try:
                items.append(await self._queue.get())
                if self.linger_seconds > 0 and self._queue.qsize() < self.max_batch - 1:
                    await asyncio.sleep(self.linger_seconds)
                while len(items) < self.max_batch and not self._queue.empty():
                    items.append(self._queue.get_nowait())
                await self._write(items)
            except asyncio.CancelledError:
                # Stopped while holding units (lingering, or mid-batch: the
                # transaction is rolled back): their callers must not wait forever.
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(RuntimeError("trail writer stopped"))
                raise

    async def _write(self, items: list[_Item]) -> None:
        results: list[tuple[_Item, bool, Any]] = []
        try:
            async with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_TRAIL_LOCK}
                    )
                batch = _Batch(self.trail, start=await tree_size(conn))
                now = self.clock()
                for item in items:
                    if item.future.cancelled():
                        continue
                    mark = len(batch.leaves)
                    savepoint = await conn.begin_nested()
                    try:
                        value = await item.work(Tx(conn, now, batch))
                    except Exception as exc:  # the unit fails alone
                        await savepoint.rollback()
                        batch.forget_from(mark)
                        results.append((item, False, exc))
                    else:
                        await savepoint.commit()
                        results.append((item, True, value))
                await batch.flush(conn)
                await _store_hashes(conn, batch.start, batch.leaves)
        except Exception as exc:
            log.exception("trail.batch_failed", units=len(items))
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self.batches_written += 1
        for item, ok, value in results:
            if item.future.done():
                continue
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)
