"""Storage of pushed authorization requests (RFC 9126): push, take once, prune.

A ``request_uri`` is a bearer reference to a request the client pushed with
its credentials; only its SHA-256 is stored. Taking it is single-use (RFC
9126 §4: the server "SHOULD treat request_uri values as one-time use"), and
only for the client that pushed it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update

from gateway.policy.model import Client
from gateway.runtime import Runtime
from gateway.storage.models import pushed_requests
from gateway.trail.writer import Tx

# RFC 9126 §2.2 / §7.1: short-lived; FAPI 2.0 asks for under 600 s, 60 s is
# ample for a redirect that follows the push at once.
REQUEST_URI_LIFETIME_SECONDS = 60
# RFC 9126 §2.2: the URN prefix for request_uri values the server generates.
REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"

# Why a request_uri was refused at /oauth/authorize (trail codes).
UNKNOWN = "request_uri_unknown"
USED = "request_uri_used"
EXPIRED = "request_uri_expired"
OTHER_CLIENT = "request_uri_other_client"


def _hash(request_uri: str) -> str:
    return hashlib.sha256(request_uri.encode()).hexdigest()


async def push(rt: Runtime, client: Client, params: Mapping[str, str]) -> str:
    """Store a validated request of ``client``; return its new request_uri."""
    # 256 bits: the request_uri must not be guessable (RFC 9126 §7.1).
    request_uri = REQUEST_URI_PREFIX + secrets.token_urlsafe(32)

    async def store(tx: Tx) -> None:
        await tx.conn.execute(
            insert(pushed_requests).values(
                request_uri_hash=_hash(request_uri),
                client_id=client.id,
                params=json.dumps(dict(params), separators=(",", ":")),
                expires_at=tx.now + timedelta(seconds=REQUEST_URI_LIFETIME_SECONDS),
            )
        )

    await rt.writer.run(store)
    return request_uri


async def take(rt: Runtime, client: Client, values: Sequence[str]) -> dict[str, str] | str:
    """The parameters pushed as ``values`` (one request_uri), marked used; or why not.

    A refusal (a trail code) changes nothing: a request_uri presented by
    another client is not burnt for its owner.
    """
    if len(values) != 1 or not values[0].startswith(REQUEST_URI_PREFIX):
        return UNKNOWN
    key = _hash(values[0])

    async def mark(tx: Tx) -> dict[str, str] | str:
        row = (
            await tx.conn.execute(
                select(pushed_requests).where(pushed_requests.c.request_uri_hash == key)
            )
        ).first()
        if row is None:
            return UNKNOWN
        if row.client_id != client.id:
            return OTHER_CLIENT
        if row.used_at is not None:
            return USED
        if row.expires_at <= tx.now:
            return EXPIRED
        done = await tx.conn.execute(
            update(pushed_requests)
            .where(pushed_requests.c.request_uri_hash == key, pushed_requests.c.used_at.is_(None))
            .values(used_at=tx.now)
        )
        if done.rowcount != 1:  # another process took it first
            return USED
        params = json.loads(row.params)
        assert isinstance(params, dict)
        return {str(k): str(v) for k, v in params.items()}

    outcome: dict[str, str] | str = await rt.writer.run(mark)
    return outcome


async def prune(rt: Runtime, now: datetime) -> None:
    """Forget requests expired for a while (a used one is refused as unknown then)."""
    async with rt.engine.begin() as conn:
        await conn.execute(
            delete(pushed_requests).where(pushed_requests.c.expires_at < now - timedelta(hours=1))
        )
