"""The OIDC relying party, run against the demo identity provider over ASGI.

The demo IdP is mounted at /demo-idp as in production; a recording transport
sits between the relying party and it so that tests can count requests and
rewrite answers (a forged id_token, a lying discovery document).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from gateway.demo.idp import DemoIdentityProvider
from gateway.demo.personas import PERSONAS
from gateway.errors import LoginFailed
from gateway.identity import (
    ID_TOKEN_LEEWAY_SECONDS,
    LoginRequest,
    OidcRelyingParty,
    PersonIdentity,
    pkce_challenge,
    verify_id_token,
)

GATEWAY = "http://gateway.test"
ISSUER = f"{GATEWAY}/demo-idp"
REDIRECT_URI = f"{GATEWAY}/login/callback"
CLIENT_ID = "gateway-demo"
CLIENT_SECRET = "correct horse battery staple"

Rewrite = Callable[[dict[str, Any]], dict[str, Any]]


class Wire(httpx.AsyncBaseTransport):
    """ASGI transport to a swappable app; records requests, can rewrite JSON answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[httpx.Request] = []
        self.rewrites: dict[str, Rewrite] = {}  # path -> rewrite of the JSON body

    def paths(self) -> list[str]:
        return [request.url.path for request in self.requests]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = await httpx.ASGITransport(app=self.app).handle_async_request(request)
        rewrite = self.rewrites.get(request.url.path)
        if rewrite is None or response.status_code != 200:
            return response
        body = json.loads(await response.aread())
        return httpx.Response(200, json=rewrite(body))


def mounted(idp: DemoIdentityProvider) -> Starlette:
    return Starlette(routes=[Mount("/demo-idp", app=idp.app)])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def kid_of(jwks: dict[str, Any]) -> str:
    return str(jwks["keys"][0]["kid"])


@dataclass
class World:
    key: ec.EllipticCurvePrivateKey
    wire: Wire
    http: httpx.AsyncClient  # the gateway's client to the IdP
    browser: httpx.AsyncClient
    rp: OidcRelyingParty
    kid: str = ""


def make_rp(http: httpx.AsyncClient, **overrides: Any) -> OidcRelyingParty:
    options: dict[str, Any] = {
        "issuer": ISSUER,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uri": REDIRECT_URI,
        "http": http,
    }
    options.update(overrides)
    return OidcRelyingParty(**options)


def make_idp(
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: str = ISSUER,
    secret: str = CLIENT_SECRET,
    clock: Callable[[], float] = time.time,
) -> DemoIdentityProvider:
    return DemoIdentityProvider(
        issuer=issuer,
        clients={CLIENT_ID: (secret, [REDIRECT_URI])},
        signing_key=key,
        clock=clock,
    )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    key = new_key()
    wire = Wire(mounted(make_idp(key)))
    async with (
        httpx.AsyncClient(transport=wire, base_url=GATEWAY) as http,
        httpx.AsyncClient(transport=wire, base_url=GATEWAY) as browser,
    ):
        w = World(key=key, wire=wire, http=http, browser=browser, rp=make_rp(http))
        w.kid = kid_of((await http.get(f"{ISSUER}/jwks")).json())
        wire.requests.clear()
        yield w


class FormReader(HTMLParser):
    """Reads the login form the way a browser would submit it."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.hidden: dict[str, str] = {}
        self.personas: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.action = a["action"]
        elif tag == "input" and a.get("type") == "hidden":
            self.hidden[a["name"]] = a["value"]
        elif tag == "input" and a.get("type") == "radio" and a.get("name") == "persona":
            self.personas.append(a["value"])


async def authorize_in_browser(
    w: World, url: str, persona: str, *, cancel: bool = False
) -> dict[str, str]:
    """Follow the authorization URL, pick a persona, return the callback's query."""
    page = await w.browser.get(url)
    assert page.status_code == 200
    form = FormReader()
    form.feed(page.text)
    assert persona in form.personas or cancel
    data = {**form.hidden, "persona": persona}
    if cancel:
        data["cancel"] = "1"
    answer = await w.browser.post(form.action, data=data)
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(REDIRECT_URI + "?")
    return dict(parse_qsl(urlsplit(location).query))


async def login_params(w: World, persona: str = "marianne") -> tuple[dict[str, str], LoginRequest]:
    url, login = await w.rp.begin()
    return await authorize_in_browser(w, url, persona), login


def compact(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join(
        (b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature))
    )


def forge_id_token(make: Callable[[dict[str, Any]], str]) -> Rewrite:
    """A token-endpoint rewrite replacing the id_token by ``make(original claims)``."""

    def rewrite(body: dict[str, Any]) -> dict[str, Any]:
        claims = jwt.decode(body["id_token"], options={"verify_signature": False})
        return {**body, "id_token": make(claims)}

    return rewrite


async def complete_with_forged(w: World, make: Callable[[dict[str, Any]], str]) -> LoginFailed:
    w.wire.rewrites["/demo-idp/token"] = forge_id_token(make)
    params, login = await login_params(w)
    with pytest.raises(LoginFailed) as failure:
        await w.rp.complete(params, login)
    return failure.value


# -- the happy path ---------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(PERSONAS))
async def test_each_persona_logs_in_with_its_level_and_claims(world: World, key: str) -> None:
    persona = PERSONAS[key]
    params, login = await login_params(world, key)
    identity = await world.rp.complete(params, login)

    assert identity.issuer == ISSUER
    assert identity.acr == persona.acr
    assert identity.subject and persona.given_name not in identity.subject
    expected = {
        "given_name": persona.given_name,
        "family_name": persona.family_name,
        "birthdate": persona.birthdate,
        "gender": persona.gender,
        "birthcountry": persona.birthcountry,
    }
    if key != "alix":
        expected["birthplace"] = persona.birthplace
    assert dict(identity.claims) == expected


async def test_born_abroad_persona_has_no_birthplace(world: World) -> None:
    params, login = await login_params(world, "alix")
    identity = await world.rp.complete(params, login)
    assert "birthplace" not in identity.claims
    assert identity.acr == "eidas1"


async def test_subject_is_stable_across_logins(world: World) -> None:
    first = await world.rp.complete(*await login_params(world, "jean"))
    second = await world.rp.complete(*await login_params(world, "jean"))
    other = await world.rp.complete(*await login_params(world, "marianne"))
    assert first.subject == second.subject != other.subject


async def test_authorization_url_carries_pkce_s256_state_and_nonce(world: World) -> None:
    url, login = await world.rp.begin()
    _, again = await world.rp.begin()
    query = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}

    assert url.startswith(f"{ISSUER}/authorize?")
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["scope"] == "openid profile birth"
    assert query["state"] == login.state
    assert query["nonce"] == login.nonce
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == pkce_challenge(login.code_verifier)
    assert login.code_verifier not in url
    assert 43 <= len(login.code_verifier) <= 128
    # Fresh secrets for every login.
    assert {again.state, again.nonce, again.code_verifier}.isdisjoint(
        {login.state, login.nonce, login.code_verifier}
    )


async def test_acr_values_are_sent_when_configured(world: World) -> None:
    rp = make_rp(world.http, acr_values="eidas2")
    url, _ = await rp.begin()
    assert parse_qs(urlsplit(url).query)["acr_values"] == ["eidas2"]


def test_pkce_challenge_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_login_request_round_trips_through_a_session() -> None:
    login = LoginRequest(state="the-state", nonce="the-nonce", code_verifier="the-verifier")
    assert LoginRequest.from_dict(json.loads(json.dumps(login.to_dict()))) == login
    assert "the-nonce" not in repr(login)
    assert "the-verifier" not in repr(login)


@pytest.mark.parametrize(
    "stored", [{}, {"state": "s", "nonce": "n"}, {"state": "s", "nonce": 1, "code_verifier": "v"}]
)
def test_a_damaged_session_entry_is_no_pending_login(stored: dict[str, object]) -> None:
    with pytest.raises(LoginFailed) as failure:
        LoginRequest.from_dict(stored)
    assert failure.value.code == "login_state_mismatch"


def test_identity_repr_shows_no_personal_claims() -> None:
    identity = PersonIdentity(ISSUER, "sub", "eidas2", {"given_name": "Marianne"})
    assert "Marianne" not in repr(identity)


async def test_discovery_is_fetched_once(world: World) -> None:
    await world.rp.complete(*await login_params(world))
    await world.rp.complete(*await login_params(world))
    gateway_paths = [r.url.path for r in world.wire.requests if r.url.path != "/demo-idp/authorize"]
    assert gateway_paths.count("/demo-idp/.well-known/openid-configuration") == 1
    assert gateway_paths.count("/demo-idp/jwks") == 1


async def test_token_request_uses_basic_auth_and_the_code_verifier(world: World) -> None:
    params, login = await login_params(world)
    await world.rp.complete(params, login)
    (token_request,) = [r for r in world.wire.requests if r.url.path == "/demo-idp/token"]
    form = dict(parse_qsl(token_request.content.decode()))
    assert token_request.headers["authorization"].startswith("Basic ")
    assert "client_secret" not in form
    assert form["code_verifier"] == login.code_verifier
    assert form["redirect_uri"] == REDIRECT_URI


async def test_client_secret_post_when_discovery_only_lists_it(world: World) -> None:
    world.wire.rewrites["/demo-idp/.well-known/openid-configuration"] = lambda doc: {
        **doc,
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
    }
    params, login = await login_params(world)
    await world.rp.complete(params, login)
    (token_request,) = [r for r in world.wire.requests if r.url.path == "/demo-idp/token"]
    form = dict(parse_qsl(token_request.content.decode()))
    assert "authorization" not in token_request.headers
    assert form["client_id"] == CLIENT_ID
    assert form["client_secret"] == CLIENT_SECRET


async def test_key_rotation_is_followed_by_refetching_the_jwks(world: World) -> None:
    await world.rp.complete(*await login_params(world))
    world.wire.app = mounted(make_idp(new_key()))  # same issuer, new key and kid
    identity = await world.rp.complete(*await login_params(world))
    assert identity.acr == "eidas2"
    assert world.wire.paths().count("/demo-idp/jwks") == 2


async def test_id_token_within_the_leeway_is_accepted(world: World) -> None:
    # An IdP clock running ahead puts iat in our future; the leeway absorbs small drift.
    ahead = ID_TOKEN_LEEWAY_SECONDS // 2
    world.wire.app = mounted(make_idp(world.key, clock=lambda: time.time() + ahead))
    identity = await world.rp.complete(*await login_params(world))
    assert identity.subject


async def test_logs_carry_no_token_and_no_personal_data(world: World) -> None:
    persona = PERSONAS["marianne"]
    params, login = await login_params(world)
    with structlog.testing.capture_logs() as logs:
        await world.rp.complete(params, login)
    text = json.dumps(logs)
    assert [entry["event"] for entry in logs] == ["identity.login_completed"]
    for secret in (persona.given_name, persona.family_name, persona.birthdate, params["code"]):
        assert secret not in text


# -- the callback -----------------------------------------------------------------


async def test_cancelled_login(world: World) -> None:
    url, login = await world.rp.begin()
    params = await authorize_in_browser(world, url, "marianne", cancel=True)
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete(params, login)
    assert failure.value.code == "login_cancelled"


async def test_idp_error_is_a_login_error(world: World) -> None:
    _, login = await world.rp.begin()
    params = {"error": "server_error", "state": login.state, "iss": ISSUER}
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete(params, login)
    assert failure.value.code == "login_error"


async def test_state_mismatch(world: World) -> None:
    params, login = await login_params(world)
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete({**params, "state": "someone-else's"}, login)
    assert failure.value.code == "login_state_mismatch"
    assert "/demo-idp/token" not in world.wire.paths()


async def test_missing_state(world: World) -> None:
    params, login = await login_params(world)
    del params["state"]
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete(params, login)
    assert failure.value.code == "login_state_mismatch"


async def test_response_from_another_issuer_is_refused(world: World) -> None:
    params, login = await login_params(world)
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete({**params, "iss": "https://evil.test"}, login)
    assert failure.value.code == "login_issuer_mismatch"


async def test_iss_is_required_when_the_idp_announces_it(world: World) -> None:
    params, login = await login_params(world)
    del params["iss"]
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete(params, login)
    assert failure.value.code == "login_issuer_mismatch"


async def test_nonce_mismatch(world: World) -> None:
    params, login = await login_params(world)
    tampered = dataclasses.replace(login, nonce="a-nonce-from-another-login")
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete(params, tampered)
    assert failure.value.code == "id_token_invalid"
    assert "nonce" in failure.value.detail


async def test_replayed_code(world: World) -> None:
    params, login = await login_params(world)
    await world.rp.complete(params, login)
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete(params, login)
    assert failure.value.code == "login_error"
    assert "invalid_grant" in failure.value.detail


async def test_wrong_pkce_verifier_is_refused_by_the_idp(world: World) -> None:
    params, login = await login_params(world)
    tampered = dataclasses.replace(login, code_verifier="x" * 64)
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete(params, tampered)
    assert failure.value.code == "login_error"
    assert "invalid_grant" in failure.value.detail


async def test_wrong_client_secret(world: World) -> None:
    rp = make_rp(world.http, client_secret="not the secret")
    url, login = await rp.begin()
    params = await authorize_in_browser(world, url, "marianne")
    with pytest.raises(LoginFailed) as failure:
        await rp.complete(params, login)
    assert failure.value.code == "login_error"
    assert "invalid_client" in failure.value.detail


async def test_unregistered_redirect_uri_gets_an_error_page_not_a_redirect(world: World) -> None:
    rp = make_rp(world.http, redirect_uri="https://evil.test/callback")
    url, _ = await rp.begin()
    page = await world.browser.get(url)
    assert page.status_code == 400
    assert "location" not in page.headers
    assert "evil.test" not in page.text


# -- the id_token -----------------------------------------------------------------


async def test_id_token_signed_by_another_key_with_the_same_kid(world: World) -> None:
    rogue = new_key()
    failure = await complete_with_forged(
        world, lambda claims: jwt.encode(claims, rogue, "ES256", headers={"kid": world.kid})
    )
    assert failure.code == "id_token_invalid"
    assert "signature" in failure.detail


async def test_id_token_from_a_rogue_idp_with_the_same_issuer(world: World) -> None:
    # The rogue IdP answers the token request; discovery and JWKS stay genuine.
    await world.rp.complete(*await login_params(world))  # the genuine JWKS is now cached
    rogue = mounted(make_idp(new_key()))
    genuine = world.wire.app

    async def split(scope: Any, receive: Any, send: Any) -> None:
        target = rogue if scope["path"].endswith(("/token", "/authorize")) else genuine
        await target(scope, receive, send)

    world.wire.app = split
    params, login = await login_params(world)
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete(params, login)
    assert failure.value.code == "id_token_invalid"
    # The unknown kid made the RP look for a rotation once, and no more.
    assert world.wire.paths().count("/demo-idp/jwks") == 2


async def test_wrong_issuer_in_discovery(world: World) -> None:
    world.wire.app = mounted(make_idp(world.key, issuer="http://other.test/demo-idp"))
    with pytest.raises(LoginFailed) as failure:
        await world.rp.begin()
    assert failure.value.code == "identity_provider_misconfigured"


async def test_expired_id_token(world: World) -> None:
    def expired(claims: dict[str, Any]) -> str:
        past = int(time.time()) - 3600
        claims.update(iat=past, exp=past + 300)
        return jwt.encode(claims, world.key, "ES256", headers={"kid": world.kid})

    failure = await complete_with_forged(world, expired)
    assert failure.code == "id_token_invalid"
    assert "expired" in failure.detail


async def test_expired_id_token_from_an_idp_with_a_late_clock(world: World) -> None:
    late = ID_TOKEN_LEEWAY_SECONDS + 600
    world.wire.app = mounted(make_idp(world.key, clock=lambda: time.time() - late))
    params, login = await login_params(world)
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete(params, login)
    assert failure.value.code == "id_token_invalid"


async def test_id_token_issued_in_the_future(world: World) -> None:
    def future(claims: dict[str, Any]) -> str:
        claims.update(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200)
        return jwt.encode(claims, world.key, "ES256", headers={"kid": world.kid})

    failure = await complete_with_forged(world, future)
    assert failure.code == "id_token_invalid"


async def test_alg_none_id_token(world: World) -> None:
    failure = await complete_with_forged(
        world, lambda claims: compact({"alg": "none", "kid": world.kid}, claims)
    )
    assert failure.code == "id_token_invalid"
    assert "algorithm" in failure.detail


async def test_hs256_keyed_with_the_public_key_is_refused(world: World) -> None:
    public_pem = world.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def confused(claims: dict[str, Any]) -> str:
        unsigned = compact({"alg": "HS256", "kid": world.kid}, claims).rsplit(".", 1)[0]
        mac = hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest()
        return unsigned + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    failure = await complete_with_forged(world, confused)
    assert failure.code == "id_token_invalid"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"iss": "http://other.test/demo-idp"}, "issuer"),
        ({"aud": "another-client"}, "another client"),
        ({"aud": [CLIENT_ID, "another-client"]}, "azp"),
        ({"aud": [CLIENT_ID, "another-client"], "azp": "another-client"}, "azp"),
        ({"azp": "another-client"}, "azp"),
        ({"sub": None}, "missing"),
        ({"sub": ""}, "subject"),
        ({"nonce": None}, "missing"),
        ({"exp": None}, "missing"),
        ({"iat": None}, "missing"),
        ({"acr": 2}, "acr"),
    ],
)
async def test_id_token_claim_checks(world: World, changes: dict[str, Any], reason: str) -> None:
    def tamper(claims: dict[str, Any]) -> str:
        claims.update(changes)
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, world.key, "ES256", headers={"kid": world.kid})

    failure = await complete_with_forged(world, tamper)
    assert failure.code == "id_token_invalid"
    assert reason in failure.detail


async def test_several_audiences_with_our_azp_are_accepted(world: World) -> None:
    def tamper(claims: dict[str, Any]) -> str:
        claims.update(aud=[CLIENT_ID, "another-client"], azp=CLIENT_ID)
        return jwt.encode(claims, world.key, "ES256", headers={"kid": world.kid})

    world.wire.rewrites["/demo-idp/token"] = forge_id_token(tamper)
    identity = await world.rp.complete(*await login_params(world))
    assert identity.acr == "eidas2"


async def test_unknown_acr_is_no_level(world: World) -> None:
    def tamper(claims: dict[str, Any]) -> str:
        claims.update(acr="urn:example:loa:superb")
        return jwt.encode(claims, world.key, "ES256", headers={"kid": world.kid})

    world.wire.rewrites["/demo-idp/token"] = forge_id_token(tamper)
    identity = await world.rp.complete(*await login_params(world))
    assert identity.acr is None


async def test_id_token_without_kid(world: World) -> None:
    failure = await complete_with_forged(
        world, lambda claims: jwt.encode(claims, world.key, "ES256")
    )
    assert failure.code == "id_token_invalid"
    assert "kid" in failure.detail


async def test_token_response_without_id_token(world: World) -> None:
    world.wire.rewrites["/demo-idp/token"] = lambda body: {
        k: v for k, v in body.items() if k != "id_token"
    }
    params, login = await login_params(world)
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete(params, login)
    assert failure.value.code == "id_token_invalid"


# -- verify_id_token against other key types (pure, no I/O) -------------------------


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "s", "aud": CLIENT_ID, "iat": now, "exp": now + 300}
    return {**claims, "nonce": "n", "acr": "eidas3", **changes}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_rsa_signed_id_token(rsa_key: rsa.RSAPrivateKey, alg: str) -> None:
    jwk = {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r"}
    token = jwt.encode(_claims(), rsa_key, alg, headers={"kid": "r"})
    identity = verify_id_token(token, jwk, issuer=ISSUER, client_id=CLIENT_ID, nonce="n")
    assert identity.acr == "eidas3"


def test_eddsa_signed_id_token() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = {**OKPAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "o"}
    token = jwt.encode(_claims(), key, "EdDSA", headers={"kid": "o"})
    assert verify_id_token(token, jwk, issuer=ISSUER, client_id=CLIENT_ID, nonce="n").subject


def test_rsa_key_cannot_verify_an_ec_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    token = jwt.encode(_claims(), rsa_key, "RS256", headers={"kid": "r"})
    forged = compact({"alg": "ES256", "kid": "r"}, _claims(), b"x" * 64)
    with pytest.raises(LoginFailed, match="does not match the signing key"):
        verify_id_token(forged, jwk, issuer=ISSUER, client_id=CLIENT_ID, nonce="n")
    # The key's own alg, when published, pins it further.
    with pytest.raises(LoginFailed, match="does not match the signing key"):
        verify_id_token(
            token, {**jwk, "alg": "PS256"}, issuer=ISSUER, client_id=CLIENT_ID, nonce="n"
        )


def test_disallowed_algorithm_even_with_a_matching_key() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    token = jwt.encode(_claims(), key, "ES384", headers={"kid": "e"})
    with pytest.raises(LoginFailed, match="not allowed"):
        verify_id_token(token, jwk, issuer=ISSUER, client_id=CLIENT_ID, nonce="n")


# -- the network ------------------------------------------------------------------


def failing_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_unreachable_idp() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with failing_client(refuse) as http:
        with pytest.raises(LoginFailed) as failure:
            await make_rp(http).begin()
    assert failure.value.code == "identity_provider_unavailable"


async def test_idp_failing_at_the_token_endpoint(world: World) -> None:
    genuine = world.wire.app

    async def broken_token(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"].endswith("/token"):
            await asgi_500(scope, receive, send)
        else:
            await genuine(scope, receive, send)

    world.wire.app = broken_token
    params, login = await login_params(world)
    with pytest.raises(LoginFailed) as failure:
        await world.rp.complete(params, login)
    assert failure.value.code == "identity_provider_unavailable"


async def asgi_500(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 500, "headers": []})
    await send({"type": "http.response.body", "body": b"oops"})


async def test_oversized_discovery_document() -> None:
    def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"issuer": ISSUER, "padding": "x" * 300_000})

    async with failing_client(huge) as http:
        with pytest.raises(LoginFailed) as failure:
            await make_rp(http).begin()
    assert failure.value.code == "identity_provider_unavailable"


async def test_a_failed_discovery_is_retried_on_the_next_login(world: World) -> None:
    genuine = world.wire.app
    world.wire.app = asgi_500
    with pytest.raises(LoginFailed):
        await world.rp.begin()
    world.wire.app = genuine
    url, _ = await world.rp.begin()
    assert url.startswith(ISSUER)
