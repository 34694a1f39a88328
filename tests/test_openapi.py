"""``GET /openapi.json`` describes the routes the gateway has, and what they really answer."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.routing import Mount, Route

from gateway import openapi
from tests.conftest import ISSUER, Stack, cnaf_details
from tests.e2e.test_trail_api import audit_get, auditor_token

QF_PARAMS = {"annee": "2025", "mois": "01"}
# Mounted apps, not API routes: static files, and the demo identity provider (its own OIDC).
NOT_API = {"/static", "/demo-idp"}


def routes_of(stack: Stack) -> set[tuple[str, str]]:
    out = set()
    for route in stack.app.routes:
        if isinstance(route, Mount):
            assert route.path in NOT_API, f"an undocumented mount: {route.path}"
            continue
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                out.add((route.path, method.lower()))
    return out


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item}


def check(doc: dict[str, Any], schema: str, instance: Any) -> None:
    """Validate ``instance`` against a component schema of the document (JSON Schema 2020-12)."""
    root = {"$ref": f"#/components/schemas/{schema}", "components": doc["components"]}
    jsonschema.Draft202012Validator(root).validate(instance)


async def served(stack: Stack) -> dict[str, Any]:
    response = await stack.http.get(f"{ISSUER}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc: dict[str, Any] = response.json()
    return doc


async def test_the_document_is_valid_openapi_and_names_this_gateway(stack: Stack) -> None:
    doc = await served(stack)
    validate(doc)  # raises on any departure from the OpenAPI 3.1 schema
    assert doc["openapi"] == "3.1.0"
    assert doc["servers"] == [{"url": ISSUER}]


async def test_every_route_is_documented_and_nothing_else(stack: Stack) -> None:
    doc = await served(stack)
    assert documented(doc) == routes_of(stack)


async def test_path_parameters_match_the_templates(stack: Stack) -> None:
    doc = await served(stack)
    for path, item in doc["paths"].items():
        in_template = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == in_template, (path, method)


async def test_a_transfer_and_its_refusals_match_the_document(stack: Stack) -> None:
    doc = await served(stack)
    data = doc["paths"]["/data/{provider}/{resource}"]["get"]["responses"]
    grant = await stack.grant([cnaf_details(max_transfers=1)])
    ok = await stack.sp.fetch("cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS)
    assert ok.status_code == 200 and "Transfer-Id" in ok.headers
    assert "Transfer-Id" in data["200"]["headers"]
    for response in (
        await stack.sp.fetch("cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS),
        await stack.http.get(f"{ISSUER}/data/cnaf/quotient_familial"),
        await stack.http.get(f"{ISSUER}/data/cnaf/no_such_resource"),
    ):
        assert str(response.status_code) in data, response.status_code
        assert response.headers["content-type"] == openapi.PROBLEM
        check(doc, "Problem", response.json())


async def test_the_token_and_consent_answers_match_the_document(stack: Stack) -> None:
    doc = await served(stack)
    browser = stack.browser()
    grant = await stack.grant([cnaf_details(max_transfers=2)], browser=browser)
    check(
        doc,
        "ConsentToken",
        {
            "access_token": grant.access_token,
            "token_type": "DPoP",
            "expires_in": grant.expires_in,
            "consent_id": grant.consent_id,
            "authorization_details": grant.authorization_details,
        },
    )
    mine = await browser.http.get(f"{ISSUER}/api/me/consents")
    assert mine.status_code == 200, mine.text
    for consent in mine.json()["consents"]:
        check(doc, "Consent", consent)
    await stack.sp.fetch("cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS)
    transfers = await browser.http.get(f"{ISSUER}/api/me/transfers")
    assert transfers.json()["transfers"]
    for transfer in transfers.json()["transfers"]:
        check(doc, "Transfer", transfer)


async def test_the_trail_and_audit_answers_match_the_document(
    audit_stack: tuple[Stack, Any],
) -> None:
    stack, key = audit_stack
    doc = await served(stack)
    await stack.grant([cnaf_details(max_transfers=1)])
    size = await stack.rt.checkpointer.sign_if_grown(stack.rt.now())
    assert size and size > 1
    proof = await stack.http.get(
        f"{ISSUER}/trail/proof/consistency", params={"old": 1, "new": size}
    )
    check(doc, "Hashes", proof.json())
    auditor, token = await auditor_token(stack, key)
    page = await audit_get(stack, auditor, token, "/audit/events", {"limit": "2"})
    assert page.status_code == 200
    check(doc, "EventsPage", page.json())
    assert page.json()["events"]


def test_a_schema_violation_is_caught() -> None:
    # The check the tests above rely on refuses what the document does not allow.
    doc = openapi.document(ISSUER)
    with pytest.raises(jsonschema.ValidationError):
        check(doc, "Problem", {"type": "about:blank", "title": "x", "status": 400, "detail": "y"})
    with pytest.raises(jsonschema.ValidationError):
        check(doc, "ConsentToken", {"access_token": "t", "token_type": "Bearer", "expires_in": 1})
