"""Revocation notices: SETs pushed to the service provider, retried, never duplicated."""

from __future__ import annotations

from sqlalchemy import select

from gateway import notices
from gateway.storage.models import notices as notices_table
from tests.conftest import SP_BASE, Stack, cnaf_details


async def _revoke(stack: Stack, consent_id: str, browser: object) -> None:
    from gateway.demo.story import Browser, revoke_on_my_page

    assert isinstance(browser, Browser)
    page = await revoke_on_my_page(browser, "http://127.0.0.1:8080/me", consent_id)
    assert page.status_code == 200


async def test_revocation_notice_reaches_the_service_provider_once(stack: Stack) -> None:
    browser = stack.browser()
    grant = await stack.grant([cnaf_details()], browser=browser)
    await _revoke(stack, grant.consent_id, browser)
    assert await notices.deliver_due(stack.rt) == 1
    [received] = stack.sp_app.notices
    assert received.consent_id == grant.consent_id
    assert received.state == "revoked"
    # Nothing left to send: a second round (or a restart) delivers nothing again.
    assert await notices.deliver_due(stack.rt) == 0
    assert len(stack.sp_app.notices) == 1
    trail = await stack.trail()
    delivered = [e for e in trail if e["type"] == "notice.delivered"]
    assert len(delivered) == 1 and delivered[0]["consent_id"] == grant.consent_id


async def test_notice_is_retried_after_a_receiver_outage(stack: Stack) -> None:
    browser = stack.browser()
    grant = await stack.grant([cnaf_details()], browser=browser)
    sp = stack.transport.apps[SP_BASE]
    stack.transport.route(SP_BASE, None)  # the service provider is down
    await _revoke(stack, grant.consent_id, browser)
    assert await notices.deliver_due(stack.rt) == 0
    async with stack.rt.engine.connect() as conn:
        row = (await conn.execute(select(notices_table))).one()
    assert row.attempts == 1 and row.delivered_at is None
    stack.transport.apps[SP_BASE] = sp  # back up
    assert await notices.deliver_due(stack.rt) == 0  # not due yet: backoff
    stack.clock.advance(seconds=notices.backoff(1).total_seconds() + 1)
    assert await notices.deliver_due(stack.rt) == 1
    assert [n.consent_id for n in stack.sp_app.notices] == [grant.consent_id]
    types = [e["type"] for e in await stack.trail()]
    assert types.count("notice.failed") == 1 and types.count("notice.delivered") == 1


async def test_retries_survive_a_restart_and_nothing_is_sent_twice(stack: Stack) -> None:
    """The schedule lives in the database: a new gateway process picks it up, once."""
    from gateway.app import build_runtime, close_runtime

    browser = stack.browser()
    grant = await stack.grant([cnaf_details()], browser=browser)
    sp = stack.transport.apps[SP_BASE]
    stack.transport.route(SP_BASE, None)  # the service provider is down
    await _revoke(stack, grant.consent_id, browser)
    assert await notices.deliver_due(stack.rt) == 0  # first attempt fails
    stack.transport.apps[SP_BASE] = sp

    # "Restart": a second runtime on the same data dir and database, its clock later.
    stack.clock.advance(seconds=notices.backoff(1).total_seconds() + 1)
    restarted = await build_runtime(stack.settings, transport=stack.transport, clock=stack.clock)
    try:
        assert await notices.deliver_due(restarted) == 1
        assert await notices.deliver_due(restarted) == 0
        assert await notices.deliver_due(stack.rt) == 0  # the old process does not resend
    finally:
        await close_runtime(restarted)
    assert [n.consent_id for n in stack.sp_app.notices] == [grant.consent_id]
