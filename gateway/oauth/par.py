"""``POST /oauth/par``: pushed authorization requests (RFC 9126).

Checks, in order:

    (1) the client: private_key_jwt (RFC 7523) with a single-use jti, exactly as
        at the token endpoint (RFC 9126 §2: "the same rules for client
        authentication as ... the token endpoint"); a ``client_id`` in the body
        must be that client
    (2) it is a service provider
    (3) the parameters: the same check as a plain authorization request
        (:func:`gateway.oauth.authorize.check_request`); an unregistered
        redirect URI is ``invalid_request`` (RFC 9126 §2.3)
    (4) store them; answer 201 ``{request_uri, expires_in}`` (RFC 9126 §2.2)

Errors are RFC 6749 bodies; each leaves a ``request.refused`` trail entry
with endpoint ``par``. A ``DPoP`` header, if sent, is ignored: the token is
bound at the token endpoint.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import OAuthError
from gateway.oauth import pushed
from gateway.oauth.authorize import AUTHORIZATION_PARAMETERS, AuthorizationRefused, check_request
from gateway.oauth.token import NO_STORE, authenticate_client, oauth_error
from gateway.runtime import Runtime
from gateway.trail import EventType, TrailEvent

PAR_PATH = "/oauth/par"


async def par(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    client_id: str | None = None
    try:
        form = await request.form()
        # (1) the client
        client = await authenticate_client(rt, form, rt.now(), endpoint=PAR_PATH)
        client_id = client.id
        # (2) a service provider
        if client.role != "service_provider":
            raise OAuthError("unauthorized_client", "only service providers push requests")
        # (3) the same validation as GET /oauth/authorize
        try:
            checked = check_request(rt, client, form)
        except AuthorizationRefused as refused:
            raise OAuthError(refused.error, refused.description) from None
        # (4) store what was checked, nothing else
        params = {
            name: value
            for name in AUTHORIZATION_PARAMETERS
            if isinstance(value := form.get(name), str)
        }
        request_uri = await pushed.push(rt, checked.client, params)
    except OAuthError as exc:
        await rt.record(
            TrailEvent(
                EventType.REQUEST_REFUSED,
                client_id=client_id,
                details={"endpoint": "par", "code": exc.error},
            )
        )
        return oauth_error(exc)
    return JSONResponse(
        {"request_uri": request_uri, "expires_in": pushed.REQUEST_URI_LIFETIME_SECONDS},
        status_code=201,
        headers=NO_STORE,
    )
