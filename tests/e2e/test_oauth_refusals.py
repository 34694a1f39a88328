"""Every refusal of the OAuth endpoints: what the caller sees and what the trail records.

The token endpoint answers with RFC 6749 §5.2 bodies; ``/oauth/authorize``
either shows an error page (unknown client, unregistered redirect URI: RFC 6749
§4.1.2.1 forbids redirecting) or sends the browser back to the client's
redirect URI with ``error``, ``state`` and ``iss`` (RFC 9207). Each refusal
leaves a ``request.refused`` entry in the trail naming the endpoint and code.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest

from gateway.demo.run import demo_client_key
from gateway.demo.spclient import (
    CLIENT_ASSERTION_TYPE,
    Pkce,
    ServiceProviderClient,
)
from gateway.jose import SigningKey
from gateway.settings import Settings
from tests.conftest import ISSUER, REPO, SP_BASE, Stack, cnaf_details, dgfip_details

TOKEN_URL = f"{ISSUER}/oauth/token"
AUTHORIZE_URL = f"{ISSUER}/oauth/authorize"
REDIRECT_URI = f"{SP_BASE}/callback"
# A second service provider, registered only in this module's policy copy.
OTHER_CLIENT_ID = "autre-sp-essai"
OTHER_CLIENT_KEY = SigningKey.generate_es256()
_USE_DEFAULT = object()


@pytest.fixture
def make_settings(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Callable[..., Settings]:
    """The example policies plus one more service provider whose private key we hold.

    It overrides the conftest fixture for this whole module: every stack here runs
    with that extra client (only the policy digest differs for the other tests).
    """
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    jwk = OTHER_CLIENT_KEY.public_jwk()
    inline = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in jwk.items()) + " }"
    (policies / "clients" / f"{OTHER_CLIENT_ID}.toml").write_text(
        f"""name = "Autre fournisseur de service (essai)"
role = "service_provider"
redirect_uris = ["{REDIRECT_URI}"]
jwks = {{ keys = [ {inline} ] }}

[[grants]]
purpose = "family-benefit-eligibility"
provider = "cnaf"
resources = ["quotient_familial"]
""",
        encoding="utf-8",
    )

    def make(**env: str) -> Settings:
        return make_settings(**{"GATEWAY_POLICIES": str(policies), **env})

    return make


# --------------------------------------------------------------------------- helpers


async def a_code(stack: Stack, details: list[dict[str, Any]] | None = None) -> tuple[str, Pkce]:
    """A person grants consent; the client receives this code (and holds this PKCE pair)."""
    params = await stack.consent(details)
    code = ServiceProviderClient.check_callback(params, expected_state="st-1", issuer=ISSUER)
    return code, stack.last_pkce


def token_form(
    sp: ServiceProviderClient,
    code: str,
    pkce: Pkce,
    *,
    now: float | None = None,
    assertion: str | None = None,
    **over: str,
) -> dict[str, str]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": sp.redirect_uri,
        "code_verifier": pkce.verifier,
        "client_id": sp.client_id,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion if assertion is not None else sp.client_assertion(now=now),
    }
    form.update(over)
    return form


async def post_token(
    stack: Stack,
    form: dict[str, str],
    *,
    proof: Any = _USE_DEFAULT,
    now: float | None = None,
    sp: ServiceProviderClient | None = None,
) -> httpx.Response:
    """POST /oauth/token; ``proof=None`` sends no DPoP header."""
    sp = sp or stack.sp
    if proof is _USE_DEFAULT:
        proof = sp.dpop_proof("POST", TOKEN_URL, now=now)
    headers = {"DPoP": proof} if proof is not None else {}
    return await stack.http.post(TOKEN_URL, data=form, headers=headers)


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert response.headers["cache-control"] == "no-store"
    if status == 401:
        assert "invalid_client" in response.headers["www-authenticate"]


async def last_refusal(stack: Stack) -> dict[str, Any]:
    refusals = [e for e in await stack.trail() if e["type"] == "request.refused"]
    assert refusals, "no request.refused entry in the trail"
    return refusals[-1]


async def assert_refused(
    stack: Stack, endpoint: str, code: str, *, client_id: str | None = None
) -> None:
    entry = await last_refusal(stack)
    assert entry["details"] == {"endpoint": endpoint, "code": code}
    if client_id is not None:
        assert entry["client_id"] == client_id


def authorize_query(stack: Stack, **over: Any) -> list[tuple[str, str]]:
    """The plain authorization request; ``over`` replaces (value) or drops (None) parameters."""
    params: dict[str, Any] = {
        "response_type": "code",
        "client_id": stack.sp.client_id,
        "redirect_uri": REDIRECT_URI,
        "state": "st-r",
        "code_challenge": Pkce.new().challenge,
        "code_challenge_method": "S256",
        "authorization_details": json.dumps([cnaf_details()]),
    }
    params.update(over)
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        if value is None:
            continue
        values: Sequence[str] = value if isinstance(value, list) else [value]
        pairs.extend((name, v) for v in values)
    return pairs


async def authorize(stack: Stack, pairs: list[tuple[str, str]]) -> httpx.Response:
    return await stack.http.get(f"{AUTHORIZE_URL}?{urlencode(pairs)}")


async def assert_redirected_error(
    stack: Stack, response: httpx.Response, error: str, *, state: str = "st-r"
) -> None:
    """A 303 back to the client with error, state and iss; the refusal is in the trail."""
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI + "?")
    query = httpx.URL(location).params
    assert query["error"] == error
    assert query["error_description"]
    assert query["state"] == state
    assert query["iss"] == ISSUER
    assert "code" not in query
    await assert_refused(stack, "authorize", error, client_id=stack.sp.client_id)
    assert "consent.requested" not in await stack.trail_types()


async def assert_error_page(
    stack: Stack, response: httpx.Response, code: str, *, shown: str
) -> None:
    """An error page in the browser, never a redirect to an unverified place."""
    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "Traceback" not in response.text
    assert shown in response.text  # the code a person can quote to support
    assert REDIRECT_URI not in response.text  # no link to an unverified place either
    assert "consent.requested" not in await stack.trail_types()
    entry = await last_refusal(stack)
    assert entry["details"] == {"endpoint": "authorize", "code": code}


# --------------------------------------------------------------------------- token endpoint


async def test_replayed_code_revokes_the_consent_and_its_token(stack: Stack) -> None:
    code, pkce = await a_code(stack)
    grant = await stack.sp.exchange_code(code, pkce)

    again = await post_token(stack, token_form(stack.sp, code, pkce))

    assert_oauth_error(again, 400, "invalid_grant")
    trail = await stack.trail()
    revoked = [e for e in trail if e["type"] == "consent.revoked"]
    assert len(revoked) == 1
    assert revoked[0]["consent_id"] == grant.consent_id
    assert revoked[0]["details"] == {"reason": "code_replayed"}
    await assert_refused(stack, "token", "invalid_grant", client_id=stack.sp.client_id)
    async with stack.rt.engine.connect() as conn:
        consent = await stack.rt.consents.get(conn, grant.consent_id)
    assert consent is not None and consent.state == "revoked" and consent.claims is None

    # The token the first exchange issued no longer opens anything.
    fetched = await stack.sp.fetch(
        "cnaf", "quotient_familial", grant.access_token, params={"annee": "2025", "mois": "01"}
    )
    assert fetched.status_code == 403, fetched.text
    assert fetched.json()["type"] == "urn:gateway:error:consent_revoked"
    assert (await stack.trail())[-1]["type"] == "transfer.denied"
    assert "transfer.authorized" not in await stack.trail_types()


async def test_wrong_pkce_verifier(stack: Stack) -> None:
    code, _ = await a_code(stack)
    response = await post_token(stack, token_form(stack.sp, code, Pkce.new()))
    assert_oauth_error(response, 400, "invalid_grant")
    assert "PKCE" in response.json()["error_description"]
    await assert_refused(stack, "token", "invalid_grant", client_id=stack.sp.client_id)
    assert "token.issued" not in await stack.trail_types()


async def test_expired_code(stack: Stack) -> None:
    code, pkce = await a_code(stack)
    stack.clock.advance(seconds=61)
    now = stack.clock.timestamp()  # the client's clock agrees with the gateway's
    response = await post_token(stack, token_form(stack.sp, code, pkce, now=now), now=now)
    assert_oauth_error(response, 400, "invalid_grant")
    assert "expired" in response.json()["error_description"]
    await assert_refused(stack, "token", "invalid_grant", client_id=stack.sp.client_id)
    assert "token.issued" not in await stack.trail_types()


async def test_code_presented_by_another_client(stack: Stack) -> None:
    code, pkce = await a_code(stack)
    other = ServiceProviderClient(
        client_id=OTHER_CLIENT_ID,
        signing_key=OTHER_CLIENT_KEY,
        gateway_issuer=ISSUER,
        redirect_uri=REDIRECT_URI,
        http=stack.http,
    )
    response = await post_token(stack, token_form(other, code, pkce), sp=other)
    assert_oauth_error(response, 400, "invalid_grant")
    assert "another client" in response.json()["error_description"]
    await assert_refused(stack, "token", "invalid_grant", client_id=OTHER_CLIENT_ID)
    assert "token.issued" not in await stack.trail_types()


async def test_redirect_uri_differs_at_the_token_endpoint(stack: Stack) -> None:
    code, pkce = await a_code(stack)
    form = token_form(stack.sp, code, pkce, redirect_uri=f"{SP_BASE}/other-callback")
    response = await post_token(stack, form)
    assert_oauth_error(response, 400, "invalid_grant")
    assert "redirect_uri" in response.json()["error_description"]
    await assert_refused(stack, "token", "invalid_grant", client_id=stack.sp.client_id)
    assert "token.issued" not in await stack.trail_types()


async def test_replayed_client_assertion(stack: Stack) -> None:
    code, pkce = await a_code(stack)
    assertion = stack.sp.client_assertion()
    first = await post_token(stack, token_form(stack.sp, code, pkce, assertion=assertion))
    assert first.status_code == 200, first.text

    code2, pkce2 = await a_code(stack)
    again = await post_token(stack, token_form(stack.sp, code2, pkce2, assertion=assertion))
    assert_oauth_error(again, 401, "invalid_client")
    assert "replay" in again.json()["error_description"]
    await assert_refused(stack, "token", "invalid_client")
    # The refused request did not burn the code: a proper request still redeems it.
    assert (await stack.sp.exchange_code(code2, pkce2)).consent_id


@pytest.mark.parametrize("same_kid", [True, False], ids=["same-kid", "unknown-kid"])
async def test_client_assertion_signed_by_another_key(stack: Stack, same_kid: bool) -> None:
    code, pkce = await a_code(stack)
    registered = demo_client_key(stack.settings.data_dir)
    stranger = SigningKey.generate_es256()
    if same_kid:
        stranger = SigningKey(kid=registered.kid, alg="ES256", private_key=stranger.private_key)
    impostor = ServiceProviderClient(
        client_id=stack.sp.client_id,
        signing_key=stranger,
        gateway_issuer=ISSUER,
        redirect_uri=REDIRECT_URI,
        http=stack.http,
    )
    response = await post_token(stack, token_form(impostor, code, pkce), sp=impostor)
    assert_oauth_error(response, 401, "invalid_client")
    await assert_refused(stack, "token", "invalid_client")
    assert "token.issued" not in await stack.trail_types()


@pytest.mark.parametrize(
    "aud", ["https://gateway.example", f"{ISSUER}/oauth/par", ISSUER + "/"], ids=str
)
async def test_client_assertion_with_wrong_audience(stack: Stack, aud: str) -> None:
    code, pkce = await a_code(stack)
    key = demo_client_key(stack.settings.data_dir)
    now = int(stack.clock.timestamp())
    assertion = jwt.encode(
        {
            "iss": stack.sp.client_id,
            "sub": stack.sp.client_id,
            "aud": aud,
            "jti": secrets.token_urlsafe(24),
            "iat": now,
            "exp": now + 60,
        },
        key.private_key,
        algorithm="ES256",
        headers={"typ": "JWT", "kid": key.kid},
    )
    response = await post_token(stack, token_form(stack.sp, code, pkce, assertion=assertion))
    assert_oauth_error(response, 401, "invalid_client")
    await assert_refused(stack, "token", "invalid_client")
    assert "token.issued" not in await stack.trail_types()


async def test_missing_dpop_proof(stack: Stack) -> None:
    code, pkce = await a_code(stack)
    response = await post_token(stack, token_form(stack.sp, code, pkce), proof=None)
    assert_oauth_error(response, 400, "invalid_dpop_proof")
    await assert_refused(stack, "token", "invalid_dpop_proof")
    # Refused before anything was looked at: the code still works with a proof.
    assert (await stack.sp.exchange_code(code, pkce)).consent_id


async def test_replayed_dpop_proof_at_the_token_endpoint(stack: Stack) -> None:
    code, pkce = await a_code(stack)
    proof = stack.sp.dpop_proof("POST", TOKEN_URL)
    first = await post_token(stack, token_form(stack.sp, code, pkce), proof=proof)
    assert first.status_code == 200, first.text

    code2, pkce2 = await a_code(stack)
    again = await post_token(stack, token_form(stack.sp, code2, pkce2), proof=proof)
    assert_oauth_error(again, 400, "invalid_dpop_proof")
    assert "already used" in again.json()["error_description"]
    await assert_refused(stack, "token", "invalid_dpop_proof", client_id=stack.sp.client_id)
    assert (await stack.sp.exchange_code(code2, pkce2)).consent_id


# --------------------------------------------------------------------------- authorize endpoint


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/callback",
        f"{SP_BASE}/callback/",  # exact match only: no prefix matching
        f"{SP_BASE}/callback?x=1",
        "https://ccas.exempleville.example/oauth/callback",  # another client's URI
        None,
    ],
    ids=["foreign", "trailing-slash", "extra-query", "other-client", "missing"],
)
async def test_unregistered_redirect_uri_shows_a_page(
    stack: Stack, redirect_uri: str | None
) -> None:
    response = await authorize(stack, authorize_query(stack, redirect_uri=redirect_uri))
    await assert_error_page(stack, response, "redirect_uri_not_registered", shown="redirect_uri")
    assert (await last_refusal(stack))["client_id"] == stack.sp.client_id


@pytest.mark.parametrize(
    "client_id", ["nobody", None, "auditeur-demo"], ids=["unknown", "missing", "auditor"]
)
async def test_unknown_client_shows_a_page(stack: Stack, client_id: str | None) -> None:
    response = await authorize(stack, authorize_query(stack, client_id=client_id))
    await assert_error_page(stack, response, "unknown_client", shown="unknown_client")
    assert "client_id" not in await last_refusal(stack)


@pytest.mark.parametrize(
    "over",
    [
        {"code_challenge": None, "code_challenge_method": None},
        {"code_challenge_method": None},
        {"code_challenge_method": "plain", "code_challenge": "x" * 43},
        {"code_challenge": "too-short"},
    ],
    ids=["no-pkce", "no-method", "plain", "bad-challenge"],
)
async def test_pkce_s256_is_required(stack: Stack, over: dict[str, Any]) -> None:
    response = await authorize(stack, authorize_query(stack, **over))
    await assert_redirected_error(stack, response, "invalid_request")


async def test_response_type_other_than_code(stack: Stack) -> None:
    response = await authorize(stack, authorize_query(stack, response_type="token"))
    await assert_redirected_error(stack, response, "unsupported_response_type")


async def test_refusal_without_state_still_names_the_issuer(stack: Stack) -> None:
    response = await authorize(stack, authorize_query(stack, state=None, code_challenge=None))
    assert response.status_code == 303
    query = httpx.URL(response.headers["location"]).params
    assert query["error"] == "invalid_request"
    assert query["iss"] == ISSUER
    assert "state" not in query


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "{}",
        "[]",
        json.dumps([{"type": "other", "provider": "cnaf", "resources": ["quotient_familial"]}]),
        json.dumps([cnaf_details(resources=[])]),
        json.dumps([cnaf_details(max_transfers=0)]),
        json.dumps([cnaf_details(max_transfers="1")]),
        json.dumps([{k: v for k, v in cnaf_details().items() if k != "purpose"}]),
    ],
    ids=[
        "not-json",
        "object",
        "empty",
        "other-type",
        "no-resources",
        "zero-transfers",
        "string-transfers",
        "no-purpose",
    ],
)
async def test_malformed_authorization_details(stack: Stack, raw: str) -> None:
    response = await authorize(stack, authorize_query(stack, authorization_details=raw))
    await assert_redirected_error(stack, response, "invalid_authorization_details")


async def test_missing_authorization_details(stack: Stack) -> None:
    response = await authorize(stack, authorize_query(stack, authorization_details=None))
    await assert_redirected_error(stack, response, "invalid_request")


@pytest.mark.parametrize(
    "details",
    [
        [cnaf_details(purpose="school-canteen-pricing")],
        [cnaf_details(resources=["composition_familiale"])],
        [cnaf_details(resources=["quotient_familial", "composition_familiale"])],
        [dgfip_details(resources=["revenu_fiscal", "inconnu"])],
        [cnaf_details(provider="ameli")],
        [cnaf_details(purpose="marketing")],
        [cnaf_details(), dgfip_details(purpose="school-canteen-pricing")],
    ],
    ids=[
        "purpose-not-granted",
        "resource-not-granted",
        "one-resource-not-granted",
        "unknown-resource",
        "unknown-provider",
        "unknown-purpose",
        "mixed-purposes",
    ],
)
async def test_details_not_granted_by_policy(stack: Stack, details: list[dict[str, Any]]) -> None:
    response = await authorize(
        stack, authorize_query(stack, authorization_details=json.dumps(details))
    )
    await assert_redirected_error(stack, response, "invalid_authorization_details")


async def test_max_transfers_above_the_purpose_maximum(stack: Stack) -> None:
    maximum = stack.rt.policy.purposes["family-benefit-eligibility"].max_transfers
    too_many = json.dumps([cnaf_details(max_transfers=maximum + 1)])
    response = await authorize(stack, authorize_query(stack, authorization_details=too_many))
    await assert_redirected_error(stack, response, "invalid_authorization_details")

    # The maximum itself is fine.
    at_max = json.dumps([cnaf_details(max_transfers=maximum)])
    response = await authorize(stack, authorize_query(stack, authorization_details=at_max))
    assert response.status_code == 303
    assert response.headers["location"].startswith("/consent/")


@pytest.mark.parametrize("name", ["code_challenge", "authorization_details", "response_type"])
async def test_duplicate_parameters(stack: Stack, name: str) -> None:
    pairs = authorize_query(stack)
    pairs.append((name, dict(pairs)[name]))  # the same value twice is still twice
    response = await authorize(stack, pairs)
    await assert_redirected_error(stack, response, "invalid_request")
    assert name in httpx.URL(response.headers["location"]).params["error_description"]
