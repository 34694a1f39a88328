"""Structured logs: the request id middleware and what a request line holds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from gateway import logs
from gateway.logs import RequestContextMiddleware, valid_request_id


@pytest.fixture(autouse=True)
def json_logs() -> Iterator[None]:
    saved = structlog.get_config()
    logs.configure("json", "info")
    yield
    structlog.configure(**saved)


async def inside(request: Request) -> JSONResponse:
    # A handler's own log line: the request id must reach it through contextvars.
    structlog.get_logger("gateway.test").info("handler.ran")
    return JSONResponse({"request_id": request.scope["state"]["request_id"]})


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("handler failed")


def make_client() -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/inside", inside), Route("/boom", boom)])
    transport = httpx.ASGITransport(app=RequestContextMiddleware(app), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


def log_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


async def test_valid_request_id_is_echoed_and_bound(capsys: pytest.CaptureFixture[str]) -> None:
    async with make_client() as client:
        response = await client.get("/inside", headers={"X-Request-ID": "sp-42.retry:1_a-b"})
    assert response.headers["x-request-id"] == "sp-42.retry:1_a-b"
    assert response.json() == {"request_id": "sp-42.retry:1_a-b"}
    lines = log_lines(capsys.readouterr().err)
    handler = [x for x in lines if x["event"] == "handler.ran"]
    request = [x for x in lines if x["event"] == "http.request"]
    assert len(handler) == 1 and len(request) == 1
    assert handler[0]["request_id"] == "sp-42.retry:1_a-b"
    assert request[0]["request_id"] == "sp-42.retry:1_a-b"
    assert request[0]["status"] == 200
    assert request[0]["method"] == "GET"
    assert request[0]["level"] == "info"


@pytest.mark.parametrize(
    "sent",
    [
        "has spaces in it",
        "x" * 200,
        "new\u00e9line",
        "semi;colon",
        "",
    ],
)
async def test_invalid_request_id_is_replaced(
    sent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with make_client() as client:
        response = await client.get("/inside", headers={"X-Request-ID": sent.encode()})
    echoed = response.headers["x-request-id"]
    assert echoed != sent
    assert valid_request_id(echoed) == echoed
    lines = log_lines(capsys.readouterr().err)
    assert {x["request_id"] for x in lines} == {echoed}
    assert all(sent not in json.dumps(x) for x in lines if sent)


async def test_request_id_generated_when_absent_and_differs_per_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with make_client() as client:
        first = (await client.get("/inside")).headers["x-request-id"]
        second = (await client.get("/inside")).headers["x-request-id"]
    assert first != second
    assert valid_request_id(first) == first
    lines = log_lines(capsys.readouterr().err)
    assert [x["request_id"] for x in lines if x["event"] == "http.request"] == [first, second]


async def test_request_id_is_not_left_bound_after_the_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with make_client() as client:
        await client.get("/inside", headers={"X-Request-ID": "req-1"})
    structlog.get_logger("gateway.test").info("after.request")
    after = [x for x in log_lines(capsys.readouterr().err) if x["event"] == "after.request"]
    assert len(after) == 1
    assert "request_id" not in after[0]


async def test_path_is_logged_without_query_string(capsys: pytest.CaptureFixture[str]) -> None:
    async with make_client() as client:
        await client.get("/inside?code=SECRET-CODE&state=st-1")
    err = capsys.readouterr().err
    [request] = [x for x in log_lines(err) if x["event"] == "http.request"]
    assert request["path"] == "/inside"
    assert "SECRET-CODE" not in err
    assert "st-1" not in err


async def test_failing_handler_still_logs_a_500_with_the_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with make_client() as client:
        response = await client.get("/boom", headers={"X-Request-ID": "req-boom"})
    assert response.status_code == 500
    [request] = [x for x in log_lines(capsys.readouterr().err) if x["event"] == "http.request"]
    assert request["status"] == 500
    assert request["request_id"] == "req-boom"


def test_json_lines_carry_level_and_utc_timestamp(capsys: pytest.CaptureFixture[str]) -> None:
    structlog.get_logger("gateway.test").warning("something.odd", code="x")
    [line] = log_lines(capsys.readouterr().err)
    assert line["event"] == "something.odd"
    assert line["level"] == "warning"
    assert line["timestamp"].endswith("Z")


def test_level_filters_lower_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "warning")
    log = structlog.get_logger("gateway.test")
    log.info("quiet")
    log.warning("loud")
    assert [x["event"] for x in log_lines(capsys.readouterr().err)] == ["loud"]


def test_console_format_is_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("console", "info")
    structlog.get_logger("gateway.test").info("console.line", code="c1")
    err = capsys.readouterr().err
    assert "console.line" in err
    assert log_lines(err) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc-123", "abc-123"),
        ("a" * 128, "a" * 128),
        ("a" * 129, None),
        ("with space", None),
        ("", None),
        (None, None),
        ("ok\n", None),
    ],
)
def test_valid_request_id(value: str | None, expected: str | None) -> None:
    assert valid_request_id(value) == expected
