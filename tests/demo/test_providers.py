"""The demo data providers, driven over ASGI with a fake gateway JWKS."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from gateway.demo.personas import PERSONAS, Persona
from gateway.demo.providers import cnaf_app, dgfip_app
from gateway.jose import SigningKey, jwks_document
from gateway.tokens import mint_provider_assertion

ISSUER = "https://gateway.test"
MARIANNE = PERSONAS["marianne"]
JEAN = PERSONAS["jean"]
ALIX = PERSONAS["alix"]


@dataclass
class FakeGateway:
    """Serves a JWKS that tests can rotate, and counts how often it is fetched."""

    keys: list[SigningKey]
    fetches: int = 0
    available: bool = True
    app: Starlette = field(init=False)

    def __post_init__(self) -> None:
        async def jwks(request: Request) -> Response:
            self.fetches += 1
            if not self.available:
                return Response(status_code=503)
            return JSONResponse(jwks_document(self.keys))

        self.app = Starlette(routes=[Route("/.well-known/jwks.json", jwks)])


@pytest.fixture
def gateway_key() -> SigningKey:
    return SigningKey.generate_es256()


@pytest.fixture
def fake_gateway(gateway_key: SigningKey) -> FakeGateway:
    return FakeGateway(keys=[gateway_key])


@pytest.fixture
async def gateway_http(fake_gateway: FakeGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake_gateway.app)) as http:
        yield http


async def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://provider")


@pytest.fixture
async def dgfip(gateway_http: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(dgfip_app(gateway_issuer=ISSUER, http=gateway_http)) as client:
        yield client


@pytest.fixture
async def cnaf(gateway_http: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(cnaf_app(gateway_issuer=ISSUER, http=gateway_http)) as client:
        yield client


@pytest.fixture
def providers(dgfip: httpx.AsyncClient, cnaf: httpx.AsyncClient) -> dict[str, httpx.AsyncClient]:
    return {"dgfip": dgfip, "cnaf": cnaf}


def assertion(
    key: SigningKey,
    persona: Persona,
    *,
    provider: str,
    resource: str,
    issuer: str = ISSUER,
    now: float | None = None,
    identity: dict[str, str] | None = None,
) -> dict[str, str]:
    """Authorization header carrying a gateway assertion for ``persona``."""
    token = mint_provider_assertion(
        key,
        issuer=issuer,
        provider=provider,
        sub="pairwise-subject",
        identity=identity if identity is not None else persona.identity_claims(),
        resource=resource,
        purpose="family-benefit-eligibility",
        consent_id="consent-1",
        transfer_id="transfer-1",
        client_id="mairie-demoville",
        lifetime=60,
        now=time.time() if now is None else now,
    )
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- answers


async def test_dgfip_answers_more_than_any_policy_releases(
    dgfip: httpx.AsyncClient, gateway_key: SigningKey
) -> None:
    headers = assertion(gateway_key, MARIANNE, provider="dgfip", resource="revenu_fiscal")
    response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert body["annee"] == 2024
    assert set(body) == {
        "annee",
        "revenu_fiscal_reference",
        "nombre_parts",
        "situation_familiale",
        "adresse_fiscale",
        "declarants",
        "impot_net",
    }
    assert body["declarants"] == [
        {
            "nom": MARIANNE.family_name,
            "prenoms": MARIANNE.given_name,
            "date_naissance": MARIANNE.birthdate,
        }
    ]


async def test_dgfip_knows_jean(dgfip: httpx.AsyncClient, gateway_key: SigningKey) -> None:
    headers = assertion(gateway_key, JEAN, provider="dgfip", resource="revenu_fiscal")
    response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2023", headers=headers)
    assert response.status_code == 200
    assert response.json()["declarants"][0]["nom"] == JEAN.family_name


async def test_cnaf_quotient_familial(cnaf: httpx.AsyncClient, gateway_key: SigningKey) -> None:
    headers = assertion(gateway_key, MARIANNE, provider="cnaf", resource="quotient_familial")
    response = await cnaf.get("/cnaf/v1/quotient-familial?annee=2025&mois=01", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert {body["annee"], body["mois"]} == {2025, 1}
    assert set(body) == {"annee", "mois", "quotient_familial", "allocataire", "montant_prestations"}
    assert body["allocataire"]["nom"] == MARIANNE.family_name


async def test_cnaf_composition_familiale(cnaf: httpx.AsyncClient, gateway_key: SigningKey) -> None:
    headers = assertion(gateway_key, ALIX, provider="cnaf", resource="composition_familiale")
    response = await cnaf.get("/cnaf/v1/composition-familiale", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert body["nombre_enfants"] == len(body["enfants"]) == 1
    assert body["allocataire_unique"] is True
    assert set(body["enfants"][0]) == {"prenom", "date_naissance"}


async def test_names_match_regardless_of_case(
    dgfip: httpx.AsyncClient, gateway_key: SigningKey
) -> None:
    identity = {**MARIANNE.identity_claims(), "family_name": MARIANNE.family_name.lower()}
    headers = assertion(
        gateway_key, MARIANNE, provider="dgfip", resource="revenu_fiscal", identity=identity
    )
    response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
    assert response.status_code == 200


# --------------------------------------------------------------------------- "no record"


@pytest.mark.parametrize(
    ("app_name", "persona", "resource", "url"),
    [
        ("dgfip", ALIX, "revenu_fiscal", "/impots/v1/revenu-fiscal?annee=2024"),
        ("cnaf", JEAN, "quotient_familial", "/cnaf/v1/quotient-familial?annee=2025&mois=1"),
        ("cnaf", JEAN, "composition_familiale", "/cnaf/v1/composition-familiale"),
    ],
)
async def test_unknown_person_is_404(
    providers: dict[str, httpx.AsyncClient],
    gateway_key: SigningKey,
    app_name: str,
    persona: Persona,
    resource: str,
    url: str,
) -> None:
    client = providers[app_name]
    headers = assertion(gateway_key, persona, provider=app_name, resource=resource)
    response = await client.get(url, headers=headers)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_birthdate_must_match_too(dgfip: httpx.AsyncClient, gateway_key: SigningKey) -> None:
    identity = {**MARIANNE.identity_claims(), "birthdate": "1985-07-15"}
    headers = assertion(
        gateway_key, MARIANNE, provider="dgfip", resource="revenu_fiscal", identity=identity
    )
    response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
    assert response.status_code == 404


# --------------------------------------------------------------------------- bad queries


@pytest.mark.parametrize("query", ["", "?annee=", "?annee=24", "?annee=2024x", "?annee=%202024"])
async def test_dgfip_requires_a_year(
    dgfip: httpx.AsyncClient, gateway_key: SigningKey, query: str
) -> None:
    headers = assertion(gateway_key, MARIANNE, provider="dgfip", resource="revenu_fiscal")
    response = await dgfip.get(f"/impots/v1/revenu-fiscal{query}", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    "query", ["?annee=2025", "?annee=2025&mois=0", "?annee=2025&mois=00", "?annee=2025&mois=13"]
)
async def test_cnaf_requires_year_and_month(
    cnaf: httpx.AsyncClient, gateway_key: SigningKey, query: str
) -> None:
    headers = assertion(gateway_key, MARIANNE, provider="cnaf", resource="quotient_familial")
    response = await cnaf.get(f"/cnaf/v1/quotient-familial{query}", headers=headers)
    assert response.status_code == 400


# --------------------------------------------------------------------------- refused assertions


async def test_missing_assertion_is_401(dgfip: httpx.AsyncClient) -> None:
    response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_bad_signature_is_401(dgfip: httpx.AsyncClient, gateway_key: SigningKey) -> None:
    # Same kid as the published key, but another private key: only the signature differs.
    impostor = SigningKey(
        kid=gateway_key.kid,
        alg="ES256",
        private_key=SigningKey.generate_es256().private_key,
    )
    headers = assertion(impostor, MARIANNE, provider="dgfip", resource="revenu_fiscal")
    response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert "signature" in response.json()["error_description"]


async def test_expired_assertion_is_401(dgfip: httpx.AsyncClient, gateway_key: SigningKey) -> None:
    headers = assertion(
        gateway_key,
        MARIANNE,
        provider="dgfip",
        resource="revenu_fiscal",
        now=time.time() - 300,
    )
    response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
    assert response.status_code == 401
    assert "expired" in response.json()["error_description"]


async def test_assertion_for_another_provider_is_401(
    dgfip: httpx.AsyncClient, gateway_key: SigningKey
) -> None:
    headers = assertion(gateway_key, MARIANNE, provider="cnaf", resource="revenu_fiscal")
    response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
    assert response.status_code == 401
    assert "audience" in response.json()["error_description"]


async def test_assertion_from_another_issuer_is_401(
    dgfip: httpx.AsyncClient, gateway_key: SigningKey
) -> None:
    headers = assertion(
        gateway_key,
        MARIANNE,
        provider="dgfip",
        resource="revenu_fiscal",
        issuer="https://elsewhere.test",
    )
    response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
    assert response.status_code == 401


async def test_assertion_for_another_resource_is_403(
    cnaf: httpx.AsyncClient, gateway_key: SigningKey
) -> None:
    headers = assertion(gateway_key, MARIANNE, provider="cnaf", resource="composition_familiale")
    response = await cnaf.get("/cnaf/v1/quotient-familial?annee=2025&mois=1", headers=headers)
    assert response.status_code == 403
    assert response.json()["error"] == "wrong_resource"


# --------------------------------------------------------------------------- the gateway JWKS


async def test_jwks_is_cached(
    dgfip: httpx.AsyncClient, gateway_key: SigningKey, fake_gateway: FakeGateway
) -> None:
    for _ in range(3):
        headers = assertion(gateway_key, MARIANNE, provider="dgfip", resource="revenu_fiscal")
        response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
        assert response.status_code == 200
    assert fake_gateway.fetches == 1


async def test_rotated_key_is_fetched_once(
    dgfip: httpx.AsyncClient, gateway_key: SigningKey, fake_gateway: FakeGateway
) -> None:
    headers = assertion(gateway_key, MARIANNE, provider="dgfip", resource="revenu_fiscal")
    assert (await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)).is_success
    rotated = SigningKey.generate_es256()
    fake_gateway.keys.append(rotated)
    headers = assertion(rotated, MARIANNE, provider="dgfip", resource="revenu_fiscal")
    for _ in range(2):
        response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
        assert response.is_success
    assert fake_gateway.fetches == 2


async def test_made_up_kids_do_not_hammer_the_gateway(
    dgfip: httpx.AsyncClient, gateway_key: SigningKey, fake_gateway: FakeGateway
) -> None:
    headers = assertion(gateway_key, MARIANNE, provider="dgfip", resource="revenu_fiscal")
    assert (await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)).is_success
    for _ in range(3):
        stranger = SigningKey.generate_es256()
        headers = assertion(stranger, MARIANNE, provider="dgfip", resource="revenu_fiscal")
        response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
        assert response.status_code == 401
    # One refetch for the first unknown kid; it found nothing, so the next ones wait.
    assert fake_gateway.fetches == 2


async def test_first_fetch_failure_is_not_cached(
    dgfip: httpx.AsyncClient, gateway_key: SigningKey, fake_gateway: FakeGateway
) -> None:
    fake_gateway.available = False
    headers = assertion(gateway_key, MARIANNE, provider="dgfip", resource="revenu_fiscal")
    assert (
        await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
    ).status_code == 503
    fake_gateway.available = True
    assert (await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)).is_success


async def test_unreachable_jwks_is_503(
    dgfip: httpx.AsyncClient, gateway_key: SigningKey, fake_gateway: FakeGateway
) -> None:
    fake_gateway.available = False
    headers = assertion(gateway_key, MARIANNE, provider="dgfip", resource="revenu_fiscal")
    response = await dgfip.get("/impots/v1/revenu-fiscal?annee=2024", headers=headers)
    assert response.status_code == 503


# --------------------------------------------------------------------------- logs


async def test_logs_carry_no_identity_or_payload(
    cnaf: httpx.AsyncClient, gateway_key: SigningKey
) -> None:
    headers = assertion(gateway_key, MARIANNE, provider="cnaf", resource="quotient_familial")
    with capture_logs() as logs:
        response = await cnaf.get("/cnaf/v1/quotient-familial?annee=2025&mois=1", headers=headers)
    assert response.status_code == 200
    assert logs, "the provider should say what it answered"
    logged = repr(logs)
    for secret in (
        MARIANNE.family_name,
        MARIANNE.given_name,
        MARIANNE.birthdate,
        str(response.json()["quotient_familial"]),
    ):
        assert secret not in logged
