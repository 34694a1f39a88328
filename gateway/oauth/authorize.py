"""``GET /oauth/authorize``: an authorization request becomes a pending consent.

RFC 6749 §4.1.2.1: with an unknown client or an unregistered redirect URI the
server MUST NOT redirect; the person sees an error page. Every other error is
sent back to the client's redirect URI with ``state`` and ``iss`` (RFC 9207).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import timedelta
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.errors import InvalidRequest
from gateway.policy.decision import Deny, decide_request, parse_authorization_details
from gateway.runtime import Runtime
from gateway.trail.writer import Tx
from gateway.web import session as sessions
from gateway.web.pages import _refused, error_page

# RFC 7636 §4.2: BASE64URL(SHA256(verifier)) is 43 characters.
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
# How long the browser-binding cookie lives: one authorization flow at most.
FLOW_COOKIE_SECONDS = 3600


class _Refuse(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(error)
        self.error = error
        self.description = description


async def authorize(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    params = request.query_params
    client_id = params.get("client_id", "")
    client = rt.policy.clients.get(client_id)
    if client is None or client.role != "service_provider":
        await _refused(rt, "authorize", "unknown_client")
        return error_page(request, 400, "unknown_client")
    redirect_uri = params.get("redirect_uri", "")
    # Exact string match (RFC 9700 §4.1.3): no prefix or pattern matching.
    if redirect_uri not in client.redirect_uris:
        await _refused(rt, "authorize", "redirect_uri_not_registered", client_id=client.id)
        return error_page(request, 400, "redirect_uri")
    state = params.get("state")

    try:
        # RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once."
        for name in set(params.keys()):
            if len(params.getlist(name)) > 1:
                raise _Refuse("invalid_request", f"parameter {name} given more than once")
        if params.get("request_uri") is not None:
            raise _Refuse("invalid_request", "pushed authorization requests are not supported yet")
        if params.get("response_type") != "code":
            raise _Refuse("unsupported_response_type", "response_type must be code")
        if params.get("code_challenge_method") != "S256":
            raise _Refuse("invalid_request", "code_challenge_method must be S256 (PKCE)")
        challenge = params.get("code_challenge", "")
        if not _S256_CHALLENGE.fullmatch(challenge):
            raise _Refuse("invalid_request", "code_challenge must be a base64url S256 challenge")
        raw_details = params.get("authorization_details")
        if not raw_details:
            raise _Refuse("invalid_request", "authorization_details is required (RFC 9396)")
        try:
            details = parse_authorization_details(json.loads(raw_details))
        except (ValueError, InvalidRequest) as exc:
            detail = exc.detail if isinstance(exc, InvalidRequest) else "not JSON"
            raise _Refuse("invalid_authorization_details", detail) from None
        decision = decide_request(rt.policy, client.id, details)
        if isinstance(decision, Deny):
            raise _Refuse("invalid_authorization_details", f"{decision.code}: {decision.reason}")
    except _Refuse as refuse:
        await _refused(rt, "authorize", refuse.error, client_id=client.id)
        back = {"error": refuse.error, "error_description": refuse.description}
        if state is not None:
            back["state"] = state
        back["iss"] = rt.settings.issuer
        return RedirectResponse(f"{redirect_uri}?{urlencode(back)}", status_code=303)

    # Bind the request to this browser: only it may open the consent page.
    flow = request.cookies.get(sessions.FLOW_COOKIE) or secrets.token_urlsafe(32)
    now = rt.now()

    async def create(tx: Tx) -> str:
        return await rt.consents.create_pending(
            tx,
            client_id=client.id,
            details=details,
            redirect_uri=redirect_uri,
            client_state=state,
            code_challenge=challenge,
            browser_binding=hashlib.sha256(flow.encode()).hexdigest(),
            expires_at=now + timedelta(seconds=rt.settings.authorization_request_lifetime_seconds),
        )

    consent_id = await rt.writer.run(create)
    response = RedirectResponse(f"/consent/{consent_id}", status_code=303)
    sessions.set_cookie(rt, response, sessions.FLOW_COOKIE, flow, FLOW_COOKIE_SECONDS)
    return response
