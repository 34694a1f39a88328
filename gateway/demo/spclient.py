"""A small service-provider client for the gateway: PKCE, private_key_jwt, DPoP, RAR.

Used by the demo service provider's web app, by ``gateway demo --scripted`` and
by the end-to-end tests. Every URL is built from the configured gateway issuer,
never taken from a server response, so a response cannot steer the client's
credentials elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import jwt

from gateway.jose import SigningKey, b64url_encode

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The gateway only needs the assertion for the one token request (RFC 7523 §3:
# the exp limits the time window; a minute is ample for a local round trip).
CLIENT_ASSERTION_LIFETIME_SECONDS = 60
# Provider and resource ids go into the URL path: only plain identifiers, so a
# caller cannot reach another gateway endpoint through them.
_PATH_SEGMENT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# The public members of a JWK per key type (RFC 7638 §3.2): the DPoP header
# carries these and nothing else (no kid, no private part).
_PUBLIC_JWK_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "OKP": ("kty", "crv", "x")}


class TokenError(Exception):
    """The token endpoint refused the exchange (RFC 6749 §5.2 body)."""

    def __init__(self, error: str, description: str, status: int) -> None:
        super().__init__(f"{error} ({status}): {description}")
        self.error = error
        self.description = description
        self.status = status


class AuthorizationError(Exception):
    """The authorization response was an error or did not match the request."""

    def __init__(self, error: str, description: str = "") -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Pkce:
    """A PKCE pair with the S256 method (RFC 7636 §4.1-4.2)."""

    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        # 48 random bytes give a 64-character verifier, inside the 43..128 range.
        verifier = secrets.token_urlsafe(48)
        challenge = b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
        return cls(verifier=verifier, challenge=challenge)


@dataclass(frozen=True)
class TokenGrant:
    """What the token endpoint granted: a DPoP-bound consent token and its consent."""

    # The access token is a credential: kept out of reprs and tracebacks.
    access_token: str = field(repr=False)
    expires_in: int
    consent_id: str
    authorization_details: list[dict[str, Any]]


class ServiceProviderClient:
    """A service provider's side of the gateway's OAuth and data API."""

    def __init__(
        self,
        *,
        client_id: str,
        signing_key: SigningKey,
        gateway_issuer: str,
        redirect_uri: str,
        http: httpx.AsyncClient,
        dpop_key: SigningKey | None = None,
    ) -> None:
        self.client_id = client_id
        self.gateway_issuer = gateway_issuer
        self.redirect_uri = redirect_uri
        self._signing_key = signing_key
        # A DPoP key separate from the signing key: the token is bound to it
        # (cnf.jkt), and it never appears in the client's published JWKS.
        self.dpop_key = dpop_key if dpop_key is not None else SigningKey.generate_es256()
        self._http = http
        base = gateway_issuer.rstrip("/")
        self.authorization_endpoint = f"{base}/oauth/authorize"
        self.token_endpoint = f"{base}/oauth/token"
        self._data_endpoint = f"{base}/data"

    def authorization_url(
        self, details: Sequence[Mapping[str, Any]], *, state: str, pkce: Pkce
    ) -> str:
        """The URL to send the person's browser to (RFC 6749 §4.1.1, RFC 9396 §2)."""
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "state": state,
            "code_challenge": pkce.challenge,
            "code_challenge_method": "S256",
            "authorization_details": json.dumps(
                [dict(item) for item in details], separators=(",", ":"), ensure_ascii=False
            ),
        }
        return f"{self.authorization_endpoint}?{urlencode(query)}"

    def client_assertion(self, *, now: float | None = None) -> str:
        """A private_key_jwt client assertion for the token endpoint (RFC 7523 §3)."""
        iat = int(time.time() if now is None else now)
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.gateway_issuer,
            "jti": secrets.token_urlsafe(24),
            "iat": iat,
            "exp": iat + CLIENT_ASSERTION_LIFETIME_SECONDS,
        }
        headers = {"typ": "JWT", "alg": self._signing_key.alg, "kid": self._signing_key.kid}
        return jwt.encode(
            claims, self._signing_key.private_key, algorithm=self._signing_key.alg, headers=headers
        )

    def dpop_proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        now: float | None = None,
    ) -> str:
        """A DPoP proof for one request (RFC 9449 §4.2)."""
        # RFC 9449 §4.2: htu is "the HTTP target URI ..., without query and fragment parts".
        parts = urlsplit(url)
        htu = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(24),
            "htm": method.upper(),
            "htu": htu,
            "iat": int(time.time() if now is None else now),
        }
        if access_token is not None:
            # RFC 9449 §4.2: ath is the base64url SHA-256 of the ASCII access token.
            claims["ath"] = b64url_encode(hashlib.sha256(access_token.encode("ascii")).digest())
        headers = {"typ": "dpop+jwt", "alg": self.dpop_key.alg, "jwk": self._dpop_public_jwk()}
        return jwt.encode(
            claims, self.dpop_key.private_key, algorithm=self.dpop_key.alg, headers=headers
        )

    async def exchange_code(self, code: str, pkce: Pkce) -> TokenGrant:
        """Exchange an authorization code for a DPoP-bound consent token."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": pkce.verifier,
            "client_id": self.client_id,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        response = await self._http.post(
            self.token_endpoint,
            data=form,
            headers={"DPoP": self.dpop_proof("POST", self.token_endpoint)},
            follow_redirects=False,
        )
        body = _json_object(response)
        if response.status_code != 200:
            error = body.get("error") if body is not None else None
            description = body.get("error_description") if body is not None else None
            raise TokenError(
                error if isinstance(error, str) else "invalid_response",
                description if isinstance(description, str) else "",
                response.status_code,
            )
        return _parse_grant(body, response.status_code)

    async def fetch(
        self,
        provider: str,
        resource: str,
        token: str,
        *,
        params: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> httpx.Response:
        """Ask the gateway for one resource; returns the raw response (data or problem)."""
        if not (_PATH_SEGMENT.fullmatch(provider) and _PATH_SEGMENT.fullmatch(resource)):
            raise ValueError("provider and resource must be plain identifiers")
        url = f"{self._data_endpoint}/{provider}/{resource}"
        headers = {
            "Authorization": f"DPoP {token}",
            "DPoP": self.dpop_proof("GET", url, access_token=token),
        }
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        return await self._http.get(
            url, params=dict(params or {}), headers=headers, follow_redirects=False
        )

    def jwks(self) -> dict[str, Any]:
        """The client's public JWKS: the signing key only, never the DPoP key."""
        return {"keys": [self._signing_key.public_jwk()]}

    @staticmethod
    def check_callback(params: Mapping[str, str], *, expected_state: str, issuer: str) -> str:
        """Check an authorization response and return its code.

        1. ``iss`` must equal the gateway issuer (RFC 9207 §2.4), on errors too,
           so a response from another server is never acted upon (mix-up attack).
        2. ``state`` must equal the one this browser was given (RFC 6749 §10.12).
        3. An ``error`` is reported as such (RFC 6749 §4.1.2.1).
        4. Otherwise a ``code`` must be present.
        """
        # (1)
        if params.get("iss") != issuer:
            raise AuthorizationError(
                "issuer_mismatch", "the response does not come from the gateway"
            )
        # (2)
        state = params.get("state")
        if state is None or not secrets.compare_digest(state.encode(), expected_state.encode()):
            raise AuthorizationError("state_mismatch", "the response does not match this request")
        # (3)
        error = params.get("error")
        if error is not None:
            raise AuthorizationError(error, params.get("error_description", ""))
        # (4)
        code = params.get("code")
        if not code:
            raise AuthorizationError("invalid_response", "the response carries no code")
        return code

    def _dpop_public_jwk(self) -> dict[str, Any]:
        jwk = self.dpop_key.public_jwk()
        return {name: jwk[name] for name in _PUBLIC_JWK_MEMBERS[jwk["kty"]]}


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _parse_grant(body: dict[str, Any] | None, status: int) -> TokenGrant:
    """Turn a token response into a grant, or refuse it (RFC 6749 §5.1, RFC 9449 §5)."""
    if body is None:
        raise TokenError("invalid_response", "the token response is not a JSON object", status)
    access_token = body.get("access_token")
    expires_in = body.get("expires_in")
    consent_id = body.get("consent_id")
    details = body.get("authorization_details")
    token_type = body.get("token_type")
    # RFC 9449 §5: a client that asked for DPoP must not use a token of another type.
    if not isinstance(token_type, str) or token_type.lower() != "dpop":
        raise TokenError("invalid_response", "the token is not DPoP-bound", status)
    if (
        not isinstance(access_token, str)
        or not access_token
        or not isinstance(expires_in, int)
        or isinstance(expires_in, bool)
        or not isinstance(consent_id, str)
        or not isinstance(details, list)
        or not all(isinstance(item, dict) for item in details)
    ):
        raise TokenError("invalid_response", "the token response is incomplete", status)
    return TokenGrant(
        access_token=access_token,
        expires_in=expires_in,
        consent_id=consent_id,
        authorization_details=details,
    )
