"""Trail speed (issue 3, "Speed"): group-commit appends and inclusion proofs.

    python bench/trail_bench.py [--quick] [--json out.json] [--skip-pg]

1. Appended entries per second through :class:`gateway.trail.writer.TrailWriter`
   with ``max_batch`` 1, 16, 64 and 256, on SQLite (a file on disk, the
   gateway's own engine: WAL, ``synchronous=FULL``) and on PostgreSQL: many
   concurrent ``writer.run`` units (twice the batch size, at least 64), each
   recording one ``transfer.completed`` event and awaiting its commit, as the
   transfer path does.
2. Time to build an inclusion proof with :func:`gateway.trail.tree.inclusion`
   (reads from ``trail_hashes``) at 10⁴, 10⁵ and 10⁶ entries: the stored hashes
   are written directly (:func:`gateway.trail.merkle.hashes_to_store`, bulk
   insert) rather than appended one by one; median of many random indexes on
   an open connection, and every timed proof is checked against the root.

Targets (issue 3, this 2-core machine): >= 20,000 entries/s on SQLite with
batching; proofs under 1 ms at 10⁶ entries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import DEFAULT_PG_URL, code_version, pg_reachable, pg_recreate

BATCH_SIZES = (1, 16, 64, 256)
PROOF_SIZES = (10_000, 100_000, 1_000_000)
# Units in flight: twice the batch size, so that a full batch waits while one is
# written (more would only queue, and take long to drain at batch size 1).
MIN_CONCURRENCY = 64
TARGET_SQLITE_ENTRIES = 20_000
TARGET_PROOF_MS = 1.0


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def fresh_engine(database: str, url: str | None, tmp: Path, tag: str) -> Any:
    from gateway.storage.engine import create_engine
    from gateway.storage.migrate import upgrade

    if database == "sqlite":
        directory = tmp / tag
        directory.mkdir()
        url = f"sqlite:///{directory / 'trail.db'}"
    else:
        assert url is not None
        await pg_recreate(url)
    engine = create_engine(url)
    await upgrade(engine)
    return engine, url


def completed_event() -> Any:
    """A ``transfer.completed`` event of a new transfer on a new consent.

    Fresh ids each time, made as the gateway makes them (time-ordered): what
    the trail's ``consent_id`` and ``transfer_id`` indexes see decides how many
    pages each batch writes (gateway/ids.py).
    """
    from gateway.ids import time_ordered_id
    from gateway.trail import EventType, TrailEvent

    return TrailEvent(
        EventType.TRANSFER_COMPLETED,
        client_id="bench-sp",
        consent_id=time_ordered_id(),
        transfer_id=time_ordered_id(),
        provider="stub",
        resource="record",
        subject="aW5zZXJ0LWEtcHNldWRvbnlt",
        details={
            "provider_status": 200,
            "provider_size": 500,
            "provider_sha256": "ab" * 32,
            "delivered_size": 48,
            "delivered_sha256": "cd" * 32,
        },
    )


async def appends(
    database: str, url: str | None, tmp: Path, batch: int, seconds: float
) -> dict[str, Any]:
    """Entries/s with ``max_batch=batch`` and twice that many units in flight."""
    concurrency = max(MIN_CONCURRENCY, 2 * batch)
    from gateway.trail import Trail
    from gateway.trail.writer import TrailWriter, Tx

    engine, _ = await fresh_engine(database, url, tmp, f"append-{batch}")
    writer = TrailWriter(
        engine, Trail("sha256:" + "0" * 64), lambda: datetime.now(UTC), max_batch=batch
    )
    writer.start()
    done = 0
    failed = 0
    stop_at = 0.0

    async def client() -> None:
        nonlocal done, failed
        while time.monotonic() < stop_at:
            # Built outside the unit, as a transfer's ids are made before it
            # reaches the writer (the CPU is counted all the same).
            event = completed_event()

            async def unit(tx: Tx, event: Any = event) -> None:
                await tx.record([event])

            try:
                await writer.run(unit)
                done += 1
            except Exception:
                failed += 1

    try:
        # A short warm-up fills pools and caches, then the measured run.
        for measured in (False, True):
            stop_at = time.monotonic() + (seconds if measured else 1.0)
            done = failed = 0
            batches = writer.batches_written
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        batches = writer.batches_written - batches
    finally:
        await writer.stop()
        await engine.dispose()
    return {
        "database": database,
        "max_batch": batch,
        "entries": done,
        "failed": failed,
        "seconds": round(wall, 2),
        "entries_per_s": round(done / wall, 1),
        "concurrency": concurrency,
        "mean_batch": round(done / batches, 1) if batches else 0,
        "cpu_us_per_entry": round(cpu / done * 1e6, 1) if done else None,
    }


def stored_hashes(start: int, count: int, known: dict[int, bytes]) -> list[tuple[int, bytes]]:
    """Stored hashes for leaves start..start+count-1 (``known``: the right edge so far)."""
    from gateway.trail import merkle

    leaves = [merkle.leaf_hash(b"entry %d" % i) for i in range(start, start + count)]
    return merkle.hashes_to_store(start, leaves, lambda idx: [known[i] for i in idx])


async def fill(engine: Any, url: str, database: str, start: int, end: int) -> None:
    """Grow the stored tree from ``start`` to ``end`` leaves by bulk insert."""
    from gateway.trail import merkle
    from gateway.trail.tree import read_hashes

    chunk = 100_000
    for first in range(start, end, chunk):
        count = min(chunk, end - first)
        async with engine.connect() as conn:
            known = await read_hashes(conn, merkle.hashes_to_store_indexes(first, count))
            await conn.rollback()
        rows = stored_hashes(first, count, known)
        if database == "sqlite":
            path = url.removeprefix("sqlite:///")
            with sqlite3.connect(path) as db:
                db.executemany("INSERT INTO trail_hashes (idx, hash) VALUES (?, ?)", rows)
        else:
            import asyncpg

            conn = await asyncpg.connect(url)
            try:
                await conn.copy_records_to_table(
                    "trail_hashes", records=rows, columns=["idx", "hash"]
                )
            finally:
                await conn.close()


async def proofs(
    database: str, url: str | None, tmp: Path, samples: int, sizes: tuple[int, ...]
) -> list[dict[str, Any]]:
    from gateway.trail import merkle, tree

    engine, url = await fresh_engine(database, url, tmp, "proofs")
    out = []
    rng = random.Random(6962)
    try:
        have = 0
        for size in sizes:
            started = time.monotonic()
            await fill(engine, url, database, have, size)
            have = size
            filled = time.monotonic() - started
            async with engine.connect() as conn:
                root = await tree.root_at(conn, size)
                timings = []
                for _ in range(samples):
                    index = rng.randrange(size)
                    t = time.perf_counter()
                    proof = await tree.inclusion(conn, index, size)
                    timings.append(time.perf_counter() - t)
                    leaf = merkle.leaf_hash(b"entry %d" % index)
                    merkle.verify_inclusion(proof, size, root, index, leaf)
                await conn.rollback()
            timings.sort()
            out.append(
                {
                    "database": database,
                    "entries": size,
                    "proof_median_ms": round(statistics.median(timings) * 1000, 3),
                    "proof_p90_ms": round(timings[int(len(timings) * 0.9)] * 1000, 3),
                    "samples": samples,
                    "fill_seconds": round(filled, 1),
                }
            )
            say(
                f"  {database} {size:>9,} entries: inclusion proof median "
                f"{out[-1]['proof_median_ms']:.3f} ms (p90 {out[-1]['proof_p90_ms']:.3f})"
            )
    finally:
        await engine.dispose()
    return out


async def main_async(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from gateway import logs

    code_at_start = code_version()
    logs.configure("json", "warning")
    databases = ["sqlite"]
    notes = []
    if not args.skip_pg:
        problem = await pg_reachable(args.pg_url)
        if problem:
            notes.append(f"PostgreSQL unreachable ({problem}): skipped")
        else:
            databases.append("postgresql")
    seconds = 3.0 if args.quick else 6.0
    append_rows = []
    for database in databases:
        for batch in BATCH_SIZES:
            say(f"appends: {database}, max_batch {batch}, {seconds:g} s")
            row = await appends(database, args.pg_url, tmp, batch, seconds)
            say(
                f"  {row['entries_per_s']:,.0f} entries/s (mean batch {row['mean_batch']}, "
                f"{row['cpu_us_per_entry']} µs CPU/entry, {row['failed']} failed)"
            )
            append_rows.append(row)
    proof_rows = []
    for database in databases:
        say(f"proofs: {database}")
        proof_rows += await proofs(
            database, args.pg_url, tmp, 200 if args.quick else 1000, PROOF_SIZES
        )
    best_sqlite = max(
        (r["entries_per_s"] for r in append_rows if r["database"] == "sqlite"), default=0.0
    )
    big = [r for r in proof_rows if r["entries"] == max(PROOF_SIZES)]
    targets = [
        {
            "target": f">= {TARGET_SQLITE_ENTRIES:,} entries/s on SQLite with batching",
            "measured": f"{best_sqlite:,.0f} /s (best batch size)",
            "met": best_sqlite >= TARGET_SQLITE_ENTRIES,
        }
    ]
    for r in big:
        targets.append(
            {
                "target": f"inclusion proof < {TARGET_PROOF_MS:g} ms at 10^6 entries "
                f"({r['database']})",
                "measured": f"{r['proof_median_ms']:.3f} ms median",
                "met": r["proof_median_ms"] < TARGET_PROOF_MS,
            }
        )
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": {**code_at_start, "changed_during_run": code_version() != code_at_start},
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "seconds_per_append_run": seconds,
        "appends": append_rows,
        "proofs": proof_rows,
        "targets": targets,
        "notes": notes,
    }


def print_report(data: dict[str, Any]) -> None:
    print()
    header = ("database", "max_batch", "entries/s", "mean batch", "µs CPU/entry")
    print(f"{header[0]:<11} {header[1]:>9} {header[2]:>10} {header[3]:>10} {header[4]:>12}")
    for r in data["appends"]:
        print(
            f"{r['database']:<11} {r['max_batch']:>9} {r['entries_per_s']:>10,.0f} "
            f"{r['mean_batch']:>10} {r['cpu_us_per_entry']!s:>12}"
        )
    print()
    print(f"{'database':<11} {'entries':>10} {'proof median ms':>15} {'p90 ms':>8}")
    for r in data["proofs"]:
        print(
            f"{r['database']:<11} {r['entries']:>10,} {r['proof_median_ms']:>15.3f} "
            f"{r['proof_p90_ms']:>8.3f}"
        )
    print()
    print("issue 3 targets:")
    for t in data["targets"]:
        print(f"  [{'met' if t['met'] else 'NOT met':>7}] {t['target']}: {t['measured']}")
    dirty = " + uncommitted changes in gateway/" if data["code"]["gateway_dirty"] else ""
    print(f"code measured: {data['code']['commit']}{dirty}")
    if data["code"]["changed_during_run"]:
        print("WARNING: the commit or gateway/ changed during the run (other work in this tree)")
    for note in data["notes"]:
        print(f"note: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Trail append and proof speed.")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="dropped and recreated!")
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gw-trail-bench-"))
    try:
        data = asyncio.run(main_async(args, tmp))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print_report(data)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
