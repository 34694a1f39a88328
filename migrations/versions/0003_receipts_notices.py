"""Receipts (index of consent.granted) and the outbox of revocation notices.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consents") as batch:
        batch.add_column(sa.Column("granted_index", sa.BigInteger, nullable=True))
    op.create_table(
        "notices",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("consent_id", sa.String(36), nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("delivered_at", sa.DateTime, nullable=True),
        sa.Column("abandoned_at", sa.DateTime, nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
    )
    op.create_index("ix_notices_due", "notices", ["delivered_at", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("notices")
    with op.batch_alter_table("consents") as batch:
        batch.drop_column("granted_index")
