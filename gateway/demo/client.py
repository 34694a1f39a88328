"""The demo service provider: "Mairie de Démoville", checking family-benefit eligibility.

A small server-rendered web app on top of :class:`ServiceProviderClient`. It asks
the gateway for one transfer from each provider (CNAF quotient familial, DGFiP
revenu fiscal de référence), shows what came back with the consent id and
Transfer-Id, and lets the visitor ask again with the same token to see the
gateway refuse a consent that is used up. Sessions live in process memory: this
is a demonstration, not a template for production. Tokens and data are never logged.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jinja2
import jwt
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.demo.spclient import (
    AuthorizationError,
    Pkce,
    ServiceProviderClient,
    TokenError,
    TokenGrant,
)
from gateway.jose import TOKEN_ALGS, SigningKey, public_keys_from_jwks

logger = structlog.get_logger(__name__)

PURPOSE = "family-benefit-eligibility"
SESSION_COOKIE = "demo_sp_session"
# A visitor has this long between starting and coming back, and to ask again.
SESSION_LIFETIME_SECONDS = 1800
# Bound the in-memory store so that a crawler hitting /start cannot grow it forever.
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class _Notice:
    received: str
    consent_id: str
    state: str
    reason: str
    jti: str


@dataclass(frozen=True)
class _Ask:
    """One resource the town hall asks for, with how it shows it."""

    provider: str
    provider_name: str
    resource: str
    label_fr: str
    label_en: str
    params: Mapping[str, str]


# Per-transfer consent: one transfer from each provider, never more.
_ASKS = (
    _Ask(
        provider="cnaf",
        provider_name="CNAF (Caisse nationale des allocations familiales)",
        resource="quotient_familial",
        label_fr="Quotient familial (janvier 2025)",
        label_en="Family quotient (January 2025)",
        # Two digits: the CNAF policy only lets "01".."12" through.
        params={"annee": "2025", "mois": "01"},
    ),
    _Ask(
        provider="dgfip",
        provider_name="DGFiP (Direction générale des Finances publiques)",
        resource="revenu_fiscal",
        label_fr="Revenu fiscal de référence (revenus 2024)",
        label_en="Reference tax income (2024 income)",
        params={"annee": "2024"},
    ),
)


# Two transfers per provider: one when the person comes back, one more if they
# press "fetch again" — so the demo can show a consent still active, its
# revocation on "my data", and the refusal that follows.
DEMO_MAX_TRANSFERS = 2


def authorization_details(max_transfers: int = DEMO_MAX_TRANSFERS) -> list[dict[str, Any]]:
    """The RAR request (RFC 9396): one item per provider."""
    return [
        {
            "type": "personal_data",
            "provider": ask.provider,
            "resources": [ask.resource],
            "purpose": PURPOSE,
            "max_transfers": max_transfers,
        }
        for ask in _ASKS
    ]


@dataclass
class _Session:
    created: float
    state: str | None = None
    pkce: Pkce | None = None
    grant: TokenGrant | None = None


@dataclass(frozen=True)
class _TransferView:
    """What one data request returned, ready to render."""

    ask: _Ask
    status: int
    transfer_id: str | None
    request_id: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    problem: dict[str, str] | None = None


_BASE = """<!doctype html>
<html lang="fr">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}Mairie de Démoville (démonstration){% endblock %}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
       color: #1e1e1e; line-height: 1.5; }
header { border-bottom: 3px solid #000091; margin-bottom: 1.5rem; }
header p { color: #555; margin-top: 0; }
.en { color: #444; }
.demo { background: #fff4d6; padding: .5rem .75rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; vertical-align: top; }
code { font-size: .9em; }
.refused { border-left: 4px solid #ce0500; padding-left: .75rem; }
.ok { border-left: 4px solid #18753c; padding-left: .75rem; }
button { background: #000091; color: #fff; border: 0; padding: .6rem 1rem; font-size: 1rem;
         cursor: pointer; }
</style>
</head>
<body>
<header>
<h1>Mairie de Démoville</h1>
<p>Démonstration – données fictives · Demonstration – fictitious data</p>
</header>
{% block content %}{% endblock %}
</body>
</html>
"""

_HOME = """{% extends "base.html" %}
{% block content %}
<h2>Aide aux familles : vérifier votre éligibilité</h2>
<p>Pour savoir si votre foyer peut recevoir l'aide aux familles de la commune, la mairie
a besoin, avec votre accord, de deux informations :</p>
<ul>
{% for ask in asks %}<li><strong>{{ ask.label_fr }}</strong>, auprès de {{ ask.provider_name }}</li>
{% endfor %}
</ul>
<p>Vous vous identifierez, puis la passerelle de consentement vous montrera, sur une seule
page, ce que chaque organisme transmettrait. Votre accord vaut pour <strong>deux transmissions
au plus</strong> par organisme : au-delà, la mairie ne pourra pas redemander ces données sans
vous, et vous pourrez retirer votre accord à tout moment sur « Mes données ».</p>
<div class="en">
<h2>Family support: check your eligibility</h2>
<p>To know whether your household can receive the town's family support, the town hall
needs, with your consent, two pieces of information:</p>
<ul>
{% for ask in asks %}<li><strong>{{ ask.label_en }}</strong>, from {{ ask.provider_name }}</li>
{% endfor %}
</ul>
<p>You will log in, then the consent gateway will show you, on one page, what each
organisation would send. Your consent covers <strong>at most two transfers</strong> per
organisation: beyond that the town hall cannot ask for this data again without you, and you
can revoke your consent at any time on "My data".</p>
</div>
<form method="post" action="/start">
<button type="submit">Vérifier mon éligibilité / Check my eligibility</button>
</form>
<h2>Avis reçus de la passerelle / Notices received from the gateway</h2>
{% if notices %}
<table>
<tr><th>Reçu / Received</th><th>Consentement / Consent</th>
<th>Événement / Event</th><th>Motif / Reason</th></tr>
{% for n in notices %}<tr><td>{{ n.received }}</td><td>{{ n.consent_id }}</td>
<td>{{ n.state }}</td><td>{{ n.reason }}</td></tr>
{% endfor %}
</table>
{% else %}
<p>Aucun avis pour l'instant : la passerelle en envoie un quand une personne retire son
consentement ou qu'il expire. / None yet: the gateway sends one when a person revokes a
consent or when it expires.</p>
{% endif %}
{% endblock %}
"""

_RESULTS = """{% extends "base.html" %}
{% block content %}
{% if again %}
<h2>Nouvelle demande avec le même jeton</h2>
<p class="en">Second request with the same token. Each consent allowed one transfer:
the gateway should now refuse, and say why.</p>
{% else %}
<h2>Données reçues</h2>
<p class="en">Data received. Only the fields released for this purpose reach the town hall;
everything else the providers hold stays with them.</p>
{% endif %}
<p>Consentement / Consent: <code>{{ consent_id }}</code></p>
{% for t in transfers %}
<section class="{{ 'ok' if t.problem is none else 'refused' }}">
<h3>{{ t.ask.label_fr }} <span class="en">/ {{ t.ask.label_en }}</span></h3>
<p>{{ t.ask.provider_name }} · HTTP {{ t.status }}<br>
Transfer-Id: <code>{{ t.transfer_id or "—" }}</code> ·
X-Request-ID: <code>{{ t.request_id }}</code></p>
{% if t.problem is none %}
<table>
<tr><th>Champ / Field</th><th>Valeur / Value</th></tr>
{% for name, value in t.rows %}<tr><td><code>{{ name }}</code></td><td>{{ value }}</td></tr>
{% endfor %}
</table>
{% else %}
<p><strong>Refus de la passerelle / Gateway refusal:</strong> {{ t.problem.title }}</p>
<table>
{% for name, value in t.problem.items() %}
<tr><th>{{ name }}</th><td><code>{{ value }}</code></td></tr>
{% endfor %}
</table>
{% endif %}
</section>
{% endfor %}
<form method="post" action="/again">
<button type="submit">Redemander les données / Fetch again</button>
</form>
<p><a href="/">Recommencer / Start over</a></p>
{% endblock %}
"""

_REFUSED = """{% extends "base.html" %}
{% block content %}
<h2>Vous avez refusé ; rien n'a été partagé.</h2>
<p class="en">You refused; nothing was shared.</p>
<p>La mairie n'a reçu aucune donnée. Vous pouvez recommencer quand vous voulez.
<span class="en">The town hall received no data. You may start again at any time.</span></p>
<p><a href="/">Retour / Back</a></p>
{% endblock %}
"""

_ERROR = """{% extends "base.html" %}
{% block content %}
<h2>{{ title_fr }}</h2>
<p class="en">{{ title_en }}</p>
{% if detail %}<p>Détail / Detail: <code>{{ detail }}</code></p>{% endif %}
<p><a href="/">Recommencer / Start over</a></p>
{% endblock %}
"""

_TEMPLATES = jinja2.Environment(
    loader=jinja2.DictLoader(
        {
            "base.html": _BASE,
            "home.html": _HOME,
            "results.html": _RESULTS,
            "refused.html": _REFUSED,
            "error.html": _ERROR,
        }
    ),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


class DemoServiceProvider:
    """The demo town hall's web app, a client of the gateway."""

    def __init__(
        self,
        *,
        gateway_issuer: str,
        base_url: str = "http://127.0.0.1:8090",
        client_id: str = "mairie-demoville",
        signing_key: SigningKey,
        http: httpx.AsyncClient,
    ) -> None:
        base = base_url.rstrip("/")
        self.gateway_issuer = gateway_issuer
        self.client = ServiceProviderClient(
            client_id=client_id,
            signing_key=signing_key,
            gateway_issuer=gateway_issuer,
            redirect_uri=f"{base}/callback",
            http=http,
        )
        self._secure_cookie = urlsplit(base).scheme == "https"
        self._sessions: dict[str, _Session] = {}
        self._http = http
        # Revocation notices received (RFC 8935), newest last; jtis seen, for deduplication.
        self.notices: list[_Notice] = []
        self._seen_notices: set[str] = set()
        gateway = urlsplit(gateway_issuer)
        # The /start form redirects to the gateway: browsers check form-action on that hop.
        self._csp = (
            "default-src 'none'; style-src 'unsafe-inline'; "
            f"form-action 'self' {gateway.scheme}://{gateway.netloc}; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        self._app = Starlette(
            routes=[
                Route("/", self._home, methods=["GET"]),
                Route("/start", self._start, methods=["GET", "POST"]),
                Route("/callback", self._callback, methods=["GET"]),
                Route("/again", self._again, methods=["POST"]),
                Route("/jwks.json", self._jwks, methods=["GET"]),
                Route("/events", self._events, methods=["POST"]),
            ],
            exception_handlers={HTTPException: self._http_error, Exception: self._crash},
        )

    @property
    def app(self) -> Starlette:
        """The ASGI app."""
        return self._app

    # ----------------------------------------------------------------- pages

    async def _home(self, request: Request) -> Response:
        return self._page("home.html", asks=_ASKS, notices=list(reversed(self.notices)))

    async def _events(self, request: Request) -> Response:
        """RFC 8935 push endpoint: verify the SET, keep it once (deduplicated on jti)."""
        if (
            request.headers.get("content-type", "").split(";")[0].strip()
            != "application/secevent+jwt"
        ):
            return JSONResponse(
                {"err": "invalid_request", "description": "expected application/secevent+jwt"},
                status_code=400,
            )
        token = (await request.body()).decode("ascii", "replace")
        try:
            claims = await self._verify_set(token)
        except ValueError as exc:
            logger.info("sp.notice_refused", reason=str(exc))
            return JSONResponse(
                {"err": "authentication_failed", "description": str(exc)}, status_code=400
            )
        jti = str(claims["jti"])
        if jti not in self._seen_notices:
            self._seen_notices.add(jti)
            for event in claims["events"].values():
                self.notices.append(
                    _Notice(
                        received=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                        consent_id=str(event.get("consent_id", "")),
                        state=str(event.get("state", "")),
                        reason=str(event.get("reason", "")),
                        jti=jti,
                    )
                )
            logger.info("sp.notice_received")
        return Response(status_code=202)

    async def _verify_set(self, token: str) -> dict[str, Any]:
        """A SET from the gateway: its key, typ secevent+jwt, iss, aud = this client."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise ValueError("not a JWT") from None
        if header.get("typ") != "secevent+jwt":
            raise ValueError("typ must be secevent+jwt")
        response = await self._http.get(f"{self.gateway_issuer}/.well-known/jwks.json")
        keys = {k.kid: k for k in public_keys_from_jwks(response.json(), TOKEN_ALGS)}
        key = keys.get(header.get("kid"))
        if key is None:
            raise ValueError("unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],
                issuer=self.gateway_issuer,
                audience=self.client.client_id,
                options={"require": ["iss", "aud", "iat", "jti", "events"]},
            )
        except jwt.PyJWTError as exc:
            raise ValueError(f"invalid SET: {exc}") from None
        if not isinstance(claims.get("events"), dict):
            raise ValueError("events must be an object")
        return claims

    async def _start(self, request: Request) -> Response:
        """Start an authorization request: new session, state and PKCE; then to the gateway."""
        # A new session id each time, so an id planted before login is worthless (fixation).
        self._forget(request)
        state, pkce = secrets.token_urlsafe(24), Pkce.new()
        session_id = self._remember(_Session(created=time.monotonic(), state=state, pkce=pkce))
        url = self.client.authorization_url(authorization_details(), state=state, pkce=pkce)
        response = RedirectResponse(url, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=SESSION_LIFETIME_SECONDS,
            httponly=True,
            secure=self._secure_cookie,
            # Lax: the cookie must come back on the top-level redirect from the gateway,
            # and is still withheld from cross-site POSTs (/again).
            samesite="lax",
        )
        logger.info("sp.authorization_started")
        return response

    async def _callback(self, request: Request) -> Response:
        """The authorization response: check it, get the token, fetch each resource once."""
        session = self._session(request)
        if session is None or session.state is None or session.pkce is None:
            return self._error(
                400,
                "Session inconnue ou expirée.",
                "Unknown or expired session: please start again.",
            )
        # The state and verifier are single-use: a replayed callback finds nothing.
        state, pkce = session.state, session.pkce
        session.state, session.pkce = None, None
        try:
            code = self.client.check_callback(
                request.query_params, expected_state=state, issuer=self.gateway_issuer
            )
        except AuthorizationError as refused:
            logger.info("sp.authorization_refused", error=refused.error)
            if refused.error == "access_denied":
                return self._page("refused.html")
            return self._error(
                400,
                "La réponse d'autorisation n'est pas valable.",
                "The authorization response is not valid.",
                detail=refused.error,
            )
        try:
            grant = await self.client.exchange_code(code, pkce)
        except TokenError as refused:
            logger.info("sp.token_refused", error=refused.error, status=refused.status)
            return self._error(
                502,
                "La passerelle n'a pas délivré de jeton.",
                "The gateway did not issue a token.",
                detail=f"{refused.error}: {refused.description}",
            )
        except httpx.HTTPError:
            return self._unreachable()
        session.grant = grant
        return await self._show_transfers(grant, again=False)

    async def _again(self, request: Request) -> Response:
        """Ask again with the same token: the demo's way to show a used-up consent."""
        session = self._session(request)
        if session is None or session.grant is None:
            return self._error(
                400,
                "Aucun jeton dans cette session.",
                "No token in this session: please start again.",
            )
        return await self._show_transfers(session.grant, again=True)

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse(self.client.jwks(), headers={"Cache-Control": "max-age=60"})

    # ----------------------------------------------------------------- helpers

    async def _show_transfers(self, grant: TokenGrant, *, again: bool) -> Response:
        views = []
        for ask in _ASKS:
            request_id = secrets.token_hex(8)
            try:
                response = await self.client.fetch(
                    ask.provider,
                    ask.resource,
                    grant.access_token,
                    params=ask.params,
                    request_id=request_id,
                )
            except httpx.HTTPError:
                return self._unreachable()
            view = _view(ask, response, request_id)
            logger.info(
                "sp.transfer",
                provider=ask.provider,
                resource=ask.resource,
                status=view.status,
                transfer_id=view.transfer_id,
            )
            views.append(view)
        return self._page("results.html", transfers=views, consent_id=grant.consent_id, again=again)

    def _page(self, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        html = _TEMPLATES.get_template(template).render(**context)
        return HTMLResponse(
            html,
            status_code=status,
            headers={
                "Content-Security-Policy": self._csp,
                # Pages show personal data, and the callback URL holds a code.
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
            },
        )

    def _error(self, status: int, title_fr: str, title_en: str, detail: str = "") -> HTMLResponse:
        return self._page(
            "error.html", status=status, title_fr=title_fr, title_en=title_en, detail=detail
        )

    def _unreachable(self) -> HTMLResponse:
        logger.warning("sp.gateway_unreachable")
        return self._error(502, "La passerelle ne répond pas.", "The gateway could not be reached.")

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return self._error(
            status, "Page introuvable ou méthode refusée.", "Page not found or method not allowed."
        )

    async def _crash(self, request: Request, exc: Exception) -> Response:
        # Readable and without a stack trace; the type alone is enough to investigate.
        logger.error("sp.unexpected_error", error_type=type(exc).__name__)
        return self._error(500, "Une erreur inattendue est survenue.", "Something went wrong.")

    # ----------------------------------------------------------------- sessions

    def _session(self, request: Request) -> _Session | None:
        session_id = request.cookies.get(SESSION_COOKIE)
        session = self._sessions.get(session_id) if session_id else None
        if session is not None and time.monotonic() - session.created > SESSION_LIFETIME_SECONDS:
            return None
        return session

    def _remember(self, session: _Session) -> str:
        now = time.monotonic()
        for stale in [
            sid for sid, s in self._sessions.items() if now - s.created > SESSION_LIFETIME_SECONDS
        ]:
            del self._sessions[stale]
        while len(self._sessions) >= MAX_SESSIONS:
            # Dicts keep insertion order: the first one is the oldest.
            del self._sessions[next(iter(self._sessions))]
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = session
        return session_id

    def _forget(self, request: Request) -> None:
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            self._sessions.pop(session_id, None)


def _view(ask: _Ask, response: httpx.Response, request_id: str) -> _TransferView:
    """Turn the gateway's answer into rows of data, or a problem to show plainly."""
    transfer_id = response.headers.get("transfer-id")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and isinstance(body, dict):
        return _TransferView(
            ask=ask,
            status=200,
            transfer_id=transfer_id,
            request_id=request_id,
            rows=list(_flatten(body, "")),
        )
    if isinstance(body, dict):
        problem = {name: _text(value) for name, value in body.items()}
    else:
        problem = {"title": f"HTTP {response.status_code}", "detail": "unexpected answer"}
    problem.setdefault("title", f"HTTP {response.status_code}")
    return _TransferView(
        ask=ask,
        status=response.status_code,
        transfer_id=transfer_id or problem.get("transfer_id"),
        request_id=request_id,
        problem=problem,
    )


def _flatten(value: Any, pointer: str) -> Iterator[tuple[str, str]]:
    # JSON pointers (RFC 6901) as row names: the same notation the policies use.
    if isinstance(value, dict) and value:
        for name, item in value.items():
            escaped = str(name).replace("~", "~0").replace("/", "~1")
            yield from _flatten(item, f"{pointer}/{escaped}")
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _flatten(item, f"{pointer}/{index}")
    else:
        yield pointer or "/", _text(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
