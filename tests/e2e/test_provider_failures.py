"""When the data provider fails, or the trail cannot be written (DESIGN §3, steps 5-8).

A provider failure happens after ``transfer.authorized``: the trail then says
``transfer.failed`` with the code, and the use is given back, since nothing
reached the service provider. A provider's "no record" is an answer, not a
failure: the transfer completes and the use is spent. And if the trail cannot
be written at step 5, nothing is relayed at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway.consents import ConsentState
from gateway.relay import Relay
from tests.conftest import CNAF, CountingApp, Stack, cnaf_details, count_calls

QF_PARAMS = {"annee": "2025", "mois": "01"}
QF_PATH = "/cnaf/v1/quotient-familial"
TIMEOUT = 0.2  # seconds; the slow provider is cut off after this


def provider(respond: Callable[[], Response]) -> Starlette:
    """A CNAF stand-in that answers the quotient-familial route with ``respond()``."""

    async def endpoint(request: Request) -> Response:
        return respond()

    return Starlette(routes=[Route(QF_PATH, endpoint)])


def slow_provider() -> Starlette:
    async def endpoint(request: Request) -> Response:
        # Cancelled by the relay's deadline long before this ends.
        await asyncio.sleep(1.0)
        return JSONResponse({"quotient_familial": 1})

    return Starlette(routes=[Route(QF_PATH, endpoint)])


async def _chunks() -> AsyncIterator[bytes]:
    # No Content-Length: the relay must count while it reads.
    yield b'{"pad":"'
    for _ in range(20):
        yield b"x" * 4096
    yield b'"}'


FAILURES: dict[str, tuple[Callable[[], ASGIApp] | None, int, str]] = {
    # name: (the provider app, or None for "nothing listening"; status; code)
    "down": (None, 502, "provider_unavailable"),
    "slow": (slow_provider, 504, "provider_timeout"),
    "answers_500": (
        lambda: provider(lambda: JSONResponse({"error": "boom"}, status_code=500)),
        502,
        "provider_error",
    ),
    "answers_503_html": (
        lambda: provider(lambda: Response("<h1>maintenance</h1>", 503, media_type="text/html")),
        502,
        "provider_error",
    ),
    "redirects": (
        lambda: provider(
            lambda: Response(status_code=302, headers={"Location": "http://elsewhere.example/"})
        ),
        502,
        "provider_error",
    ),
    "not_json_content_type": (
        lambda: provider(lambda: PlainTextResponse("quotient_familial=812")),
        502,
        "provider_response_not_json",
    ),
    "broken_json": (
        lambda: provider(
            lambda: Response(b'{"quotient_familial": 8', media_type="application/json")
        ),
        502,
        "provider_response_not_json",
    ),
    "too_large_declared": (
        lambda: provider(lambda: JSONResponse({"pad": "x" * 70_000})),
        502,
        "provider_response_too_large",
    ),
    "too_large_streamed": (
        lambda: provider(lambda: StreamingResponse(_chunks(), media_type="application/json")),
        502,
        "provider_response_too_large",
    ),
}


async def use_short_timeout(stack: Stack, seconds: float) -> None:
    """Give CNAF a short deadline in the policy, and rebuild the relay's clients from it."""
    policy = stack.rt.policy
    cnaf = dataclasses.replace(policy.providers["cnaf"], timeout_seconds=seconds)
    stack.rt.policy = dataclasses.replace(policy, providers={**policy.providers, "cnaf": cnaf})
    old = stack.rt.relay
    stack.rt.relay = Relay(stack.rt.policy.providers, transport=stack.transport)
    await old.aclose()


async def entries_of(stack: Stack, transfer_id: str) -> list[dict[str, Any]]:
    return [e for e in await stack.trail() if e.get("transfer_id") == transfer_id]


async def uses_left(stack: Stack, consent_id: str) -> tuple[ConsentState, int]:
    async with stack.rt.engine.connect() as conn:
        consent = await stack.rt.consents.get(conn, consent_id)
    assert consent is not None
    return consent.state, consent.allowances["cnaf"].uses_left


def assert_problem(
    response: httpx.Response, *, status: int, code: str
) -> tuple[dict[str, Any], str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"urn:gateway:error:{code}", body
    assert body["status"] == status
    transfer_id = response.headers["Transfer-Id"]
    assert transfer_id and body["transfer_id"] == transfer_id
    return body, transfer_id


def count_calls_of(stack: Stack, app: ASGIApp | None) -> CountingApp | None:
    """Route CNAF to ``app`` (or to nothing) and count the calls that reach it."""
    stack.transport.route(CNAF, app)
    return count_calls(stack, CNAF) if app is not None else None


def types_of(entries: Sequence[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in entries]


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_provider_failure_gives_the_use_back(stack: Stack, failure: str) -> None:
    make_app, status, code = FAILURES[failure]
    if failure == "slow":
        await use_short_timeout(stack, TIMEOUT)
    grant = await stack.grant([cnaf_details(max_transfers=1)])
    healthy = stack.transport.apps[CNAF].app
    failing = make_app() if make_app is not None else None
    counted = count_calls_of(stack, failing)

    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await stack.sp.fetch(
        "cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS
    )
    elapsed = loop.time() - started
    body, transfer_id = assert_problem(response, status=status, code=code)
    assert body["provider"] == "cnaf"
    # A problem and nothing else: no part of whatever the provider sent.
    assert set(body) == {"type", "title", "status", "detail", "transfer_id", "provider"}
    if counted is not None:
        assert counted.calls == 1
    if failure == "slow":
        assert TIMEOUT <= elapsed < 1.0  # cut off, not waited out

    entries = await entries_of(stack, transfer_id)
    assert types_of(entries) == ["transfer.authorized", "transfer.failed"]
    failed = entries[1]
    assert failed["details"] == {"code": code, "use_returned": True}
    assert failed["consent_id"] == grant.consent_id
    assert failed["provider"] == "cnaf" and failed["resource"] == "quotient_familial"
    assert await uses_left(stack, grant.consent_id) == (ConsentState.ACTIVE, 1)

    # The provider recovers: the same token, with a fresh proof, gets the data.
    stack.transport.route(CNAF, healthy)
    again = await stack.sp.fetch("cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS)
    assert again.status_code == 200, again.text
    assert again.json()["quotient_familial"] == 812
    assert types_of(await entries_of(stack, again.headers["Transfer-Id"])) == [
        "transfer.authorized",
        "transfer.completed",
    ]
    assert await uses_left(stack, grant.consent_id) == (ConsentState.EXHAUSTED, 0)


async def test_the_delivered_bytes_are_the_ones_the_trail_recorded(stack: Stack) -> None:
    """transfer.completed names the SHA-256 and size of exactly the body the client got."""
    grant = await stack.grant([cnaf_details(max_transfers=1)])
    response = await stack.sp.fetch(
        "cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    entries = await entries_of(stack, response.headers["transfer-id"])
    assert types_of(entries) == ["transfer.authorized", "transfer.completed"]
    completed = entries[1]["details"]
    assert completed["delivered_sha256"] == hashlib.sha256(response.content).hexdigest()
    assert completed["delivered_size"] == len(response.content)
    assert response.json()  # minimised, not empty


async def test_provider_has_no_record(stack: Stack) -> None:
    # jean logs in at eidas2, enough for CNAF, but CNAF has no file for him.
    grant = await stack.grant([cnaf_details(max_transfers=1)], persona="jean")
    cnaf = count_calls(stack, CNAF)
    response = await stack.sp.fetch(
        "cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS
    )
    body, transfer_id = assert_problem(response, status=404, code="no_record")
    assert body["provider"] == "cnaf"
    assert cnaf.calls == 1

    entries = await entries_of(stack, transfer_id)
    assert types_of(entries) == ["transfer.authorized", "transfer.completed"]
    completed = entries[1]["details"]
    assert completed["provider_status"] == 404
    assert completed["delivered_size"] == 2  # "{}": nothing of the provider's body
    # "No record" is an answer: the use is spent and the consent ends.
    assert await uses_left(stack, grant.consent_id) == (ConsentState.EXHAUSTED, 0)
    again = await stack.sp.fetch("cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS)
    assert_problem(again, status=403, code="consent_exhausted")
    assert cnaf.calls == 1


@contextlib.asynccontextmanager
async def trail_refuses(stack: Stack, event_type: str) -> AsyncIterator[None]:
    """Make the database refuse to store trail entries of ``event_type``.

    The failure is injected where it would really happen, in the database: a
    trigger aborts the INSERT into the trail table, whichever code path (and
    whichever connection) appends the entry.
    """
    assert event_type.replace(".", "").isalpha()  # spliced into the trigger below
    engine = stack.rt.engine
    if engine.dialect.name == "sqlite":
        create = [
            f"CREATE TRIGGER gw_test_refuse BEFORE INSERT ON trail_entries"
            f" WHEN NEW.type = '{event_type}'"
            f" BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        ]
        drop = ["DROP TRIGGER gw_test_refuse"]
    else:
        create = [
            f"CREATE FUNCTION gw_test_refuse() RETURNS trigger AS $$ BEGIN"
            f" IF NEW.type = '{event_type}' THEN RAISE EXCEPTION 'disk I/O error'; END IF;"
            f" RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER gw_test_refuse BEFORE INSERT ON trail_entries"
            " FOR EACH ROW EXECUTE FUNCTION gw_test_refuse()",
        ]
        drop = ["DROP TRIGGER gw_test_refuse ON trail_entries", "DROP FUNCTION gw_test_refuse()"]
    async with engine.begin() as conn:
        for statement in create:
            await conn.execute(text(statement))
    try:
        yield
    finally:
        async with engine.begin() as conn:
            for statement in drop:
                await conn.execute(text(statement))


async def test_trail_down_at_step_5_relays_nothing(stack: Stack) -> None:
    grant = await stack.grant([cnaf_details(max_transfers=1)])
    cnaf = count_calls(stack, CNAF)
    async with trail_refuses(stack, "transfer.authorized"):
        response = await stack.sp.fetch(
            "cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS
        )
    _, transfer_id = assert_problem(response, status=503, code="trail_unavailable")
    assert cnaf.calls == 0
    entries = await entries_of(stack, transfer_id)
    assert types_of(entries) == ["transfer.denied"]
    assert entries[0]["details"]["code"] == "trail_unavailable"
    assert entries[0]["details"]["step"] == 5
    assert "transfer.authorized" not in await stack.trail_types()
    # The use taken alongside the refused entry was rolled back with it.
    assert await uses_left(stack, grant.consent_id) == (ConsentState.ACTIVE, 1)

    # Once the trail is writable again, the same token gets the data.
    again = await stack.sp.fetch("cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS)
    assert again.status_code == 200, again.text
    assert cnaf.calls == 1


async def test_trail_down_at_step_8_delivers_nothing(stack: Stack) -> None:
    """The provider answered, but its outcome cannot be recorded: no data leaves."""
    grant = await stack.grant([cnaf_details(max_transfers=1)])
    cnaf = count_calls(stack, CNAF)
    async with trail_refuses(stack, "transfer.completed"):
        response = await stack.sp.fetch(
            "cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS
        )
    _, transfer_id = assert_problem(response, status=503, code="trail_unavailable")
    assert "quotient_familial" not in response.text
    assert cnaf.calls == 1
    assert types_of(await entries_of(stack, transfer_id)) == ["transfer.authorized"]
