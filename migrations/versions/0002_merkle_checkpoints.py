"""Merkle tree hashes (Go tlog layout) and signed checkpoints.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trail_hashes",
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    _backfill_hashes()


def _stored_hash_index(level: int, n: int) -> int:
    # golang.org/x/mod/sumdb/tlog StoredHashIndex: level L's n-th hash is written
    # right after level L+1's (2n+1)-th; level 0's n-th at n + n/2 + n/4 + ...
    for _ in range(level):
        n = 2 * n + 1
    i = 0
    while n > 0:
        i += n
        n >>= 1
    return i + level


def _backfill_hashes() -> None:
    """Entries written by revision 0001 get their Merkle hashes (frozen copy of the algorithm)."""
    conn = op.get_bind()
    leaves = [
        bytes(row[0])
        for row in conn.execute(sa.text("SELECT leaf_hash FROM trail_entries ORDER BY idx"))
    ]
    stored: dict[int, bytes] = {}
    for n, leaf in enumerate(leaves):
        h = leaf
        stored[_stored_hash_index(0, n)] = h
        level = 0
        while (n >> level) & 1:
            left = stored[_stored_hash_index(level, (n >> level) - 1)]
            h = hashlib.sha256(b"\x01" + left + h).digest()
            level += 1
            stored[_stored_hash_index(level, n >> level)] = h
    table = sa.table(
        "trail_hashes", sa.column("idx", sa.BigInteger), sa.column("hash", sa.LargeBinary)
    )
    if stored:
        op.bulk_insert(table, [{"idx": i, "hash": h} for i, h in sorted(stored.items())])


def downgrade() -> None:
    op.drop_table("checkpoints")
    op.drop_table("trail_hashes")
