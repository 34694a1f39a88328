"""``POST /oauth/revoke``: token revocation (RFC 7009) for service providers.

A consent token is its consent's only handle for the client, so revoking the
token revokes the consent (``consent.revoked``, reason ``client_revoked``):
no other token of it can be issued, and the person sees it ended on "my data".

Checks, in order:

    (1) the client: private_key_jwt (RFC 7523) with a single-use jti
    (2) ``token``: one of our consent tokens, expired or not (RFC 7009 §2.2
        allows revoking an expired token)
    (3) it was issued to this client
    (4) end its consent, if still active

RFC 7009 §2.2: "invalid tokens do not cause an error response": an unknown or
invalid token, an already-ended consent, and a token of another client all
get 200 with an empty body. The last one revokes nothing and is not told
apart, so a client learns nothing about other clients' tokens; it leaves a
``request.refused`` trail entry (endpoint ``revoke``) for auditors.
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import Response

from gateway.consents import ConsentState
from gateway.errors import OAuthError, Unauthenticated
from gateway.oauth.token import NO_STORE, authenticate_client, form_field, oauth_error
from gateway.runtime import Runtime
from gateway.tokens import verify_consent_token
from gateway.trail import EventType, TrailEvent
from gateway.trail.writer import Tx

log = structlog.get_logger(__name__)

REVOKE_PATH = "/oauth/revoke"


def _done() -> Response:
    return Response(status_code=200, headers=NO_STORE)


async def _refused(rt: Runtime, client_id: str | None, code: str) -> None:
    await rt.record(
        TrailEvent(
            EventType.REQUEST_REFUSED,
            client_id=client_id,
            details={"endpoint": "revoke", "code": code},
        )
    )


async def revoke(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    client_id: str | None = None
    try:
        form = await request.form()
        now = rt.now()
        # (1) the client
        client = await authenticate_client(rt, form, now, endpoint=REVOKE_PATH)
        client_id = client.id
        raw = form_field(form, "token")
        if raw is None:
            raise OAuthError("invalid_request", "token is required")
    except OAuthError as exc:
        await _refused(rt, client_id, exc.error)
        return oauth_error(exc)
    # token_type_hint is only a hint (RFC 7009 §2.1): consent tokens are all we revoke.
    # (2) one of our consent tokens
    try:
        token = verify_consent_token(
            raw,
            rt.token_keys,
            issuer=rt.settings.issuer,
            audience=rt.token_audience,
            now=now.timestamp(),
            accept_expired=True,
        )
    except Unauthenticated:
        return _done()
    # (3) issued to this client; if not, answered as an invalid token would be
    if token.client_id != client.id:
        await _refused(rt, client.id, "token_of_another_client")
        return _done()

    # (4) end the consent, if still active
    async def end(tx: Tx) -> bool:
        consent = await rt.consents.get(tx.conn, token.consent_id)
        if consent is None or consent.client_id != client.id:
            return False
        return await rt.consents.end(tx, consent, to=ConsentState.REVOKED, reason="client_revoked")

    if await rt.writer.run(end):
        log.info("consent.revoked_by_client", client_id=client.id)
    return _done()
