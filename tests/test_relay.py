"""The relay: fixed URL, allowlisted headers, bounded time and size, mapped failures."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import (
    ProviderBadResponse,
    ProviderFailed,
    ProviderTimeout,
    ProviderUnavailable,
    QueryNotAllowed,
    UpstreamError,
)
from gateway.policy.model import Field, Label, Provider, Resource
from gateway.relay import ProviderAnswer, Relay

PATH = "/impots/v1/revenu-fiscal"
ANSWER = {"annee": 2024, "revenu_fiscal_reference": 23450, "nom": "Dupont"}
Handler = Callable[[Request], Awaitable[Response]]


def make_provider(
    base_url: str = "http://dgfip.test", *, timeout: float = 2.0, max_bytes: int = 1024
) -> tuple[Provider, Resource]:
    resource = Resource(
        id="revenu_fiscal",
        provider="dgfip",
        label=Label(fr="Revenu fiscal", en="Tax income"),
        method="GET",
        path=PATH,
        query={"annee": re.compile(r"20[0-9]{2}")},
        fields=(Field("/annee", Label("Année", "Year")),),
    )
    provider = Provider(
        id="dgfip",
        name="DGFiP",
        base_url=base_url,
        identity_claims=("given_name",),
        min_acr="eidas1",
        timeout_seconds=timeout,
        max_response_bytes=max_bytes,
        resources={resource.id: resource},
    )
    return provider, resource


class FakeProvider:
    """A Starlette app standing in for the provider; records what it received."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[Request] = []

        async def endpoint(request: Request) -> Response:
            self.requests.append(request)
            return await handler(request)

        async def elsewhere(request: Request) -> Response:
            self.requests.append(request)
            return JSONResponse({"stolen": True})

        self.app = Starlette(routes=[Route(PATH, endpoint), Route("/elsewhere", elsewhere)])


async def fetch(
    handler: Handler,
    *,
    query: dict[str, str] | None = None,
    times: int = 1,
    **limits: Any,
) -> tuple[ProviderAnswer, FakeProvider]:
    fake = FakeProvider(handler)
    provider, resource = make_provider(**limits)
    relay = Relay({"dgfip": provider}, transport=httpx.ASGITransport(app=fake.app))
    try:
        for _ in range(times):
            answer = await relay.fetch(
                provider,
                resource,
                query=query if query is not None else {"annee": "2024"},
                assertion="signed.assertion.jwt",
                transfer_id="tr_123",
            )
    finally:
        await relay.aclose()
    return answer, fake


async def json_answer(request: Request) -> Response:
    return JSONResponse(ANSWER)


# --- success -----------------------------------------------------------------------------


async def test_200_is_parsed_with_digest_and_size() -> None:
    answer, _ = await fetch(json_answer)
    body = json.dumps(ANSWER, ensure_ascii=False, separators=(",", ":")).encode()
    assert answer.status == 200
    assert answer.document == ANSWER
    assert answer.body == body
    assert answer.size == len(body)
    assert answer.sha256 == hashlib.sha256(body).hexdigest()


async def test_request_is_built_from_policy_with_allowlisted_headers_only() -> None:
    _, fake = await fetch(json_answer)
    [request] = fake.requests
    assert request.method == "GET"
    assert request.url.path == PATH
    assert request.url.hostname == "dgfip.test"
    assert dict(request.query_params) == {"annee": "2024"}
    assert dict(request.headers) == {
        "host": "dgfip.test",
        "authorization": "Bearer signed.assertion.jwt",
        "accept": "application/json",
        "x-transfer-id": "tr_123",
        "user-agent": "gateway/0.1",
    }


async def test_each_request_carries_its_own_query_or_none() -> None:
    # The resource's URL is parsed once and reused; queries never leak between calls.
    fake = FakeProvider(json_answer)
    provider, resource = make_provider()
    relay = Relay({"dgfip": provider}, transport=httpx.ASGITransport(app=fake.app))
    try:
        for query in ({"annee": "2023"}, {}, {"annee": "2024"}, {}):
            await relay.fetch(
                provider, resource, query=query, assertion="a.b.c", transfer_id="tr_q"
            )
    finally:
        await relay.aclose()
    assert [r.url.query for r in fake.requests] == ["annee=2023", "", "annee=2024", ""]
    assert {r.url.path for r in fake.requests} == {PATH}


async def test_json_suffix_media_types_are_accepted() -> None:
    async def handler(request: Request) -> Response:
        return Response(b'{"a": 1}', media_type="application/vnd.dgfip+json; charset=utf-8")

    answer, _ = await fetch(handler)
    assert answer.document == {"a": 1}


async def test_404_is_an_answer_not_an_error() -> None:
    async def handler(request: Request) -> Response:
        return JSONResponse({"error": "aucun dossier"}, status_code=404)

    answer, _ = await fetch(handler)
    assert answer.status == 404
    assert answer.document is None
    assert answer.size == len(answer.body)


async def test_provider_cookies_are_never_sent_back() -> None:
    async def handler(request: Request) -> Response:
        response = JSONResponse(ANSWER)
        response.set_cookie("session", "person-a", domain="dgfip.test")
        response.set_cookie("tracking", "xyz")
        return response

    _, fake = await fetch(handler, times=2)
    assert len(fake.requests) == 2
    assert "cookie" not in fake.requests[1].headers


# --- refused before the network ----------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [{"annee": "2024&admin=1"}, {"annee": "24"}, {"nom": "Dupont"}, {"annee": "2024\n"}],
)
async def test_query_outside_the_allowlist_is_refused(query: dict[str, str]) -> None:
    with pytest.raises(QueryNotAllowed) as caught:
        await fetch(json_answer, query=query)
    assert caught.value.code == "query_not_allowed"


async def test_unknown_provider_is_refused() -> None:
    provider, resource = make_provider()
    relay = Relay({})
    with pytest.raises(ProviderUnavailable):
        await relay.fetch(provider, resource, query={}, assertion="a", transfer_id="t")
    await relay.aclose()


# --- failures map onto the error tree ----------------------------------------------------


async def assert_fails(
    handler: Handler, error: type[UpstreamError], code: str, **limits: Any
) -> UpstreamError:
    with pytest.raises(error) as caught:
        await fetch(handler, **limits)
    assert caught.value.code == code
    return caught.value


@pytest.mark.parametrize("status", [500, 502, 503, 401, 403, 400, 201, 204])
async def test_unexpected_status_is_a_provider_error(status: int) -> None:
    async def handler(request: Request) -> Response:
        return JSONResponse({"secret": "body"}, status_code=status)

    error = await assert_fails(handler, ProviderFailed, "provider_error")
    assert error.detail == f"the provider answered HTTP {status}"
    assert error.status == 502


async def test_redirects_are_not_followed() -> None:
    async def handler(request: Request) -> Response:
        return RedirectResponse("http://dgfip.test/elsewhere", status_code=302)

    fake = FakeProvider(handler)
    provider, resource = make_provider()
    relay = Relay({"dgfip": provider}, transport=httpx.ASGITransport(app=fake.app))
    with pytest.raises(ProviderFailed, match="HTTP 302"):
        await relay.fetch(
            provider, resource, query={}, assertion="signed.assertion.jwt", transfer_id="t"
        )
    await relay.aclose()
    assert [r.url.path for r in fake.requests] == [PATH]


@pytest.mark.parametrize(
    ("body", "media_type"),
    [
        (b"<html>maintenance</html>", "text/html"),
        (b'{"a": 1}', "text/plain"),
        (b"not json", "application/json"),
        (b'{"a": NaN}', "application/json"),
        (b'{"a": 1, "a": 2}', "application/json"),
        ('{"a": "é"}'.encode("latin-1"), "application/json"),
        (b"[" * 1000 + b"]" * 1000, "application/json"),
    ],
)
async def test_non_json_answers_are_refused(body: bytes, media_type: str) -> None:
    async def handler(request: Request) -> Response:
        return Response(body, media_type=media_type)

    await assert_fails(handler, ProviderBadResponse, "provider_response_not_json", max_bytes=4096)


async def test_encoded_answers_are_refused() -> None:
    async def handler(request: Request) -> Response:
        return Response(
            b"\x1f\x8b...", media_type="application/json", headers={"content-encoding": "gzip"}
        )

    await assert_fails(handler, ProviderBadResponse, "provider_response_not_json")


async def test_oversized_answer_with_content_length_is_refused() -> None:
    async def handler(request: Request) -> Response:
        return JSONResponse({"blob": "x" * 2000})

    await assert_fails(handler, ProviderBadResponse, "provider_response_too_large")


async def test_oversized_streamed_answer_is_cut_off() -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length to check up front
        yield b'{"blob": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'

    async def handler(request: Request) -> Response:
        return StreamingResponse(chunks(), media_type="application/json")

    await assert_fails(handler, ProviderBadResponse, "provider_response_too_large")


async def test_answer_exactly_at_the_limit_is_accepted() -> None:
    body = b'{"a": "' + b"x" * 1000 + b'"}'

    async def handler(request: Request) -> Response:
        return Response(body, media_type="application/json")

    answer, _ = await fetch(handler, max_bytes=len(body))
    assert answer.size == len(body)


async def test_slow_provider_times_out() -> None:
    async def handler(request: Request) -> Response:
        await asyncio.sleep(5)
        return JSONResponse(ANSWER)

    error = await assert_fails(handler, ProviderTimeout, "provider_timeout", timeout=0.05)
    assert error.status == 504


async def test_slow_body_times_out() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a": '
        await asyncio.sleep(5)
        yield b"1}"

    async def handler(request: Request) -> Response:
        return StreamingResponse(chunks(), media_type="application/json")

    await assert_fails(handler, ProviderTimeout, "provider_timeout", timeout=0.05)


# --- real sockets ------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def real_fetch(port: int, *, deadline: float = 2.0) -> ProviderAnswer:
    provider, resource = make_provider(f"http://127.0.0.1:{port}", timeout=deadline)
    relay = Relay({"dgfip": provider})  # the default transport: a real connection
    try:
        return await relay.fetch(provider, resource, query={}, assertion="a", transfer_id="t")
    finally:
        await relay.aclose()


async def test_refused_connection_is_unavailable() -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        await real_fetch(closed_port())
    assert caught.value.code == "provider_unavailable"
    assert caught.value.status == 502


async def serve(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> asyncio.Server:
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_connection_closed_without_answer_is_unavailable() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    server = await serve(hang_up)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ProviderUnavailable):
            await real_fetch(port)


async def test_trickling_body_hits_the_overall_deadline() -> None:
    # Every byte arrives well within httpx's per-read timeout; only the deadline
    # over the whole exchange stops this.
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for _ in range(100):
                writer.write(b"1\r\n \r\n")
                await writer.drain()
                await asyncio.sleep(0.02)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await serve(trickle)
    async with server:
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ProviderTimeout):
            await real_fetch(port, deadline=0.3)
        assert loop.time() - started < 1.5


async def test_real_provider_answer_is_read() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"annee": 2024}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await serve(answer)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await real_fetch(port)
    assert result.document == {"annee": 2024}
