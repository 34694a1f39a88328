"""Erasure: a person's trail entries become unlinkable, the proofs stay intact.

The trail names a person only by ``HMAC(secret, "trail")`` where the secret is
theirs alone (``subjects.trail_secret``). Deleting that secret changes no entry
and no hash — every proof still verifies — but nobody, the gateway included,
can tell any more which entries were about them. Entries written later about
that person (an active consent still running) carry the pseudonym "erased".
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.settings import Settings
from gateway.storage.engine import create_engine, write_first
from gateway.storage.models import subjects
from gateway.subjects import trail_pseudonym


async def find_subject(conn: AsyncConnection, pseudonym: str) -> str | None:
    """The subject whose trail pseudonym this is (a scan: erasure is rare)."""
    rows = await conn.execute(
        select(subjects.c.id, subjects.c.trail_secret).where(subjects.c.trail_secret.is_not(None))
    )
    for row in rows:
        if trail_pseudonym(bytes(row.trail_secret)) == pseudonym:
            return str(row.id)
    return None


async def erase_subject(settings: Settings, pseudonym: str) -> bool:
    """Delete the trail secret of the person with this pseudonym; False if none has it."""
    engine = create_engine(settings.database_url.value)
    try:
        async with write_first(engine).begin() as conn:
            subject_id = await find_subject(conn, pseudonym)
            if subject_id is None:
                return False
            await conn.execute(
                update(subjects).where(subjects.c.id == subject_id).values(trail_secret=None)
            )
        return True
    finally:
        await engine.dispose()
