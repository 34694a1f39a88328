"""Shared fixtures: the gateway with its example providers, identity provider and client.

Everything runs as real ASGI apps behind one ``httpx`` transport that routes by
origin, so the gateway's outbound calls (identity provider, client JWKS, data
providers) cross real HTTP semantics without a network. Set
``GATEWAY_TEST_DATABASE_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``)
to run everything on PostgreSQL instead of a fresh SQLite file per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.demo.client import DemoServiceProvider
from gateway.demo.providers import cnaf_app, dgfip_app
from gateway.demo.run import demo_client_key
from gateway.demo.spclient import Pkce, ServiceProviderClient, TokenGrant
from gateway.demo.story import Browser, query_of, walk_consent
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.storage.engine import create_engine
from gateway.storage.migrate import upgrade
from gateway.storage.models import metadata

REPO = Path(__file__).resolve().parent.parent
ISSUER = "http://127.0.0.1:8080"
SP_BASE = "http://127.0.0.1:8090"
DGFIP = "http://127.0.0.1:8091"
CNAF = "http://127.0.0.1:8092"
PG_URL = os.environ.get("GATEWAY_TEST_DATABASE_URL")


class RoutingTransport(httpx.AsyncBaseTransport):
    """Sends each request to the ASGI app registered for its origin, else refuses it."""

    def __init__(self) -> None:
        self.apps: dict[str, httpx.ASGITransport] = {}

    def route(self, origin: str, app: ASGIApp | None) -> None:
        if app is None:
            self.apps.pop(origin, None)
        else:
            self.apps[origin] = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        target = self.apps.get(origin)
        if target is None:
            raise httpx.ConnectError(f"connection refused: {origin}", request=request)
        return await target.handle_async_request(request)


class Clock:
    """The gateway's clock; tests move it forward to reach expiries."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **kwargs: float) -> None:
        self.offset += timedelta(**kwargs)

    def timestamp(self) -> float:
        return self().timestamp()


async def reset_database(url: str) -> None:
    engine = create_engine(url)
    try:
        if engine.dialect.name == "postgresql":
            async with engine.begin() as conn:
                await conn.execute(text("DROP SCHEMA public CASCADE"))
                await conn.execute(text("CREATE SCHEMA public"))
        await upgrade(engine)
    finally:
        await engine.dispose()


async def empty_tables(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            names = ", ".join(t.name for t in metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {names}"))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_ready() -> bool:
    """Rebuild the PostgreSQL schema once per run, from empty, with the migrations."""
    if PG_URL:
        asyncio.run(reset_database(PG_URL))
    return True


@dataclass
class Stack:
    """The running system of one test."""

    settings: Settings
    app: Starlette
    transport: RoutingTransport
    clock: Clock
    http: httpx.AsyncClient
    sp: ServiceProviderClient
    sp_app: DemoServiceProvider
    logs: list[str] = field(default_factory=list)

    @property
    def rt(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    def browser(self, lang: str = "fr") -> Browser:
        client = httpx.AsyncClient(transport=self.transport, follow_redirects=False)
        return Browser(client, accept_language=lang)

    async def consent(
        self,
        details: list[dict[str, Any]] | None = None,
        *,
        persona: str = "marianne",
        browser: Browser | None = None,
        decision: str = "grant",
    ) -> dict[str, str]:
        """Walk a person through consent; return the query the client receives."""
        details = details if details is not None else [cnaf_details()]
        browser = browser or self.browser()
        pkce = Pkce.new()
        self.last_pkce = pkce
        url = self.sp.authorization_url(details, state="st-1", pkce=pkce)
        outcome = await walk_consent(
            browser, url, persona=persona, decision=decision, redirect_uri=f"{SP_BASE}/callback"
        )
        return query_of(outcome.callback_url)

    async def grant(
        self,
        details: list[dict[str, Any]] | None = None,
        *,
        persona: str = "marianne",
        browser: Browser | None = None,
    ) -> TokenGrant:
        """A consent granted and its code exchanged: a DPoP-bound consent token."""
        params = await self.consent(details, persona=persona, browser=browser)
        code = ServiceProviderClient.check_callback(params, expected_state="st-1", issuer=ISSUER)
        return await self.sp.exchange_code(code, self.last_pkce)

    async def trail(self) -> list[dict[str, Any]]:
        """Every trail entry, decoded."""
        import json

        from gateway.trail.store import Trail

        async with self.rt.engine.connect() as conn:
            entries = await Trail.read(conn)
        out = []
        for i, e in enumerate(entries):
            assert e.index == i
            prefix, body = e.entry.split(b"\n", 1)
            assert prefix == b"gateway-trail/v1"
            out.append(json.loads(body))
        return out

    async def trail_types(self) -> list[str]:
        return [e["type"] for e in await self.trail()]


def cnaf_details(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": "personal_data",
        "provider": "cnaf",
        "resources": ["quotient_familial"],
        "purpose": "family-benefit-eligibility",
        "max_transfers": 1,
    }
    d.update(over)
    return d


def dgfip_details(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": "personal_data",
        "provider": "dgfip",
        "resources": ["revenu_fiscal"],
        "purpose": "family-benefit-eligibility",
        "max_transfers": 1,
    }
    d.update(over)
    return d


@pytest.fixture
def make_settings(tmp_path: Path, pg_ready: bool) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        base = {
            "GATEWAY_DATA_DIR": str(tmp_path / "var"),
            "GATEWAY_POLICIES": str(REPO / "policies"),
            "GATEWAY_ISSUER": ISSUER,
            "GATEWAY_DEMO": "1",
            "GATEWAY_LOG_FORMAT": "json",
        }
        if PG_URL:
            base["GATEWAY_DATABASE_URL"] = PG_URL
        base.update(env)
        return Settings.from_env(base)

    return make


@contextlib.asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Stack]:
    """The gateway, demo service provider and both providers, on a fresh database."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if PG_URL:
        await empty_tables(PG_URL)
    else:
        await reset_database(settings.database_url.value)
    transport = RoutingTransport()
    clock = Clock()
    app = create_app(settings, transport=transport, clock=clock, background=False)
    http = httpx.AsyncClient(transport=transport, follow_redirects=False)
    sp_key = demo_client_key(settings.data_dir)
    sp_app = DemoServiceProvider(
        gateway_issuer=ISSUER, base_url=SP_BASE, signing_key=sp_key, http=http
    )
    transport.route(ISSUER, app)
    transport.route(SP_BASE, sp_app.app)
    transport.route(DGFIP, dgfip_app(gateway_issuer=ISSUER, http=http))
    transport.route(CNAF, cnaf_app(gateway_issuer=ISSUER, http=http))
    sp = ServiceProviderClient(
        client_id="mairie-demoville",
        signing_key=sp_key,
        gateway_issuer=ISSUER,
        redirect_uri=f"{SP_BASE}/callback",
        http=http,
    )
    try:
        async with app.router.lifespan_context(app):
            yield Stack(settings, app, transport, clock, http, sp, sp_app)
    finally:
        await http.aclose()
        shutil.rmtree(settings.data_dir, ignore_errors=True)


@pytest.fixture
async def stack(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[Stack]:
    async with running_stack(make_settings()) as running:
        yield running


class CountingApp:
    """Wraps an ASGI app and records the path of every HTTP request that reaches it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.paths: list[str] = []

    @property
    def calls(self) -> int:
        return len(self.paths)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def count_calls(stack: Stack, origin: str) -> CountingApp:
    """Re-route ``origin`` through a :class:`CountingApp` around the app it serves now."""
    counter = CountingApp(stack.transport.apps[origin].app)
    stack.transport.route(origin, counter)
    return counter


# --------------------------------------------------------------------------- auditors


def write_auditor_policy(directory: Path, key: Any, client_id: str = "auditeur-test") -> None:
    """Add an auditor client whose private key the test holds (``key``: a SigningKey)."""
    import json

    jwk = key.public_jwk()
    members = ", ".join(f"{name} = {json.dumps(value)}" for name, value in sorted(jwk.items()))
    (directory / "clients" / f"{client_id}.toml").write_text(
        f'name = "Auditeur de test"\nrole = "auditor"\njwks = {{ keys = [ {{ {members} }} ] }}\n',
        "utf-8",
    )


@pytest.fixture
async def audit_stack(
    make_settings: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[tuple[Stack, Any]]:
    """As ``stack``, with an extra auditor ``auditeur-test``; yields (stack, its SigningKey)."""
    from gateway.jose import SigningKey

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    key = SigningKey.generate_es256()
    write_auditor_policy(policies, key)
    async with running_stack(make_settings(GATEWAY_POLICIES=str(policies))) as running:
        yield running, key
