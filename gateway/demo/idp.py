"""A demo OpenID provider whose only users are the fictitious personas.

It is a real, minimal OpenID Connect provider (authorization code flow with
PKCE S256, Discovery, JWKS, userinfo) so that the gateway's login code runs
unchanged against it; it is mounted only in demo mode. Anyone who opens its
login page can be anybody on the persona list: it authenticates no one.

State (codes, access tokens) lives in this process only, which is enough for a
single-process demo.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from jinja2 import DictLoader, Environment
from jwt.algorithms import ECAlgorithm
from starlette.applications import Starlette
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.demo.personas import PERSONAS, Persona
from gateway.errors import OAuthError

logger = structlog.get_logger(__name__)

# RFC 6749 §4.1.2 recommends at most 10 minutes; one is plenty for a redirect.
CODE_LIFETIME_SECONDS = 60
ID_TOKEN_LIFETIME_SECONDS = 300
ACCESS_TOKEN_LIFETIME_SECONDS = 300
# Request parameters are echoed into the login page; bound what a link can make it carry.
MAX_PARAMETER_LENGTH = 1024

# Which claims each scope releases, as FranceConnect groups them.
_SCOPE_CLAIMS: Mapping[str, tuple[str, ...]] = {
    "profile": ("given_name", "family_name", "birthdate", "gender"),
    "birth": ("birthplace", "birthcountry"),
    **{claim: (claim,) for claim in ("given_name", "family_name", "birthdate", "gender")},
    **{claim: (claim,) for claim in ("birthplace", "birthcountry")},
}

_ACR_LABELS: Mapping[str, str] = {
    "eidas1": "eIDAS faible / low",
    "eidas2": "eIDAS substantiel / substantial",
    "eidas3": "eIDAS élevé / high",
}

# RFC 7636 §4.1 (verifier) and §4.2 (an S256 challenge is 32 bytes in base64url).
_CODE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")

# Hidden fields that carry the authorization request through the login form.
_AUTHORIZATION_PARAMETERS = (
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
)

_TEMPLATES = {
    "layout.html": """<!doctype html>
<html lang="fr">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %} — DÉMO / DEMO</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 44rem; margin: 0 auto; padding: 1rem; }
.banner { background: #b00020; color: #fff; font-size: 1.6rem; font-weight: bold;
          padding: 1rem; text-align: center; border-radius: .3rem; }
.banner small { display: block; font-size: 1rem; font-weight: normal; }
fieldset { border: 1px solid #999; border-radius: .3rem; }
label { display: block; padding: .6rem; margin: .4rem 0; border: 1px solid #ccc;
        border-radius: .3rem; }
.meta { color: #444; font-size: .9rem; }
button { font-size: 1.1rem; padding: .5rem 1.2rem; margin: .5rem .5rem 0 0; }
</style>
</head>
<body>
<div class="banner" role="alert">DÉMO — personnes fictives uniquement<br>
DEMO — fictitious personas only
<small>Ce fournisseur d'identité n'authentifie personne. Ne l'utilisez jamais pour
de vraies personnes. / This identity provider authenticates no one. Never use it
for real people.</small></div>
{% block body %}{% endblock %}
</body>
</html>
""",
    "login.html": """{% extends "layout.html" %}
{% block title %}Connexion / Log in{% endblock %}
{% block body %}
<h1>Choisissez une personne fictive / Choose a fictitious persona</h1>
<form method="post" action="{{ action }}">
{% for name, value in hidden %}<input type="hidden" name="{{ name }}" value="{{ value }}">
{% endfor %}<fieldset>
<legend>Personnes fictives / Fictitious personas</legend>
{% for persona in personas %}<label><input type="radio" name="persona" value="{{ persona.key }}"
 required{% if loop.first %} checked{% endif %}>
<strong>{{ persona.given_name }} {{ persona.family_name }}</strong>
<span class="meta">— {{ persona.birthdate }} — {{ acr_labels[persona.acr] }}</span><br>
<span lang="fr">{{ persona.description_fr }}</span><br>
<span lang="en">{{ persona.description_en }}</span></label>
{% endfor %}</fieldset>
<button type="submit">Se connecter / Log in</button>
<button type="submit" name="cancel" value="1" formnovalidate>Annuler / Cancel</button>
</form>
{% endblock %}
""",
    "error.html": """{% extends "layout.html" %}
{% block title %}Erreur / Error{% endblock %}
{% block body %}
<h1>Demande refusée / Request refused</h1>
<p>{{ message }}</p>
{% endblock %}
""",
}


class _PageError(Exception):
    """A request we cannot answer by redirecting (unknown client or redirect URI)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _RedirectError(Exception):
    """An authorization error reported to the client's redirect URI (RFC 6749 §4.1.2.1)."""

    def __init__(self, redirect_uri: str, state: str | None, error: str, description: str):
        super().__init__(f"{error}: {description}")
        self.redirect_uri = redirect_uri
        self.state = state
        self.error = error
        self.description = description


@dataclass(frozen=True)
class _Client:
    secret: str
    redirect_uris: tuple[str, ...]


@dataclass(frozen=True)
class _AuthorizationRequest:
    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    state: str
    nonce: str
    code_challenge: str


@dataclass(frozen=True)
class _Grant:
    request: _AuthorizationRequest
    persona: Persona
    expires_at: float


@dataclass(frozen=True)
class _AccessToken:
    persona: Persona
    scope: tuple[str, ...]
    expires_at: float


def demo_subject(persona: Persona) -> str:
    """A stable, opaque ``sub`` for a persona: derived from its key, never its name."""
    return hashlib.sha256(f"gateway-demo-idp/{persona.key}".encode()).hexdigest()[:32]


class DemoIdentityProvider:
    """DEMO ONLY: an OpenID provider that logs anyone in as a fictitious persona."""

    def __init__(
        self,
        *,
        issuer: str,
        clients: Mapping[str, tuple[str, Sequence[str]]],
        signing_key: ec.EllipticCurvePrivateKey,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(signing_key.curve, ec.SECP256R1):
            raise ValueError("the demo identity provider signs with ES256: use a P-256 key")
        self._issuer = issuer.rstrip("/")
        self._clients: dict[str, _Client] = {}
        for client_id, (secret, redirect_uris) in clients.items():
            if not secret:
                raise ValueError(f"client {client_id!r} needs a non-empty secret")
            for uri in redirect_uris:
                parts = urlsplit(uri)
                if parts.scheme not in {"http", "https"} or not parts.netloc or parts.fragment:
                    raise ValueError(
                        f"redirect URI {uri!r} must be absolute http(s) without fragment"
                    )
            self._clients[client_id] = _Client(secret, tuple(redirect_uris))
        self._signing_key = signing_key
        public_jwk: dict[str, Any] = ECAlgorithm.to_jwk(signing_key.public_key(), as_dict=True)
        self._kid = _jwk_thumbprint(public_jwk)
        self._jwks = {"keys": [{**public_jwk, "kid": self._kid, "use": "sig", "alg": "ES256"}]}
        self._clock = clock
        self._codes: dict[str, _Grant] = {}
        # Redeemed code -> the access token it produced, so a replay can revoke it.
        self._redeemed: dict[str, tuple[str, float]] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._templates = Environment(loader=DictLoader(_TEMPLATES), autoescape=True)
        # Chrome applies form-action to the redirect that follows the form post,
        # so the clients' origins must be allowed alongside our own.
        origins = sorted(
            {
                f"{urlsplit(uri).scheme}://{urlsplit(uri).netloc}"
                for client in self._clients.values()
                for uri in client.redirect_uris
            }
        )
        form_action = " ".join(["'self'", *origins])
        self._csp = (
            "default-src 'none'; style-src 'unsafe-inline'; "
            f"form-action {form_action}; frame-ancestors 'none'"
        )
        self._app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._discovery, methods=["GET"]),
                Route("/jwks", self._jwks_endpoint, methods=["GET"]),
                Route("/authorize", self._authorize, methods=["GET", "POST"]),
                Route("/token", self._token, methods=["POST"]),
                Route("/userinfo", self._userinfo, methods=["GET", "POST"]),
            ]
        )
        logger.warning(
            "demo_identity_provider.enabled",
            message=(
                "This is a DEMO identity provider with fictitious personas: it authenticates "
                "no one and must never be used with real people."
            ),
            issuer=self._issuer,
        )

    @property
    def app(self) -> Starlette:
        """The ASGI app, with routes relative to the issuer URL."""
        return self._app

    # -- metadata ---------------------------------------------------------------

    async def _discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self._issuer,
                "authorization_endpoint": f"{self._issuer}/authorize",
                "token_endpoint": f"{self._issuer}/token",
                "userinfo_endpoint": f"{self._issuer}/userinfo",
                "jwks_uri": f"{self._issuer}/jwks",
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": ["authorization_code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": ["openid", *_SCOPE_CLAIMS],
                "claims_supported": [
                    "sub",
                    "acr",
                    "amr",
                    *_SCOPE_CLAIMS["profile"],
                    "birthplace",
                    "birthcountry",
                ],
                "acr_values_supported": list(_ACR_LABELS),
                "authorization_response_iss_parameter_supported": True,
            }
        )

    async def _jwks_endpoint(self, request: Request) -> Response:
        return JSONResponse(self._jwks)

    # -- authorization endpoint (RFC 6749 §4.1.1) -------------------------------

    async def _authorize(self, request: Request) -> Response:
        if request.method == "GET":
            params: ImmutableMultiDict[str, Any] = request.query_params
        else:
            params = await request.form(max_files=0, max_fields=len(_AUTHORIZATION_PARAMETERS) + 2)
        try:
            authorization = self._parse_authorization(params)
            if request.method == "GET":
                return self._page(
                    "login.html",
                    action=f"{self._issuer}/authorize",
                    hidden=[(name, _single(params, name)) for name in _AUTHORIZATION_PARAMETERS],
                    personas=list(PERSONAS.values()),
                    acr_labels=_ACR_LABELS,
                )
            if _single(params, "cancel") is not None:
                raise _RedirectError(
                    authorization.redirect_uri,
                    authorization.state,
                    "access_denied",
                    "the person cancelled the login",
                )
            persona = PERSONAS.get(_single(params, "persona") or "")
            if persona is None:
                return self._page(
                    "error.html", status=400, message="Personne inconnue. / Unknown persona."
                )
        except _PageError as error:
            return self._page("error.html", status=400, message=error.message)
        except _RedirectError as error:
            return self._redirect(
                error.redirect_uri,
                {"error": error.error, "error_description": error.description},
                state=error.state,
            )

        now = self._clock()
        self._prune(now)
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Grant(authorization, persona, now + CODE_LIFETIME_SECONDS)
        return self._redirect(authorization.redirect_uri, {"code": code}, state=authorization.state)

    def _parse_authorization(self, params: ImmutableMultiDict[str, Any]) -> _AuthorizationRequest:
        try:
            client_id = _single(params, "client_id")
            redirect_uri = _single(params, "redirect_uri")
        except ValueError as exc:
            raise _PageError("Paramètre répété. / Repeated parameter.") from exc
        client = self._clients.get(client_id) if client_id is not None else None
        if client_id is None or client is None:
            raise _PageError("Client inconnu. / Unknown client.")
        # RFC 6749 §4.1.2.1: never redirect to an unverified URI; exact match only.
        if redirect_uri is None or redirect_uri not in client.redirect_uris:
            raise _PageError(
                "Adresse de retour non enregistrée pour ce client. / "
                "Redirect URI not registered for this client."
            )

        try:
            values = {name: _single(params, name) for name in _AUTHORIZATION_PARAMETERS}
        except ValueError as exc:
            raise _RedirectError(redirect_uri, None, "invalid_request", str(exc)) from exc
        state = values["state"]

        def refuse(error: str, description: str) -> _RedirectError:
            return _RedirectError(redirect_uri, state, error, description)

        if any(
            value is not None and len(value) > MAX_PARAMETER_LENGTH for value in values.values()
        ):
            raise refuse("invalid_request", "a parameter is too long")
        if values["response_type"] != "code":
            raise refuse("unsupported_response_type", "only response_type=code is supported")
        scope = tuple((values["scope"] or "").split())
        if "openid" not in scope:
            raise refuse("invalid_scope", "the scope must contain openid")
        if unknown := [s for s in scope if s != "openid" and s not in _SCOPE_CLAIMS]:
            raise refuse("invalid_scope", f"unknown scope {unknown[0]!r}")
        if not state:
            raise refuse("invalid_request", "state is required")
        nonce = values["nonce"]
        if not nonce:
            raise refuse("invalid_request", "nonce is required")
        # PKCE is mandatory and only S256 is accepted (RFC 7636 §4.4.1, FAPI 2.0).
        challenge = values["code_challenge"]
        if values["code_challenge_method"] != "S256" or not challenge:
            raise refuse("invalid_request", "PKCE with code_challenge_method=S256 is required")
        if not _S256_CHALLENGE.fullmatch(challenge):
            raise refuse("invalid_request", "code_challenge is not an S256 challenge")
        return _AuthorizationRequest(client_id, redirect_uri, scope, state, nonce, challenge)

    # -- token endpoint (RFC 6749 §4.1.3, RFC 7636 §4.6) ------------------------

    async def _token(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=20)
        try:
            client_id = self._authenticate(request, form)
            return self._exchange(form, client_id)
        except OAuthError as error:
            headers = {"Cache-Control": "no-store"}
            if error.status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="demo-idp"'
            return JSONResponse(error.body(), status_code=error.status, headers=headers)

    def _authenticate(self, request: Request, form: ImmutableMultiDict[str, Any]) -> str:
        """client_secret_basic or client_secret_post, never both (RFC 6749 §2.3)."""
        posted_id = _form_value(form, "client_id")
        posted_secret = _form_value(form, "client_secret")
        header = request.headers.get("authorization")
        if header is not None:
            if posted_secret is not None:
                raise OAuthError("invalid_request", "use one client authentication method")
            scheme, _, encoded = header.partition(" ")
            try:
                if scheme.lower() != "basic":
                    raise ValueError(scheme)
                decoded = base64.b64decode(encoded.strip(), validate=True).decode()
            except (ValueError, binascii.Error) as exc:
                raise OAuthError("invalid_client", "malformed Basic credentials", 401) from exc
            raw_id, separator, raw_secret = decoded.partition(":")
            if not separator:
                raise OAuthError("invalid_client", "malformed Basic credentials", 401)
            # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            if posted_id is not None and posted_id != client_id:
                raise OAuthError("invalid_request", "client_id does not match the credentials")
        elif posted_id is not None and posted_secret is not None:
            client_id, secret = posted_id, posted_secret
        else:
            raise OAuthError("invalid_client", "client authentication is required", 401)
        client = self._clients.get(client_id)
        if client is None or not hmac.compare_digest(secret.encode(), client.secret.encode()):
            raise OAuthError("invalid_client", "client authentication failed", 401)
        return client_id

    def _exchange(self, form: ImmutableMultiDict[str, Any], client_id: str) -> Response:
        if _form_value(form, "grant_type") != "authorization_code":
            raise OAuthError("unsupported_grant_type", "only authorization_code is supported")
        code = _form_value(form, "code")
        if not code:
            raise OAuthError("invalid_request", "code is required")
        now = self._clock()
        # Popped before any other check: a code is spent by its first use, even a failed one.
        grant = self._codes.pop(code, None)
        if grant is None:
            # RFC 6749 §4.1.2: on a second use, SHOULD revoke what the first one produced.
            redeemed = self._redeemed.pop(code, None)
            if redeemed is not None:
                self._access_tokens.pop(redeemed[0], None)
            raise OAuthError("invalid_grant", "the code is unknown, expired or already used")
        if grant.expires_at <= now:
            raise OAuthError("invalid_grant", "the code is unknown, expired or already used")
        if grant.request.client_id != client_id:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if _form_value(form, "redirect_uri") != grant.request.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization")
        verifier = _form_value(form, "code_verifier") or ""
        if not _CODE_VERIFIER.fullmatch(verifier) or not hmac.compare_digest(
            _s256(verifier).encode(), grant.request.code_challenge.encode()
        ):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")

        self._prune(now)
        access_token = secrets.token_urlsafe(32)
        self._access_tokens[access_token] = _AccessToken(
            grant.persona, grant.request.scope, now + ACCESS_TOKEN_LIFETIME_SECONDS
        )
        self._redeemed[code] = (access_token, now + ACCESS_TOKEN_LIFETIME_SECONDS)
        id_token = self._id_token(grant, now)
        return JSONResponse(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": ACCESS_TOKEN_LIFETIME_SECONDS,
                "scope": " ".join(grant.request.scope),
                "id_token": id_token,
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},  # RFC 6749 §5.1
        )

    def _id_token(self, grant: _Grant, now: float) -> str:
        issued_at = int(now)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": demo_subject(grant.persona),
            "aud": grant.request.client_id,
            "exp": issued_at + ID_TOKEN_LIFETIME_SECONDS,
            "iat": issued_at,
            "auth_time": issued_at,
            "nonce": grant.request.nonce,
            "acr": grant.persona.acr,
            "amr": ["pwd"],
            **_released_claims(grant.persona, grant.request.scope),
        }
        return jwt.encode(claims, self._signing_key, algorithm="ES256", headers={"kid": self._kid})

    # -- userinfo (OIDC Core §5.3) ----------------------------------------------

    async def _userinfo(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return Response(
                status_code=401, headers={"WWW-Authenticate": 'Bearer realm="demo-idp"'}
            )
        granted = self._access_tokens.get(token.strip())
        if granted is None or granted.expires_at <= self._clock():
            return Response(
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="demo-idp", error="invalid_token"'},
            )
        return JSONResponse(
            {
                "sub": demo_subject(granted.persona),
                **_released_claims(granted.persona, granted.scope),
            },
            headers={"Cache-Control": "no-store"},
        )

    # -- helpers ----------------------------------------------------------------

    def _page(self, name: str, *, status: int = 200, **context: Any) -> Response:
        html = self._templates.get_template(name).render(**context)
        return HTMLResponse(
            html,
            status_code=status,
            headers={
                "Content-Security-Policy": self._csp,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )

    def _redirect(
        self, redirect_uri: str, params: Mapping[str, str], *, state: str | None
    ) -> Response:
        response_params = dict(params)
        if state is not None:
            response_params["state"] = state
        response_params["iss"] = self._issuer  # RFC 9207 §2
        parts = urlsplit(redirect_uri)
        query = parse_qsl(parts.query, keep_blank_values=True) + list(response_params.items())
        location = urlunsplit(parts._replace(query=urlencode(query)))
        return RedirectResponse(
            location, status_code=303, headers={"Referrer-Policy": "no-referrer"}
        )

    def _prune(self, now: float) -> None:
        """Forget expired codes and tokens, so that memory stays bounded."""
        for code in [c for c, grant in self._codes.items() if grant.expires_at <= now]:
            del self._codes[code]
        for code in [c for c, (_, until) in self._redeemed.items() if until <= now]:
            del self._redeemed[code]
        for token in [t for t, granted in self._access_tokens.items() if granted.expires_at <= now]:
            del self._access_tokens[token]


def _single(params: ImmutableMultiDict[str, Any], name: str) -> str | None:
    """One parameter's value; RFC 6749 §3.1 forbids sending a parameter twice."""
    values = params.getlist(name)
    if len(values) > 1:
        raise ValueError(f"{name} is repeated")
    if not values or not isinstance(values[0], str):
        return None
    return values[0]


def _form_value(form: ImmutableMultiDict[str, Any], name: str) -> str | None:
    try:
        return _single(form, name)
    except ValueError as exc:
        raise OAuthError("invalid_request", str(exc)) from exc


def _released_claims(persona: Persona, scope: Sequence[str]) -> dict[str, str]:
    wanted = {claim for s in scope for claim in _SCOPE_CLAIMS.get(s, ())}
    return {name: value for name, value in persona.identity_claims().items() if name in wanted}


def _s256(code_verifier: str) -> str:
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint of an EC public key: the kid changes whenever the key does."""
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
