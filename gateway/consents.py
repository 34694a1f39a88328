"""Consents: one person's decision on one authorization request.

States (DESIGN §2)::

    pending ─▶ active ─▶ revoked | expired | exhausted
    pending ─▶ denied | expired

A consent never changes its terms. Every state change is a guarded UPDATE
(``WHERE state = <expected>``) in the caller's transaction together with its
trail entry, so two processes cannot both win a race and no change goes
unrecorded. Identity claims kept for an active consent are erased the moment
it ends.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, select, update

from gateway.ids import random_id, time_ordered_id
from gateway.policy.decision import AuthorizationDetail
from gateway.storage.models import consent_allowances, consents, subjects
from gateway.storage.sql import Row, Sql, Statement
from gateway.subjects import trail_pseudonym
from gateway.trail import EventType, TrailEvent
from gateway.trail.writer import Conn, Tx


class ConsentState(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    DENIED = "denied"
    REVOKED = "revoked"
    EXPIRED = "expired"
    EXHAUSTED = "exhausted"


ENDED = (ConsentState.DENIED, ConsentState.REVOKED, ConsentState.EXPIRED, ConsentState.EXHAUSTED)


@dataclass(frozen=True)
class Allowance:
    max_transfers: int
    uses_left: int


@dataclass(frozen=True)
class Consent:
    id: str
    client_id: str
    purpose: str
    details: tuple[AuthorizationDetail, ...]
    redirect_uri: str
    client_state: str | None
    code_challenge: str
    browser_binding: str
    state: ConsentState
    subject_id: str | None
    acr: str | None
    claims: bytes | None
    created_at: datetime
    decided_at: datetime | None
    expires_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    allowances: dict[str, Allowance]
    granted_index: int | None = None

    def detail_for(self, provider: str) -> AuthorizationDetail | None:
        return next((d for d in self.details if d.provider == provider), None)

    @property
    def transfers_allowed(self) -> int:
        return sum(a.max_transfers for a in self.allowances.values())

    @property
    def transfers_used(self) -> int:
        return sum(a.max_transfers - a.uses_left for a in self.allowances.values())


def details_to_json(details: Sequence[AuthorizationDetail]) -> list[dict[str, Any]]:
    return [
        {
            "type": "personal_data",
            "provider": d.provider,
            "resources": list(d.resources),
            "purpose": d.purpose,
            "max_transfers": d.max_transfers,
        }
        for d in details
    ]


def _details_from_json(raw: str) -> tuple[AuthorizationDetail, ...]:
    return tuple(
        AuthorizationDetail(
            provider=d["provider"],
            resources=tuple(d["resources"]),
            purpose=d["purpose"],
            max_transfers=int(d["max_transfers"]),
        )
        for d in json.loads(raw)
    )


_CONSENT_COLUMNS = (
    "id",
    "client_id",
    "purpose",
    "authorization_details",
    "redirect_uri",
    "client_state",
    "code_challenge",
    "browser_binding",
    "state",
    "subject_id",
    "acr",
    "claims",
    "created_at",
    "decided_at",
    "expires_at",
    "ended_at",
    "end_reason",
    "granted_index",
)
_CONSENT_COLUMNS_SQL = ", ".join(f"c.{name}" for name in _CONSENT_COLUMNS)
_TIME_COLUMNS = ("created_at", "decided_at", "expires_at", "ended_at")


def _consent(row: Mapping[Any, Any], allowances: dict[str, Allowance]) -> Consent:
    """A Consent from a ``consents`` row (SQLAlchemy mapping or lean dict, times aware)."""
    claims = row["claims"]
    return Consent(
        id=row["id"],
        client_id=row["client_id"],
        purpose=row["purpose"],
        details=_details_from_json(row["authorization_details"]),
        redirect_uri=row["redirect_uri"],
        client_state=row["client_state"],
        code_challenge=row["code_challenge"],
        browser_binding=row["browser_binding"],
        state=ConsentState(row["state"]),
        subject_id=row["subject_id"],
        acr=row["acr"],
        claims=bytes(claims) if claims is not None else None,
        created_at=row["created_at"],
        decided_at=row["decided_at"],
        expires_at=row["expires_at"],
        ended_at=row["ended_at"],
        end_reason=row["end_reason"],
        allowances=allowances,
        granted_index=row["granted_index"],
    )


def new_id() -> str:
    """A consent's or a transfer's id: time-ordered, so their indexes grow at one end."""
    return time_ordered_id()


async def pseudonym_of(conn: Conn, subject_id: str | None) -> str | None:
    """The trail pseudonym of a subject (None when there is no subject yet)."""
    if subject_id is None:
        return None
    row = (
        await conn.execute(select(subjects.c.trail_secret).where(subjects.c.id == subject_id))
    ).first()
    return trail_pseudonym(bytes(row.trail_secret) if row and row.trail_secret else None)


def subject_pseudonym(sql: Sql, subject_id: str | None) -> str | None:
    """:func:`pseudonym_of` in a unit of work, as one lean statement."""
    if subject_id is None:
        return None
    row = sql.one("SELECT trail_secret FROM subjects WHERE id = :id", {"id": subject_id})
    return trail_pseudonym(bytes(row[0]) if row and row[0] is not None else None)


async def ensure_subject(conn: Conn, lookup: str, now: datetime) -> str:
    """The subject id for a lookup value, created on first login."""
    row = (await conn.execute(select(subjects.c.id).where(subjects.c.lookup == lookup))).first()
    if row is not None:
        return str(row.id)
    subject_id = random_id()  # when a person first came is theirs to know
    await conn.execute(
        insert(subjects).values(
            id=subject_id, lookup=lookup, trail_secret=secrets.token_bytes(32), created_at=now
        )
    )
    return subject_id


OnEnd = Callable[["Tx", "Consent", "ConsentState", str], Awaitable[None]]


class ConsentStore:
    """Reads consents and changes their state, each change with its trail entry.

    Reads take a connection; changes take the :class:`Tx` of a unit of work, so
    the change and its entry commit in the same batch or not at all.
    ``on_end`` runs in the same unit of work when an active consent ends
    (the revocation notice outbox).
    """

    def __init__(self, on_end: OnEnd | None = None) -> None:
        self.on_end = on_end

    async def get(self, conn: Conn, consent_id: str) -> Consent | None:
        row = (await conn.execute(select(consents).where(consents.c.id == consent_id))).first()
        if row is None:
            return None
        allowance_rows = await conn.execute(
            select(consent_allowances).where(consent_allowances.c.consent_id == consent_id)
        )
        return _consent(
            row._mapping,
            {a.provider: Allowance(a.max_transfers, a.uses_left) for a in allowance_rows},
        )

    def read_for_transfer(
        self, sql: Sql, consent_id: str
    ) -> tuple[Consent, str | None, bytes | None] | None:
        """The consent, its allowances, its subject's lookup and trail secret: one statement.

        What step (3) of the transfer path reads, inside the unit of work that
        then consumes the use (so under the writer's lock). One row per
        allowance, the consent's columns repeated on each (a consent names a
        provider or two): one round trip rather than two on PostgreSQL.
        """
        return self.from_transfer_rows(sql, sql.all(*self.for_transfer_statement(consent_id)))

    @staticmethod
    def for_transfer_statement(consent_id: str) -> Statement:
        """:meth:`read_for_transfer`'s query (for ``Sql.all_and_run``)."""
        return (
            f"SELECT {_CONSENT_COLUMNS_SQL}, s.lookup, s.trail_secret,"  # noqa: S608 (column names only)
            " a.provider, a.max_transfers, a.uses_left FROM consents c"
            " LEFT JOIN subjects s ON s.id = c.subject_id"
            " LEFT JOIN consent_allowances a ON a.consent_id = c.id WHERE c.id = :id",
            {"id": consent_id},
        )

    @staticmethod
    def from_transfer_rows(
        sql: Sql, rows: Sequence[Row]
    ) -> tuple[Consent, str | None, bytes | None] | None:
        """What :meth:`read_for_transfer` returns, from its query's rows."""
        if not rows:
            return None
        width = len(_CONSENT_COLUMNS)
        row = rows[0]
        values = dict(zip(_CONSENT_COLUMNS, row, strict=False))
        for name in _TIME_COLUMNS:
            if values[name] is not None:
                values[name] = sql.read_time(values[name])
        allowances = {
            r[width + 2]: Allowance(int(r[width + 3]), int(r[width + 4]))
            for r in rows
            if r[width + 2] is not None
        }
        lookup, secret = row[width], row[width + 1]
        return (
            _consent(values, allowances),
            str(lookup) if lookup is not None else None,
            bytes(secret) if secret is not None else None,
        )

    async def for_subject(self, conn: Conn, subject_id: str) -> list[Consent]:
        ids = await conn.execute(
            select(consents.c.id)
            .where(consents.c.subject_id == subject_id)
            .order_by(consents.c.created_at.desc())
        )
        found = [await self.get(conn, r.id) for r in ids]
        return [c for c in found if c is not None]

    async def create_pending(
        self,
        tx: Tx,
        *,
        client_id: str,
        details: Sequence[AuthorizationDetail],
        redirect_uri: str,
        client_state: str | None,
        code_challenge: str,
        browser_binding: str,
        expires_at: datetime,
    ) -> str:
        conn, now = tx.conn, tx.now
        consent_id = new_id()
        await conn.execute(
            insert(consents).values(
                id=consent_id,
                client_id=client_id,
                purpose=details[0].purpose,
                authorization_details=json.dumps(details_to_json(details)),
                redirect_uri=redirect_uri,
                client_state=client_state,
                code_challenge=code_challenge,
                browser_binding=browser_binding,
                state=ConsentState.PENDING,
                created_at=now,
                expires_at=expires_at,
            )
        )
        await conn.execute(
            insert(consent_allowances),
            [
                {
                    "consent_id": consent_id,
                    "provider": d.provider,
                    "max_transfers": d.max_transfers,
                    "uses_left": d.max_transfers,
                }
                for d in details
            ],
        )
        await tx.record(
            [
                TrailEvent(
                    EventType.CONSENT_REQUESTED,
                    client_id=client_id,
                    consent_id=consent_id,
                    details={"authorization_details": details_to_json(details)},
                )
            ]
        )
        return consent_id

    async def grant(
        self,
        tx: Tx,
        consent: Consent,
        *,
        subject_id: str,
        acr: str | None,
        sealed_claims: bytes,
        expires_at: datetime,
    ) -> int | None:
        """Activate a pending consent; returns the index of its ``consent.granted`` entry."""
        conn, now = tx.conn, tx.now
        done = await conn.execute(
            update(consents)
            .where(
                consents.c.id == consent.id,
                consents.c.state == ConsentState.PENDING,
                consents.c.expires_at > now,
            )
            .values(
                state=ConsentState.ACTIVE,
                subject_id=subject_id,
                acr=acr,
                claims=sealed_claims,
                decided_at=now,
                expires_at=expires_at,
            )
        )
        if done.rowcount != 1:
            return None
        [index] = await tx.record(
            [
                TrailEvent(
                    EventType.CONSENT_GRANTED,
                    client_id=consent.client_id,
                    consent_id=consent.id,
                    subject=await pseudonym_of(conn, subject_id),
                    details={"acr": acr, "expires_at": _rfc3339(expires_at)},
                )
            ]
        )
        await conn.execute(
            update(consents).where(consents.c.id == consent.id).values(granted_index=index)
        )
        return index

    async def deny(self, tx: Tx, consent: Consent, *, subject_id: str) -> bool:
        conn, now = tx.conn, tx.now
        done = await conn.execute(
            update(consents)
            .where(consents.c.id == consent.id, consents.c.state == ConsentState.PENDING)
            .values(
                state=ConsentState.DENIED,
                subject_id=subject_id,
                decided_at=now,
                ended_at=now,
                end_reason="denied",
            )
        )
        if done.rowcount != 1:
            return False
        await tx.record(
            [
                TrailEvent(
                    EventType.CONSENT_DENIED,
                    client_id=consent.client_id,
                    consent_id=consent.id,
                    subject=await pseudonym_of(conn, subject_id),
                )
            ]
        )
        return True

    async def end(
        self,
        tx: Tx,
        consent: Consent,
        *,
        to: ConsentState,
        reason: str,
        from_states: Sequence[ConsentState] = (ConsentState.ACTIVE,),
        subject: str | None = None,
        only_if_used_up: bool = False,
        along: Sequence[Statement] = (),
    ) -> bool:
        """Move an active (or pending) consent to an end state, erasing its claims.

        With ``only_if_used_up``, only if no provider has a use left (checked in
        the same statement). ``along``: the unit's statements to send before
        the ending ``UPDATE``, in the same round trip (their row counts are
        not looked at; a failure among them fails the unit).
        """
        conn, now = tx.conn, tx.now
        event_type = {
            ConsentState.REVOKED: EventType.CONSENT_REVOKED,
            ConsentState.EXPIRED: EventType.CONSENT_EXPIRED,
            ConsentState.EXHAUSTED: EventType.CONSENT_EXHAUSTED,
        }[to]
        sql = tx.sql
        states, state_params = Sql.in_list("from", [str(s) for s in from_states])
        used_up = (
            " AND NOT EXISTS (SELECT 1 FROM consent_allowances"
            " WHERE consent_id = :id AND uses_left > 0)"
            if only_if_used_up
            else ""
        )
        ending = (
            "UPDATE consents SET state = :to, claims = NULL, ended_at = :now, end_reason = :reason"  # noqa: S608 (placeholders only)
            f" WHERE id = :id AND state IN {states}{used_up}",
            {"to": str(to), "now": sql.time(now), "reason": reason, "id": consent.id}
            | state_params,
        )
        done = sql.run_all([*along, ending])[-1]
        if done != 1:
            return False
        if self.on_end is not None and consent.state == ConsentState.ACTIVE:
            await self.on_end(tx, consent, to, reason)
        await tx.record(
            [
                TrailEvent(
                    event_type,
                    client_id=consent.client_id,
                    consent_id=consent.id,
                    subject=subject or await pseudonym_of(conn, consent.subject_id),
                    details={"reason": reason},
                )
            ]
        )
        return True

    def consume(self, sql: Sql, consent_id: str, provider: str, now: datetime) -> bool:
        """Take one transfer from the consent's allowance for ``provider``, if any is left.

        The guard re-checks state and expiry in the same statement, so a
        revoke or an expiry committed before this runs always wins.
        """
        return sql.run(*self.consume_statement(sql, consent_id, provider, now)) == 1

    @staticmethod
    def consume_statement(sql: Sql, consent_id: str, provider: str, now: datetime) -> Statement:
        """:meth:`consume`'s statement (for ``Sql.run_all``): one row changed if a use was taken."""
        return (
            "UPDATE consent_allowances SET uses_left = uses_left - 1"
            " WHERE consent_id = :id AND provider = :provider AND uses_left > 0"
            " AND EXISTS (SELECT 1 FROM consents WHERE id = :id AND state = :active"
            " AND expires_at > :now)",
            {
                "id": consent_id,
                "provider": provider,
                "active": str(ConsentState.ACTIVE),
                "now": sql.time(now),
            },
        )

    def give_back(self, sql: Sql, consent_id: str, provider: str) -> None:
        """Return a use taken by a transfer whose provider delivered nothing."""
        sql.run(
            "UPDATE consent_allowances SET uses_left = uses_left + 1"
            " WHERE consent_id = :id AND provider = :provider AND uses_left < max_transfers",
            {"id": consent_id, "provider": provider},
        )

    async def close_if_used_up(
        self,
        tx: Tx,
        consent: Consent,
        *,
        subject: str | None = None,
        along: Sequence[Statement] = (),
    ) -> bool:
        """End the consent as ``exhausted`` once no provider has a use left.

        ``consent`` may have been read earlier (its terms never change); the
        uses left are checked by the ending ``UPDATE`` itself, and ``end``
        only moves it from ``active``.
        """
        return await self.end(
            tx,
            consent,
            to=ConsentState.EXHAUSTED,
            reason="transfers_used",
            subject=subject,
            from_states=(ConsentState.ACTIVE,),
            only_if_used_up=True,
            along=along,
        )

    async def expire_due(self, tx: Tx) -> list[str]:
        """End every pending or active consent whose expiry has passed."""
        conn, now = tx.conn, tx.now
        due = await conn.execute(
            select(consents.c.id).where(
                consents.c.state.in_([ConsentState.PENDING, ConsentState.ACTIVE]),
                consents.c.expires_at <= now,
            )
        )
        ended = []
        for row in due.all():
            consent = await self.get(conn, row.id)
            if consent and await self.end(
                tx,
                consent,
                to=ConsentState.EXPIRED,
                reason="expired",
                from_states=(ConsentState.PENDING, ConsentState.ACTIVE),
            ):
                ended.append(consent.id)
        return ended


def _rfc3339(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("naive datetime")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
