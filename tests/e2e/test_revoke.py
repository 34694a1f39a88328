"""Token revocation (RFC 7009): ``POST /oauth/revoke`` ends the token's consent.

RFC 7009 §2.2: an invalid or unknown token is answered 200 like a revoked one;
a token of another client is answered the same and revokes nothing.
"""

from __future__ import annotations

import httpx

from gateway.demo.spclient import CLIENT_ASSERTION_TYPE, ServiceProviderClient, TokenGrant
from gateway.jose import SigningKey
from gateway.tokens import mint_consent_token
from tests.conftest import ISSUER, Stack
from tests.e2e.test_oauth_refusals import (  # the module's second service provider
    OTHER_CLIENT_ID,
    OTHER_CLIENT_KEY,
    REDIRECT_URI,
    assert_oauth_error,
    assert_refused,
    make_settings,  # noqa: F401  (fixture: the policies with that second client)
)

REVOKE_URL = f"{ISSUER}/oauth/revoke"
QUERY = {"annee": "2025", "mois": "01"}


async def post_revoke(
    stack: Stack,
    token: str,
    *,
    sp: ServiceProviderClient | None = None,
    now: float | None = None,
    authenticated: bool = True,
    **extra: str,
) -> httpx.Response:
    sp = sp or stack.sp
    form = {"token": token, "token_type_hint": "access_token", **extra}
    if authenticated:
        form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
        form["client_assertion"] = sp.client_assertion(now=now)
    return await stack.http.post(REVOKE_URL, data=form)


def assert_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.content == b""
    assert response.headers["cache-control"] == "no-store"


async def consent_state(stack: Stack, grant: TokenGrant) -> str:
    async with stack.rt.engine.connect() as conn:
        consent = await stack.rt.consents.get(conn, grant.consent_id)
    assert consent is not None
    return str(consent.state)


async def test_revoking_the_token_revokes_its_consent(stack: Stack) -> None:
    grant = await stack.grant()

    assert_ok(await post_revoke(stack, grant.access_token))

    assert await consent_state(stack, grant) == "revoked"
    revoked = [e for e in await stack.trail() if e["type"] == "consent.revoked"]
    assert len(revoked) == 1
    assert revoked[0]["consent_id"] == grant.consent_id
    assert revoked[0]["client_id"] == stack.sp.client_id
    assert revoked[0]["details"] == {"reason": "client_revoked"}

    fetched = await stack.sp.fetch("cnaf", "quotient_familial", grant.access_token, params=QUERY)
    assert fetched.status_code == 403, fetched.text
    assert fetched.json()["type"] == "urn:gateway:error:consent_revoked"
    assert "transfer.authorized" not in await stack.trail_types()

    # Again: already revoked, still 200, nothing more recorded.
    before = await stack.trail_types()
    assert_ok(await post_revoke(stack, grant.access_token))
    assert await stack.trail_types() == before


async def test_an_expired_token_can_be_revoked(stack: Stack) -> None:
    grant = await stack.grant()
    stack.clock.advance(seconds=grant.expires_in + 30)
    now = stack.clock.timestamp()  # the client's clock agrees with the gateway's

    assert_ok(await post_revoke(stack, grant.access_token, now=now))

    assert await consent_state(stack, grant) == "revoked"
    revoked = [e for e in await stack.trail() if e["type"] == "consent.revoked"]
    assert [e["details"] for e in revoked] == [{"reason": "client_revoked"}]


async def test_unknown_tokens_change_nothing(stack: Stack) -> None:
    grant = await stack.grant()
    forged, _ = mint_consent_token(
        SigningKey.generate_es256(),  # not the gateway's key
        issuer=ISSUER,
        audience=stack.rt.token_audience,
        client_id=stack.sp.client_id,
        sub="someone",
        consent_id=grant.consent_id,
        jkt="x" * 43,
        authorization_details=grant.authorization_details,
        acr=None,
        lifetime=300,
        now=stack.clock.timestamp(),
    )
    before = await stack.trail_types()
    for token in ("not-a-token", forged, grant.access_token[:-4] + "AAAA"):
        assert_ok(await post_revoke(stack, token))
    assert await stack.trail_types() == before
    assert await consent_state(stack, grant) == "active"


async def test_a_token_of_another_client_is_not_revoked(stack: Stack) -> None:
    grant = await stack.grant()
    other = ServiceProviderClient(
        client_id=OTHER_CLIENT_ID,
        signing_key=OTHER_CLIENT_KEY,
        gateway_issuer=ISSUER,
        redirect_uri=REDIRECT_URI,
        http=stack.http,
    )

    # The same answer as for an invalid token: nothing to learn about the token.
    assert_ok(await post_revoke(stack, grant.access_token, sp=other))

    assert await consent_state(stack, grant) == "active"
    assert "consent.revoked" not in await stack.trail_types()
    await assert_refused(stack, "revoke", "token_of_another_client", client_id=OTHER_CLIENT_ID)
    fetched = await stack.sp.fetch("cnaf", "quotient_familial", grant.access_token, params=QUERY)
    assert fetched.status_code == 200, fetched.text


async def test_revocation_needs_client_authentication(stack: Stack) -> None:
    grant = await stack.grant()

    response = await post_revoke(stack, grant.access_token, authenticated=False)

    assert_oauth_error(response, 401, "invalid_client")
    assert "invalid_client" in response.headers["www-authenticate"]
    await assert_refused(stack, "revoke", "invalid_client")
    assert await consent_state(stack, grant) == "active"
    assert "consent.revoked" not in await stack.trail_types()


async def test_replayed_client_assertion_at_revocation(stack: Stack) -> None:
    grant = await stack.grant()
    assertion = stack.sp.client_assertion()
    form = {
        "token": "not-a-token",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    assert_ok(await stack.http.post(REVOKE_URL, data=form))
    response = await stack.http.post(REVOKE_URL, data={**form, "token": grant.access_token})
    assert_oauth_error(response, 401, "invalid_client")
    assert await consent_state(stack, grant) == "active"


async def test_revocation_without_a_token(stack: Stack) -> None:
    response = await post_revoke(stack, "")
    assert_oauth_error(response, 400, "invalid_request")
    await assert_refused(stack, "revoke", "invalid_request", client_id=stack.sp.client_id)
