"""The person's login: an OpenID Connect relying party (authorization code + PKCE S256).

The gateway works with any OpenID provider that publishes Discovery metadata
(OpenID Connect Discovery 1.0). The only thing kept from a login is a
:class:`PersonIdentity`: who vouched (``issuer``), their subject, the eIDAS
level (``acr``) and the pivot identity claims. The id_token itself, the
person's names and birth date never reach a log line.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import jwt
import structlog

from gateway.errors import LoginFailed
from gateway.policy.model import ACR_LEVELS, IDENTITY_CLAIMS

logger = structlog.get_logger(__name__)

# Asymmetric algorithms only: a symmetric (HS*) id_token would be keyed with our
# client secret, and "none" is never acceptable (OIDC Core §3.1.3.7 items 6-7).
ALLOWED_ID_TOKEN_ALGS: frozenset[str] = frozenset({"ES256", "RS256", "PS256", "EdDSA"})

# Which algorithms each key type may verify, so that a key published for one
# algorithm can never be used with another ("alg confusion").
_ALGS_BY_KEY_TYPE: Mapping[tuple[str, str | None], frozenset[str]] = {
    ("EC", "P-256"): frozenset({"ES256"}),
    ("RSA", None): frozenset({"RS256", "PS256"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
}

# The id_token is redeemed seconds after the IdP minted it, so any slack only
# covers clock drift between the IdP and the gateway; one minute absorbs an
# NTP-synchronised pair without meaningfully stretching a 5-minute token.
ID_TOKEN_LEEWAY_SECONDS = 60

# Discovery documents, JWKS and token responses are small; refuse to buffer
# more than this from an IdP (a compromised or broken one must not exhaust memory).
MAX_IDP_RESPONSE_BYTES = 256 * 1024

# RFC 6749 error codes are ASCII words; anything else from the IdP is not echoed.
_OAUTH_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


@dataclass(frozen=True)
class PersonIdentity:
    """Who the identity provider says the person is."""

    issuer: str
    subject: str  # the IdP's sub
    acr: str | None  # eIDAS level as OIDC acr: eidas1 < eidas2 < eidas3; None if absent or unknown
    # Pivot identity claims (IDENTITY_CLAIMS) that the id_token carried; kept
    # out of repr so that a traceback or a stray log line shows no name.
    claims: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class LoginRequest:
    """The secrets of one login, kept in the person's server-side session between
    the redirect to the IdP and the callback."""

    state: str
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)

    def to_dict(self) -> dict[str, str]:
        return {"state": self.state, "nonce": self.nonce, "code_verifier": self.code_verifier}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> LoginRequest:
        """Rebuild from a session; a missing or damaged entry means no login is pending."""
        state, nonce, code_verifier = (d.get(name) for name in ("state", "nonce", "code_verifier"))
        if not (
            isinstance(state, str)
            and isinstance(nonce, str)
            and isinstance(code_verifier, str)
            and state
            and nonce
            and code_verifier
        ):
            raise LoginFailed("login_state_mismatch", "No login is pending in this session.")
        return cls(state=state, nonce=nonce, code_verifier=code_verifier)


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of an OpenID provider's Discovery document that the login uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    # client_secret_basic when offered (the Discovery default), else client_secret_post.
    basic_client_auth: bool
    iss_parameter_supported: bool  # RFC 9207 §3: the callback then MUST carry iss

    @classmethod
    def parse(cls, document: object, *, expected_issuer: str) -> ProviderMetadata:
        """Parse a Discovery document; anything unusable raises ``LoginFailed``."""
        if not isinstance(document, dict):
            raise _misconfigured("the discovery document is not a JSON object")
        # OIDC Discovery §4.3: the issuer value returned MUST be identical to
        # the Issuer URL that was used to retrieve the configuration.
        if document.get("issuer") != expected_issuer:
            raise _misconfigured("the discovery document names another issuer")
        endpoints = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(name)
            if not isinstance(value, str) or urlsplit(value).scheme not in {"http", "https"}:
                raise _misconfigured(f"{name} is missing or not an http(s) URL")
            endpoints[name] = value
        response_types = document.get("response_types_supported")
        if not isinstance(response_types, list) or "code" not in response_types:
            raise _misconfigured("the provider does not support the authorization code flow")
        pkce_methods = document.get("code_challenge_methods_supported")
        if pkce_methods is not None and (
            not isinstance(pkce_methods, list) or "S256" not in pkce_methods
        ):
            raise _misconfigured("the provider does not support PKCE S256")
        # OIDC Discovery §3: when omitted, the default is client_secret_basic.
        auth_methods = document.get(
            "token_endpoint_auth_methods_supported", ["client_secret_basic"]
        )
        if not isinstance(auth_methods, list):
            raise _misconfigured("token_endpoint_auth_methods_supported is not a list")
        if "client_secret_basic" not in auth_methods and "client_secret_post" not in auth_methods:
            raise _misconfigured("the provider offers no client secret authentication")
        return cls(
            issuer=expected_issuer,
            authorization_endpoint=endpoints["authorization_endpoint"],
            token_endpoint=endpoints["token_endpoint"],
            jwks_uri=endpoints["jwks_uri"],
            basic_client_auth="client_secret_basic" in auth_methods,
            iss_parameter_supported=document.get("authorization_response_iss_parameter_supported")
            is True,
        )


class OidcRelyingParty:
    """Logs a person in with one configured OpenID provider."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        http: httpx.AsyncClient,
        scope: str = "openid profile birth",
        acr_values: str | None = None,
    ) -> None:
        if "openid" not in scope.split():
            raise ValueError("the scope must contain 'openid'")
        self._issuer = issuer
        self._client_id = client_id
        self._client_secret = client_secret
        self._redirect_uri = redirect_uri
        self._http = http
        self._scope = scope
        self._acr_values = acr_values
        self._metadata: ProviderMetadata | None = None
        self._metadata_lock = asyncio.Lock()
        self._jwks: list[dict[str, Any]] | None = None

    async def begin(self) -> tuple[str, LoginRequest]:
        """Start a login: the authorization URL to redirect the browser to, and the
        secrets to keep in the session until the callback."""
        metadata = await self._provider_metadata()
        login = LoginRequest(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            # RFC 7636 §4.1: 43-128 unreserved characters; 64 bytes give 86.
            code_verifier=secrets.token_urlsafe(64),
        )
        params = {
            "response_type": "code",
            "client_id": self._client_id,
            "redirect_uri": self._redirect_uri,
            "scope": self._scope,
            "state": login.state,
            "nonce": login.nonce,
            "code_challenge": pkce_challenge(login.code_verifier),
            "code_challenge_method": "S256",
        }
        if self._acr_values:
            params["acr_values"] = self._acr_values
        logger.info("identity.login_started", issuer=self._issuer)
        return _with_query(metadata.authorization_endpoint, params), login

    async def complete(self, params: Mapping[str, str], login: LoginRequest) -> PersonIdentity:
        """Finish a login from the callback's query parameters.

        (1) an ``error`` from the IdP ends the login (cancelled or failed)
        (2) ``state`` must be the one this session sent
        (3) ``iss``, when sent or announced (RFC 9207), must be the IdP's
        (4) exchange the code at the token endpoint with the PKCE verifier
        (5) verify the id_token (see :func:`verify_id_token`), following a key rotation once
        """
        try:
            identity = await self._complete(params, login)
        except LoginFailed as failure:
            logger.info("identity.login_failed", issuer=self._issuer, code=failure.code)
            raise
        logger.info("identity.login_completed", issuer=self._issuer, acr=identity.acr)
        return identity

    async def _complete(self, params: Mapping[str, str], login: LoginRequest) -> PersonIdentity:
        # (1)
        error = params.get("error")
        if error is not None:
            if error == "access_denied":
                raise LoginFailed("login_cancelled", "The login was cancelled.")
            shown = error if _OAUTH_ERROR_CODE.fullmatch(error) else "unknown"
            raise LoginFailed("login_error", f"The identity provider refused the login ({shown}).")

        # (2) The state ties the callback to this browser's session (CSRF on the login).
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), login.state.encode()):
            raise LoginFailed("login_state_mismatch", "The login response is not for this session.")

        # (3) Mix-up defence: a response from another IdP must not be redeemed here.
        metadata = await self._provider_metadata()
        iss = params.get("iss")
        if (iss is not None or metadata.iss_parameter_supported) and iss != metadata.issuer:
            raise LoginFailed(
                "login_issuer_mismatch", "The login response comes from another identity provider."
            )

        code = params.get("code")
        if not code:
            raise LoginFailed("login_error", "The login response carries no code.")

        # (4)
        id_token = await self._redeem(metadata, code, login.code_verifier)

        # (5)
        key = await self._signing_key(id_token)
        return verify_id_token(
            id_token,
            key,
            issuer=metadata.issuer,
            client_id=self._client_id,
            nonce=login.nonce,
        )

    async def _provider_metadata(self) -> ProviderMetadata:
        # Fetched once per process; a failed fetch is not cached so the next login retries.
        async with self._metadata_lock:
            if self._metadata is None:
                url = f"{self._issuer}/.well-known/openid-configuration"
                document = await self._get_json(url)
                self._metadata = ProviderMetadata.parse(document, expected_issuer=self._issuer)
            return self._metadata

    async def _signing_key(self, id_token: str) -> dict[str, Any]:
        """The JWK named by the id_token's ``kid``; an unknown kid refetches the JWKS once."""
        kid = _header_kid(id_token)
        if self._jwks is not None:
            key = _find_key(self._jwks, kid)
            if key is not None:
                return key
        # First use, or the IdP has rotated its keys since we last looked.
        metadata = await self._provider_metadata()
        self._jwks = _parse_jwks(await self._get_json(metadata.jwks_uri))
        key = _find_key(self._jwks, kid)
        if key is None:
            raise LoginFailed("id_token_invalid", "The id_token is signed with an unknown key.")
        return key

    async def _redeem(self, metadata: ProviderMetadata, code: str, code_verifier: str) -> str:
        """Exchange the code for an id_token (RFC 6749 §4.1.3, RFC 7636 §4.5)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self._redirect_uri,
            "code_verifier": code_verifier,
        }
        headers = {"Accept": "application/json"}
        if metadata.basic_client_auth:
            # RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
            credentials = f"{_form_encode(self._client_id)}:{_form_encode(self._client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        else:
            form["client_id"] = self._client_id
            form["client_secret"] = self._client_secret
        status, body = await self._send(
            self._http.build_request("POST", metadata.token_endpoint, data=form, headers=headers)
        )
        document = _json_object(body)
        if status in {400, 401} and document is not None and isinstance(document.get("error"), str):
            error = document["error"]
            shown = error if _OAUTH_ERROR_CODE.fullmatch(error) else "unknown"
            raise LoginFailed("login_error", f"The identity provider refused the code ({shown}).")
        if status != 200 or document is None:
            raise _unavailable(f"the token endpoint answered {status}")
        id_token = document.get("id_token")
        if not isinstance(id_token, str):
            raise LoginFailed("id_token_invalid", "The token response carries no id_token.")
        return id_token

    async def _get_json(self, url: str) -> object:
        status, body = await self._send(
            self._http.build_request("GET", url, headers={"Accept": "application/json"})
        )
        document = _json_object(body)
        if status != 200 or document is None:
            raise _unavailable(f"{urlsplit(url).path or '/'} answered {status}")
        return document

    async def _send(self, request: httpx.Request) -> tuple[int, bytes]:
        """Send one request; never follows redirects, bounds the body, wraps network errors."""
        try:
            response = await self._http.send(request, stream=True, follow_redirects=False)
            try:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_IDP_RESPONSE_BYTES:
                        raise _unavailable("the identity provider sent an oversized answer")
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise _unavailable(type(exc).__name__) from exc
        return response.status_code, bytes(body)


def verify_id_token(
    id_token: str,
    key: Mapping[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str,
) -> PersonIdentity:
    """Verify an id_token against one JWK (OIDC Core §3.1.3.7); no I/O.

    (1) alg in ALLOWED_ID_TOKEN_ALGS and allowed for the key's type (and the key's own ``alg``)
    (2) signature
    (3) iss == issuer; aud contains client_id; exp and iat within ID_TOKEN_LEEWAY_SECONDS;
        sub and nonce present
    (4) azp == client_id when there are several audiences, or whenever azp is present
    (5) nonce == the one this login sent (replay defence)
    (6) acr read as an eIDAS level; only string IDENTITY_CLAIMS kept
    """
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError as exc:
        raise _invalid("it is not a JWS") from exc

    # (1)
    alg = header.get("alg")
    if alg not in ALLOWED_ID_TOKEN_ALGS:
        raise _invalid("its algorithm is not allowed")
    key_algs = _ALGS_BY_KEY_TYPE.get(
        (str(key.get("kty")), key.get("crv") if key.get("kty") != "RSA" else None), frozenset()
    )
    if alg not in key_algs or key.get("alg", alg) != alg:
        raise _invalid("its algorithm does not match the signing key")

    # (2) + (3) Every check is pinned, even where PyJWT's default already agrees.
    try:
        jwk = jwt.PyJWK(dict(key), algorithm=alg)
        claims = jwt.decode(
            id_token,
            key=jwk,
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            leeway=ID_TOKEN_LEEWAY_SECONDS,
            options={
                "verify_signature": True,
                "verify_iss": True,
                "verify_aud": True,
                "strict_aud": False,  # OIDC allows several audiences, checked with azp below
                "verify_exp": True,
                "verify_iat": True,
                "verify_nbf": True,
                "verify_sub": True,
                "require": ["iss", "sub", "aud", "exp", "iat", "nonce"],
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.PyJWTError as exc:
        raise _invalid(_describe(exc)) from exc

    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise _invalid("its subject is empty")

    # (4) OIDC Core §3.1.3.7 items 4-5.
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise _invalid("it was issued to another party (azp)")

    # (5)
    token_nonce = claims["nonce"]
    if not isinstance(token_nonce, str) or not hmac.compare_digest(
        token_nonce.encode(), nonce.encode()
    ):
        raise _invalid("its nonce is not the one this login sent")

    # (6)
    acr = claims.get("acr")
    if acr is not None and not isinstance(acr, str):
        raise _invalid("its acr is not a string")
    identity_claims = {
        name: value
        for name in IDENTITY_CLAIMS
        if isinstance(value := claims.get(name), str) and value
    }
    return PersonIdentity(
        issuer=issuer,
        subject=subject,
        acr=acr if acr in ACR_LEVELS else None,
        claims=MappingProxyType(identity_claims),
    )


def pkce_challenge(code_verifier: str) -> str:
    """RFC 7636 §4.2 S256: BASE64URL(SHA256(ASCII(code_verifier))) without padding."""
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _header_kid(id_token: str) -> str:
    try:
        kid = jwt.get_unverified_header(id_token).get("kid")
    except jwt.PyJWTError as exc:
        raise _invalid("it is not a JWS") from exc
    if not isinstance(kid, str) or not kid:
        raise _invalid("its header names no key (kid)")
    return kid


def _parse_jwks(document: object) -> list[dict[str, Any]]:
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise _misconfigured("the JWKS has no keys list")
    # Keys marked for encryption only are never used to verify a signature.
    return [k for k in keys if isinstance(k, dict) and k.get("use", "sig") == "sig"]


def _find_key(jwks: Sequence[dict[str, Any]], kid: str) -> dict[str, Any] | None:
    matches = [key for key in jwks if key.get("kid") == kid]
    if len(matches) > 1:
        # Ambiguous: picking one would let the token's header choose the key type.
        raise _invalid("several keys share its kid")
    return matches[0] if matches else None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` added to whatever query it already has."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _form_encode(value: str) -> str:
    return quote(value, safe="").replace("%20", "+")


def _describe(exc: jwt.PyJWTError) -> str:
    reasons: list[tuple[type[jwt.PyJWTError], str]] = [
        (jwt.ExpiredSignatureError, "it has expired"),
        (jwt.ImmatureSignatureError, "it is not valid yet"),
        (jwt.InvalidSignatureError, "its signature does not verify"),
        (jwt.InvalidIssuerError, "it was issued by another issuer"),
        (jwt.InvalidAudienceError, "it was issued to another client"),
        (jwt.MissingRequiredClaimError, "a required claim is missing"),
        (jwt.InvalidAlgorithmError, "its algorithm is not allowed"),
        (jwt.InvalidKeyError, "the signing key is unusable"),
        (jwt.PyJWKError, "the signing key is unusable"),
    ]
    for kind, reason in reasons:
        if isinstance(exc, kind):
            return reason
    return "it is malformed"


def _invalid(reason: str) -> LoginFailed:
    return LoginFailed(
        "id_token_invalid", f"The identity provider's id_token is invalid: {reason}."
    )


def _unavailable(reason: str) -> LoginFailed:
    return LoginFailed(
        "identity_provider_unavailable", f"The identity provider cannot be reached ({reason})."
    )


def _misconfigured(reason: str) -> LoginFailed:
    return LoginFailed(
        "identity_provider_misconfigured",
        f"The identity provider's metadata is unusable: {reason}.",
    )
