"""Single-use identifiers (DPoP proof ``jti``, client assertion ``jti``).

The primary key of ``used_jtis`` does the work: the second insert of the same
key fails in the database, so the rule holds across processes (DESIGN §7).
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage.models import used_jtis
from gateway.storage.sql import Sql, Statement


def _key(kind: str, issuer: str, jti: str) -> str:
    return hashlib.sha256(f"{kind}\x00{issuer}\x00{jti}".encode()).hexdigest()


async def use_once(
    engine: AsyncEngine, *, kind: str, issuer: str, jti: str, expires_at: datetime
) -> bool:
    """Record a jti; False when it was already used (a replay)."""
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(used_jtis).values(key=_key(kind, issuer, jti), expires_at=expires_at)
            )
    except IntegrityError:
        return False
    return True


def use_once_statement(
    sql: Sql, *, kind: str, issuer: str, jti: str, expires_at: datetime
) -> Statement:
    """The statement that records a jti inside a unit of work; it changes no row on a replay.

    The transfer path runs it inside its group-committed unit of work (alone,
    or in one round trip with the unit's other statements: ``Sql.run_all``),
    so a proof's jti costs no commit of its own. ``ON CONFLICT DO NOTHING``
    (both engines) reports a replay by its row count, without an error to
    recover from.
    """
    return (
        "INSERT INTO used_jtis (key, expires_at) VALUES (:key, :expires_at)"
        " ON CONFLICT (key) DO NOTHING",
        {"key": _key(kind, issuer, jti), "expires_at": sql.time(expires_at)},
    )


async def prune(engine: AsyncEngine, now: datetime) -> None:
    """Forget jtis whose proof or assertion could no longer be accepted anyway."""
    async with engine.begin() as conn:
        await conn.execute(delete(used_jtis).where(used_jtis.c.expires_at < now))
