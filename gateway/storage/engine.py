"""The engines: SQLite (WAL) embedded, or PostgreSQL.

Request handlers read through the async engine (aiosqlite or asyncpg). The
trail writer runs its batches in a thread of its own on a synchronous
connection (pysqlite or psycopg, :func:`create_writer_engine`): a batch is one
hop to that thread instead of a thread hop and a greenlet switch per statement.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Busy timeout for SQLite: how long a writer waits for another writer's lock.
SQLITE_BUSY_TIMEOUT_MS = 10_000


def normalise_url(raw: str) -> URL:
    """Pick the async driver for a plain ``sqlite://`` or ``postgresql://`` URL."""
    url = make_url(raw)
    if url.drivername in {"sqlite", "sqlite+pysqlite"}:
        url = url.set(drivername="sqlite+aiosqlite")
    elif url.drivername in {"postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"}:
        url = url.set(drivername="postgresql+asyncpg")
    if url.drivername not in {"sqlite+aiosqlite", "postgresql+asyncpg"}:
        raise ValueError(f"unsupported database driver {url.drivername!r}")
    return url


IMMEDIATE_OPTION = "gateway_begin_immediate"


def write_first(engine: AsyncEngine) -> AsyncEngine:
    """The same engine and pool, whose transactions take SQLite's write lock at BEGIN."""
    return engine.execution_options(**{IMMEDIATE_OPTION: True})


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(raw_url: str, **kwargs: Any) -> AsyncEngine:
    """Create the engine, with SQLite tuned for one file shared by several processes."""
    url = normalise_url(raw_url)
    if url.drivername.startswith("sqlite"):
        engine = create_async_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


_WRITER_DRIVERS = {
    "sqlite+aiosqlite": "sqlite+pysqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
}


def create_writer_engine(url: URL) -> Engine:
    """A synchronous engine on the same database, for the trail writer's one connection.

    ``url`` is the async engine's (credentials included); the writer keeps one
    connection open for its whole life, so the pool holds exactly one.
    """
    sync_url = url.set(drivername=_WRITER_DRIVERS[url.drivername])
    connect_args: dict[str, Any] = {}
    if sync_url.drivername.startswith("postgresql"):
        # Sql prepares the writer's statements itself; psycopg's own automatic
        # preparation, from the connection's first statement on, would send
        # DEALLOCATE ALL after a rollback and drop them (gateway/storage/sql.py).
        connect_args["prepare_threshold"] = None
    engine = create_sync_engine(
        sync_url, pool_size=1, max_overflow=0, pool_pre_ping=True, connect_args=connect_args
    )
    if sync_url.drivername.startswith("sqlite"):
        _configure_sqlite(engine, busy_timeout_ms=0)
        _poll_for_write_lock(engine)
    return engine


# The writer's wait for SQLite's write lock (another process's batch): polled
# every 50 µs at first, backing off to 200 µs. SQLite's own busy handler sleeps
# 1, 2, 5, 10, 15, 20, 25 ms..., so under load a waiting process kept missing
# the moments the other released the lock; polling keeps two writers taking
# turns. A batch holds the lock for well under a millisecond here, so a 1 ms
# ceiling still overslept: two workers, four quick runs each, 200 µs against
# 1 ms gave 1,356-1,523 vs 1,156-1,383 transfers/s and p99 34-40 vs 52-69 ms
# (bench/README.md). It runs in the writer's thread, never in an event loop.
_LOCK_POLL_FIRST_S = 0.00005
_LOCK_POLL_MAX_S = 0.0002


def _poll_for_write_lock(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        raw = conn.connection.dbapi_connection
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        delay = _LOCK_POLL_FIRST_S
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, _LOCK_POLL_MAX_S)


def _configure_sqlite(
    engine: AsyncEngine | Engine, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS
) -> None:
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    begins_itself = not isinstance(engine, AsyncEngine)

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (below) instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed trail entry survives a power cut, not just a crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    if begins_itself:
        return  # the writer's engine: _poll_for_write_lock begins every transaction

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Transactions that read before they write (the trail writer's batch:
        # next index, then inserts) take the write lock up front, so they cannot
        # interleave with another process's or fail to upgrade a stale snapshot.
        # Everything else begins deferred: readers never queue behind writers
        # (WAL), and statements that write first wait on the busy timeout.
        immediate = conn.get_execution_options().get(IMMEDIATE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
