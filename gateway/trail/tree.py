"""The Merkle tree over stored trail entries: roots, proofs and checkpoints.

Hashes come from the ``trail_hashes`` table (Go tlog layout), so a root or a
proof costs O(log n) reads. A new checkpoint is signed only after checking that
it is consistent with the newest stored one (a consistency proof recomputed
from storage): the gateway refuses to sign a history that forks its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import cast

import structlog
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import gateway.trail.merkle as merkle
from gateway.storage.models import checkpoints
from gateway.trail.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from gateway.trail.note import Signer, Verifier

log = structlog.get_logger(__name__)

Read = Callable[[Sequence[int]], Sequence[bytes]]


class TreeError(Exception):
    """Storage does not hold what the tree needs (a gap, or a fork)."""


# Proofs and roots read a few dozen stored hashes by index. As driver-level SQL
# with the indexes inlined (they are ints we computed, never input), that read
# costs a third of the same SELECT built with SQLAlchemy's expanding IN
# (bench/trail_bench.py): what keeps a proof under 1 ms at 10^6 entries.


async def tree_size(conn: AsyncConnection) -> int:
    """Entries in the log, from storage (max index + 1)."""
    result = await conn.exec_driver_sql("SELECT coalesce(max(idx) + 1, 0) FROM trail_entries")
    return int(result.scalar_one())


async def read_hashes(conn: AsyncConnection, indexes: Sequence[int]) -> dict[int, bytes]:
    """Stored hashes by stored-hash index, in one query."""
    if not indexes:
        return {}
    wanted = ",".join(str(int(i)) for i in sorted(set(indexes)))
    query = f"SELECT idx, hash FROM trail_hashes WHERE idx IN ({wanted})"  # noqa: S608 (ints only)
    rows = cast("list[tuple[int, bytes]]", (await conn.exec_driver_sql(query)).all())
    return {int(i): bytes(h) for i, h in rows}


async def _hashes(conn: AsyncConnection, indexes: Sequence[int]) -> Read:
    """Fetch, in one query, the stored hashes a computation will ask for."""
    found = await read_hashes(conn, indexes)
    if len(found) != len(set(indexes)):
        raise TreeError("stored trail hashes are missing")
    return lambda wanted: [found[i] for i in wanted]


async def root_at(conn: AsyncConnection, size: int) -> bytes:
    read = await _hashes(conn, merkle.tree_hash_indexes(size))
    return merkle.tree_hash(size, read)


async def inclusion(conn: AsyncConnection, index: int, size: int) -> list[bytes]:
    read = await _hashes(conn, merkle.inclusion_proof_indexes(index, size))
    return merkle.inclusion_proof(index, size, read)


async def consistency(conn: AsyncConnection, old: int, new: int) -> list[bytes]:
    read = await _hashes(conn, merkle.consistency_proof_indexes(old, new))
    return merkle.consistency_proof(old, new, read)


async def latest_checkpoint(conn: AsyncConnection) -> tuple[int, bytes, str] | None:
    row = (
        await conn.execute(select(checkpoints).order_by(checkpoints.c.size.desc()).limit(1))
    ).first()
    return (int(row.size), bytes(row.root), str(row.note)) if row else None


class Checkpointer:
    """Signs a checkpoint for the current tree when it has grown."""

    def __init__(self, engine: AsyncEngine, signer: Signer, origin: str) -> None:
        self.engine = engine
        self.signer = signer
        self.origin = origin

    @property
    def verifier(self) -> Verifier:
        return Verifier.from_key(self.signer.verifier_key())

    async def sign_if_grown(self, now: datetime) -> int | None:
        """Sign and store a checkpoint at the current size; returns it, or None."""
        async with self.engine.connect() as conn:
            size = await tree_size(conn)
            if size == 0:
                return None  # never a checkpoint for an empty tree
            latest = await latest_checkpoint(conn)
            if latest is not None and latest[0] >= size:
                return None
            root = await root_at(conn, size)
            if latest is not None:
                old_size, old_root, _ = latest
                proof = await consistency(conn, old_size, size)
                try:
                    merkle.verify_consistency(proof, old_size, old_root, size, root)
                except merkle.ProofError as exc:
                    log.error("trail.fork_detected", old_size=old_size, size=size)
                    raise TreeError(f"tree at {size} is not consistent with {old_size}") from exc
        note = sign_checkpoint(Checkpoint(self.origin, size, root), self.signer)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(checkpoints).values(size=size, root=root, note=note, created_at=now)
                )
        except IntegrityError:
            return None  # another process signed this size first
        return size

    def open(self, note: str) -> Checkpoint:
        return open_checkpoint(note, self.verifier, origin=self.origin)
