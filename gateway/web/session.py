"""The person's server-side session on the gateway's pages.

The cookie holds a random id; the database holds its SHA-256, the CSRF token,
the pending OIDC login and, once logged in, the subject and the sealed
identity claims. The id is replaced at login (no session fixation).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from starlette.requests import Request
from starlette.responses import Response

from gateway.runtime import Runtime
from gateway.storage.models import sessions

COOKIE = "gw_session"
FLOW_COOKIE = "gw_flow"


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def browser_binding(request: Request) -> str | None:
    raw = request.cookies.get(FLOW_COOKIE)
    return _hash(raw) if raw else None


@dataclass(frozen=True)
class PersonSession:
    id_hash: str
    csrf: str
    subject_id: str | None
    acr: str | None
    claims: dict[str, str] | None
    login: dict[str, Any] | None

    @property
    def logged_in(self) -> bool:
        return self.subject_id is not None

    @property
    def display_name(self) -> str:
        claims = self.claims or {}
        return " ".join(p for p in (claims.get("given_name"), claims.get("family_name")) if p)

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf, presented or "")


async def load(rt: Runtime, request: Request) -> PersonSession | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    id_hash = _hash(raw)
    async with rt.engine.connect() as conn:
        row = (await conn.execute(select(sessions).where(sessions.c.id_hash == id_hash))).first()
    if row is None or row.expires_at <= rt.now():
        return None
    claims = rt.claims_box.open(bytes(row.claims), id_hash) if row.claims else None
    return PersonSession(
        id_hash=id_hash,
        csrf=row.csrf,
        subject_id=row.subject_id,
        acr=row.acr,
        claims=claims,
        login=json.loads(row.login) if row.login else None,
    )


async def start(rt: Runtime, login: dict[str, Any]) -> str:
    """A new anonymous session holding a pending login; returns the raw cookie value."""
    raw = secrets.token_urlsafe(32)
    now = rt.now()
    async with rt.engine.begin() as conn:
        await conn.execute(
            insert(sessions).values(
                id_hash=_hash(raw),
                csrf=secrets.token_urlsafe(32),
                login=json.dumps(login),
                created_at=now,
                expires_at=now + timedelta(seconds=rt.settings.session_lifetime_seconds),
            )
        )
    return raw


async def log_in(
    rt: Runtime, old: PersonSession, *, subject_id: str, acr: str | None, claims: dict[str, str]
) -> str:
    """Replace the pre-login session by a logged-in one with a fresh id and CSRF token."""
    raw = secrets.token_urlsafe(32)
    id_hash = _hash(raw)
    now = rt.now()
    async with rt.engine.begin() as conn:
        await conn.execute(delete(sessions).where(sessions.c.id_hash == old.id_hash))
        await conn.execute(
            insert(sessions).values(
                id_hash=id_hash,
                csrf=secrets.token_urlsafe(32),
                subject_id=subject_id,
                acr=acr,
                claims=rt.claims_box.seal(claims, id_hash),
                created_at=now,
                expires_at=now + timedelta(seconds=rt.settings.session_lifetime_seconds),
            )
        )
    return raw


async def end(rt: Runtime, session: PersonSession) -> None:
    async with rt.engine.begin() as conn:
        await conn.execute(delete(sessions).where(sessions.c.id_hash == session.id_hash))


async def prune(rt: Runtime) -> None:
    async with rt.engine.begin() as conn:
        await conn.execute(delete(sessions).where(sessions.c.expires_at <= rt.now()))


async def clear_login(rt: Runtime, session: PersonSession) -> None:
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(sessions).where(sessions.c.id_hash == session.id_hash).values(login=None)
        )


def set_cookie(rt: Runtime, response: Response, name: str, raw: str, max_age: int) -> None:
    response.set_cookie(
        name,
        raw,
        max_age=max_age,
        path="/",
        httponly=True,
        secure=rt.settings.https_only,
        samesite="lax",
    )
