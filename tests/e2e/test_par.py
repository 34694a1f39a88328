"""Pushed authorization requests (RFC 9126): ``POST /oauth/par`` then ``/oauth/authorize``.

The push is authenticated like the token endpoint and validated like a plain
authorization request; refusals are RFC 6749 bodies and ``request.refused``
entries (endpoint ``par``). A ``request_uri`` that is unknown, used, expired or
pushed by another client shows the person an error page and never redirects:
the redirect URI it would name cannot be trusted (RFC 9126 §7.3).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, select

from gateway.demo.spclient import CLIENT_ASSERTION_TYPE, Pkce, ServiceProviderClient
from gateway.demo.story import query_of, walk_consent
from gateway.storage.models import pushed_requests
from tests.conftest import ISSUER, SP_BASE, Stack, cnaf_details, dgfip_details
from tests.e2e.test_oauth_refusals import (  # the module's second service provider
    AUTHORIZE_URL,
    OTHER_CLIENT_ID,
    OTHER_CLIENT_KEY,
    REDIRECT_URI,
    assert_oauth_error,
    assert_refused,
    last_refusal,
    make_settings,  # noqa: F401  (fixture: the policies with that second client)
)

PAR_URL = f"{ISSUER}/oauth/par"
REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"


def other_client(stack: Stack) -> ServiceProviderClient:
    return ServiceProviderClient(
        client_id=OTHER_CLIENT_ID,
        signing_key=OTHER_CLIENT_KEY,
        gateway_issuer=ISSUER,
        redirect_uri=REDIRECT_URI,
        http=stack.http,
    )


def par_form(
    sp: ServiceProviderClient,
    pkce: Pkce | None = None,
    *,
    assertion: str | None = None,
    **over: Any,
) -> dict[str, str]:
    """A push of the plain request; ``over`` replaces (value) or drops (None) parameters."""
    form: dict[str, Any] = {
        "response_type": "code",
        "client_id": sp.client_id,
        "redirect_uri": REDIRECT_URI,
        "state": "st-par",
        "code_challenge": (pkce or Pkce.new()).challenge,
        "code_challenge_method": "S256",
        "authorization_details": json.dumps([cnaf_details()]),
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion if assertion is not None else sp.client_assertion(),
    }
    form.update(over)
    return {name: value for name, value in form.items() if value is not None}


async def push(stack: Stack, form: dict[str, str]) -> httpx.Response:
    return await stack.http.post(PAR_URL, data=form)


async def pushed_uri(stack: Stack, sp: ServiceProviderClient | None = None, **over: Any) -> str:
    response = await push(stack, par_form(sp or stack.sp, **over))
    assert response.status_code == 201, response.text
    request_uri = response.json()["request_uri"]
    assert isinstance(request_uri, str)
    return request_uri


def authorize_url(client_id: str, request_uri: str, **extra: str) -> str:
    query = {"client_id": client_id, "request_uri": request_uri, **extra}
    return f"{AUTHORIZE_URL}?{urlencode(query)}"


async def stored_requests(stack: Stack) -> int:
    async with stack.rt.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(pushed_requests))).scalar()
    assert isinstance(count, int)
    return count


async def assert_par_refused(
    stack: Stack, response: httpx.Response, status: int, error: str
) -> None:
    """An RFC 6749 error body, its trail entry, and nothing stored."""
    assert_oauth_error(response, status, error)
    await assert_refused(stack, "par", error)
    assert await stored_requests(stack) == 0


async def assert_request_uri_page(stack: Stack, response: httpx.Response, code: str) -> None:
    """An error page for the person, never a redirect, and the refusal in the trail."""
    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "request_uri" in response.text  # the code a person can quote to support
    assert REDIRECT_URI not in response.text
    entry = await last_refusal(stack)
    assert entry["details"] == {"endpoint": "authorize", "code": code}


# --------------------------------------------------------------------------- the happy path


async def test_pushed_request_end_to_end(stack: Stack) -> None:
    pkce = Pkce.new()
    response = await push(stack, par_form(stack.sp, pkce))
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"request_uri", "expires_in"}
    assert body["expires_in"] == 60
    assert body["request_uri"].startswith(REQUEST_URI_PREFIX)
    assert len(body["request_uri"]) >= len(REQUEST_URI_PREFIX) + 43  # 256 random bits
    # Only a hash is stored, never the request_uri itself.
    async with stack.rt.engine.connect() as conn:
        (row,) = (await conn.execute(select(pushed_requests))).all()
    assert body["request_uri"] not in str(tuple(row))
    assert row.client_id == stack.sp.client_id

    # RFC 9126 §4: other parameters next to request_uri are ignored.
    url = authorize_url(
        stack.sp.client_id,
        body["request_uri"],
        state="evil",
        redirect_uri="https://evil.example/callback",
        authorization_details=json.dumps([dgfip_details()]),
    )
    outcome = await walk_consent(
        stack.browser(), url, persona="marianne", decision="grant", redirect_uri=REDIRECT_URI
    )
    assert outcome.callback_url.startswith(REDIRECT_URI + "?")
    params = query_of(outcome.callback_url)
    code = ServiceProviderClient.check_callback(params, expected_state="st-par", issuer=ISSUER)
    grant = await stack.sp.exchange_code(code, pkce)
    assert [d["provider"] for d in grant.authorization_details] == ["cnaf"]

    fetched = await stack.sp.fetch(
        "cnaf", "quotient_familial", grant.access_token, params={"annee": "2025", "mois": "01"}
    )
    assert fetched.status_code == 200, fetched.text
    types = await stack.trail_types()
    assert "request.refused" not in types
    assert types.count("consent.requested") == 1
    assert "transfer.completed" in types


async def test_assertion_may_name_the_par_endpoint(stack: Stack) -> None:
    """RFC 9126 §2: the issuer, the token endpoint or the PAR endpoint are valid audiences."""
    import secrets

    import jwt

    from gateway.demo.run import demo_client_key

    key = demo_client_key(stack.settings.data_dir)
    now = int(stack.clock.timestamp())
    assertion = jwt.encode(
        {
            "iss": stack.sp.client_id,
            "sub": stack.sp.client_id,
            "aud": PAR_URL,
            "jti": secrets.token_urlsafe(24),
            "iat": now,
            "exp": now + 60,
        },
        key.private_key,
        algorithm="ES256",
        headers={"typ": "JWT", "kid": key.kid},
    )
    response = await push(stack, par_form(stack.sp, assertion=assertion))
    assert response.status_code == 201, response.text


async def test_metadata_advertises_par(stack: Stack) -> None:
    document = (await stack.http.get(f"{ISSUER}/.well-known/oauth-authorization-server")).json()
    assert document["pushed_authorization_request_endpoint"] == PAR_URL
    assert document["require_pushed_authorization_requests"] is False
    assert document["revocation_endpoint"] == f"{ISSUER}/oauth/revoke"


# --------------------------------------------------------------------------- request_uri refused


async def test_request_uri_is_single_use(stack: Stack) -> None:
    request_uri = await pushed_uri(stack)
    first = await stack.http.get(authorize_url(stack.sp.client_id, request_uri))
    assert first.status_code == 303
    assert first.headers["location"].startswith("/consent/")

    again = await stack.http.get(authorize_url(stack.sp.client_id, request_uri))
    await assert_request_uri_page(stack, again, "request_uri_used")
    assert (await stack.trail_types()).count("consent.requested") == 1


async def test_expired_request_uri(stack: Stack) -> None:
    request_uri = await pushed_uri(stack)
    stack.clock.advance(seconds=61)
    response = await stack.http.get(authorize_url(stack.sp.client_id, request_uri))
    await assert_request_uri_page(stack, response, "request_uri_expired")
    assert "consent.requested" not in await stack.trail_types()


async def test_request_uri_pushed_by_another_client(stack: Stack) -> None:
    request_uri = await pushed_uri(stack, other_client(stack))
    response = await stack.http.get(authorize_url(stack.sp.client_id, request_uri))
    await assert_request_uri_page(stack, response, "request_uri_other_client")
    assert (await last_refusal(stack))["client_id"] == stack.sp.client_id
    assert "consent.requested" not in await stack.trail_types()

    # Not burnt for its owner by someone else's attempt.
    own = await stack.http.get(authorize_url(OTHER_CLIENT_ID, request_uri))
    assert own.status_code == 303
    assert own.headers["location"].startswith("/consent/")


@pytest.mark.parametrize(
    "request_uri",
    [f"{REQUEST_URI_PREFIX}never-issued", "https://evil.example/request.jwt", ""],
    ids=["never-issued", "by-reference", "empty"],
)
async def test_unknown_request_uri(stack: Stack, request_uri: str) -> None:
    response = await stack.http.get(authorize_url(stack.sp.client_id, request_uri))
    await assert_request_uri_page(stack, response, "request_uri_unknown")
    assert "consent.requested" not in await stack.trail_types()


async def test_request_uri_given_twice(stack: Stack) -> None:
    request_uri = await pushed_uri(stack)
    pairs = [("client_id", stack.sp.client_id), ("request_uri", request_uri)]
    pairs.append(("request_uri", request_uri))
    response = await stack.http.get(f"{AUTHORIZE_URL}?{urlencode(pairs)}")
    await assert_request_uri_page(stack, response, "request_uri_unknown")


async def test_request_uri_with_an_unknown_client_id(stack: Stack) -> None:
    request_uri = await pushed_uri(stack)
    response = await stack.http.get(authorize_url("nobody", request_uri))
    assert response.status_code == 400
    assert "location" not in response.headers
    assert (await last_refusal(stack))["details"] == {
        "endpoint": "authorize",
        "code": "unknown_client",
    }


# --------------------------------------------------------------------------- the push refused


async def test_push_without_client_authentication(stack: Stack) -> None:
    form = par_form(stack.sp)
    del form["client_assertion"], form["client_assertion_type"]
    response = await push(stack, form)
    await assert_par_refused(stack, response, 401, "invalid_client")
    assert "invalid_client" in response.headers["www-authenticate"]


async def test_push_with_a_replayed_assertion(stack: Stack) -> None:
    assertion = stack.sp.client_assertion()
    assert (await push(stack, par_form(stack.sp, assertion=assertion))).status_code == 201
    response = await push(stack, par_form(stack.sp, assertion=assertion))
    assert_oauth_error(response, 401, "invalid_client")
    assert "replay" in response.json()["error_description"]
    await assert_refused(stack, "par", "invalid_client")
    assert await stored_requests(stack) == 1


async def test_push_with_another_client_id(stack: Stack) -> None:
    response = await push(stack, par_form(stack.sp, client_id=OTHER_CLIENT_ID))
    await assert_par_refused(stack, response, 401, "invalid_client")


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        json.dumps([cnaf_details(max_transfers=0)]),
        json.dumps([cnaf_details(purpose="school-canteen-pricing")]),
        json.dumps([cnaf_details(resources=["composition_familiale"])]),
    ],
    ids=["not-json", "empty", "zero-transfers", "purpose-not-granted", "resource-not-granted"],
)
async def test_push_with_bad_details(stack: Stack, raw: str) -> None:
    response = await push(stack, par_form(stack.sp, authorization_details=raw))
    await assert_par_refused(stack, response, 400, "invalid_authorization_details")
    assert (await last_refusal(stack))["client_id"] == stack.sp.client_id


@pytest.mark.parametrize(
    "redirect_uri",
    ["https://evil.example/callback", f"{SP_BASE}/callback/", None],
    ids=["foreign", "trailing-slash", "missing"],
)
async def test_push_with_an_unregistered_redirect_uri(
    stack: Stack, redirect_uri: str | None
) -> None:
    response = await push(stack, par_form(stack.sp, redirect_uri=redirect_uri))
    await assert_par_refused(stack, response, 400, "invalid_request")
    assert "redirect_uri" in response.json()["error_description"]


@pytest.mark.parametrize(
    ("over", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": None}, "invalid_request"),
        ({"authorization_details": None}, "invalid_request"),
        ({"request_uri": f"{REQUEST_URI_PREFIX}x"}, "invalid_request"),
    ],
    ids=["response-type", "plain-pkce", "no-pkce", "no-details", "request-uri"],
)
async def test_push_with_bad_parameters(stack: Stack, over: dict[str, Any], error: str) -> None:
    response = await push(stack, par_form(stack.sp, **over))
    await assert_par_refused(stack, response, 400, error)


async def test_push_with_a_duplicate_parameter(stack: Stack) -> None:
    form = list(par_form(stack.sp).items())
    form.append(("code_challenge", Pkce.new().challenge))
    response = await stack.http.post(
        PAR_URL,
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    await assert_par_refused(stack, response, 400, "invalid_request")
    assert "code_challenge" in response.json()["error_description"]
