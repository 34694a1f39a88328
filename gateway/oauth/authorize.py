"""``GET /oauth/authorize``: an authorization request becomes a pending consent.

The request comes either as plain query parameters or, pushed beforehand
(RFC 9126), as ``client_id`` + ``request_uri``. Both are checked by
:func:`check_request`, the one validation ``POST /oauth/par`` uses too.

RFC 6749 §4.1.2.1: with an unknown client or an unregistered redirect URI the
server MUST NOT redirect; the person sees an error page. So it is with a
``request_uri`` that is unknown, used, expired or pushed by another client:
the redirect URI it would name cannot be trusted (RFC 9126 §7.3). Every other
error is sent back to the client's redirect URI with ``state`` and ``iss``
(RFC 9207).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.errors import InvalidRequest
from gateway.oauth import pushed
from gateway.policy.decision import (
    AuthorizationDetail,
    Deny,
    decide_request,
    parse_authorization_details,
)
from gateway.policy.model import Client
from gateway.runtime import Runtime
from gateway.trail.writer import Tx
from gateway.web import session as sessions
from gateway.web.pages import _refused, error_page

# RFC 7636 §4.2: BASE64URL(SHA256(verifier)) is 43 characters.
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
# How long the browser-binding cookie lives: one authorization flow at most.
FLOW_COOKIE_SECONDS = 3600
# The parameters of an authorization request besides client_id: what PAR stores.
AUTHORIZATION_PARAMETERS = (
    "response_type",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "authorization_details",
)

Params = ImmutableMultiDict[str, Any]


class AuthorizationRefused(Exception):
    """An authorization request refused with an RFC 6749 error code.

    ``redirectable`` is False when the redirect URI itself is at fault: the
    browser must not be sent there (RFC 6749 §4.1.2.1).
    """

    def __init__(self, error: str, description: str, *, redirectable: bool = True) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.redirectable = redirectable


@dataclass(frozen=True)
class AuthorizationRequest:
    """A valid authorization request of one client, allowed by policy."""

    client: Client
    redirect_uri: str
    state: str | None
    code_challenge: str
    details: tuple[AuthorizationDetail, ...]


def _one(params: Params, name: str) -> str | None:
    value = params.get(name)
    return value if isinstance(value, str) else None


def check_request(rt: Runtime, client: Client, params: Params) -> AuthorizationRequest:
    """Validate the parameters of an authorization request; raise AuthorizationRefused.

    Shared by ``/oauth/authorize`` (plain or pushed) and ``/oauth/par``.
    """
    redirect_uri = _one(params, "redirect_uri") or ""
    # Exact string match (RFC 9700 §4.1.3): no prefix or pattern matching.
    if redirect_uri not in client.redirect_uris:
        raise AuthorizationRefused(
            "invalid_request", "redirect_uri is not registered for this client", redirectable=False
        )
    # RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once."
    for name in set(params.keys()):
        if len(params.getlist(name)) > 1:
            raise AuthorizationRefused("invalid_request", f"parameter {name} given more than once")
    if params.get("request_uri") is not None:
        # RFC 9126 §2.1: request_uri "MUST NOT be provided" in a pushed request.
        raise AuthorizationRefused("invalid_request", "request_uri is not allowed here")
    if _one(params, "response_type") != "code":
        raise AuthorizationRefused("unsupported_response_type", "response_type must be code")
    if _one(params, "code_challenge_method") != "S256":
        raise AuthorizationRefused("invalid_request", "code_challenge_method must be S256 (PKCE)")
    challenge = _one(params, "code_challenge") or ""
    if not _S256_CHALLENGE.fullmatch(challenge):
        raise AuthorizationRefused(
            "invalid_request", "code_challenge must be a base64url S256 challenge"
        )
    raw_details = _one(params, "authorization_details")
    if not raw_details:
        raise AuthorizationRefused(
            "invalid_request", "authorization_details is required (RFC 9396)"
        )
    try:
        details = parse_authorization_details(json.loads(raw_details))
    except (ValueError, InvalidRequest) as exc:
        detail = exc.detail if isinstance(exc, InvalidRequest) else "not JSON"
        raise AuthorizationRefused("invalid_authorization_details", detail) from None
    decision = decide_request(rt.policy, client.id, details)
    if isinstance(decision, Deny):
        raise AuthorizationRefused(
            "invalid_authorization_details", f"{decision.code}: {decision.reason}"
        )
    return AuthorizationRequest(
        client=client,
        redirect_uri=redirect_uri,
        state=_one(params, "state"),
        code_challenge=challenge,
        details=details,
    )


async def authorize(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    query = request.query_params
    client_id = query.get("client_id", "")
    client = rt.policy.clients.get(client_id)
    if client is None or client.role != "service_provider":
        await _refused(rt, "authorize", "unknown_client")
        return error_page(request, 400, "unknown_client")

    params: Params = query
    if "request_uri" in query:
        # RFC 9126 §4: with a request_uri, the other parameters in the query are ignored.
        taken = await pushed.take(rt, client, query.getlist("request_uri"))
        if isinstance(taken, str):
            await _refused(rt, "authorize", taken, client_id=client.id)
            return error_page(request, 400, "request_uri")
        params = ImmutableMultiDict(taken)

    try:
        checked = check_request(rt, client, params)
    except AuthorizationRefused as refuse:
        if not refuse.redirectable:
            await _refused(rt, "authorize", "redirect_uri_not_registered", client_id=client.id)
            return error_page(request, 400, "redirect_uri")
        await _refused(rt, "authorize", refuse.error, client_id=client.id)
        back = {"error": refuse.error, "error_description": refuse.description}
        state = _one(params, "state")
        if state is not None:
            back["state"] = state
        back["iss"] = rt.settings.issuer
        redirect_uri = _one(params, "redirect_uri")
        return RedirectResponse(f"{redirect_uri}?{urlencode(back)}", status_code=303)

    # Bind the request to this browser: only it may open the consent page.
    flow = request.cookies.get(sessions.FLOW_COOKIE) or secrets.token_urlsafe(32)
    now = rt.now()

    async def create(tx: Tx) -> str:
        return await rt.consents.create_pending(
            tx,
            client_id=client.id,
            details=checked.details,
            redirect_uri=checked.redirect_uri,
            client_state=checked.state,
            code_challenge=checked.code_challenge,
            browser_binding=hashlib.sha256(flow.encode()).hexdigest(),
            expires_at=now + timedelta(seconds=rt.settings.authorization_request_lifetime_seconds),
        )

    consent_id = await rt.writer.run(create)
    response = RedirectResponse(f"/consent/{consent_id}", status_code=303)
    sessions.set_cookie(rt, response, sessions.FLOW_COOKIE, flow, FLOW_COOKIE_SECONDS)
    return response
