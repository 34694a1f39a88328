"""CPU cost of one small SQL statement through each database layer the gateway could use.

    python bench/driver_cost.py [--pg-url postgresql://postgres@127.0.0.1:5432/postgres]

A primary-key SELECT on SQLite through: the sync ``sqlite3`` module, ``aiosqlite``
(one thread hop per call), and SQLAlchemy's async engine on aiosqlite (what the
gateway uses); ``SELECT 1`` on PostgreSQL through raw ``asyncpg`` and through
SQLAlchemy on asyncpg. One connection, one statement at a time, process CPU
time per statement. The transfer path runs about 28 statements per transfer
(``bench/path_profile.py --statements``), so this says what each layer costs it.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

N = 2000


def per_call(started: float) -> str:
    return f"{(time.process_time() - started) / N * 1e6:7.0f} µs CPU per statement"


async def measure(path: Path, pg_url: str | None) -> None:
    import aiosqlite
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    db.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 50) for i in range(1000)])
    db.commit()
    started = time.process_time()
    for i in range(N):
        db.execute("SELECT v FROM t WHERE id = ?", (i % 1000,)).fetchall()
    print(f"sqlite3 (sync)                  {per_call(started)}")
    db.close()

    async with aiosqlite.connect(path) as adb:
        started = time.process_time()
        for i in range(N):
            async with adb.execute("SELECT v FROM t WHERE id = ?", (i % 1000,)) as cursor:
                await cursor.fetchall()
        print(f"aiosqlite                       {per_call(started)}")

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    query = text("SELECT v FROM t WHERE id = :i")
    async with engine.connect() as conn:
        started = time.process_time()
        for i in range(N):
            (await conn.execute(query, {"i": i % 1000})).fetchall()
        print(f"SQLAlchemy async + aiosqlite    {per_call(started)}")
    await engine.dispose()

    if pg_url is None:
        return
    import asyncpg

    try:
        raw = await asyncio.wait_for(asyncpg.connect(pg_url), 5)
    except Exception as exc:
        print(f"PostgreSQL unreachable ({type(exc).__name__}): skipped")
        return
    started = time.process_time()
    for _ in range(N):
        await raw.fetch("SELECT 1")
    print(f"asyncpg (raw)                   {per_call(started)}")
    await raw.close()
    pg = create_async_engine(pg_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    async with pg.connect() as conn:
        one = text("SELECT 1")
        started = time.process_time()
        for _ in range(N):
            (await conn.execute(one)).fetchall()
        print(f"SQLAlchemy async + asyncpg      {per_call(started)}")
    await pg.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--skip-pg", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gw-driver-"))
    try:
        asyncio.run(measure(tmp / "t.db", None if args.skip_pg else args.pg_url))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
