"""The group-commit writer on a real database (SQLite, or PostgreSQL when configured).

Each test checks the log through storage: entries 0..n-1 without a gap, the
``trail_hashes`` table holding exactly the stored hashes (Go tlog layout) of
those n leaves, and the tree's root from storage equal to one recomputed from
the leaves. ``reference_stored_hashes`` is written out here independently of
``gateway.trail.merkle``; the crash and PostgreSQL tests reuse these helpers.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import gateway.trail.writer as writer_module
from gateway.settings import Settings
from gateway.storage.engine import create_engine
from gateway.storage.models import trail_hashes, used_jtis
from gateway.storage.sql import Sql
from gateway.trail import EventType, Trail, TrailEvent
from gateway.trail.store import StoredEntry
from gateway.trail.tree import root_at
from gateway.trail.verify import RootBuilder
from gateway.trail.writer import TrailWriter, Tx
from tests.conftest import PG_URL, empty_tables, reset_database

DIGEST = "sha256:" + "cd" * 32


# --------------------------------------------------------------------------- shared helpers


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def reference_stored_hashes(leaves: Sequence[bytes]) -> list[bytes]:
    """Go tlog's stored hashes for these leaves, position = stored-hash index.

    Record n stores its leaf hash, then the hash of every complete subtree it
    completes (one per trailing 1-bit of n), in that order.
    """
    out: list[bytes] = []
    subtree: dict[tuple[int, int], bytes] = {}
    for n, leaf in enumerate(leaves):
        subtree[(0, n)] = leaf
        out.append(leaf)
        level, h = 0, leaf
        while (n >> level) & 1:
            h = node(subtree[(level, (n >> level) - 1)], h)
            level += 1
            subtree[(level, n >> level)] = h
            out.append(h)
    assert len(out) == 2 * len(leaves) - sum(bin(n).count("1") for n in [len(leaves)])
    return out


def prefix_roots(leaves: Sequence[bytes]) -> list[bytes]:
    """Root of the first k leaves for k = 1..n (RootBuilder, one pass)."""
    builder = RootBuilder()
    roots = []
    for leaf in leaves:
        builder.add(leaf)
        roots.append(builder.root())
    return roots


async def check_log(conn: AsyncConnection) -> list[StoredEntry]:
    """Entries 0..n-1, hashes exactly those of n leaves, stored root = recomputed root."""
    entries = await Trail.read(conn)
    assert [e.index for e in entries] == list(range(len(entries)))
    leaves = [e.leaf_hash for e in entries]
    assert leaves == [hashlib.sha256(b"\x00" + e.entry).digest() for e in entries]
    rows = (await conn.execute(select(trail_hashes).order_by(trail_hashes.c.idx))).all()
    assert [int(r.idx) for r in rows] == list(range(len(rows)))
    assert [bytes(r.hash) for r in rows] == reference_stored_hashes(leaves)
    if entries:
        assert await root_at(conn, len(entries)) == prefix_roots(leaves)[-1]
    return entries


def utc_now() -> datetime:
    return datetime.now(UTC)


async def fresh_database(settings: Settings) -> None:
    """An empty trail: a new SQLite file, or PostgreSQL's tables emptied (its schema
    was rebuilt once per run by the ``pg_ready`` fixture that ``make_settings`` uses)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if PG_URL:
        await empty_tables(PG_URL)
    else:
        await reset_database(settings.database_url.value)


@pytest.fixture
async def engine(make_settings: Callable[..., Settings]) -> AsyncIterator[AsyncEngine]:
    settings = make_settings()
    await fresh_database(settings)
    engine = create_engine(settings.database_url.value)
    try:
        yield engine
    finally:
        await engine.dispose()


def unit(
    name: str, events: int = 1, *, fail: Exception | None = None
) -> Callable[[Tx], Awaitable[list[int]]]:
    """A unit of work: a state change (a used_jtis row named ``name``) and its events."""

    async def work(tx: Tx) -> list[int]:
        await tx.conn.execute(
            insert(used_jtis).values(key=name, expires_at=tx.now + timedelta(hours=1))
        )
        indexes = await tx.record(
            [
                TrailEvent(EventType.TRANSFER_COMPLETED, transfer_id=f"{name}-{k}")
                for k in range(events)
            ]
        )
        if fail is not None:
            raise fail
        return indexes

    return work


async def state_keys(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return {str(k) for k in (await conn.execute(select(used_jtis.c.key))).scalars()}


async def transfer_ids(engine: AsyncEngine) -> list[str]:
    import json

    async with engine.connect() as conn:
        entries = await Trail.read(conn)
    return [json.loads(e.entry.split(b"\n", 1)[1])["transfer_id"] for e in entries]


class Refused(Exception):
    pass


# --------------------------------------------------------------------------- tests


async def test_check_log_reference_matches_a_known_tree() -> None:
    """The reference layout itself: 3 leaves store leaf0, leaf1, node(0,1), leaf2."""
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
    assert reference_stored_hashes(leaves) == [
        leaves[0],
        leaves[1],
        node(leaves[0], leaves[1]),
        leaves[2],
    ]
    assert prefix_roots(leaves)[-1] == node(node(leaves[0], leaves[1]), leaves[2])


async def test_fifty_concurrent_units_make_one_gap_free_log(engine: AsyncEngine) -> None:
    writer = TrailWriter(engine, Trail(DIGEST), utc_now)
    try:
        results = await asyncio.gather(
            *(writer.run(unit(f"u{i}", events=1 + i % 3)) for i in range(50))
        )
    finally:
        await writer.stop()
    total = sum(1 + i % 3 for i in range(50))
    assert sorted(i for r in results for i in r) == list(range(total))
    for i, r in enumerate(results):
        assert r == list(range(r[0], r[0] + 1 + i % 3))
    assert writer.batches_written < 50
    async with engine.connect() as conn:
        entries = await check_log(conn)
        assert len(entries) == total
        # Every intermediate size, not just the last, has the root of its prefix.
        roots = prefix_roots([e.leaf_hash for e in entries])
        for size in range(1, total + 1):
            assert await root_at(conn, size) == roots[size - 1]
    assert await state_keys(engine) == {f"u{i}" for i in range(50)}


async def test_a_failing_unit_is_rolled_back_alone(engine: AsyncEngine) -> None:
    writer = TrailWriter(engine, Trail(DIGEST), utc_now, linger_seconds=0.02)
    try:
        assert await writer.run(unit("first")) == [0]
        before = writer.batches_written
        outcomes = await asyncio.gather(
            writer.run(unit("ok-1", 2)),
            writer.run(unit("bad-1", 3, fail=Refused("after recording"))),
            writer.run(unit("ok-2")),
            writer.run(unit("first")),  # the state change itself fails: duplicate key
            writer.run(unit("ok-3", 2)),
            return_exceptions=True,
        )
        assert writer.batches_written == before + 1  # all five in one batch
        assert writer.batches_retried == 1  # run optimistically, then again carefully
        assert await writer.run(unit("last")) == [6]
    finally:
        await writer.stop()
    assert isinstance(outcomes[1], Refused)
    assert isinstance(outcomes[3], IntegrityError)
    assert [outcomes[0], outcomes[2], outcomes[4]] == [[1, 2], [3], [4, 5]]
    assert await state_keys(engine) == {"first", "ok-1", "ok-2", "ok-3", "last"}
    assert await transfer_ids(engine) == [
        "first-0",
        "ok-1-0",
        "ok-1-1",
        "ok-2-0",
        "ok-3-0",
        "ok-3-1",
        "last-0",
    ]
    async with engine.connect() as conn:
        await check_log(conn)


def savepoint_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SAVEPOINT-family statement the writer sends, in order."""
    sent: list[str] = []
    command, commands = Sql.command, Sql.commands

    def record_command(self: Sql, statement: str) -> None:
        sent.append(statement)
        command(self, statement)

    def record_commands(self: Sql, *statements: str) -> None:
        sent.extend(statements)
        commands(self, *statements)

    monkeypatch.setattr(Sql, "command", record_command)
    monkeypatch.setattr(Sql, "commands", record_commands)
    return sent


async def test_a_batch_without_failures_runs_without_savepoints(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = savepoint_statements(monkeypatch)
    writer = TrailWriter(engine, Trail(DIGEST), utc_now, linger_seconds=0.02)
    try:
        results = await asyncio.gather(*(writer.run(unit(f"calm-{i}")) for i in range(6)))
    finally:
        await writer.stop()
    assert sorted(i for [i] in results) == list(range(6))
    assert writer.batches_retried == 0
    assert [s for s in sent if "SAVEPOINT" in s] == []
    assert await state_keys(engine) == {f"calm-{i}" for i in range(6)}


async def test_a_failure_before_touching_the_database_needs_no_retry(
    engine: AsyncEngine,
) -> None:
    async def refuses_early(tx: Tx) -> None:
        raise Refused("checked before any statement")

    writer = TrailWriter(engine, Trail(DIGEST), utc_now, linger_seconds=0.02)
    try:
        outcomes = await asyncio.gather(
            writer.run(unit("early-1")),
            writer.run(refuses_early),
            writer.run(unit("early-2")),
            return_exceptions=True,
        )
    finally:
        await writer.stop()
    assert isinstance(outcomes[1], Refused)
    assert [outcomes[0], outcomes[2]] == [[0], [1]]
    assert writer.batches_retried == 0
    assert await state_keys(engine) == {"early-1", "early-2"}


async def test_a_retried_batch_runs_each_unit_again_but_commits_it_once(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = savepoint_statements(monkeypatch)
    runs: dict[str, int] = {}

    def counted(name: str, fail: Exception | None = None) -> Callable[[Tx], Awaitable[list[int]]]:
        inner = unit(name, fail=fail)

        async def work(tx: Tx) -> list[int]:
            runs[name] = runs.get(name, 0) + 1
            return await inner(tx)

        return work

    writer = TrailWriter(engine, Trail(DIGEST), utc_now, linger_seconds=0.02)
    try:
        outcomes = await asyncio.gather(
            writer.run(counted("r-ok-1")),
            writer.run(counted("r-bad", fail=Refused("after its insert"))),
            writer.run(counted("r-ok-2")),
            return_exceptions=True,
        )
    finally:
        await writer.stop()
    assert writer.batches_retried == 1
    # The optimistic pass ran the first two (the second raised), the careful
    # pass all three; the bad unit's insert and entry are gone, the others kept once.
    assert runs == {"r-ok-1": 2, "r-bad": 2, "r-ok-2": 1}
    assert isinstance(outcomes[1], Refused)
    assert [outcomes[0], outcomes[2]] == [[0], [1]]
    assert await state_keys(engine) == {"r-ok-1", "r-ok-2"}
    assert await transfer_ids(engine) == ["r-ok-1-0", "r-ok-2-0"]
    assert "ROLLBACK TO SAVEPOINT unit" in sent  # the careful pass undid the bad unit alone
    async with engine.connect() as conn:
        await check_log(conn)


async def test_after_a_retry_the_next_batches_start_carefully(engine: AsyncEngine) -> None:
    writer = TrailWriter(engine, Trail(DIGEST), utc_now)
    try:
        with pytest.raises(Refused):
            await writer.run(unit("c-0", fail=Refused("first")))
        assert writer.batches_retried == 1
        # The following batches are careful: a failing unit there fails alone, no retry.
        for i in range(1, writer_module.CAREFUL_AFTER_RETRY + 1):
            with pytest.raises(Refused):
                await writer.run(unit(f"c-{i}", fail=Refused("again")))
        assert writer.batches_retried == 1
        # Then optimism returns, and with it one retry for the next failure.
        with pytest.raises(Refused):
            await writer.run(unit("c-last", fail=Refused("once more")))
        assert writer.batches_retried == 2
        assert await writer.run(unit("c-fine")) == [0]
    finally:
        await writer.stop()
    assert await state_keys(engine) == {"c-fine"}


async def test_a_failed_commit_fails_every_unit_of_the_batch(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = TrailWriter(engine, Trail(DIGEST), utc_now, linger_seconds=0.02)
    real = writer_module._new_hashes
    failures = iter([RuntimeError("disk full")])

    def new_hashes_failing_once(
        sql: Sql, start: int, leaves: Sequence[bytes]
    ) -> list[tuple[int, bytes]]:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(sql, start, leaves)

    try:
        assert await writer.run(unit("before", 3)) == [0, 1, 2]
        monkeypatch.setattr(writer_module, "_new_hashes", new_hashes_failing_once)
        batches = writer.batches_written
        outcomes = await asyncio.gather(
            *(writer.run(unit(f"lost-{i}", 1 + i % 2)) for i in range(6)),
            return_exceptions=True,
        )
        assert all(isinstance(o, RuntimeError) and str(o) == "disk full" for o in outcomes)
        assert writer.batches_written == batches  # the batch was not written
        async with engine.connect() as conn:
            assert len(await check_log(conn)) == 3
        assert await state_keys(engine) == {"before"}
        # The writer carries on; the next batch starts where the log ends.
        assert await writer.run(unit("after", 2)) == [3, 4]
    finally:
        await writer.stop()
    assert await transfer_ids(engine) == ["before-0", "before-1", "before-2", "after-0", "after-1"]
    async with engine.connect() as conn:
        await check_log(conn)


async def test_units_are_grouped_into_batches(engine: AsyncEngine) -> None:
    writer = TrailWriter(engine, Trail(DIGEST), utc_now, linger_seconds=0.01)
    try:
        await asyncio.gather(*(writer.run(unit(f"g{i}")) for i in range(20)))
    finally:
        await writer.stop()
    # Twenty units arriving together while the writer lingers share batches.
    assert writer.batches_written in range(1, 20)
    # max_batch caps a batch: the units of one batch share its clock reading.
    ticks = itertools.count()
    base = datetime(2026, 11, 29, tzinfo=UTC)
    small = TrailWriter(
        engine,
        Trail(DIGEST),
        lambda: base + timedelta(seconds=next(ticks)),
        max_batch=3,
        linger_seconds=0.01,
    )
    seen: list[datetime] = []

    def timed(name: str) -> Callable[[Tx], Awaitable[None]]:
        async def work(tx: Tx) -> None:
            seen.append(tx.now)
            await unit(name)(tx)

        return work

    try:
        await asyncio.gather(*(small.run(timed(f"s{i}")) for i in range(20)))
    finally:
        await small.stop()
    sizes = [len(list(group)) for _, group in itertools.groupby(seen)]
    assert sum(sizes) == 20
    assert max(sizes) <= 3
    assert small.batches_written == len(sizes) >= 7
    async with engine.connect() as conn:
        assert len(await check_log(conn)) == 40


async def test_a_cancelled_caller_is_not_written(engine: AsyncEngine) -> None:
    writer = TrailWriter(engine, Trail(DIGEST), utc_now, linger_seconds=0.05)
    try:
        gone = asyncio.create_task(writer.run(unit("gone")))
        kept = asyncio.create_task(writer.run(unit("kept")))
        await asyncio.sleep(0.01)  # both queued, the writer lingering
        gone.cancel()
        assert await kept == [0]
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        await writer.stop()
    assert await state_keys(engine) == {"kept"}
    async with engine.connect() as conn:
        assert len(await check_log(conn)) == 1


async def test_stop_fails_waiting_units(engine: AsyncEngine) -> None:
    writer = TrailWriter(engine, Trail(DIGEST), utc_now, linger_seconds=0.05)
    assert await writer.run(unit("one")) == [0]
    first = asyncio.create_task(writer.run(unit("waiting-1")))
    second = asyncio.create_task(writer.run(unit("waiting-2")))
    await asyncio.sleep(0.01)  # the writer holds waiting-1 while lingering
    await writer.stop()
    # Neither caller waits forever, nor may it believe its unit is durable.
    results = await asyncio.wait_for(
        asyncio.gather(first, second, return_exceptions=True), timeout=5
    )
    assert all(isinstance(r, RuntimeError) for r in results), results
    async with engine.connect() as conn:
        assert len(await check_log(conn)) == 1
    assert await state_keys(engine) == {"one"}


# --------------------------------------------------------------------------- threads


@pytest.fixture(params=[True, False], ids=["units-on-loop", "units-in-thread"], autouse=True)
def units_on_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test above runs with both SQLite modes (PostgreSQL always uses the thread)."""
    defaults = TrailWriter.__init__.__kwdefaults__
    assert defaults is not None and "units_on_loop" in defaults
    monkeypatch.setitem(defaults, "units_on_loop", request.param)
    return bool(request.param)


def where(seen: list[int], name: str) -> Callable[[Tx], Awaitable[list[int]]]:
    inner = unit(name)

    async def work(tx: Tx) -> list[int]:
        seen.append(threading.get_ident())
        return await inner(tx)

    return work


async def test_units_run_where_the_mode_says(engine: AsyncEngine, units_on_loop: bool) -> None:
    writer = TrailWriter(engine, Trail(DIGEST), utc_now)
    seen: list[int] = []
    try:
        await asyncio.gather(*(writer.run(where(seen, f"where-{i}")) for i in range(5)))
    finally:
        await writer.stop()
    on_loop = {ident == threading.get_ident() for ident in seen}
    # On SQLite the units run on the event loop unless told otherwise; on
    # PostgreSQL, where each statement is a round trip, always in the thread.
    expected = units_on_loop and engine.url.get_backend_name() == "sqlite"
    assert on_loop == {expected}


async def test_a_failed_commit_on_the_thread_fails_the_batch_and_the_writer_goes_on(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The COMMIT (SQLite's fsync) fails after every unit of the batch ran.
    writer = TrailWriter(engine, Trail(DIGEST), utc_now, linger_seconds=0.02)
    if not writer._units_on_loop:
        pytest.skip("only the split batch commits through _flush_and_commit")
    failures = iter([OSError("disk I/O error")])

    real = TrailWriter._flush_and_commit

    def commit_failing_once(conn: Any, batch: Any) -> None:
        failure = next(failures, None)
        if failure is None:
            real(conn, batch)
            return
        batch.flush()
        raise failure  # where the COMMIT would have been

    try:
        assert await writer.run(unit("before", 2)) == [0, 1]
        monkeypatch.setattr(TrailWriter, "_flush_and_commit", staticmethod(commit_failing_once))
        outcomes = await asyncio.gather(
            *(writer.run(unit(f"lost-{i}")) for i in range(4)), return_exceptions=True
        )
        assert all(isinstance(o, OSError) for o in outcomes), outcomes
        assert await state_keys(engine) == {"before"}
        assert await writer.run(unit("after")) == [2]
    finally:
        await writer.stop()
    async with engine.connect() as conn:
        assert len(await check_log(conn)) == 3
