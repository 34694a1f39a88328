"""Group commit: many handlers' units of work, one transaction, one durable batch.

A handler describes what it changes as a *unit of work*: an async function that
gets a :class:`Tx` (the batch's connection, its clock, and ``record`` to append
trail events) and returns a value. :meth:`TrailWriter.run` queues the unit and
waits. The writer takes everything queued and hands it, in one hop, to its own
thread, which holds one synchronous connection for the writer's whole life
(pysqlite or psycopg). There, one transaction (SQLite ``BEGIN IMMEDIATE``; on
PostgreSQL a transaction-scoped advisory lock, held per batch and not per
entry) runs each unit inside its own SAVEPOINT (opened when the unit first
touches the database) — a unit that raises is rolled back alone and its
caller gets the exception — inserts the batch's entries and the Merkle
hashes of its new leaves, commits, and only then releases every waiting
handler. If the commit fails, every unit of the batch fails: no
handler continues believing its entry is durable.

Where the units run depends on the database. On PostgreSQL every statement
is a network round trip, so the whole batch runs in the thread. On SQLite
the statements are CPU work on pages in memory, and only one thread runs
Python at a time anyway: in the thread, every sqlite3 call handed the GIL
back and forth with the event loop, and the handoffs cost a third of the
thread's CPU. So on SQLite the thread takes only ``BEGIN IMMEDIATE``
(which may wait for another process's write lock) and, at the end, the
batch's entry and hash inserts (a few large statements) with the
``COMMIT`` (the fsync); the units run on the event loop in between, with
nothing else interleaved. 12–30 % less CPU per transfer with one worker
(bench/README.md, "What changed it", item 11).

Savepoints cost statements (on PostgreSQL, round trips made while every
process waits for the trail lock), and units almost never fail. So a batch is
first run *optimistically*, without savepoints; if a unit that reached for
the database raises, the whole transaction is rolled back and the batch run
again *carefully*, a SAVEPOINT per unit, where the unit fails alone. Units are
therefore run again from scratch on a retry: they must keep their effects to
the database and to values they overwrite (every unit here does). After a
retry, the next few batches start carefully, so that a run of refusals does
not pay twice for each batch.

Units are coroutines so that they share helpers with the async read path,
but in a batch every ``await`` on :class:`UnitConnection` or
``tx.record`` completes at once: the writer drives each unit with a single
``send`` and refuses one that really waits (for the network, a sleep, a lock),
since it would hold the database's write lock meanwhile. Hot units use
``tx.sql`` (plain SQL, :mod:`gateway.storage.sql`); the others SQLAlchemy Core
through ``tx.conn``.

The next index and the tree are read from storage inside the locked
transaction, never from a counter in memory, so several processes on one
database write one linear log. While a batch is being written, new units
queue up and form the next batch: an idle writer flushes at once, a busy one
batches (``max_batch`` units at most, after waiting ``linger_seconds`` for
company when asked to).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Dialect, Engine, Executable
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import gateway.trail.merkle as merkle
from gateway.metrics import Metrics
from gateway.storage.engine import IMMEDIATE_OPTION, create_writer_engine
from gateway.storage.sql import Sql
from gateway.trail.entry import encode_entry
from gateway.trail.store import Trail, TrailEvent

log = structlog.get_logger(__name__)

T = TypeVar("T")

# After a batch had to be run again carefully, this many batches start carefully.
CAREFUL_AFTER_RETRY = 8

# Arbitrary constant naming the trail's advisory lock on PostgreSQL.
PG_TRAIL_LOCK = 0x7472_6169  # "trai"


class UnitConnection:
    """``tx.conn``: the writer's SQLAlchemy connection behind an awaitable face.

    Offers what units use of an ``AsyncConnection`` (``execute``, ``dialect``),
    so a helper written for the async read path also runs inside a unit.
    """

    def __init__(self, conn: Connection) -> None:
        self.sync_connection = conn
        self.dialect: Dialect = conn.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        return self.sync_connection.execute(statement, parameters)


# What a helper shared by reads and units of work accepts.
Conn = AsyncConnection | UnitConnection


class Tx:
    """What a unit of work may use: the batch's connection, clock and ``record``.

    In a careful batch, the unit's SAVEPOINT is opened when it first reaches
    for the database (``tx.sql`` or ``tx.conn``): a unit that only records
    events changes nothing a savepoint would have to undo, so it costs no
    statements. In an optimistic batch there are no savepoints; ``touched``
    says whether the unit reached for the database at all.
    """

    def __init__(
        self, conn: UnitConnection, sql: Sql, now: datetime, batch: _Batch, *, careful: bool
    ) -> None:
        self._conn = conn
        self._sql = sql
        self.now = now
        self._batch = batch
        self._careful = careful
        self.savepoint = False  # whether this unit's SAVEPOINT is open
        self.touched = False  # whether this unit reached for the database

    def _open(self) -> None:
        self.touched = True
        if self._careful and not self.savepoint:
            batch = self._batch
            if batch.release_pending:
                # The previous unit's RELEASE rides with this SAVEPOINT.
                self._sql.commands("RELEASE SAVEPOINT unit", "SAVEPOINT unit")
                batch.release_pending = False
            else:
                self._sql.command("SAVEPOINT unit")
            self.savepoint = True

    @property
    def sql(self) -> Sql:
        self._open()
        return self._sql

    @property
    def conn(self) -> UnitConnection:
        self._open()
        return self._conn

    async def record(self, events: Sequence[TrailEvent]) -> list[int]:
        """Append events to the trail in this batch; returns their indexes."""
        return self._batch.append(events, self.now)


Work = Callable[[Tx], Awaitable[T]]


class _Retry(Exception):
    """An optimistic batch must be rolled back and run again carefully."""


class UnitWaited(RuntimeError):
    """A unit of work awaited something other than its transaction."""


def _drive(unit: Awaitable[T]) -> T:
    """Run a unit whose awaits all complete at once (see the module docstring)."""
    coro = unit if isinstance(unit, Coroutine) else None
    if coro is None:
        raise TypeError("a unit of work must be a coroutine")
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise UnitWaited("a unit of work may only await its transaction (tx.conn, tx.record)")


# The columns of a trail_entries row, in the order _Batch.append builds it.
ENTRY_COLUMNS = (
    "idx",
    "entry",
    "leaf_hash",
    "type",
    "time",
    "client_id",
    "consent_id",
    "transfer_id",
    "provider",
)


@dataclass
class _Item:
    work: Work[Any]
    future: asyncio.Future[Any]


@dataclass
class _Batch:
    trail: Trail
    sql: Sql
    start: int  # tree size when the batch began
    leaves: list[bytes] = field(default_factory=list)  # leaf hashes, in index order
    # Entry rows (ENTRY_COLUMNS), inserted once for the whole batch (one
    # executemany) before the hashes; a unit that fails drops its own rows
    # with its leaves.
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    # A unit that succeeded leaves its SAVEPOINT open: the next unit to open
    # one releases it in the same call, and the commit releases the last.
    release_pending: bool = False

    def forget_from(self, mark: int) -> None:
        del self.leaves[mark:]
        del self.rows[mark:]

    @property
    def next_index(self) -> int:
        return self.start + len(self.leaves)

    def append(self, events: Sequence[TrailEvent], now: datetime) -> list[int]:
        indexes: list[int] = []
        stored_now = self.sql.time(now)  # converted once per batch (_units: keep_time)
        for event in events:
            entry = encode_entry(self.trail.event_object(event, now=now))
            index = self.next_index
            leaf = merkle.leaf_hash(entry)
            self.leaves.append(leaf)
            self.rows.append(
                (
                    index,
                    entry,
                    leaf,
                    str(event.type),
                    stored_now,
                    event.client_id,
                    event.consent_id,
                    event.transfer_id,
                    event.provider,
                )
            )
            indexes.append(index)
        return indexes

    def flush(self) -> None:
        """Insert the batch's entries and the Merkle hashes of its new leaves.

        The hashes' inputs are read first, so that the entries and the hashes
        then go together (one round trip on PostgreSQL: ``Sql.insert_tables``).
        """
        hashes = _new_hashes(self.sql, self.start, self.leaves)
        self.sql.insert_tables(
            [("trail_entries", ENTRY_COLUMNS, self.rows), ("trail_hashes", ("idx", "hash"), hashes)]
        )


_TREE_SIZE = "SELECT coalesce(max(idx) + 1, 0) FROM trail_entries"


def tree_size(sql: Sql) -> int:
    """Entries in the log, from storage (max index + 1)."""
    row = sql.one(_TREE_SIZE)
    return int(row[0]) if row is not None else 0


def read_hashes(sql: Sql, indexes: Sequence[int]) -> dict[int, bytes]:
    """Stored hashes by stored-hash index, in one query."""
    if not indexes:
        return {}
    placeholders, params = Sql.in_list("i", sorted(set(indexes)))
    rows = sql.all(f"SELECT idx, hash FROM trail_hashes WHERE idx IN {placeholders}", params)  # noqa: S608 (placeholders only)
    return {int(i): bytes(h) for i, h in rows}


def _new_hashes(sql: Sql, start: int, leaves: Sequence[bytes]) -> list[tuple[int, bytes]]:
    """The stored hashes (Go tlog layout) that leaves ``start .. start+len-1`` add."""
    if not leaves:
        return []
    needed = merkle.hashes_to_store_indexes(start, len(leaves))
    known = read_hashes(sql, needed)
    missing = set(needed) - set(known)
    if missing:
        raise RuntimeError(f"trail hashes missing from storage: {sorted(missing)[:5]}")
    return merkle.hashes_to_store(start, leaves, lambda idx: [known[i] for i in idx])


@dataclass
class _Outcome:
    item: _Item
    ok: bool
    value: Any


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
        metrics: Metrics | None = None,
        units_on_loop: bool = True,
    ) -> None:
        self._url = engine.url
        self.metrics = metrics
        self.trail = trail
        self.clock = clock
        self.max_batch = max_batch
        self.linger_seconds = linger_seconds
        # Queued units, and the future the idle writer waits on for the next one:
        # a deque and one wake-up per idle spell cost less than asyncio.Queue's
        # wake-up per put.
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None
        # Touched only in the writer's thread:
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._sql: Sql | None = None  # on self._conn's DB-API connection; keeps its caches
        self._careful_left = 0  # batches still to run carefully after a retry
        self.batches_written = 0
        self.batches_retried = 0
        # SQLite: units on the event loop, BEGIN and COMMIT in the thread (see
        # _write_batch_on_loop); PostgreSQL: every statement is a round trip,
        # so whole batches run in the thread.
        self._units_on_loop = self._url.get_backend_name() == "sqlite" and units_on_loop

    def start(self) -> None:
        if self._task is None:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="trail-writer")
            self._task = asyncio.create_task(self._loop(), name="trail-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("trail writer stopped"))
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
            self._thread.shutdown(wait=True)
            self._thread = None

    async def run(self, work: Work[T]) -> T:
        """Run ``work`` in the next batch; return once its batch is committed."""
        self.start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(work, future))
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        return await future

    async def _loop(self) -> None:
        while True:
            items: list[_Item] = []
            try:
                queue = self._queue
                while not queue:
                    self._wakeup = asyncio.get_running_loop().create_future()
                    try:
                        await self._wakeup
                    finally:
                        self._wakeup = None
                if self.linger_seconds > 0 and len(queue) < self.max_batch:
                    await asyncio.sleep(self.linger_seconds)
                while len(items) < self.max_batch and queue:
                    items.append(queue.popleft())
                await self._write(items)
            except asyncio.CancelledError:
                # Stopped while holding units (lingering, or waiting for the
                # thread, whose batch then commits or not on its own): their
                # callers must not wait forever.
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(RuntimeError("trail writer stopped"))
                raise

    async def _write(self, items: list[_Item]) -> None:
        live = [item for item in items if not item.future.cancelled()]
        if not live:
            return
        assert self._thread is not None
        batch_run: asyncio.Future[list[_Outcome]]
        if self._units_on_loop:
            batch_run = asyncio.ensure_future(self._write_batch_on_loop(live))
        else:
            batch_run = asyncio.get_running_loop().run_in_executor(
                self._thread, self._write_batch, live
            )
        try:
            outcomes = await asyncio.shield(batch_run)
        except asyncio.CancelledError:
            # Let the batch finish so its callers learn what really happened.
            with contextlib.suppress(Exception):
                self._settle(await batch_run)
            raise
        except Exception as exc:
            if self.metrics is not None:
                self.metrics.trail_batch_failed(len(live))
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self._settle(outcomes)

    def _settle(self, outcomes: list[_Outcome]) -> None:
        self.batches_written += 1
        if self.metrics is not None:
            committed = sum(1 for outcome in outcomes if outcome.ok)
            self.metrics.trail_batch(committed, len(outcomes) - committed)
        for outcome in outcomes:
            future = outcome.item.future
            if future.done():
                continue
            if outcome.ok:
                future.set_result(outcome.value)
            else:
                future.set_exception(outcome.value)

    async def _write_batch_on_loop(self, items: list[_Item]) -> list[_Outcome]:
        """SQLite: the units run here, on the event loop; only BEGIN and COMMIT go to the thread.

        The units are Python over pages SQLite holds in memory, and only one
        thread runs Python at a time: run in the writer's thread, every
        sqlite3 call handed the GIL back and forth, and that handoff cost a
        third of the thread's CPU (bench/README.md). What can wait stays in
        the thread: ``BEGIN IMMEDIATE`` (another process may hold the write
        lock) and ``COMMIT`` (the fsync).
        """
        loop = asyncio.get_running_loop()
        thread = self._thread
        assert thread is not None
        conn = await loop.run_in_executor(thread, self._begin)
        try:
            careful = False
            if self._careful_left > 0:
                self._careful_left -= 1
                careful = True
            try:
                outcomes, batch = self._units(conn, items, careful=careful)
            except _Retry:
                self.batches_retried += 1
                if self.metrics is not None:
                    self.metrics.trail_retry()
                log.debug("trail.batch_retried", units=len(items))
                self._careful_left = CAREFUL_AFTER_RETRY
                await loop.run_in_executor(thread, self._rollback_and_begin, conn)
                outcomes, batch = self._units(conn, items, careful=True)
            # The batch's entries and hashes (a few large statements, little
            # Python) are written in the thread, beside the event loop.
            await loop.run_in_executor(thread, self._flush_and_commit, conn, batch)
            return outcomes
        except BaseException:
            # Whatever state the connection is in, the next batch starts afresh
            # (in the thread, even when cancelled: the connection is its own).
            await asyncio.shield(loop.run_in_executor(thread, self._discard, conn, len(items)))
            raise

    # ----------------------------------------------------------- in the writer's thread

    def _begin(self) -> Connection:
        conn = self._connection()
        conn.begin()
        return conn

    @staticmethod
    def _rollback_and_begin(conn: Connection) -> None:
        conn.rollback()
        conn.begin()

    @staticmethod
    def _flush_and_commit(conn: Connection, batch: _Batch) -> None:
        batch.flush()
        conn.commit()

    def _discard(self, conn: Connection, units: int) -> None:
        log.exception("trail.batch_failed", units=units)
        with contextlib.suppress(Exception):
            conn.rollback()
        with contextlib.suppress(Exception):
            conn.close()
        self._conn = None
        self._sql = None

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            if self._engine is None:
                # preserve_rowcount: psycopg forgets an INSERT's row count when
                # SQLAlchemy closes its cursor, and units read it (ON CONFLICT DO NOTHING).
                self._engine = create_writer_engine(self._url).execution_options(
                    preserve_rowcount=True, **{IMMEDIATE_OPTION: True}
                )
            self._conn = self._engine.connect()
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            self._sql = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _write_batch(self, items: list[_Item]) -> list[_Outcome]:
        conn = self._connection()
        try:
            if self._careful_left > 0:
                self._careful_left -= 1
            else:
                try:
                    return self._transaction(conn, items, careful=False)
                except _Retry:  # rolled back: run every unit again, each in a savepoint
                    self.batches_retried += 1
                    if self.metrics is not None:
                        self.metrics.trail_retry()
                    log.debug("trail.batch_retried", units=len(items))
                    self._careful_left = CAREFUL_AFTER_RETRY
            return self._transaction(conn, items, careful=True)
        except Exception:
            log.exception("trail.batch_failed", units=len(items))
            # Whatever state the connection is in, the next batch starts afresh.
            with contextlib.suppress(Exception):
                conn.rollback()
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None
            self._sql = None
            raise

    def _transaction(
        self, conn: Connection, items: list[_Item], *, careful: bool
    ) -> list[_Outcome]:
        with conn.begin():
            outcomes, batch = self._units(conn, items, careful=careful)
            batch.flush()
        return outcomes

    def _units(
        self, conn: Connection, items: list[_Item], *, careful: bool
    ) -> tuple[list[_Outcome], _Batch]:
        """Run the units inside the open transaction; their entries wait in the batch."""
        outcomes: list[_Outcome] = []
        dbapi = conn.connection.dbapi_connection
        sql = self._sql
        if sql is None or sql.connection is not dbapi:
            sql = self._sql = Sql(dbapi, conn.dialect.name)
        if sql.dialect == "postgresql":
            # BEGIN, the trail lock, then the log's size read under it: one round trip.
            _, size = sql.begin_with(
                [("SELECT pg_advisory_xact_lock(:k)", {"k": PG_TRAIL_LOCK}), (_TREE_SIZE, {})]
            )
            start = int(size[0][0])
        else:
            start = tree_size(sql)
        batch = _Batch(self.trail, sql, start=start)
        now = self.clock()
        sql.keep_time(now)  # every unit's statements pass it
        unit_conn = UnitConnection(conn)
        for item in items:
            mark = len(batch.leaves)
            tx = Tx(unit_conn, sql, now, batch, careful=careful)
            try:
                value = _drive(item.work(tx))
            except Exception as exc:  # the unit fails alone
                if not careful and tx.touched:
                    # It may have changed rows, or (PostgreSQL) failed a
                    # statement and aborted the transaction: no savepoint
                    # to go back to, so the batch goes back to the start.
                    raise _Retry from exc
                if tx.savepoint:
                    sql.commands("ROLLBACK TO SAVEPOINT unit", "RELEASE SAVEPOINT unit")
                batch.forget_from(mark)
                outcomes.append(_Outcome(item, False, exc))
            else:
                if tx.savepoint:
                    batch.release_pending = True
                outcomes.append(_Outcome(item, True, value))
        return outcomes, batch
