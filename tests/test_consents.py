"""ConsentStore: the consent state machine on a real database, races included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.consents import Consent, ConsentState, ConsentStore, ensure_subject, pseudonym_of
from gateway.policy.decision import AuthorizationDetail
from gateway.settings import Settings
from gateway.storage.engine import create_engine
from gateway.storage.models import consents, subjects
from gateway.storage.sql import Sql
from gateway.subjects import ClaimsBox, trail_pseudonym
from gateway.trail import Trail
from gateway.trail.writer import TrailWriter, Tx
from tests.conftest import PG_URL, reset_database

T = TypeVar("T")
DIGEST = "sha256:" + "cd" * 32
CNAF = AuthorizationDetail("cnaf", ("quotient_familial",), "family-benefit-eligibility", 1)
BOX = ClaimsBox(b"k" * 32)
CLAIMS = {"given_name": "Marianne", "family_name": "Dupont", "birthdate": "1984-07-14"}


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **kwargs: float) -> None:
        self.offset += timedelta(**kwargs)


@dataclass
class Db:
    engine: AsyncEngine
    store: ConsentStore
    writer: TrailWriter
    clock: Clock

    async def run(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """One unit of work, committed with its trail entries."""
        return await self.writer.run(work)

    async def close_if_used_up(self, consent_id: str) -> bool:
        consent = await self.get(consent_id)
        return await self.run(lambda tx: self.store.close_if_used_up(tx, consent))

    async def get(self, consent_id: str) -> Consent:
        async with self.engine.connect() as conn:
            consent = await self.store.get(conn, consent_id)
        assert consent is not None
        return consent

    async def create(
        self, *details: AuthorizationDetail, ttl: timedelta = timedelta(minutes=10)
    ) -> str:
        async def work(tx: Tx) -> str:
            return await self.store.create_pending(
                tx,
                client_id="mairie-demoville",
                details=details or (CNAF,),
                redirect_uri="http://127.0.0.1:8090/callback",
                client_state="st-1",
                code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                browser_binding="b" * 64,
                expires_at=tx.now + ttl,
            )

        return await self.run(work)

    async def subject(self, lookup: str = "lookup-marianne") -> str:
        return await self.run(lambda tx: ensure_subject(tx.conn, lookup, tx.now))

    async def grant(
        self, consent_id: str, subject_id: str, ttl: timedelta = timedelta(hours=1)
    ) -> int | None:
        consent = await self.get(consent_id)

        async def work(tx: Tx) -> int | None:
            return await self.store.grant(
                tx,
                consent,
                subject_id=subject_id,
                acr="eidas2",
                sealed_claims=BOX.seal(CLAIMS, f"consent:{consent_id}"),
                expires_at=tx.now + ttl,
            )

        return await self.run(work)

    async def active(self, *details: AuthorizationDetail) -> str:
        consent_id = await self.create(*details)
        assert await self.grant(consent_id, await self.subject()) is not None
        return consent_id

    async def end(self, consent_id: str, to: ConsentState, **kw: Any) -> bool:
        consent = await self.get(consent_id)
        return await self.run(lambda tx: self.store.end(tx, consent, to=to, **kw))

    async def consume(self, consent_id: str, provider: str = "cnaf") -> bool:
        async def work(tx: Tx) -> bool:
            return self.store.consume(tx.sql, consent_id, provider, self.clock())

        return await self.run(work)

    async def give_back(self, consent_id: str, provider: str = "cnaf") -> None:
        async def work(tx: Tx) -> None:
            self.store.give_back(tx.sql, consent_id, provider)

        await self.run(work)

    async def trail(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            entries = await Trail.read(conn)
        return [json.loads(e.entry.split(b"\n", 1)[1]) for e in entries]

    async def events_of(self, consent_id: str) -> list[str]:
        return [e["type"] for e in await self.trail() if e.get("consent_id") == consent_id]


@pytest.fixture
async def db(make_settings: Callable[..., Settings]) -> AsyncIterator[Db]:
    settings = make_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await reset_database(settings.database_url.value)
    engine = create_engine(settings.database_url.value)
    clock = Clock()
    writer = TrailWriter(engine, Trail(DIGEST), clock)
    try:
        yield Db(engine, ConsentStore(), writer, clock)
    finally:
        await writer.stop()
        await engine.dispose()


# --------------------------------------------------------------------------- the happy path


async def test_pending_to_active_to_exhausted(db: Db) -> None:
    dgfip = AuthorizationDetail("dgfip", ("revenu_fiscal",), "family-benefit-eligibility", 1)
    cnaf = AuthorizationDetail("cnaf", ("quotient_familial",), "family-benefit-eligibility", 2)
    consent_id = await db.create(cnaf, dgfip)

    pending = await db.get(consent_id)
    assert pending.state is ConsentState.PENDING
    assert pending.details == (cnaf, dgfip)
    assert pending.purpose == "family-benefit-eligibility"
    assert pending.claims is None and pending.subject_id is None
    assert {p: (a.max_transfers, a.uses_left) for p, a in pending.allowances.items()} == {
        "cnaf": (2, 2),
        "dgfip": (1, 1),
    }
    assert pending.transfers_allowed == 3 and pending.transfers_used == 0

    subject_id = await db.subject()
    index = await db.grant(consent_id, subject_id)
    active = await db.get(consent_id)
    assert active.state is ConsentState.ACTIVE
    assert active.subject_id == subject_id and active.acr == "eidas2"
    assert active.claims is not None
    assert BOX.open(active.claims, f"consent:{consent_id}") == CLAIMS
    assert active.decided_at is not None and active.ended_at is None
    trail = await db.trail()
    assert trail[index]["type"] == "consent.granted"  # type: ignore[index]
    async with db.engine.connect() as conn:
        pseudonym = await pseudonym_of(conn, subject_id)
        secret = (
            await conn.execute(select(subjects.c.trail_secret).where(subjects.c.id == subject_id))
        ).scalar_one()
    assert pseudonym == trail_pseudonym(bytes(secret)) != "erased"
    assert trail[index]["subject"] == pseudonym  # type: ignore[index]

    # Use everything, checking that the consent stays open while anything is left.
    assert await db.consume(consent_id, "cnaf")
    assert not await db.close_if_used_up(consent_id)
    assert await db.consume(consent_id, "cnaf")
    assert not await db.consume(consent_id, "cnaf")  # cnaf used up
    assert (await db.get(consent_id)).transfers_used == 2
    assert not await db.close_if_used_up(consent_id)
    assert await db.consume(consent_id, "dgfip")
    assert not await db.consume(consent_id, "dgfip")
    assert not await db.consume(consent_id, "other-provider")

    assert await db.close_if_used_up(consent_id)
    done = await db.get(consent_id)
    assert done.state is ConsentState.EXHAUSTED
    assert done.claims is None  # identity claims erased the moment it ends
    assert done.end_reason == "transfers_used" and done.ended_at is not None
    assert await db.events_of(consent_id) == [
        "consent.requested",
        "consent.granted",
        "consent.exhausted",
    ]
    exhausted = (await db.trail())[-1]
    assert exhausted["details"] == {"reason": "transfers_used"}
    assert exhausted["subject"] == pseudonym
    # Closing again records nothing more.
    assert not await db.close_if_used_up(consent_id)
    assert len(await db.events_of(consent_id)) == 3


async def test_trail_entries_carry_no_personal_data(db: Db) -> None:
    consent_id = await db.active()
    await db.end(consent_id, ConsentState.REVOKED, reason="revoked_by_person")
    async with db.engine.connect() as conn:
        raw = b"".join(e.entry for e in await Trail.read(conn))
    for value in CLAIMS.values():
        assert value.encode() not in raw
    assert b"lookup-marianne" not in raw


# --------------------------------------------------------------------------- grant and deny


async def test_grant_only_once(db: Db) -> None:
    consent_id = await db.create()
    subject_id = await db.subject()
    assert await db.grant(consent_id, subject_id) is not None
    assert await db.grant(consent_id, subject_id) is None
    assert await db.events_of(consent_id) == ["consent.requested", "consent.granted"]


async def test_grant_refused_after_the_request_expired(db: Db) -> None:
    consent_id = await db.create(ttl=timedelta(minutes=10))
    subject_id = await db.subject()
    db.clock.advance(minutes=10, seconds=1)
    assert await db.grant(consent_id, subject_id) is None
    consent = await db.get(consent_id)
    assert consent.state is ConsentState.PENDING
    assert consent.claims is None
    assert await db.events_of(consent_id) == ["consent.requested"]


async def test_grant_refused_for_a_denied_consent(db: Db) -> None:
    consent_id = await db.create()
    subject_id = await db.subject()
    consent = await db.get(consent_id)
    assert await db.run(lambda tx: db.store.deny(tx, consent, subject_id=subject_id))
    assert await db.grant(consent_id, subject_id) is None
    assert (await db.get(consent_id)).state is ConsentState.DENIED


async def test_deny_only_from_pending(db: Db) -> None:
    consent_id = await db.create()
    subject_id = await db.subject()
    consent = await db.get(consent_id)
    assert await db.run(lambda tx: db.store.deny(tx, consent, subject_id=subject_id))
    denied = await db.get(consent_id)
    assert denied.state is ConsentState.DENIED
    assert denied.subject_id == subject_id
    assert denied.end_reason == "denied" and denied.ended_at is not None
    assert denied.claims is None
    assert not await db.run(lambda tx: db.store.deny(tx, consent, subject_id=subject_id))
    assert not await db.consume(consent_id)

    active_id = await db.active()
    active = await db.get(active_id)
    assert not await db.run(lambda tx: db.store.deny(tx, active, subject_id=subject_id))
    assert (await db.get(active_id)).state is ConsentState.ACTIVE
    assert await db.events_of(consent_id) == ["consent.requested", "consent.denied"]


# --------------------------------------------------------------------------- revoke


async def test_revoke_only_from_active(db: Db) -> None:
    pending_id = await db.create()
    assert not await db.end(pending_id, ConsentState.REVOKED, reason="revoked_by_person")
    assert (await db.get(pending_id)).state is ConsentState.PENDING

    consent_id = await db.active()
    assert await db.end(consent_id, ConsentState.REVOKED, reason="revoked_by_person")
    revoked = await db.get(consent_id)
    assert revoked.state is ConsentState.REVOKED
    assert revoked.claims is None
    assert revoked.end_reason == "revoked_by_person"
    # Ended stays ended: no second revoke, no expiry, no exhaustion, no use.
    assert not await db.end(consent_id, ConsentState.REVOKED, reason="again")
    assert not await db.end(consent_id, ConsentState.EXPIRED, reason="expired")
    assert not await db.consume(consent_id)
    assert await db.events_of(consent_id) == [
        "consent.requested",
        "consent.granted",
        "consent.revoked",
    ]
    assert (await db.trail())[-1]["details"] == {"reason": "revoked_by_person"}


# --------------------------------------------------------------------------- uses


async def test_give_back_never_above_max(db: Db) -> None:
    consent_id = await db.active()
    await db.give_back(consent_id)
    assert (await db.get(consent_id)).allowances["cnaf"].uses_left == 1
    assert await db.consume(consent_id)
    assert (await db.get(consent_id)).allowances["cnaf"].uses_left == 0
    await db.give_back(consent_id)
    await db.give_back(consent_id)
    assert (await db.get(consent_id)).allowances["cnaf"].uses_left == 1


async def test_give_back_does_not_reopen_an_ended_consent(db: Db) -> None:
    consent_id = await db.active()
    assert await db.consume(consent_id)
    assert await db.close_if_used_up(consent_id)
    await db.give_back(consent_id)
    assert not await db.consume(consent_id)
    assert (await db.get(consent_id)).state is ConsentState.EXHAUSTED


async def test_consume_refused_on_pending_and_after_expiry(db: Db) -> None:
    pending_id = await db.create()
    assert not await db.consume(pending_id)
    consent_id = await db.active()
    db.clock.advance(hours=1, seconds=1)
    # Past its expiry the consent gives nothing, even before the sweep ends it.
    assert not await db.consume(consent_id)
    assert (await db.get(consent_id)).allowances["cnaf"].uses_left == 1


# --------------------------------------------------------------------------- expiry


async def test_expire_due_ends_pending_and_active_past_expiry(db: Db) -> None:
    pending_old = await db.create(ttl=timedelta(minutes=5))
    active_old = await db.create()
    subject_id = await db.subject()
    assert await db.grant(active_old, subject_id, ttl=timedelta(minutes=20)) is not None
    pending_new = await db.create(ttl=timedelta(hours=2))
    active_new = await db.create()
    assert await db.grant(active_new, subject_id, ttl=timedelta(hours=2)) is not None
    revoked = await db.create()
    assert await db.grant(revoked, subject_id, ttl=timedelta(minutes=20)) is not None
    assert await db.end(revoked, ConsentState.REVOKED, reason="revoked_by_person")

    db.clock.advance(minutes=30)
    ended = await db.run(db.store.expire_due)
    assert sorted(ended) == sorted([pending_old, active_old])

    for consent_id in (pending_old, active_old):
        consent = await db.get(consent_id)
        assert consent.state is ConsentState.EXPIRED
        assert consent.claims is None
        assert consent.end_reason == "expired"
        assert (await db.events_of(consent_id))[-1] == "consent.expired"
    assert (await db.get(pending_new)).state is ConsentState.PENDING
    active = await db.get(active_new)
    assert active.state is ConsentState.ACTIVE and active.claims is not None
    assert (await db.get(revoked)).state is ConsentState.REVOKED
    assert "consent.expired" not in await db.events_of(revoked)
    # The expired consent of a person has a pseudonym; a pending one has none yet.
    expired = {e["consent_id"]: e for e in await db.trail() if e["type"] == "consent.expired"}
    assert "subject" in expired[active_old] and "subject" not in expired[pending_old]

    assert await db.run(db.store.expire_due) == []
    assert len([e for e in await db.trail() if e["type"] == "consent.expired"]) == 2


async def test_claims_are_null_in_the_table_once_ended(db: Db) -> None:
    consent_id = await db.active()
    db.clock.advance(hours=2)
    await db.run(db.store.expire_due)
    async with db.engine.connect() as conn:
        claims = (
            await conn.execute(select(consents.c.claims).where(consents.c.id == consent_id))
        ).scalar_one()
    assert claims is None


# --------------------------------------------------------------------------- races


async def test_concurrent_consumes_of_a_single_use_consent_win_once(db: Db) -> None:
    consent_id = await db.active()
    results = await asyncio.gather(*(db.consume(consent_id) for _ in range(10)))
    assert sorted(results) == [False] * 9 + [True]
    assert (await db.get(consent_id)).allowances["cnaf"].uses_left == 0


async def test_concurrent_consumes_never_exceed_the_allowance(db: Db) -> None:
    consent_id = await db.active(
        AuthorizationDetail("cnaf", ("quotient_familial",), "family-benefit-eligibility", 3)
    )
    results = await asyncio.gather(*(db.consume(consent_id) for _ in range(10)))
    assert results.count(True) == 3
    assert (await db.get(consent_id)).allowances["cnaf"].uses_left == 0


async def test_revoke_committed_before_consume_wins(db: Db) -> None:
    consent_id = await db.active()
    stale = await db.get(consent_id)  # what a transfer read before the revoke
    assert stale.state is ConsentState.ACTIVE
    assert await db.end(consent_id, ConsentState.REVOKED, reason="revoked_by_person")
    assert not await db.consume(stale.id)
    assert (await db.get(consent_id)).allowances["cnaf"].uses_left == 1


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (GATEWAY_TEST_DATABASE_URL)")
async def test_revoke_committed_inside_an_open_consume_transaction_wins(db: Db) -> None:
    """READ COMMITTED: the consume statement sees a revoke committed after its transaction began."""
    import psycopg

    consent_id = await db.active()
    # A transaction of its own (as another process's writer would hold), opened
    # and reading the consent before the revoke commits.
    with psycopg.connect(PG_URL) as raw:
        sql = Sql(raw, "postgresql")
        seen = sql.one("SELECT state FROM consents WHERE id = :id", {"id": consent_id})
        assert seen == ("active",)
        assert await db.end(consent_id, ConsentState.REVOKED, reason="revoked_by_person")
        assert not db.store.consume(sql, consent_id, "cnaf", db.clock())
        raw.rollback()
    assert (await db.get(consent_id)).state is ConsentState.REVOKED
