"""The service-provider client: what it signs, what it sends, what it accepts back."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.demo.spclient import (
    CLIENT_ASSERTION_TYPE,
    AuthorizationError,
    Pkce,
    ServiceProviderClient,
    TokenError,
    TokenGrant,
)
from gateway.dpop import verify_proof
from gateway.jose import PRIVATE_JWK_MEMBERS, SigningKey, b64url_encode, jwk_thumbprint
from gateway.tokens import verify_client_assertion

ISSUER = "https://gateway.test"
CLIENT_ID = "mairie-demoville"
REDIRECT_URI = "http://127.0.0.1:8090/callback"
DETAILS = [
    {
        "type": "personal_data",
        "provider": "cnaf",
        "resources": ["quotient_familial"],
        "purpose": "family-benefit-eligibility",
        "max_transfers": 1,
    }
]


@dataclass
class FakeGateway:
    """Answers the token and data endpoints with canned bodies and keeps what it got."""

    token_status: int = 200
    token_body: dict[str, Any] = field(
        default_factory=lambda: {
            "access_token": "consent-token",
            "token_type": "DPoP",
            "expires_in": 300,
            "authorization_details": DETAILS,
            "consent_id": "consent-1",
        }
    )
    requests: list[tuple[str, dict[str, str], dict[str, str]]] = field(default_factory=list)

    @property
    def app(self) -> Starlette:
        async def token(request: Request) -> Response:
            form = await request.form()
            fields = {name: str(value) for name, value in form.items()}
            self.requests.append((str(request.url), dict(request.headers), fields))
            return JSONResponse(self.token_body, status_code=self.token_status)

        async def data(request: Request) -> Response:
            self.requests.append((str(request.url), dict(request.headers), {}))
            return JSONResponse({"quotient_familial": 812}, headers={"Transfer-Id": "t-1"})

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
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
async def client(
    signing_key: SigningKey, gateway: FakeGateway
) -> AsyncIterator[ServiceProviderClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app)) as http:
        yield ServiceProviderClient(
            client_id=CLIENT_ID,
            signing_key=signing_key,
            gateway_issuer=ISSUER,
            redirect_uri=REDIRECT_URI,
            http=http,
        )


# --------------------------------------------------------------------------- PKCE


def test_pkce_is_s256_of_the_verifier() -> None:
    pkce = Pkce.new()
    assert 43 <= len(pkce.verifier) <= 128
    assert pkce.challenge == b64url_encode(hashlib.sha256(pkce.verifier.encode()).digest())
    assert Pkce.new().verifier != pkce.verifier


# --------------------------------------------------------------------------- authorization URL


def test_authorization_url_carries_the_request(client: ServiceProviderClient) -> None:
    pkce = Pkce.new()
    url = urlsplit(client.authorization_url(DETAILS, state="st-1", pkce=pkce))
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{ISSUER}/oauth/authorize"
    query = {name: values[0] for name, values in parse_qs(url.query, strict_parsing=True).items()}
    assert query == {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "state": "st-1",
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "authorization_details": json.dumps(DETAILS, separators=(",", ":")),
    }
    assert json.loads(query["authorization_details"]) == DETAILS
    assert pkce.verifier not in url.query


# --------------------------------------------------------------------------- client assertion


def test_client_assertion_claims_and_header(
    client: ServiceProviderClient, signing_key: SigningKey
) -> None:
    now = time.time()
    assertion = client.client_assertion(now=now)
    header = jwt.get_unverified_header(assertion)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": signing_key.kid}
    claims = jwt.decode(
        assertion,
        signing_key.private_key.public_key(),
        algorithms=["ES256"],
        audience=ISSUER,
        issuer=CLIENT_ID,
        options={"require": ["iss", "sub", "aud", "jti", "iat", "exp"], "verify_exp": False},
    )
    assert claims["sub"] == CLIENT_ID
    assert claims["iat"] == int(now)
    assert claims["exp"] == int(now) + 60
    assert client.client_assertion(now=now) != assertion  # a fresh jti every time


def test_the_gateway_accepts_the_client_assertion(
    client: ServiceProviderClient, signing_key: SigningKey
) -> None:
    now = time.time()
    verified = verify_client_assertion(
        client.client_assertion(now=now),
        client_keys=[signing_key.public_key()],
        expected_client_id=CLIENT_ID,
        audiences=[ISSUER],
        now=now,
    )
    assert verified.client_id == CLIENT_ID


# --------------------------------------------------------------------------- DPoP proofs


def test_dpop_proof_header_carries_only_the_public_key(client: ServiceProviderClient) -> None:
    proof = client.dpop_proof("post", f"{ISSUER}/oauth/token")
    header = jwt.get_unverified_header(proof)
    assert header["typ"] == "dpop+jwt"
    assert header["alg"] == "ES256"
    jwk = header["jwk"]
    assert set(jwk) == {"kty", "crv", "x", "y"}
    assert not PRIVATE_JWK_MEMBERS & set(jwk)
    assert jwk_thumbprint(jwk) == jwk_thumbprint(client.dpop_key.public_jwk())
    claims = jwt.decode(proof, client.dpop_key.private_key.public_key(), algorithms=["ES256"])
    assert claims["htm"] == "POST"
    assert claims["htu"] == f"{ISSUER}/oauth/token"
    assert "ath" not in claims
    assert isinstance(claims["jti"], str)
    assert len(claims["jti"]) >= 16


def test_dpop_proof_for_data_has_ath_and_no_query(client: ServiceProviderClient) -> None:
    now = time.time()
    url = f"{ISSUER}/data/cnaf/quotient_familial"
    proof = client.dpop_proof("GET", f"{url}?annee=2025#frag", access_token="tok", now=now)
    claims = jwt.decode(proof, client.dpop_key.private_key.public_key(), algorithms=["ES256"])
    assert claims["htu"] == url
    assert claims["iat"] == int(now)
    assert claims["ath"] == b64url_encode(hashlib.sha256(b"tok").digest())
    # And the gateway's own verifier agrees, including the key binding.
    checked = verify_proof(proof, method="GET", url=url, now=now, access_token="tok")
    assert checked.jkt == jwk_thumbprint(client.dpop_key.public_jwk())


def test_the_dpop_key_is_kept_when_given(signing_key: SigningKey) -> None:
    dpop_key = SigningKey.generate_es256()
    client = ServiceProviderClient(
        client_id=CLIENT_ID,
        signing_key=signing_key,
        gateway_issuer=ISSUER,
        redirect_uri=REDIRECT_URI,
        http=httpx.AsyncClient(),
        dpop_key=dpop_key,
    )
    assert client.dpop_key is dpop_key


# --------------------------------------------------------------------------- JWKS


def test_jwks_publishes_the_signing_key_only(
    client: ServiceProviderClient, signing_key: SigningKey
) -> None:
    jwks = client.jwks()
    assert [key["kid"] for key in jwks["keys"]] == [signing_key.kid]
    assert not PRIVATE_JWK_MEMBERS & set(jwks["keys"][0])


# --------------------------------------------------------------------------- callback


def _callback(**overrides: str) -> dict[str, str]:
    params = {"code": "c-1", "state": "st-1", "iss": ISSUER}
    params.update(overrides)
    return {name: value for name, value in params.items() if value}


def test_check_callback_returns_the_code() -> None:
    code = ServiceProviderClient.check_callback(_callback(), expected_state="st-1", issuer=ISSUER)
    assert code == "c-1"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        (_callback(iss="https://evil.test"), "issuer_mismatch"),
        (_callback(iss=""), "issuer_mismatch"),
        (_callback(state="st-2"), "state_mismatch"),
        (_callback(state=""), "state_mismatch"),
        (_callback(code="", error="access_denied"), "access_denied"),
        (_callback(code=""), "invalid_response"),
        # An error from another server, or for another request, is not acted upon.
        (_callback(code="", error="access_denied", iss="https://evil.test"), "issuer_mismatch"),
        (_callback(code="", error="access_denied", state="st-2"), "state_mismatch"),
    ],
)
def test_check_callback_refuses(params: dict[str, str], error: str) -> None:
    with pytest.raises(AuthorizationError) as refused:
        ServiceProviderClient.check_callback(params, expected_state="st-1", issuer=ISSUER)
    assert refused.value.error == error


# --------------------------------------------------------------------------- token exchange


async def test_exchange_code_sends_pkce_assertion_and_dpop(
    client: ServiceProviderClient, gateway: FakeGateway, signing_key: SigningKey
) -> None:
    pkce = Pkce.new()
    grant = await client.exchange_code("c-1", pkce)
    assert grant == TokenGrant(
        access_token="consent-token",
        expires_in=300,
        consent_id="consent-1",
        authorization_details=DETAILS,
    )
    assert "consent-token" not in repr(grant)
    [(url, headers, form)] = gateway.requests
    assert url == f"{ISSUER}/oauth/token"
    assert form["grant_type"] == "authorization_code"
    assert form["code"] == "c-1"
    assert form["code_verifier"] == pkce.verifier
    assert form["redirect_uri"] == REDIRECT_URI
    assert form["client_id"] == CLIENT_ID
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    verify_client_assertion(
        form["client_assertion"],
        client_keys=[signing_key.public_key()],
        expected_client_id=CLIENT_ID,
        audiences=[ISSUER],
        now=time.time(),
    )
    verify_proof(headers["dpop"], method="POST", url=url, now=time.time())


async def test_exchange_code_raises_the_oauth_error(
    client: ServiceProviderClient, gateway: FakeGateway
) -> None:
    gateway.token_status = 400
    gateway.token_body = {"error": "invalid_grant", "error_description": "code already used"}
    with pytest.raises(TokenError) as refused:
        await client.exchange_code("c-1", Pkce.new())
    assert (refused.value.error, refused.value.description, refused.value.status) == (
        "invalid_grant",
        "code already used",
        400,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"token_type": "Bearer"},
        {"access_token": ""},
        {"expires_in": "300"},
        {"authorization_details": "cnaf"},
    ],
)
async def test_exchange_code_refuses_a_strange_grant(
    client: ServiceProviderClient, gateway: FakeGateway, change: dict[str, Any]
) -> None:
    gateway.token_body = {**gateway.token_body, **change}
    with pytest.raises(TokenError) as refused:
        await client.exchange_code("c-1", Pkce.new())
    assert refused.value.error == "invalid_response"


# --------------------------------------------------------------------------- data


async def test_fetch_sends_a_bound_proof(
    client: ServiceProviderClient, gateway: FakeGateway
) -> None:
    response = await client.fetch(
        "cnaf",
        "quotient_familial",
        "consent-token",
        params={"annee": "2025", "mois": "1"},
        request_id="req-7",
    )
    assert response.status_code == 200
    assert response.headers["transfer-id"] == "t-1"
    [(url, headers, _)] = gateway.requests
    assert url == f"{ISSUER}/data/cnaf/quotient_familial?annee=2025&mois=1"
    assert headers["authorization"] == "DPoP consent-token"
    assert headers["x-request-id"] == "req-7"
    proof = verify_proof(
        headers["dpop"],
        method="GET",
        url=f"{ISSUER}/data/cnaf/quotient_familial",
        now=time.time(),
        access_token="consent-token",
    )
    assert proof.jkt == jwk_thumbprint(client.dpop_key.public_jwk())


@pytest.mark.parametrize(("provider", "resource"), [("..", "x"), ("cnaf", "a/b"), ("CNAF", "x")])
async def test_fetch_refuses_odd_path_segments(
    client: ServiceProviderClient, provider: str, resource: str
) -> None:
    with pytest.raises(ValueError, match="identifiers"):
        await client.fetch(provider, resource, "consent-token")
