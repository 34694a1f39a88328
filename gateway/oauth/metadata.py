"""RFC 8414 authorization server metadata and the JWKS (DESIGN §4 "Discovery and keys")."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.jose import CLIENT_ALGS, jwks_document
from gateway.runtime import Runtime


def metadata_document(rt: Runtime) -> dict[str, Any]:
    issuer = rt.settings.issuer
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "pushed_authorization_request_endpoint": f"{issuer}/oauth/par",
        # RFC 9126 §5: plain authorization requests stay allowed.
        "require_pushed_authorization_requests": False,
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt"],
        "revocation_endpoint_auth_signing_alg_values_supported": list(CLIENT_ALGS),
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "scopes_supported": ["audit:read"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_ALGS),
        "code_challenge_methods_supported": ["S256"],
        "dpop_signing_alg_values_supported": list(CLIENT_ALGS),
        "authorization_details_types_supported": ["personal_data"],
        "authorization_response_iss_parameter_supported": True,
        "data_endpoint": f"{issuer}/data",
        "trail_endpoint": f"{issuer}/trail",
    }


async def metadata(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    return JSONResponse(metadata_document(rt), headers={"Cache-Control": "max-age=300"})


async def jwks(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    return JSONResponse(jwks_document(rt.keys.signing), headers={"Cache-Control": "max-age=300"})
