"""Revocation notices: Security Event Tokens (RFC 8417) pushed to service providers (RFC 8935).

When an active consent is revoked or expires and the client declares a
``notification_endpoint`` in policies/, a signed SET is written to the
``notices`` outbox *in the same unit of work* as the consent's end: the notice
cannot be lost, and cannot exist for an end that did not commit. A background
task delivers due notices: RFC 8935 §2 — ``POST`` with
``Content-Type: application/secevent+jwt``, success is ``202 Accepted`` —
retrying with exponential backoff (the schedule lives in the database, so it
survives a restart). Before each attempt a notice is *claimed* with a guarded
UPDATE that pushes its next attempt past the request timeout, so two
processes never send it at once; once delivered it is never sent again. The
receiver deduplicates on the SET's ``jti`` (RFC 8417 §2.2), which covers the
one unavoidable window (sent, then crashed before recording it).
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import jwt
import structlog
from sqlalchemy import and_, insert, select, update

from gateway.consents import Consent, ConsentState
from gateway.runtime import Runtime
from gateway.storage.models import notices
from gateway.trail import EventType, TrailEvent
from gateway.trail.writer import Tx

log = structlog.get_logger(__name__)

SET_TYP = "secevent+jwt"  # RFC 8417 §2.3
EVENT_CONSENT_REVOKED = "urn:gateway:secevent:consent-revoked"
EVENT_CONSENT_EXPIRED = "urn:gateway:secevent:consent-expired"
# Backoff: 2 s, 4 s, 8 s, ... capped at 10 minutes; abandoned after 12 attempts (~1 hour).
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 600.0
MAX_ATTEMPTS = 12
DELIVERY_TIMEOUT_SECONDS = 5.0
BATCH = 20


def backoff(attempts: int) -> timedelta:
    return timedelta(
        seconds=min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1))
    )


def security_event_token(
    rt: Runtime, consent: Consent, to: ConsentState, reason: str, now: datetime
) -> str:
    """The SET: who (client), which consent, what happened; no personal data."""
    event = EVENT_CONSENT_REVOKED if to == ConsentState.REVOKED else EVENT_CONSENT_EXPIRED
    claims: dict[str, Any] = {
        "iss": rt.settings.issuer,
        "aud": consent.client_id,
        "iat": int(now.timestamp()),
        "jti": secrets.token_urlsafe(16),
        "events": {
            event: {
                "consent_id": consent.id,
                "state": str(to),
                "reason": reason,
                "event_time": int(now.timestamp()),
            }
        },
    }
    key = rt.keys.active
    return jwt.encode(
        claims, key.private_key, algorithm=key.alg, headers={"typ": SET_TYP, "kid": key.kid}
    )


def outbox_hook(rt_ref: list[Runtime]) -> Any:
    """The ConsentStore ``on_end`` hook: queue a notice when a client wants one."""

    async def on_end(tx: Tx, consent: Consent, to: ConsentState, reason: str) -> None:
        if to not in (ConsentState.REVOKED, ConsentState.EXPIRED):
            return
        if reason == "client_revoked":
            return  # the client asked for it (RFC 7009): nothing to tell it
        rt = rt_ref[0]
        client = rt.policy.clients.get(consent.client_id)
        if client is None or client.notification_endpoint is None:
            return
        await tx.conn.execute(
            insert(notices).values(
                id=str(uuid.uuid4()),
                client_id=client.id,
                consent_id=consent.id,
                endpoint=client.notification_endpoint,
                token=security_event_token(rt, consent, to, reason, tx.now),
                attempts=0,
                next_attempt_at=tx.now,
                created_at=tx.now,
            )
        )

    return on_end


async def _claim(rt: Runtime, notice_id: str, due: datetime, now: datetime) -> bool:
    """Take the notice for one attempt; False if another process took it first."""
    async with rt.engine.begin() as conn:
        done = await conn.execute(
            update(notices)
            .where(
                notices.c.id == notice_id,
                notices.c.next_attempt_at == due,
                notices.c.delivered_at.is_(None),
                notices.c.abandoned_at.is_(None),
            )
            .values(next_attempt_at=now + timedelta(seconds=DELIVERY_TIMEOUT_SECONDS * 3))
        )
    return done.rowcount == 1


async def deliver_due(rt: Runtime) -> int:
    """Attempt every notice that is due; returns how many were delivered."""
    now = rt.now()
    async with rt.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(notices)
                .where(
                    and_(
                        notices.c.delivered_at.is_(None),
                        notices.c.abandoned_at.is_(None),
                        notices.c.next_attempt_at <= now,
                    )
                )
                .order_by(notices.c.next_attempt_at)
                .limit(BATCH)
            )
        ).all()
    delivered = 0
    for row in rows:
        if not await _claim(rt, row.id, row.next_attempt_at, now):
            continue
        status: int | None = None
        try:
            response = await rt.http.post(
                row.endpoint,
                content=row.token.encode(),
                headers={"Content-Type": "application/secevent+jwt", "Accept": "application/json"},
                timeout=DELIVERY_TIMEOUT_SECONDS,
            )
            status = response.status_code
        except httpx.HTTPError as exc:
            log.info("notice.attempt_failed", notice_id=row.id, error=type(exc).__name__)
        ok = status == 202  # RFC 8935 §2.2: "the SET Recipient MUST respond ... 202 Accepted"
        attempts = row.attempts + 1
        delivered += ok
        await _record_attempt(rt, row, ok=ok, status=status, attempts=attempts)
    return delivered


async def _record_attempt(
    rt: Runtime, row: Any, *, ok: bool, status: int | None, attempts: int
) -> None:
    async def work(tx: Tx) -> None:
        values: dict[str, Any] = {"attempts": attempts, "last_status": status}
        give_up = not ok and attempts >= MAX_ATTEMPTS
        if ok:
            values["delivered_at"] = tx.now
        elif give_up:
            values["abandoned_at"] = tx.now
        else:
            values["next_attempt_at"] = tx.now + backoff(attempts)
        await tx.conn.execute(update(notices).where(notices.c.id == row.id).values(**values))
        await tx.record(
            [
                TrailEvent(
                    EventType.NOTICE_DELIVERED if ok else EventType.NOTICE_FAILED,
                    client_id=row.client_id,
                    consent_id=row.consent_id,
                    details={
                        "notice_id": row.id,
                        "attempt": attempts,
                        "status": status,
                        **({"abandoned": True} if give_up else {}),
                    },
                )
            ]
        )

    await rt.writer.run(work)
