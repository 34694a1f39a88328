"""The demo town hall web app, in front of a fake gateway."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from gateway.demo.client import DEMO_MAX_TRANSFERS, SESSION_COOKIE, DemoServiceProvider
from gateway.dpop import verify_proof
from gateway.jose import SigningKey
from gateway.tokens import verify_client_assertion

ISSUER = "https://gateway.test"
BASE_URL = "http://127.0.0.1:8090"
ACCESS_TOKEN = "consent-token-secret"
ANSWERS = {
    "cnaf": {"annee": 2025, "mois": 1, "quotient_familial": 812},
    "dgfip": {"annee": 2024, "revenu_fiscal_reference": 31250, "nombre_parts": 2.5},
}


@dataclass
class FakeGateway:
    """Token and data endpoints; each provider's consent allows one transfer."""

    signing_key: SigningKey
    token_error: dict[str, str] | None = None
    used: set[str] = field(default_factory=set)
    queries: list[str] = field(default_factory=list)

    @property
    def app(self) -> Starlette:
        async def token(request: Request) -> Response:
            form = await request.form()
            verify_client_assertion(
                str(form["client_assertion"]),
                client_keys=[self.signing_key.public_key()],
                expected_client_id="mairie-demoville",
                audiences=[ISSUER],
                now=time.time(),
            )
            verify_proof(
                request.headers.get("dpop"),
                method="POST",
                url=f"{ISSUER}/oauth/token",
                now=time.time(),
            )
            if self.token_error is not None:
                return JSONResponse(self.token_error, status_code=400)
            return JSONResponse(
                {
                    "access_token": ACCESS_TOKEN,
                    "token_type": "DPoP",
                    "expires_in": 300,
                    "authorization_details": [],
                    "consent_id": "consent-42",
                }
            )

        async def data(request: Request) -> Response:
            provider = request.path_params["provider"]
            self.queries.append(f"{request.url.path}?{request.url.query}")
            transfer_id = f"transfer-{provider}-{len(self.queries)}"
            if provider in self.used:
                return JSONResponse(
                    {
                        "type": "urn:gateway:error:consent_exhausted",
                        "title": "Forbidden",
                        "status": 403,
                        "detail": "consent used up <script>alert(1)</script>",
                        "transfer_id": transfer_id,
                    },
                    status_code=403,
                    media_type="application/problem+json",
                )
            self.used.add(provider)
            return JSONResponse(ANSWERS[provider], headers={"Transfer-Id": transfer_id})

        return Starlette(
            routes=[
                Route("/oauth/token", token, methods=["POST"]),
                Route("/data/{provider}/{resource}", data),
            ]
        )


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey.generate_es256()


@pytest.fixture
def gateway(signing_key: SigningKey) -> FakeGateway:
    return FakeGateway(signing_key=signing_key)


@pytest.fixture
async def browser(
    signing_key: SigningKey, gateway: FakeGateway
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app)) as http:
        sp = DemoServiceProvider(gateway_issuer=ISSUER, signing_key=signing_key, http=http)
        transport = httpx.ASGITransport(app=sp.app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as browser:
            yield browser


async def start(browser: httpx.AsyncClient) -> dict[str, str]:
    """Begin the flow; returns the authorization request's query parameters."""
    response = await browser.post("/start")
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{ISSUER}/oauth/authorize"
    return {name: values[0] for name, values in parse_qs(location.query).items()}


def callback(query: dict[str, str], **params: str) -> str:
    values = {"code": "code-1", "state": query["state"], "iss": ISSUER, **params}
    return "/callback?" + urlencode({k: v for k, v in values.items() if v})


# --------------------------------------------------------------------------- pages


async def test_home_explains_what_is_asked(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/")
    assert response.status_code == 200
    assert "Quotient familial" in response.text
    assert "Revenu fiscal de référence" in response.text
    assert "Vérifier mon éligibilité / Check my eligibility" in response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "<script" not in response.text


async def test_jwks(browser: httpx.AsyncClient, signing_key: SigningKey) -> None:
    response = await browser.get("/jwks.json")
    assert response.status_code == 200
    assert response.json() == {"keys": [signing_key.public_jwk()]}


async def test_start_redirects_to_the_gateway(browser: httpx.AsyncClient) -> None:
    query = await start(browser)
    assert query["response_type"] == "code"
    assert query["client_id"] == "mairie-demoville"
    assert query["redirect_uri"] == f"{BASE_URL}/callback"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43  # base64url of a SHA-256 digest
    assert len(query["state"]) >= 32
    details: list[dict[str, Any]] = json.loads(query["authorization_details"])
    assert {(d["provider"], tuple(d["resources"])) for d in details} == {
        ("cnaf", ("quotient_familial",)),
        ("dgfip", ("revenu_fiscal",)),
    }
    assert all(d["max_transfers"] == DEMO_MAX_TRANSFERS for d in details)
    assert all(d["purpose"] == "family-benefit-eligibility" for d in details)
    assert all(d["type"] == "personal_data" for d in details)
    assert browser.cookies.get(SESSION_COOKIE)


async def test_start_sets_a_careful_cookie(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/start")
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie


async def test_each_start_gets_a_new_session_and_state(browser: httpx.AsyncClient) -> None:
    first = await start(browser)
    first_cookie = browser.cookies.get(SESSION_COOKIE)
    second = await start(browser)
    assert second["state"] != first["state"]
    assert browser.cookies.get(SESSION_COOKIE) != first_cookie


# --------------------------------------------------------------------------- the whole story


async def test_data_then_refusal(browser: httpx.AsyncClient, gateway: FakeGateway) -> None:
    query = await start(browser)
    with capture_logs() as logs:
        response = await browser.get(callback(query))
    assert response.status_code == 200
    assert "consent-42" in response.text
    assert "/quotient_familial" in response.text
    assert "812" in response.text
    assert "31250" in response.text
    assert "transfer-cnaf-1" in response.text
    assert "transfer-dgfip-2" in response.text
    assert gateway.queries == [
        "/data/cnaf/quotient_familial?annee=2025&mois=01",
        "/data/dgfip/revenu_fiscal?annee=2024",
    ]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"

    again = await browser.post("/again")
    assert again.status_code == 200
    assert "urn:gateway:error:consent_exhausted" in again.text
    assert "consent used up" in again.text
    assert "transfer-cnaf-3" in again.text
    # The problem is shown as text, never as markup.
    assert "<script>" not in again.text
    assert "&lt;script&gt;" in again.text

    logged = repr(logs)
    assert ACCESS_TOKEN not in logged
    assert "31250" not in logged
    assert "812" not in logged


async def test_a_callback_cannot_be_replayed(browser: httpx.AsyncClient) -> None:
    query = await start(browser)
    assert (await browser.get(callback(query))).status_code == 200
    replay = await browser.get(callback(query))
    assert replay.status_code == 400
    assert "start again" in replay.text


async def test_deny_shows_nothing_was_shared(
    browser: httpx.AsyncClient, gateway: FakeGateway
) -> None:
    query = await start(browser)
    response = await browser.get(callback(query, code="", error="access_denied"))
    assert response.status_code == 200
    assert "You refused; nothing was shared" in response.text
    assert gateway.queries == []


# --------------------------------------------------------------------------- failures


async def test_bad_state_is_a_readable_error(
    browser: httpx.AsyncClient, gateway: FakeGateway
) -> None:
    query = await start(browser)
    response = await browser.get(callback(query, state="forged"))
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "state_mismatch" in response.text
    assert "Traceback" not in response.text
    assert gateway.queries == []


async def test_response_from_another_issuer_is_refused(browser: httpx.AsyncClient) -> None:
    query = await start(browser)
    response = await browser.get(callback(query, iss="https://evil.test"))
    assert response.status_code == 400
    assert "issuer_mismatch" in response.text


async def test_callback_without_session(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/callback?code=c&state=s&iss=https://gateway.test")
    assert response.status_code == 400
    assert "start again" in response.text


async def test_token_refusal_is_shown(browser: httpx.AsyncClient, gateway: FakeGateway) -> None:
    gateway.token_error = {"error": "invalid_grant", "error_description": "code expired"}
    query = await start(browser)
    response = await browser.get(callback(query))
    assert response.status_code == 502
    assert "invalid_grant: code expired" in response.text


async def test_again_without_token(browser: httpx.AsyncClient) -> None:
    response = await browser.post("/again")
    assert response.status_code == 400
    assert "No token in this session" in response.text


async def test_unreachable_gateway(signing_key: SigningKey) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        sp = DemoServiceProvider(gateway_issuer=ISSUER, signing_key=signing_key, http=http)
        transport = httpx.ASGITransport(app=sp.app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as browser:
            query = await start(browser)
            response = await browser.get(callback(query))
    assert response.status_code == 502
    assert "could not be reached" in response.text


async def test_unknown_page_is_readable(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Mairie de Démoville" in response.text
