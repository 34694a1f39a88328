"""Initial schema: subjects, sessions, consents, codes, single-use jtis, transfers, trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subjects",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("lookup", sa.String(64), nullable=False, unique=True),
        sa.Column("trail_secret", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(36), sa.ForeignKey("subjects.id"), nullable=True),
        sa.Column("acr", sa.String(16), nullable=True),
        sa.Column("claims", sa.LargeBinary, nullable=True),
        sa.Column("login", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "consents",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("authorization_details", sa.Text, nullable=False),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("client_state", sa.Text, nullable=True),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("browser_binding", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(36), sa.ForeignKey("subjects.id"), nullable=True),
        sa.Column("acr", sa.String(16), nullable=True),
        sa.Column("claims", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("decided_at", sa.DateTime, nullable=True),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Column("ended_at", sa.DateTime, nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
    )
    op.create_index("ix_consents_subject", "consents", ["subject_id"])
    op.create_index("ix_consents_state_expires", "consents", ["state", "expires_at"])
    op.create_table(
        "consent_allowances",
        sa.Column("consent_id", sa.String(36), sa.ForeignKey("consents.id"), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("max_transfers", sa.Integer, nullable=False),
        sa.Column("uses_left", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("consent_id", "provider"),
    )
    op.create_table(
        "authorization_codes",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("consent_id", sa.String(36), sa.ForeignKey("consents.id"), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Column("used_at", sa.DateTime, nullable=True),
    )
    op.create_table(
        "used_jtis",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_used_jtis_expires", "used_jtis", ["expires_at"])
    op.create_table(
        "transfers",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("consent_id", sa.String(36), nullable=True),
        sa.Column("client_id", sa.String(64), nullable=True),
        sa.Column("subject_id", sa.String(36), nullable=True),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("size", sa.Integer, nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_transfers_subject", "transfers", ["subject_id"])
    op.create_index("ix_transfers_consent", "transfers", ["consent_id"])
    op.create_table(
        "trail_entries",
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("entry", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("time", sa.DateTime, nullable=False),
        sa.Column("client_id", sa.String(64), nullable=True),
        sa.Column("consent_id", sa.String(36), nullable=True),
        sa.Column("transfer_id", sa.String(36), nullable=True),
        sa.Column("provider", sa.String(64), nullable=True),
    )
    op.create_index("ix_trail_type", "trail_entries", ["type"])
    op.create_index("ix_trail_consent", "trail_entries", ["consent_id"])
    op.create_index("ix_trail_transfer", "trail_entries", ["transfer_id"])


def downgrade() -> None:
    for table in (
        "trail_entries",
        "transfers",
        "used_jtis",
        "authorization_codes",
        "consent_allowances",
        "consents",
        "sessions",
        "subjects",
    ):
        op.drop_table(table)
