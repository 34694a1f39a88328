"""Two example data providers, as real ASGI apps: a tax office (DGFiP) and a benefits office (CNAF).

They behave like the providers the gateway relays to: each trusts only a
provider assertion signed by the gateway (checked against the gateway's
published JWKS), finds the person by the identity claims in it, and answers
with more fields than any policy releases, so the gateway's minimisation is
visible in the demo. All records are fictitious and keyed by the demo personas.
Nothing here logs a name, an identity claim or a payload.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import jwt
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.demo.personas import PERSONAS, Persona
from gateway.jose import TOKEN_ALGS, PublicKey, public_keys_from_jwks
from gateway.tokens import verify_provider_assertion

logger = structlog.get_logger(__name__)

# An assertion with an unknown kid makes the provider refetch the JWKS (the
# gateway rotated its key). A refetch that does not find the kid silences the
# next ones for this long: otherwise anyone could make the provider hammer the
# gateway by sending made-up kids.
JWKS_REFETCH_BACKOFF_SECONDS = 5.0
_YEAR = re.compile(r"(19|20)[0-9]{2}")
_MONTH = re.compile(r"(0?[1-9]|1[0-2])")
# Answers concern one person: no shared cache may keep them (RFC 9111 §5.2.2.5).
_NO_STORE = {"Cache-Control": "no-store"}

Handler = Callable[["_Caller", Request], Awaitable[Response]]


class _JwksUnavailable(Exception):
    """The gateway's JWKS could not be fetched or parsed."""


class _GatewayKeys:
    """The gateway's verification keys, fetched on first use and refetched on an unknown kid."""

    def __init__(self, jwks_url: str, http: httpx.AsyncClient) -> None:
        self._url = jwks_url
        self._http = http
        self._keys: list[PublicKey] | None = None
        self._quiet_until = 0.0
        self._lock = anyio.Lock()

    async def for_token(self, token: str) -> list[PublicKey]:
        """The keys to verify ``token`` with; refetches once if its kid is unknown."""
        kid = _unverified_kid(token)
        async with self._lock:
            if self._keys is None:
                self._keys = await self._fetch()
            elif not self._knows(kid) and time.monotonic() >= self._quiet_until:
                try:
                    self._keys = await self._fetch()
                except _JwksUnavailable:
                    # Keep the keys we have; the assertion will simply not verify.
                    logger.warning("provider.jwks_refetch_failed")
                if not self._knows(kid):
                    self._quiet_until = time.monotonic() + JWKS_REFETCH_BACKOFF_SECONDS
            return self._keys

    def _knows(self, kid: str | None) -> bool:
        # No kid: nothing to refetch for; verification will refuse the token.
        return kid is None or any(key.kid == kid for key in self._keys or ())

    async def _fetch(self) -> list[PublicKey]:
        try:
            response = await self._http.get(self._url, follow_redirects=False)
            response.raise_for_status()
            return public_keys_from_jwks(response.json(), TOKEN_ALGS)
        except (httpx.HTTPError, ValueError) as exc:
            raise _JwksUnavailable(type(exc).__name__) from exc


def _gateway_keys(gateway_issuer: str, http: httpx.AsyncClient) -> _GatewayKeys:
    return _GatewayKeys(f"{gateway_issuer.rstrip('/')}/.well-known/jwks.json", http)


def _unverified_kid(token: str) -> str | None:
    # Reading kid before verification only selects a key; alg is never taken from it.
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if isinstance(kid, str) else None


@dataclass(frozen=True)
class _Caller:
    """What a verified gateway assertion tells the provider."""

    resource: str
    persona: Persona | None
    transfer_id: str


def _identity_key(family_name: str, given_name: str, birthdate: str) -> tuple[str, str, str]:
    # Names arrive from another system: compare them NFC-normalised and case-folded,
    # as a civil-registry match would, the birth date as the exact ISO string.
    def norm(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold().strip()

    return norm(family_name), norm(given_name), birthdate


_PERSONA_BY_IDENTITY = {
    _identity_key(p.family_name, p.given_name, p.birthdate): p for p in PERSONAS.values()
}


def _parse_caller(claims: Mapping[str, Any]) -> _Caller:
    identity = (claims.get("family_name"), claims.get("given_name"), claims.get("birthdate"))
    persona = None
    if all(isinstance(part, str) for part in identity):
        family_name, given_name, birthdate = (str(part) for part in identity)
        persona = _PERSONA_BY_IDENTITY.get(_identity_key(family_name, given_name, birthdate))
    resource = claims.get("resource")
    transfer_id = claims.get("transfer_id")
    return _Caller(
        resource=resource if isinstance(resource, str) else "",
        persona=persona,
        transfer_id=transfer_id if isinstance(transfer_id, str) else "",
    )


def _error(status: int, error: str, description: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={**_NO_STORE, **headers},
    )


def _not_found() -> JSONResponse:
    # "No record for this person", distinct from a provider failure (a 5xx).
    return _error(404, "not_found", "no record for this person")


def _protected(
    *, provider: str, resource: str, gateway_issuer: str, keys: _GatewayKeys, handler: Handler
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``handler`` with the provider's checks, in order.

    1. A ``Bearer`` assertion is present.
    2. The gateway's JWKS is available.
    3. The assertion verifies: gateway signature, iss, aud = this provider, exp.
    4. It was issued for this very resource.
    """

    async def endpoint(request: Request) -> Response:
        # (1)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(401, "invalid_token", "a gateway assertion is required", **_challenge())
        # (2)
        try:
            verification_keys = await keys.for_token(token)
        except _JwksUnavailable:
            logger.warning("provider.jwks_unavailable", provider=provider)
            return _error(503, "temporarily_unavailable", "the gateway keys cannot be fetched")
        # (3)
        try:
            claims = verify_provider_assertion(
                token,
                verification_keys,
                issuer=gateway_issuer,
                provider=provider,
                now=time.time(),
            )
        except ValueError as exc:
            logger.info("provider.assertion_refused", provider=provider, resource=resource)
            return _error(401, "invalid_token", str(exc), **_challenge())
        caller = _parse_caller(claims)
        # (4)
        if caller.resource != resource:
            logger.info("provider.wrong_resource", provider=provider, resource=resource)
            return _error(403, "wrong_resource", "the assertion is for another resource")
        response = await handler(caller, request)
        logger.info(
            "provider.answered",
            provider=provider,
            resource=resource,
            transfer_id=caller.transfer_id,
            status=response.status_code,
        )
        return response

    return endpoint


def _challenge() -> dict[str, str]:
    # RFC 6750 §3: a 401 names the scheme and the error.
    return {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def _query_int(request: Request, name: str, pattern: re.Pattern[str]) -> int | None:
    value = request.query_params.get(name)
    return int(value) if value is not None and pattern.fullmatch(value) else None


def _ok(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers=_NO_STORE)


# --- DGFiP (tax office) ------------------------------------------------------


@dataclass(frozen=True)
class _TaxRecord:
    revenu_fiscal_reference: int
    nombre_parts: float
    situation_familiale: str
    impot_net: int
    adresse_fiscale: dict[str, str]


_TAX_RECORDS: dict[str, _TaxRecord] = {
    "marianne": _TaxRecord(
        revenu_fiscal_reference=31250,
        nombre_parts=2.5,
        situation_familiale="célibataire",
        impot_net=812,
        adresse_fiscale={
            "voie": "12 rue de l'Exemple",
            "code_postal": "99990",
            "commune": "Démoville",
        },
    ),
    "jean": _TaxRecord(
        revenu_fiscal_reference=27400,
        nombre_parts=1.0,
        situation_familiale="célibataire",
        impot_net=1630,
        adresse_fiscale={
            "voie": "3 impasse du Test",
            "code_postal": "99991",
            "commune": "Essai-sur-Fiction",
        },
    ),
}


async def _revenu_fiscal(caller: _Caller, request: Request) -> Response:
    annee = _query_int(request, "annee", _YEAR)
    if annee is None:
        return _error(400, "invalid_request", "annee (a four-digit year) is required")
    persona = caller.persona
    record = _TAX_RECORDS.get(persona.key) if persona is not None else None
    if persona is None or record is None:
        return _not_found()
    return _ok(
        {
            "annee": annee,
            "revenu_fiscal_reference": record.revenu_fiscal_reference,
            "nombre_parts": record.nombre_parts,
            "situation_familiale": record.situation_familiale,
            "adresse_fiscale": record.adresse_fiscale,
            "declarants": [
                {
                    "nom": persona.family_name,
                    "prenoms": persona.given_name,
                    "date_naissance": persona.birthdate,
                }
            ],
            "impot_net": record.impot_net,
        }
    )


def dgfip_app(*, gateway_issuer: str, http: httpx.AsyncClient) -> Starlette:
    """The demo tax office: ``GET /impots/v1/revenu-fiscal?annee=YYYY``."""
    keys = _gateway_keys(gateway_issuer, http)
    return Starlette(
        routes=[
            Route(
                "/impots/v1/revenu-fiscal",
                _protected(
                    provider="dgfip",
                    resource="revenu_fiscal",
                    gateway_issuer=gateway_issuer,
                    keys=keys,
                    handler=_revenu_fiscal,
                ),
                methods=["GET"],
            )
        ]
    )


# --- CNAF (family benefits office) -------------------------------------------


@dataclass(frozen=True)
class _Child:
    prenom: str
    date_naissance: str


@dataclass(frozen=True)
class _FamilyRecord:
    numero_allocataire: str
    quotient_familial: int
    montant_prestations: float
    nombre_adultes: int
    enfants: tuple[_Child, ...]


_FAMILY_RECORDS: dict[str, _FamilyRecord] = {
    "marianne": _FamilyRecord(
        numero_allocataire="0000042",
        quotient_familial=812,
        montant_prestations=285.40,
        nombre_adultes=1,
        enfants=(
            _Child(prenom="Zoé-Fictive", date_naissance="2014-02-03"),
            _Child(prenom="Hugo-Exemple", date_naissance="2017-09-28"),
        ),
    ),
    "alix": _FamilyRecord(
        numero_allocataire="0000097",
        quotient_familial=640,
        montant_prestations=142.15,
        nombre_adultes=1,
        enfants=(_Child(prenom="Léo-Imaginaire", date_naissance="2021-06-11"),),
    ),
}


def _family_record(caller: _Caller) -> tuple[Persona, _FamilyRecord] | None:
    persona = caller.persona
    record = _FAMILY_RECORDS.get(persona.key) if persona is not None else None
    return (persona, record) if persona is not None and record is not None else None


async def _quotient_familial(caller: _Caller, request: Request) -> Response:
    annee = _query_int(request, "annee", _YEAR)
    mois = _query_int(request, "mois", _MONTH)
    if annee is None or mois is None:
        return _error(400, "invalid_request", "annee (YYYY) and mois (1-12) are required")
    found = _family_record(caller)
    if found is None:
        return _not_found()
    persona, record = found
    return _ok(
        {
            "annee": annee,
            "mois": mois,
            "quotient_familial": record.quotient_familial,
            "allocataire": {
                "numero_allocataire": record.numero_allocataire,
                "nom": persona.family_name,
                "prenoms": persona.given_name,
                "date_naissance": persona.birthdate,
            },
            "montant_prestations": record.montant_prestations,
        }
    )


async def _composition_familiale(caller: _Caller, request: Request) -> Response:
    found = _family_record(caller)
    if found is None:
        return _not_found()
    _, record = found
    return _ok(
        {
            "nombre_enfants": len(record.enfants),
            "nombre_adultes": record.nombre_adultes,
            "allocataire_unique": record.nombre_adultes == 1,
            "enfants": [
                {"prenom": child.prenom, "date_naissance": child.date_naissance}
                for child in record.enfants
            ],
        }
    )


def cnaf_app(*, gateway_issuer: str, http: httpx.AsyncClient) -> Starlette:
    """The demo benefits office: quotient familial and family composition."""
    keys = _gateway_keys(gateway_issuer, http)

    def route(path: str, resource: str, handler: Handler) -> Route:
        endpoint = _protected(
            provider="cnaf",
            resource=resource,
            gateway_issuer=gateway_issuer,
            keys=keys,
            handler=handler,
        )
        return Route(path, endpoint, methods=["GET"])

    return Starlette(
        routes=[
            route("/cnaf/v1/quotient-familial", "quotient_familial", _quotient_familial),
            route(
                "/cnaf/v1/composition-familiale", "composition_familiale", _composition_familiale
            ),
        ]
    )
