"""The demo identity provider, spoken to directly over HTTP (mounted at /demo-idp)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import jwt
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.routing import Mount

from gateway.demo.idp import CODE_LIFETIME_SECONDS, DemoIdentityProvider, demo_subject
from gateway.demo.personas import PERSONAS

GATEWAY = "http://gateway.test"
ISSUER = f"{GATEWAY}/demo-idp"
CLIENT_ID = "gateway-demo"
CLIENT_SECRET = "s3cret with spaces & symbols"
REDIRECT_URI = f"{GATEWAY}/login/callback"
OTHER_CLIENT = "other-client"
OTHER_REDIRECT = "https://sp.example/cb?keep=1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    idp: DemoIdentityProvider
    key: ec.EllipticCurvePrivateKey
    http: httpx.AsyncClient
    clock: Clock


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    key = ec.generate_private_key(ec.SECP256R1())
    clock = Clock()
    idp = DemoIdentityProvider(
        issuer=ISSUER,
        clients={
            CLIENT_ID: (CLIENT_SECRET, [REDIRECT_URI]),
            OTHER_CLIENT: ("other-secret", [OTHER_REDIRECT]),
        },
        signing_key=key,
        clock=clock,
    )
    app = Starlette(routes=[Mount("/demo-idp", app=idp.app)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=GATEWAY) as http:
        yield Env(idp, key, http, clock)


def s256(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


@dataclass
class Pending:
    verifier: str
    params: dict[str, str]


def authorization(**changes: str | None) -> Pending:
    verifier = secrets.token_urlsafe(48)
    params: dict[str, str | None] = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": "openid profile birth",
        "state": "st4te",
        "nonce": "n0nce",
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        **changes,
    }
    return Pending(verifier, {k: v for k, v in params.items() if v is not None})


def query_of(response: httpx.Response) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(response.headers["location"]).query))


async def get_code(env: Env, persona: str = "marianne", **changes: str | None) -> Pending:
    pending = authorization(**changes)
    answer = await env.http.post("/demo-idp/authorize", data={**pending.params, "persona": persona})
    assert answer.status_code == 303, answer.text
    query = query_of(answer)
    assert query["state"] == pending.params["state"]
    assert query["iss"] == ISSUER
    pending.params["code"] = query["code"]
    return pending


def token_form(pending: Pending, **changes: str | None) -> dict[str, str]:
    form: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": pending.params["code"],
        "redirect_uri": pending.params["redirect_uri"],
        "code_verifier": pending.verifier,
        **changes,
    }
    return {k: v for k, v in form.items() if v is not None}


def basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> dict[str, str]:
    # RFC 6749 §2.3.1: form-urlencode each part, then base64.
    pair = urlencode({"": client_id})[1:] + ":" + urlencode({"": secret})[1:]
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


async def redeem(env: Env, pending: Pending, **changes: str | None) -> httpx.Response:
    return await env.http.post(
        "/demo-idp/token", data=token_form(pending, **changes), headers=basic()
    )


async def public_key(env: Env) -> jwt.PyJWK:
    jwks = (await env.http.get("/demo-idp/jwks")).json()
    return jwt.PyJWK(jwks["keys"][0])


# -- construction and metadata --------------------------------------------------------


def test_construction_warns_loudly() -> None:
    with structlog.testing.capture_logs() as logs:
        DemoIdentityProvider(
            issuer=ISSUER,
            clients={CLIENT_ID: (CLIENT_SECRET, [REDIRECT_URI])},
            signing_key=ec.generate_private_key(ec.SECP256R1()),
        )
    (entry,) = logs
    assert entry["log_level"] == "warning"
    assert "never be used with real people" in entry["message"]


@pytest.mark.parametrize(
    ("clients", "message"),
    [
        ({CLIENT_ID: ("", [REDIRECT_URI])}, "secret"),
        ({CLIENT_ID: (CLIENT_SECRET, ["/relative"])}, "redirect URI"),
        ({CLIENT_ID: (CLIENT_SECRET, ["http://gateway.test/cb#frag"])}, "redirect URI"),
    ],
)
def test_refuses_unsafe_client_registrations(
    clients: dict[str, tuple[str, list[str]]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        DemoIdentityProvider(
            issuer=ISSUER, clients=clients, signing_key=ec.generate_private_key(ec.SECP256R1())
        )


def test_refuses_a_key_that_is_not_p256() -> None:
    with pytest.raises(ValueError, match="P-256"):
        DemoIdentityProvider(
            issuer=ISSUER,
            clients={CLIENT_ID: (CLIENT_SECRET, [REDIRECT_URI])},
            signing_key=ec.generate_private_key(ec.SECP384R1()),
        )


async def test_discovery_document(env: Env) -> None:
    doc = (await env.http.get("/demo-idp/.well-known/openid-configuration")).json()
    assert doc["issuer"] == ISSUER
    assert doc["authorization_endpoint"] == f"{ISSUER}/authorize"
    assert doc["token_endpoint"] == f"{ISSUER}/token"
    assert doc["jwks_uri"] == f"{ISSUER}/jwks"
    assert doc["userinfo_endpoint"] == f"{ISSUER}/userinfo"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["id_token_signing_alg_values_supported"] == ["ES256"]
    assert doc["authorization_response_iss_parameter_supported"] is True


async def test_jwks_publishes_only_the_public_key(env: Env) -> None:
    (key,) = (await env.http.get("/demo-idp/jwks")).json()["keys"]
    assert key["kty"] == "EC"
    assert key["crv"] == "P-256"
    assert key["alg"] == "ES256"
    assert key["use"] == "sig"
    assert key["kid"]
    assert "d" not in key


# -- authorization endpoint -----------------------------------------------------------


async def test_login_page(env: Env) -> None:
    page = await env.http.get("/demo-idp/authorize", params=authorization().params)
    assert page.status_code == 200
    assert "DEMO — fictitious personas only" in page.text
    for persona in PERSONAS.values():
        assert f'name="persona" value="{persona.key}"' in page.text
        assert persona.family_name in page.text
        assert persona.birthdate in page.text
    assert f'action="{ISSUER}/authorize"' in page.text
    assert 'type="hidden" name="code_challenge"' in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "form-action 'self' http://gateway.test https://sp.example;" in csp


async def test_request_parameters_are_escaped_on_the_page(env: Env) -> None:
    page = await env.http.get(
        "/demo-idp/authorize", params=authorization(state='"><script>x()</script>').params
    )
    assert page.status_code == 200
    assert "<script>" not in page.text


@pytest.mark.parametrize(
    "changes",
    [
        {"client_id": "unknown"},
        {"client_id": None},
        {"redirect_uri": "http://evil.test/callback"},
        {"redirect_uri": REDIRECT_URI + "/"},  # exact match only
        {"redirect_uri": None},
        {"client_id": OTHER_CLIENT},  # our redirect URI is not registered for that client
    ],
)
async def test_bad_client_or_redirect_uri_gets_an_error_page(
    env: Env, changes: dict[str, str | None]
) -> None:
    for method in ("GET", "POST"):
        params = authorization(**changes).params
        if method == "GET":
            page = await env.http.get("/demo-idp/authorize", params=params)
        else:
            page = await env.http.post("/demo-idp/authorize", data={**params, "persona": "jean"})
        assert page.status_code == 400
        assert "location" not in page.headers
        assert "content-security-policy" in page.headers


async def test_repeated_redirect_uri_gets_an_error_page(env: Env) -> None:
    query = urlencode([*authorization().params.items(), ("redirect_uri", "http://evil.test/cb")])
    page = await env.http.get(f"/demo-idp/authorize?{query}")
    assert page.status_code == 400
    assert "location" not in page.headers


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "profile"}, "invalid_scope"),
        ({"scope": "openid admin"}, "invalid_scope"),
        ({"nonce": None}, "invalid_request"),
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge": "too-short"}, "invalid_request"),
    ],
)
async def test_other_bad_requests_go_back_to_the_client(
    env: Env, changes: dict[str, str | None], error: str
) -> None:
    answer = await env.http.get("/demo-idp/authorize", params=authorization(**changes).params)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(REDIRECT_URI + "?")
    query = query_of(answer)
    assert query["error"] == error
    assert query["state"] == "st4te"
    assert query["iss"] == ISSUER


async def test_missing_state_is_refused(env: Env) -> None:
    answer = await env.http.get("/demo-idp/authorize", params=authorization(state=None).params)
    assert query_of(answer)["error"] == "invalid_request"
    assert "state" not in query_of(answer)


async def test_unknown_persona(env: Env) -> None:
    page = await env.http.post(
        "/demo-idp/authorize", data={**authorization().params, "persona": "nobody"}
    )
    assert page.status_code == 400
    assert "location" not in page.headers


async def test_cancel_sends_access_denied(env: Env) -> None:
    answer = await env.http.post(
        "/demo-idp/authorize", data={**authorization().params, "cancel": "1"}
    )
    assert answer.status_code == 303
    assert query_of(answer)["error"] == "access_denied"


async def test_existing_query_of_the_redirect_uri_is_kept(env: Env) -> None:
    pending = authorization(client_id=OTHER_CLIENT, redirect_uri=OTHER_REDIRECT)
    answer = await env.http.post("/demo-idp/authorize", data={**pending.params, "persona": "jean"})
    location = answer.headers["location"]
    assert location.startswith("https://sp.example/cb?keep=1&code=")


# -- token endpoint -------------------------------------------------------------------


async def test_code_exchange_issues_an_id_token(env: Env) -> None:
    pending = await get_code(env, "marianne")
    answer = await redeem(env, pending)
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["access_token"]

    key = await public_key(env)
    header = jwt.get_unverified_header(body["id_token"])
    assert header["alg"] == "ES256"
    assert header["kid"] == key.key_id
    claims = jwt.decode(
        body["id_token"],
        key,
        algorithms=["ES256"],
        audience=CLIENT_ID,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    persona = PERSONAS["marianne"]
    assert claims["sub"] == demo_subject(persona)
    assert "marianne" not in claims["sub"].lower()
    assert claims["exp"] - claims["iat"] == 300
    assert claims["nonce"] == "n0nce"
    assert claims["acr"] == "eidas2"
    assert claims["amr"] == ["pwd"]
    assert claims["given_name"] == "Marianne"
    assert claims["family_name"] == "EXEMPLE-DÉMO"
    assert claims["birthdate"] == "1985-07-14"
    assert claims["gender"] == "female"
    assert claims["birthplace"] == "75056"
    assert claims["birthcountry"] == "99100"


async def test_born_abroad_persona_has_no_birthplace_claim(env: Env) -> None:
    answer = await redeem(env, await get_code(env, "alix"))
    claims = jwt.decode(answer.json()["id_token"], options={"verify_signature": False})
    assert "birthplace" not in claims
    assert claims["birthcountry"] == "99134"
    assert claims["acr"] == "eidas1"


async def test_scope_limits_the_released_claims(env: Env) -> None:
    answer = await redeem(env, await get_code(env, "jean", scope="openid birth"))
    claims = jwt.decode(answer.json()["id_token"], options={"verify_signature": False})
    assert "given_name" not in claims
    assert claims["birthplace"] == "69123"


async def test_client_secret_post(env: Env) -> None:
    pending = await get_code(env)
    form = {**token_form(pending), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    answer = await env.http.post("/demo-idp/token", data=form)
    assert answer.status_code == 200


async def test_replayed_code_is_refused_and_revokes_the_first_token(env: Env) -> None:
    pending = await get_code(env)
    first = await redeem(env, pending)
    access_token = first.json()["access_token"]
    bearer = {"Authorization": f"Bearer {access_token}"}
    assert (await env.http.get("/demo-idp/userinfo", headers=bearer)).status_code == 200

    replay = await redeem(env, pending)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert (await env.http.get("/demo-idp/userinfo", headers=bearer)).status_code == 401


async def test_wrong_pkce_verifier(env: Env) -> None:
    pending = await get_code(env)
    answer = await redeem(env, pending, code_verifier=secrets.token_urlsafe(48))
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"
    # A failed attempt spends the code.
    assert (await redeem(env, pending)).json()["error"] == "invalid_grant"


async def test_missing_pkce_verifier(env: Env) -> None:
    answer = await redeem(env, await get_code(env), code_verifier=None)
    assert answer.json()["error"] == "invalid_grant"


async def test_redirect_uri_must_match_the_code(env: Env) -> None:
    answer = await redeem(env, await get_code(env), redirect_uri=REDIRECT_URI + "/other")
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


async def test_code_expires_after_60_seconds(env: Env) -> None:
    pending = await get_code(env)
    env.clock.now += CODE_LIFETIME_SECONDS
    answer = await redeem(env, pending)
    assert answer.json()["error"] == "invalid_grant"


async def test_code_of_another_client(env: Env) -> None:
    pending = await get_code(env, client_id=OTHER_CLIENT, redirect_uri=OTHER_REDIRECT)
    answer = await redeem(env, pending)  # authenticated as CLIENT_ID
    assert answer.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "headers",
    [
        basic(secret="wrong"),
        basic(client_id="unknown"),
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer abc"},
        {},
    ],
)
async def test_client_authentication_failures(env: Env, headers: dict[str, str]) -> None:
    pending = await get_code(env)
    answer = await env.http.post("/demo-idp/token", data=token_form(pending), headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert answer.headers["www-authenticate"].startswith("Basic")


async def test_wrong_client_secret_post(env: Env) -> None:
    pending = await get_code(env)
    form = {**token_form(pending), "client_id": CLIENT_ID, "client_secret": "wrong"}
    answer = await env.http.post("/demo-idp/token", data=form)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"


async def test_two_authentication_methods_at_once(env: Env) -> None:
    pending = await get_code(env)
    form = {**token_form(pending), "client_secret": CLIENT_SECRET}
    answer = await env.http.post("/demo-idp/token", data=form, headers=basic())
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"grant_type": None}, "unsupported_grant_type"),
        ({"code": None}, "invalid_request"),
        ({"code": "made-up"}, "invalid_grant"),
    ],
)
async def test_token_request_errors(env: Env, changes: dict[str, str | None], error: str) -> None:
    answer = await redeem(env, await get_code(env), **changes)
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == error
    assert body["error_description"]


async def test_repeated_token_parameter(env: Env) -> None:
    pending = await get_code(env)
    content = urlencode([*token_form(pending).items(), ("code", "another")])
    answer = await env.http.post(
        "/demo-idp/token",
        content=content,
        headers={**basic(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.json()["error"] == "invalid_request"


# -- userinfo -------------------------------------------------------------------------


async def test_userinfo(env: Env) -> None:
    access_token = (await redeem(env, await get_code(env, "jean"))).json()["access_token"]
    info = await env.http.get(
        "/demo-idp/userinfo", headers={"Authorization": f"Bearer {access_token}"}
    )
    assert info.status_code == 200
    body: dict[str, Any] = info.json()
    assert body["sub"] == demo_subject(PERSONAS["jean"])
    assert body["family_name"] == "FICTIF-ESSAI"


@pytest.mark.parametrize("authorization_header", [None, "Bearer unknown", "Basic abc"])
async def test_userinfo_refuses_bad_tokens(env: Env, authorization_header: str | None) -> None:
    headers = {"Authorization": authorization_header} if authorization_header else {}
    info = await env.http.get("/demo-idp/userinfo", headers=headers)
    assert info.status_code == 401
    assert info.headers["www-authenticate"].startswith("Bearer")


async def test_userinfo_token_expires(env: Env) -> None:
    access_token = (await redeem(env, await get_code(env))).json()["access_token"]
    env.clock.now += 301
    info = await env.http.get(
        "/demo-idp/userinfo", headers={"Authorization": f"Bearer {access_token}"}
    )
    assert info.status_code == 401


# -- personas -------------------------------------------------------------------------


def test_personas() -> None:
    assert set(PERSONAS) == {"marianne", "jean", "alix"}
    assert {p.acr for p in PERSONAS.values()} == {"eidas1", "eidas2"}
    assert "birthplace" not in PERSONAS["alix"].identity_claims()
    assert PERSONAS["marianne"].identity_claims()["birthplace"] == "75056"
    assert len({demo_subject(p) for p in PERSONAS.values()}) == 3
