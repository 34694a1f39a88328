"""Trail events, and appending and reading them in a real database (SQLite or PostgreSQL).

Appending is done by the group-commit writer (``gateway.trail.writer``), so the
append properties (0-based gap-free indexes, one sequence across processes,
nothing left by a rolled-back unit) are checked through it. Each
``TrailWriter`` on its own engine stands for one gateway process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.settings import Settings
from gateway.storage.engine import create_engine
from gateway.storage.models import trail_entries
from gateway.trail import EventType, Trail, TrailEvent, encode_entry, leaf_hash
from gateway.trail.tree import root_at
from gateway.trail.writer import TrailWriter, Tx
from tests.conftest import reset_database

DIGEST = "sha256:" + "ab" * 32
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
NOW = datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
async def engine(make_settings: Callable[..., Settings]) -> AsyncIterator[AsyncEngine]:
    settings = make_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await reset_database(settings.database_url.value)
    engine = create_engine(settings.database_url.value)
    try:
        yield engine
    finally:
        await engine.dispose()


def utc_now() -> datetime:
    return datetime.now(UTC)


def body(entry: bytes) -> dict[str, object]:
    prefix, raw = entry.split(b"\n", 1)
    assert prefix == b"gateway-trail/v1"
    decoded = json.loads(raw)
    assert isinstance(decoded, dict)
    return decoded


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 Merkle tree hash, written out independently of gateway.trail.merkle."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def record(*events: TrailEvent) -> Callable[[Tx], object]:
    async def work(tx: Tx) -> list[int]:
        return await tx.record(list(events))

    return work


async def stored(engine: AsyncEngine) -> list[tuple[int, bytes, bytes]]:
    async with engine.connect() as conn:
        return [(e.index, e.entry, e.leaf_hash) for e in await Trail.read(conn)]


# --------------------------------------------------------------------------- event objects


def test_event_object_carries_id_time_type_policy_and_given_ids() -> None:
    trail = Trail(DIGEST)
    event = TrailEvent(
        EventType.TRANSFER_COMPLETED,
        client_id="mairie-demoville",
        transfer_id="t-1",
        provider="dgfip",
        resource="revenu_fiscal",
        subject="pseudo-1",
        details={"size": 12, "sha256": "00" * 32},
    )
    obj = trail.event_object(event, now=NOW)
    assert set(obj) == {
        "id",
        "time",
        "type",
        "policy",
        "client_id",
        "transfer_id",
        "provider",
        "resource",
        "subject",
        "details",
    }
    assert uuid.UUID(obj["id"]).version == 4
    assert obj["time"] == "2026-11-29T10:00:00.123456Z"
    assert RFC3339_UTC.fullmatch(obj["time"])
    assert obj["type"] == "transfer.completed"
    assert obj["policy"] == DIGEST
    assert obj["client_id"] == "mairie-demoville"
    assert obj["details"] == {"size": 12, "sha256": "00" * 32}
    # The object is what gets canonicalised: it must encode.
    assert body(encode_entry(obj)) == obj


def test_event_object_leaves_out_ids_that_are_none() -> None:
    obj = Trail(DIGEST).event_object(TrailEvent(EventType.POLICY_LOADED), now=NOW)
    assert set(obj) == {"id", "time", "type", "policy"}
    obj = Trail(DIGEST).event_object(
        TrailEvent(EventType.CONSENT_REVOKED, consent_id="c-1"), now=NOW
    )
    assert set(obj) == {"id", "time", "type", "policy", "consent_id"}
    assert None not in obj.values()


def test_event_ids_are_unique() -> None:
    trail = Trail(DIGEST)
    ids = {
        trail.event_object(TrailEvent(EventType.POLICY_LOADED), now=NOW)["id"] for _ in range(50)
    }
    assert len(ids) == 50


def test_event_time_is_converted_to_utc() -> None:
    paris = timezone(timedelta(hours=2))
    local = datetime(2026, 11, 29, 12, 0, 0, tzinfo=paris)
    obj = Trail(DIGEST).event_object(TrailEvent(EventType.POLICY_LOADED), now=local)
    assert obj["time"] == "2026-11-29T10:00:00.000000Z"


def test_event_time_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError):
        Trail(DIGEST).event_object(
            TrailEvent(EventType.POLICY_LOADED),
            now=datetime(2026, 11, 29, 10, 0),
        )


# --------------------------------------------------------------------------- appending


async def test_indexes_are_zero_based_and_gap_free_across_transactions(
    engine: AsyncEngine,
) -> None:
    writer = TrailWriter(engine, Trail(DIGEST), utc_now)
    try:
        first = await writer.run(record(TrailEvent(EventType.POLICY_LOADED)))
        second = await writer.run(
            record(
                TrailEvent(EventType.CONSENT_REQUESTED, client_id="c", consent_id="k-1"),
                TrailEvent(EventType.CONSENT_GRANTED, client_id="c", consent_id="k-1"),
            )
        )
        third = await writer.run(record(TrailEvent(EventType.CONSENT_REVOKED, consent_id="k-1")))
    finally:
        await writer.stop()
    assert (first, second, third) == ([0], [1, 2], [3])
    rows = await stored(engine)
    assert [i for i, _, _ in rows] == [0, 1, 2, 3]
    assert [body(e)["type"] for _, e, _ in rows] == [
        "policy.loaded",
        "consent.requested",
        "consent.granted",
        "consent.revoked",
    ]
    for _, entry, leaf in rows:
        assert leaf == leaf_hash(entry)
        assert entry == encode_entry(body(entry))  # stored bytes are canonical
        assert body(entry)["policy"] == DIGEST


async def test_stored_columns_index_the_event(engine: AsyncEngine) -> None:
    fixed = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
    writer = TrailWriter(engine, Trail(DIGEST), lambda: fixed)
    try:
        await writer.run(
            record(
                TrailEvent(
                    EventType.TRANSFER_AUTHORIZED,
                    client_id="mairie-demoville",
                    consent_id="k-1",
                    transfer_id="t-1",
                    provider="cnaf",
                )
            )
        )
    finally:
        await writer.stop()
    async with engine.connect() as conn:
        row = (await conn.execute(select(trail_entries))).one()
    assert row.idx == 0
    assert row.type == "transfer.authorized"
    assert row.time == fixed
    assert (row.client_id, row.consent_id, row.transfer_id, row.provider) == (
        "mairie-demoville",
        "k-1",
        "t-1",
        "cnaf",
    )
    assert body(bytes(row.entry))["time"] == "2026-11-29T10:00:00.000000Z"


async def test_concurrent_writers_make_one_gap_free_sequence(engine: AsyncEngine) -> None:
    """20 'processes' (a writer on its own engine each) appending at once."""
    url = engine.url.render_as_string(hide_password=False)
    engines = [create_engine(url) for _ in range(20)]
    writers = [TrailWriter(e, Trail(DIGEST), utc_now) for e in engines]

    async def unit(w: int, u: int) -> list[int]:
        events = [
            TrailEvent(EventType.TRANSFER_COMPLETED, transfer_id=f"t-{w}-{u}-{k}")
            for k in range(1 + u % 2)
        ]
        indexes: list[int] = await writers[w].run(record(*events))
        return indexes

    try:
        results = await asyncio.gather(*(unit(w, u) for w in range(20) for u in range(3)))
    finally:
        for writer in writers:
            await writer.stop()
        for e in engines:
            await e.dispose()

    total = sum(len(r) for r in results)
    assert total == 20 * (1 + 2 + 1)
    returned = sorted(i for r in results for i in r)
    assert returned == list(range(total))
    # A unit's own events stay together and in order.
    for r in results:
        assert r == list(range(r[0], r[0] + len(r)))

    rows = await stored(engine)
    assert [i for i, _, _ in rows] == list(range(total))
    assert len({body(e)["transfer_id"] for _, e, _ in rows}) == total
    # The stored Merkle hashes agree with the entries, whoever wrote them.
    async with engine.connect() as conn:
        assert await root_at(conn, total) == mth([leaf for _, _, leaf in rows])


async def test_one_writer_batches_many_callers_without_gaps(engine: AsyncEngine) -> None:
    writer = TrailWriter(engine, Trail(DIGEST), utc_now)
    try:
        results = await asyncio.gather(
            *(
                writer.run(record(TrailEvent(EventType.TOKEN_ISSUED, consent_id=f"k-{i}")))
                for i in range(40)
            )
        )
    finally:
        await writer.stop()
    assert sorted(i for r in results for i in r) == list(range(40))
    assert [i for i, _, _ in await stored(engine)] == list(range(40))


class Refused(Exception):
    pass


async def test_rolled_back_unit_leaves_no_entry_and_no_gap(engine: AsyncEngine) -> None:
    writer = TrailWriter(engine, Trail(DIGEST), utc_now)

    async def fails_after_recording(tx: Tx) -> None:
        await tx.record([TrailEvent(EventType.CONSENT_GRANTED, consent_id="lost")])
        raise Refused("the state change failed")

    try:
        assert await writer.run(record(TrailEvent(EventType.POLICY_LOADED))) == [0]
        with pytest.raises(Refused):
            await writer.run(fails_after_recording)
        # In the same batch as healthy units too: only the failing one disappears.
        outcomes = await asyncio.gather(
            writer.run(record(TrailEvent(EventType.CONSENT_GRANTED, consent_id="kept-1"))),
            writer.run(fails_after_recording),
            writer.run(record(TrailEvent(EventType.CONSENT_GRANTED, consent_id="kept-2"))),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], Refused)
        assert sorted([*outcomes[0], *outcomes[2]]) == [1, 2]  # type: ignore[misc]
        assert await writer.run(record(TrailEvent(EventType.POLICY_LOADED))) == [3]
    finally:
        await writer.stop()

    rows = await stored(engine)
    assert [i for i, _, _ in rows] == [0, 1, 2, 3]
    assert "lost" not in {body(e).get("consent_id") for _, e, _ in rows}
    async with engine.connect() as conn:
        assert await root_at(conn, 4) == mth([leaf for _, _, leaf in rows])


# --------------------------------------------------------------------------- reading


async def test_read_a_range_and_the_latest_policy_digest(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await Trail.read(conn) == []
        assert await Trail.latest_policy_digest(conn) is None

    old, new = "sha256:" + "01" * 32, "sha256:" + "02" * 32
    writers = [TrailWriter(engine, Trail(d), utc_now) for d in (old, new)]
    try:
        await writers[0].run(record(TrailEvent(EventType.POLICY_LOADED)))
        await writers[0].run(record(TrailEvent(EventType.CONSENT_REQUESTED, consent_id="k")))
        await writers[1].run(record(TrailEvent(EventType.POLICY_LOADED)))
        await writers[1].run(record(TrailEvent(EventType.CONSENT_GRANTED, consent_id="k")))
    finally:
        for w in writers:
            await w.stop()

    async with engine.connect() as conn:
        assert [e.index for e in await Trail.read(conn, 1, 3)] == [1, 2]
        assert [e.index for e in await Trail.read(conn, 2)] == [2, 3]
        assert await Trail.read(conn, 4) == []
        # The newest policy.loaded entry wins, not the newest entry's stamp order.
        assert await Trail.latest_policy_digest(conn) == new
