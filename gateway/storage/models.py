"""Tables, as SQLAlchemy Core metadata.

Alembic migrations in ``migrations/`` are the only way the schema changes; this
module describes the schema they build so that queries are typed. Times are UTC,
stored without zone (see :class:`UtcDateTime`) so both engines compare them the
same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


metadata = MetaData()

subjects = Table(
    "subjects",
    metadata,
    Column("id", String(36), primary_key=True),
    # HMAC of the identity provider's issuer and sub: finds the person again
    # without storing who they are.
    Column("lookup", String(64), nullable=False, unique=True),
    # Per-person secret behind the trail pseudonym; deleting it makes the
    # person's trail entries unlinkable without touching the entries.
    Column("trail_secret", LargeBinary, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("csrf", String(64), nullable=False),
    Column("subject_id", String(36), ForeignKey("subjects.id"), nullable=True),
    Column("acr", String(16), nullable=True),
    Column("claims", LargeBinary, nullable=True),  # encrypted identity claims
    Column("login", Text, nullable=True),  # JSON of the pending OIDC login
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)

consents = Table(
    "consents",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("authorization_details", Text, nullable=False),  # JSON, as validated
    Column("redirect_uri", Text, nullable=False),
    Column("client_state", Text, nullable=True),
    Column("code_challenge", String(128), nullable=False),
    # Hash of the browser cookie that started the request: the consent page
    # only opens in that browser, so a leaked consent link is useless.
    Column("browser_binding", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("subject_id", String(36), ForeignKey("subjects.id"), nullable=True),
    Column("acr", String(16), nullable=True),
    Column("claims", LargeBinary, nullable=True),  # encrypted; erased when the consent ends
    Column("created_at", UtcDateTime, nullable=False),
    Column("decided_at", UtcDateTime, nullable=True),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("ended_at", UtcDateTime, nullable=True),
    Column("end_reason", String(32), nullable=True),
    # Trail index of the consent.granted entry: what a receipt proves inclusion of.
    Column("granted_index", BigInteger, nullable=True),
    Index("ix_consents_subject", "subject_id"),
    Index("ix_consents_state_expires", "state", "expires_at"),
)

# One row per provider of a consent: how many transfers are left. Step (5) of
# the transfer path decrements it with a guarded UPDATE, so a single-use
# consent relays once even when several processes race.
consent_allowances = Table(
    "consent_allowances",
    metadata,
    Column("consent_id", String(36), ForeignKey("consents.id"), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("max_transfers", Integer, nullable=False),
    Column("uses_left", Integer, nullable=False),
    PrimaryKeyConstraint("consent_id", "provider"),
)

authorization_codes = Table(
    "authorization_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("consent_id", String(36), ForeignKey("consents.id"), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("code_challenge", String(128), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime, nullable=True),
)

# Pushed authorization requests (RFC 9126): the request_uri is stored only as
# its SHA-256; ``used_at`` makes it single-use (a guarded UPDATE, across processes).
pushed_requests = Table(
    "pushed_requests",
    metadata,
    Column("request_uri_hash", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("params", Text, nullable=False),  # JSON object of the validated parameters
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime, nullable=True),
    Index("ix_pushed_requests_expires", "expires_at"),
)

# Single-use identifiers (DPoP proof jti, client assertion jti): the primary
# key makes the database refuse a second use, across processes.
used_jtis = Table(
    "used_jtis",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("expires_at", UtcDateTime, nullable=False),
    Index("ix_used_jtis_expires", "expires_at"),
)

transfers = Table(
    "transfers",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("consent_id", String(36), nullable=True),
    Column("client_id", String(64), nullable=True),
    Column("subject_id", String(36), nullable=True),
    Column("provider", String(64), nullable=False),
    Column("resource", String(64), nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("state", String(16), nullable=False),
    Column("http_status", Integer, nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("size", Integer, nullable=True),
    Column("sha256", String(64), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    Index("ix_transfers_subject", "subject_id"),
    Index("ix_transfers_consent", "consent_id"),
)

trail_entries = Table(
    "trail_entries",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("entry", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary, nullable=False),
    Column("type", String(32), nullable=False),
    Column("time", UtcDateTime, nullable=False),
    Column("client_id", String(64), nullable=True),
    Column("consent_id", String(36), nullable=True),
    Column("transfer_id", String(36), nullable=True),
    Column("provider", String(64), nullable=True),
    Index("ix_trail_type", "type"),
    Index("ix_trail_consent", "consent_id"),
    Index("ix_trail_transfer", "transfer_id"),
)


# Interior and leaf hashes of the Merkle tree, one row per stored hash, at the
# index Go's golang.org/x/mod/sumdb/tlog assigns (StoredHashIndex): any root
# or proof costs O(log n) reads.
trail_hashes = Table(
    "trail_hashes",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False),
)

# Signed checkpoints (C2SP tlog-checkpoint as an Ed25519 signed note).
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# Outbox of revocation notices (RFC 8417 SETs pushed per RFC 8935): written in
# the same unit of work as the consent's end, delivered with retries that
# survive a restart, each row at most once marked delivered.
notices = Table(
    "notices",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("consent_id", String(36), nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime, nullable=True),
    Column("abandoned_at", UtcDateTime, nullable=True),
    Column("last_status", Integer, nullable=True),
    Index("ix_notices_due", "delivered_at", "next_attempt_at"),
)

ALL_TABLES = [t.name for t in metadata.sorted_tables]
