"""The offline verifier and the monitor against a real log and forged ones.

The genuine log is written by the group-commit writer into a fresh database
and exported row by row in the ``/audit/export`` format; its checkpoints are
signed by the gateway's ``Checkpointer``. Tampering is done on that export (a
byte changed, an entry deleted, two swapped, truncation, a fork re-signed with
the same key) and, for the monitor, in the database itself: a gateway that
rewrote its storage and serves checkpoints and proofs from the rewritten tree.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.cli import main
from gateway.settings import Settings
from gateway.storage.engine import create_engine
from gateway.storage.models import checkpoints, trail_entries, trail_hashes
from gateway.trail import EventType, Trail, TrailEvent, encode_entry
from gateway.trail import tree as trail_tree
from gateway.trail.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from gateway.trail.note import Signer, Verifier
from gateway.trail.tree import Checkpointer, TreeError, tree_size
from gateway.trail.verify import (
    Alarm,
    RootBuilder,
    VerificationFailed,
    check_progress,
    cli_watch,
    verify_export,
    watch_once,
)
from gateway.trail.writer import TrailWriter, Tx
from tests.trail.test_writer import check_log, fresh_database, reference_stored_hashes

DIGEST = "sha256:" + "ef" * 32
ORIGIN = "gateway.example/trail"
SIZE = 21  # entries in the genuine log
OLD = 13  # size of the older checkpoint
BASE = "http://gateway.test"


def utc_now() -> datetime:
    return datetime.now(UTC)


def events(prefix: str, count: int) -> list[TrailEvent]:
    kinds = [EventType.CONSENT_GRANTED, EventType.TRANSFER_AUTHORIZED, EventType.TRANSFER_COMPLETED]
    return [
        TrailEvent(
            kinds[i % 3],
            client_id="mairie-demoville",
            consent_id=f"{prefix}-c{i // 3}",
            transfer_id=f"{prefix}-t{i}",
            subject="pseudo",
        )
        for i in range(count)
    ]


async def append(writer: TrailWriter, batch: list[TrailEvent]) -> list[int]:
    async def work(tx: Tx) -> list[int]:
        return await tx.record(batch)

    return await writer.run(work)


async def export(engine: AsyncEngine) -> list[dict[str, Any]]:
    """The rows in the /audit/export format (decoded to dicts, to tamper with)."""
    async with engine.connect() as conn:
        return [
            {
                "index": e.index,
                "entry": base64.b64encode(e.entry).decode(),
                "leaf_hash": base64.b64encode(e.leaf_hash).decode(),
            }
            for e in await Trail.read(conn)
        ]


def ndjson(records: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r, separators=(",", ":")) + "\n" for r in records]


def entry_of(record: dict[str, Any]) -> bytes:
    return base64.b64decode(record["entry"])


def with_entry(record: dict[str, Any], entry: bytes, *, rehash: bool) -> dict[str, Any]:
    changed = dict(record, entry=base64.b64encode(entry).decode())
    if rehash:
        leaf = hashlib.sha256(b"\x00" + entry).digest()
        changed["leaf_hash"] = base64.b64encode(leaf).decode()
    return changed


def one_byte_changed(entry: bytes) -> bytes:
    """The same canonical JSON but one character of the event id changed."""
    at = entry.index(b'"id":"') + len(b'"id":"')
    new = b"0" if entry[at : at + 1] != b"0" else b"1"
    return entry[:at] + new + entry[at + 1 :]


@dataclass
class Log:
    engine: AsyncEngine
    signer: Signer
    checkpointer: Checkpointer
    records: list[dict[str, Any]]
    old_note: str
    note: str

    @property
    def verifier(self) -> Verifier:
        return self.signer.verifier

    @property
    def old(self) -> Checkpoint:
        return open_checkpoint(self.old_note, self.verifier)

    @property
    def checkpoint(self) -> Checkpoint:
        return open_checkpoint(self.note, self.verifier)


async def note_at(engine: AsyncEngine, size: int) -> str:
    async with engine.connect() as conn:
        note = (
            await conn.execute(select(checkpoints.c.note).where(checkpoints.c.size == size))
        ).scalar_one()
    return str(note)


@pytest.fixture
async def log(make_settings: Callable[..., Settings]) -> AsyncIterator[Log]:
    settings = make_settings()
    await fresh_database(settings)
    engine = create_engine(settings.database_url.value)
    signer = Signer(ORIGIN, Ed25519PrivateKey.generate())
    checkpointer = Checkpointer(engine, signer, ORIGIN)
    writer = TrailWriter(engine, Trail(DIGEST), utc_now)
    try:
        assert await checkpointer.sign_if_grown(utc_now()) is None  # never for an empty tree
        await append(writer, events("a", OLD))
        assert await checkpointer.sign_if_grown(utc_now()) == OLD
        await append(writer, events("b", SIZE - OLD))
        assert await checkpointer.sign_if_grown(utc_now()) == SIZE
        assert await checkpointer.sign_if_grown(utc_now()) is None  # not grown
        records = await export(engine)
        assert len(records) == SIZE
        yield Log(
            engine,
            signer,
            checkpointer,
            records,
            await note_at(engine, OLD),
            await note_at(engine, SIZE),
        )
    finally:
        await writer.stop()
        await engine.dispose()


def failure(
    records: list[dict[str, Any]], cp: Checkpoint, old: Checkpoint | None = None
) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as caught:
        verify_export(ndjson(records), cp, old=old)
    return caught.value


# --------------------------------------------------------------------------- offline verifier


async def test_a_genuine_export_verifies(log: Log) -> None:
    report = verify_export(ndjson(log.records), log.checkpoint, old=log.old)
    assert (report.entries, report.size, report.old_size) == (SIZE, SIZE, OLD)
    assert report.root == log.checkpoint.root
    assert report.notes == []
    # Against the older checkpoint, the later entries are reported, not refused.
    report = verify_export(ndjson(log.records), log.old)
    assert report.size == OLD and report.entries == SIZE
    assert report.notes and "8 entries after the checkpoint" in report.notes[0]
    # Blank lines are tolerated; the root is the one the tree computes from storage.
    lines = ndjson(log.records)
    lines.insert(3, "\n")
    assert verify_export(lines, log.checkpoint).root == log.checkpoint.root
    async with log.engine.connect() as conn:
        assert await trail_tree.root_at(conn, SIZE) == log.checkpoint.root


async def test_one_byte_changed_with_a_stale_leaf_hash_names_the_index(log: Log) -> None:
    for index in (0, 7, OLD, SIZE - 1):
        records = list(log.records)
        records[index] = with_entry(
            records[index], one_byte_changed(entry_of(records[index])), rehash=False
        )
        error = failure(records, log.checkpoint)
        assert error.index == index
        assert f"entry {index}:" in str(error) and "leaf hash" in str(error)


async def test_one_byte_changed_with_its_leaf_hash_recomputed_breaks_the_root(log: Log) -> None:
    for index in (0, 7, SIZE - 1):
        records = list(log.records)
        records[index] = with_entry(
            records[index], one_byte_changed(entry_of(records[index])), rehash=True
        )
        error = failure(records, log.checkpoint)
        assert "root" in str(error) and "does not match the checkpoint" in str(error)
        # Not canonical any more (a space added): named, even with the leaf hash recomputed.
        records = list(log.records)
        entry = entry_of(records[index]).replace(b'{"', b'{ "', 1)
        records[index] = with_entry(records[index], entry, rehash=True)
        error = failure(records, log.checkpoint)
        assert error.index == index and "canonical" in str(error)
    # A change after the checkpoint's size is outside what it vouches for.
    records = list(log.records)
    records[SIZE - 1] = with_entry(
        records[SIZE - 1], one_byte_changed(entry_of(records[SIZE - 1])), rehash=True
    )
    assert verify_export(ndjson(records), log.old).root == log.old.root


async def test_undecodable_lines_are_named(log: Log) -> None:
    for bad in ("not json", "[1]", json.dumps(dict(log.records[4], entry="%%%"))):
        lines = ndjson(log.records)
        lines[4] = bad + "\n"
        with pytest.raises(VerificationFailed) as caught:
            verify_export(lines, log.checkpoint)
        assert caught.value.index == 4


async def test_a_deleted_entry_is_named(log: Log) -> None:
    records = [r for r in log.records if r["index"] != 9]
    error = failure(records, log.checkpoint)
    assert error.index == 9
    assert "entry is missing" in str(error)
    # Deleted and the indexes renumbered to hide it: too few entries for the checkpoint.
    renumbered = [dict(r, index=i) for i, r in enumerate(records)]
    error = failure(renumbered, log.checkpoint)
    assert error.index == SIZE - 1
    assert f"holds {SIZE - 1} entries" in str(error)
    # ... and against the older checkpoint the first 13 no longer hash to its root.
    assert "root" in str(failure(renumbered, log.old))


async def test_two_swapped_entries_are_caught(log: Log) -> None:
    records = list(log.records)
    records[3], records[11] = records[11], records[3]
    error = failure(records, log.checkpoint)
    assert error.index == 3
    assert "expected index 3, found 11" in str(error)
    # Swapped with their indexes rewritten in order: the root no longer matches.
    rewritten = [dict(r, index=i) for i, r in enumerate(records)]
    assert "root" in str(failure(rewritten, log.checkpoint))
    # A repeated entry.
    repeated = [*log.records[:5], log.records[4], *log.records[5:]]
    error = failure(repeated, log.checkpoint)
    assert error.index == 5 and "out of order or repeated" in str(error)


async def test_truncation_below_the_checkpoint_is_caught(log: Log) -> None:
    for keep in (0, 1, OLD, SIZE - 1):
        error = failure(log.records[:keep], log.checkpoint)
        assert error.index == keep
        assert f"holds {keep} entries" in str(error)


def forked(log: Log, keep: int, extra: int) -> tuple[list[dict[str, Any]], str]:
    """The first ``keep`` records, then ``extra`` different ones, re-signed with the same key."""
    trail = Trail(DIGEST)
    records = [dict(r) for r in log.records[:keep]]
    for event in events("fork", extra):
        entry = encode_entry(trail.event_object(event, now=utc_now()))
        leaf = hashlib.sha256(b"\x00" + entry).digest()
        records.append(
            {
                "index": len(records),
                "entry": base64.b64encode(entry).decode(),
                "leaf_hash": base64.b64encode(leaf).decode(),
            }
        )
    builder = RootBuilder()
    for r in records:
        builder.add(base64.b64decode(r["leaf_hash"]))
    note = sign_checkpoint(Checkpoint(ORIGIN, builder.size, builder.root()), log.signer)
    return records, note


async def test_a_fork_is_caught_with_the_older_checkpoint(log: Log) -> None:
    records, note = forked(log, keep=OLD - 3, extra=SIZE - OLD + 5)
    fork = open_checkpoint(note, log.verifier)
    assert fork.size == SIZE + 2
    # On its own a re-signed fork is self-consistent: only history can tell.
    assert verify_export(ndjson(records), fork).root == fork.root
    error = failure(records, fork, old=log.old)
    assert "history rewritten" in str(error)
    error = failure(records, fork, old=log.checkpoint)
    assert "history rewritten" in str(error)
    # A fork at the same size as the genuine checkpoint.
    records, note = forked(log, keep=OLD + 2, extra=SIZE - OLD - 2)
    same = open_checkpoint(note, log.verifier)
    assert same.size == SIZE and same.root != log.checkpoint.root
    assert "history rewritten" in str(failure(records, same, old=log.checkpoint))
    # A fork that is shorter than the older checkpoint: a rollback.
    records, note = forked(log, keep=2, extra=3)
    assert "rollback" in str(failure(records, open_checkpoint(note, log.verifier), old=log.old))
    # Agreeing with the forged checkpoint is not enough for the genuine export either.
    assert "root" in str(failure(log.records, same))


# --------------------------------------------------------------------------- the CLI


def write(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    return path


async def test_cli_verify_exit_status_and_messages(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path / "export.ndjson", "".join(ndjson(log.records)))
    cp = write(tmp_path / "checkpoint", log.note)
    old = write(tmp_path / "old-checkpoint", log.old_note)
    key = log.signer.verifier_key()
    key_file = write(tmp_path / "verifier.key", key + "\n")

    argv = ["trail", "verify", str(good), "--checkpoint", str(cp), "--verifier-key"]
    assert main([*argv, key]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK:") and f"{SIZE} entries" in out
    assert main([*argv, str(key_file), "--old-checkpoint", str(old)]) == 0
    assert "consistent with the older checkpoint at 13" in capsys.readouterr().out

    records = list(log.records)
    records[7] = with_entry(records[7], one_byte_changed(entry_of(records[7])), rehash=False)
    bad = write(tmp_path / "tampered.ndjson", "".join(ndjson(records)))
    assert main(["trail", "verify", str(bad), "--checkpoint", str(cp), "--verifier-key", key]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "entry 7" in err

    fork_records, fork_note = forked(log, keep=5, extra=SIZE)
    fork = write(tmp_path / "fork.ndjson", "".join(ndjson(fork_records)))
    fork_cp = write(tmp_path / "fork-checkpoint", fork_note)
    argv = ["trail", "verify", str(fork), "--checkpoint", str(fork_cp), "--verifier-key", key]
    assert main(argv) == 0  # alone, a fork signed with the key verifies
    capsys.readouterr()
    assert main([*argv, "--old-checkpoint", str(old)]) == 1
    assert "history rewritten" in capsys.readouterr().err

    # A checkpoint signed by another key, or edited after signing.
    stranger = Signer(ORIGIN, Ed25519PrivateKey.generate())
    other = write(tmp_path / "other", sign_checkpoint(log.checkpoint, stranger))
    assert (
        main(["trail", "verify", str(good), "--checkpoint", str(other), "--verifier-key", key]) == 1
    )
    assert "FAILED" in capsys.readouterr().err
    edited = write(tmp_path / "edited", log.note.replace(f"\n{SIZE}\n", f"\n{SIZE - 1}\n", 1))
    assert edited.read_text() != log.note
    assert (
        main(["trail", "verify", str(good), "--checkpoint", str(edited), "--verifier-key", key])
        == 1
    )
    assert "FAILED" in capsys.readouterr().err
    # A malformed verifier key.
    assert (
        main(["trail", "verify", str(good), "--checkpoint", str(cp), "--verifier-key", "nope"]) == 1
    )
    assert "FAILED" in capsys.readouterr().err


# --------------------------------------------------------------------------- the monitor


class ForgingGateway:
    """Serves whatever checkpoint it is told to, and consistency proofs from its storage."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.note: str | None = None
        self.app = Starlette(
            routes=[
                Route("/trail/checkpoint", self.checkpoint),
                Route("/trail/proof/consistency", self.consistency),
            ]
        )
        self.transport = httpx.ASGITransport(app=self.app)

    async def checkpoint(self, request: Request) -> Response:
        if self.note is None:
            return PlainTextResponse("no checkpoint", status_code=404)
        return PlainTextResponse(self.note)

    async def consistency(self, request: Request) -> Response:
        old, new = int(request.query_params["old"]), int(request.query_params["new"])
        async with self.engine.connect() as conn:
            hashes = await trail_tree.consistency(conn, old, new)
        return JSONResponse({"hashes": [base64.b64encode(h).decode() for h in hashes]})


async def rewrite_history(log: Log, keep: int, extra: int) -> int:
    """Truncate storage to ``keep`` entries and append ``extra`` different ones; new size."""
    async with log.engine.begin() as conn:
        leaves = [e.leaf_hash for e in await Trail.read(conn, 0, keep)]
        await conn.execute(delete(trail_entries).where(trail_entries.c.idx >= keep))
        kept_hashes = len(reference_stored_hashes(leaves))
        await conn.execute(delete(trail_hashes).where(trail_hashes.c.idx >= kept_hashes))
    await grow(log, "rewritten", extra)
    async with log.engine.connect() as conn:
        return len(await check_log(conn))


async def grow(log: Log, prefix: str, count: int) -> None:
    writer = TrailWriter(log.engine, Trail(DIGEST), utc_now)
    try:
        await append(writer, events(prefix, count))
    finally:
        await writer.stop()


async def signed_now(log: Log) -> str:
    """A checkpoint of the storage as it is, signed with the gateway's key regardless."""
    async with log.engine.connect() as conn:
        size = await tree_size(conn)
        root = await trail_tree.root_at(conn, size)
    return sign_checkpoint(Checkpoint(ORIGIN, size, root), log.signer)


async def test_check_progress(log: Log) -> None:
    old, new = log.old, log.checkpoint
    async with log.engine.connect() as conn:
        proof = await trail_tree.consistency(conn, OLD, SIZE)
    check_progress(None, old, None)  # the first one seen
    check_progress(old, new, proof)  # a consistent extension
    check_progress(new, new, [])  # nothing new
    with pytest.raises(Alarm, match="rollback"):
        check_progress(new, old, None)
    with pytest.raises(Alarm, match="fork: two different roots"):
        check_progress(new, Checkpoint(ORIGIN, SIZE, hashlib.sha256(b"other").digest()), [])
    with pytest.raises(Alarm, match="fork"):
        check_progress(old, new, [])  # no proof
    flipped = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    with pytest.raises(Alarm, match="fork"):
        check_progress(old, new, flipped)
    with pytest.raises(Alarm, match="origin"):
        check_progress(old, Checkpoint("elsewhere.example/trail", SIZE, new.root), proof)


async def test_watch_once_accepts_extensions_and_alarms_on_rollback_and_forks(
    log: Log, tmp_path: Path
) -> None:
    gateway = ForgingGateway(log.engine)
    state = tmp_path / "witness-state"
    async with httpx.AsyncClient(transport=gateway.transport) as http:

        async def watch() -> str:
            return await watch_once(http, BASE, log.verifier, state)

        assert await watch() == "no checkpoint yet"
        assert not state.exists()
        gateway.note = log.old_note
        assert await watch() == f"first checkpoint: {OLD} entries"
        assert state.read_text() == log.old_note
        gateway.note = log.note
        assert await watch() == f"consistent: {OLD} → {SIZE} entries"
        assert state.read_text() == log.note
        assert await watch() == f"consistent: {SIZE} → {SIZE} entries"

        # Rollback: the gateway serves its older checkpoint again.
        gateway.note = log.old_note
        with pytest.raises(Alarm, match="rollback"):
            await watch()
        assert state.read_text() == log.note  # the state keeps the last good one

        # Not signed by the gateway's key.
        stranger = Signer(ORIGIN, Ed25519PrivateKey.generate())
        gateway.note = sign_checkpoint(log.checkpoint, stranger)
        with pytest.raises(Alarm, match="signature"):
            await watch()

        # History rewritten from entry 17 on, same size: two roots for one size.
        assert await rewrite_history(log, keep=17, extra=SIZE - 17) == SIZE
        gateway.note = await signed_now(log)
        with pytest.raises(Alarm, match="fork: two different roots"):
            await watch()

        # Grown further, with proofs from the rewritten tree: not consistent.
        await grow(log, "y", 5)
        with pytest.raises(TreeError):  # the gateway's own Checkpointer refuses to sign it
            await log.checkpointer.sign_if_grown(utc_now())
        gateway.note = await signed_now(log)
        assert open_checkpoint(gateway.note, log.verifier).size == SIZE + 5
        with pytest.raises(Alarm, match="not consistent"):
            await watch()
        assert state.read_text() == log.note


async def test_cli_watch_exit_status(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = ForgingGateway(log.engine)
    state = tmp_path / "state"
    key = log.signer.verifier_key()

    async def watch(count: int = 1) -> int:
        return await cli_watch(
            BASE, key, state, interval=0.0, count=count, transport=gateway.transport
        )

    gateway.note = log.old_note
    assert await watch() == 0
    gateway.note = log.note
    assert await watch(count=2) == 0
    out = capsys.readouterr().out
    assert "first checkpoint: 13 entries" in out and "consistent: 13 → 21 entries" in out
    gateway.note = log.old_note
    assert await watch() == 2
    assert "ALARM: rollback" in capsys.readouterr().err
    # A gateway that cannot be reached is a warning, not an alarm.
    unreachable = await cli_watch(
        "http://127.0.0.1:9",
        key,
        state,
        interval=0.0,
        count=1,
        transport=httpx.MockTransport(lambda request: httpx.Response(503)),
    )
    assert unreachable == 0
    assert "warning" in capsys.readouterr().err
