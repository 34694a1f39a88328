"""Policy decisions: what is not granted is denied, with a stable code."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.policy import (
    AuthorizationDetail,
    Deny,
    Permit,
    PolicySet,
    decide_request,
    decide_transfer,
    load_policies,
    parse_authorization_details,
)

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
FAMILY = "family-benefit-eligibility"
CANTEEN = "school-canteen-pricing"


@pytest.fixture(scope="module")
def policy() -> PolicySet:
    return load_policies(SHIPPED, allow_http=True)


def detail(
    provider: str = "dgfip",
    resources: tuple[str, ...] = ("revenu_fiscal",),
    purpose: str = FAMILY,
    max_transfers: int = 1,
) -> AuthorizationDetail:
    return AuthorizationDetail(provider, resources, purpose, max_transfers)


def raw_detail(**members: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "personal_data",
        "provider": "dgfip",
        "resources": ["revenu_fiscal"],
        "purpose": FAMILY,
    }
    base.update(members)
    return {k: v for k, v in base.items() if v is not None}


# --- parse_authorization_details ---------------------------------------------------------


def test_parse_valid_details_with_default_max_transfers() -> None:
    parsed = parse_authorization_details(
        [
            raw_detail(),
            raw_detail(provider="cnaf", resources=["quotient_familial"], max_transfers=3),
        ]
    )
    assert parsed == (
        AuthorizationDetail("dgfip", ("revenu_fiscal",), FAMILY, 1),
        AuthorizationDetail("cnaf", ("quotient_familial",), FAMILY, 3),
    )


def test_parse_empty_array_gives_no_details() -> None:
    assert parse_authorization_details([]) == ()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        pytest.param({"type": "personal_data"}, "JSON array", id="not-array"),
        pytest.param("[]", "JSON array", id="string"),
        pytest.param(None, "JSON array", id="null"),
        pytest.param(["personal_data"], "JSON object", id="item-not-object"),
        pytest.param([raw_detail(locations=["x"])], "unknown member(s): locations", id="unknown"),
        pytest.param([raw_detail(type=None)], "type is required", id="no-type"),
        pytest.param([raw_detail(type="openid_credential")], "personal_data", id="wrong-type"),
        pytest.param([raw_detail(provider=None)], "provider is required", id="no-provider"),
        pytest.param([raw_detail(provider="")], "provider must be", id="empty-provider"),
        pytest.param([raw_detail(provider=["dgfip"])], "provider must be", id="list-provider"),
        pytest.param([raw_detail(purpose=None)], "purpose is required", id="no-purpose"),
        pytest.param([raw_detail(purpose=7)], "purpose must be", id="int-purpose"),
        pytest.param([raw_detail(resources=None)], "resources is required", id="no-resources"),
        pytest.param([raw_detail(resources=[])], "non-empty array", id="empty-resources"),
        pytest.param([raw_detail(resources="revenu_fiscal")], "non-empty array", id="str-res"),
        pytest.param([raw_detail(resources=[1])], "resources[0] must be", id="int-resource"),
        pytest.param([raw_detail(resources=["a", "a"])], "must not repeat", id="dup-resource"),
        pytest.param([raw_detail(max_transfers=0)], "at least 1", id="zero-transfers"),
        pytest.param([raw_detail(max_transfers=-2)], "at least 1", id="negative-transfers"),
        pytest.param([raw_detail(max_transfers=True)], "integer", id="bool-transfers"),
        pytest.param([raw_detail(max_transfers="2")], "integer", id="str-transfers"),
        pytest.param([raw_detail(max_transfers=1.5)], "integer", id="float-transfers"),
        pytest.param(
            [raw_detail(), raw_detail(provider="cnaf", purpose=CANTEEN)],
            "same purpose",
            id="two-purposes",
        ),
        pytest.param([raw_detail(), raw_detail()], "only one authorization detail", id="dup"),
    ],
)
def test_parse_refuses_malformed_details(raw: Any, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_authorization_details(raw)
    assert caught.value.code == "invalid_authorization_details"
    assert caught.value.status == 400
    assert fragment in caught.value.detail


# --- decide_request ----------------------------------------------------------------------


def test_request_within_grants_is_permitted(policy: PolicySet) -> None:
    details = [
        detail(max_transfers=3),
        detail("cnaf", ("quotient_familial",), max_transfers=2),
    ]
    assert decide_request(policy, "mairie-demoville", details) == Permit()


def test_second_service_provider_gets_its_own_grants(policy: PolicySet) -> None:
    details = [
        detail("cnaf", ("quotient_familial", "composition_familiale"), CANTEEN),
        detail(purpose=CANTEEN),
    ]
    assert decide_request(policy, "ccas-exempleville", details) == Permit()


@pytest.mark.parametrize(
    ("client_id", "details", "code"),
    [
        pytest.param("mairie-inconnue", [detail()], "unknown_client", id="unknown-client"),
        pytest.param(
            "auditeur-demo", [detail()], "client_not_service_provider", id="auditor-asks-data"
        ),
        pytest.param("mairie-demoville", [], "invalid_authorization_details", id="empty"),
        pytest.param(
            "mairie-demoville",
            [detail(), detail("cnaf", ("quotient_familial",), CANTEEN)],
            "invalid_authorization_details",
            id="two-purposes",
        ),
        pytest.param(
            "mairie-demoville",
            [detail(), detail()],
            "invalid_authorization_details",
            id="same-provider-twice",
        ),
        pytest.param(
            "mairie-demoville",
            [detail(max_transfers=0)],
            "invalid_authorization_details",
            id="zero-transfers",
        ),
        pytest.param(
            "mairie-demoville", [detail(purpose="marketing")], "unknown_purpose", id="purpose"
        ),
        pytest.param(
            "mairie-demoville", [detail("urssaf", ("x",))], "unknown_provider", id="provider"
        ),
        pytest.param(
            "mairie-demoville",
            [detail(resources=("revenu_fiscal", "patrimoine"))],
            "unknown_resource",
            id="resource",
        ),
        pytest.param(
            "mairie-demoville",
            [detail("cnaf", ("composition_familiale",))],
            "purpose_not_granted",
            id="resource-not-granted",
        ),
        pytest.param(
            "mairie-demoville",
            [detail(purpose=CANTEEN)],
            "purpose_not_granted",
            id="other-purpose-not-granted",
        ),
        pytest.param(
            "ccas-exempleville",
            [detail()],
            "purpose_not_granted",
            id="grant-of-another-purpose",
        ),
        pytest.param(
            "mairie-demoville",
            [detail("cnaf", ("quotient_familial",)), detail(max_transfers=4)],
            "too_many_transfers",
            id="too-many-transfers",
        ),
        pytest.param(
            "ccas-exempleville",
            [detail(purpose=CANTEEN, max_transfers=2)],
            "too_many_transfers",
            id="canteen-is-single-use",
        ),
    ],
)
def test_request_outside_grants_is_denied(
    policy: PolicySet, client_id: str, details: list[AuthorizationDetail], code: str
) -> None:
    decision = decide_request(policy, client_id, details)
    assert isinstance(decision, Deny)
    assert decision.code == code
    assert type(decision.code) is str
    assert decision.reason


def test_request_is_denied_by_an_empty_policy() -> None:
    empty = PolicySet(providers={}, purposes={}, clients={}, digest="sha256:0")
    decision = decide_request(empty, "mairie-demoville", [detail()])
    assert isinstance(decision, Deny)
    assert decision.code == "unknown_client"


# --- decide_transfer ---------------------------------------------------------------------


def transfer(policy: PolicySet, **changes: Any) -> Permit | Deny:
    args: dict[str, Any] = {
        "client_id": "mairie-demoville",
        "purpose": FAMILY,
        "provider": "cnaf",
        "resource": "quotient_familial",
        "acr": "eidas2",
    }
    args.update(changes)
    return decide_transfer(policy, **args)


@pytest.mark.parametrize("acr", ["eidas2", "eidas3"])
def test_transfer_within_grant_and_acr_is_permitted(policy: PolicySet, acr: str) -> None:
    assert transfer(policy, acr=acr) == Permit()


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        pytest.param({"client_id": "gone"}, "purpose_not_granted", id="client-removed"),
        pytest.param({"client_id": "auditeur-demo"}, "purpose_not_granted", id="auditor"),
        pytest.param({"resource": "composition_familiale"}, "purpose_not_granted", id="resource"),
        pytest.param({"purpose": CANTEEN}, "purpose_not_granted", id="purpose"),
        pytest.param({"provider": "urssaf"}, "purpose_not_granted", id="provider"),
        pytest.param({"acr": "eidas1"}, "acr_insufficient", id="acr-low"),
        pytest.param({"acr": None}, "acr_insufficient", id="acr-missing"),
        pytest.param({"acr": "eidas9"}, "acr_insufficient", id="acr-unknown"),
        pytest.param({"acr": "EIDAS2"}, "acr_insufficient", id="acr-case"),
    ],
)
def test_transfer_outside_policy_is_denied(
    policy: PolicySet, changes: dict[str, Any], code: str
) -> None:
    decision = transfer(policy, **changes)
    assert isinstance(decision, Deny)
    assert decision.code == code


def test_transfer_is_denied_once_the_grant_is_withdrawn(policy: PolicySet) -> None:
    # A consent given under the old policy does not outlive the grant.
    mairie = policy.clients["mairie-demoville"]
    narrowed = dataclasses.replace(
        mairie, grants=tuple(g for g in mairie.grants if g.provider != "cnaf")
    )
    changed = dataclasses.replace(policy, clients={**policy.clients, mairie.id: narrowed})
    assert transfer(policy) == Permit()
    decision = transfer(changed)
    assert isinstance(decision, Deny)
    assert decision.code == "purpose_not_granted"


def test_lowest_level_is_enough_where_the_provider_asks_for_it(policy: PolicySet) -> None:
    assert transfer(policy, provider="dgfip", resource="revenu_fiscal", acr="eidas1") == Permit()


def test_decisions_are_frozen_values() -> None:
    deny = Deny("unknown_client", "no such client")
    with pytest.raises(dataclasses.FrozenInstanceError):
        deny.code = "x"  # type: ignore[misc]
    assert Permit() == Permit()
    assert deny == Deny("unknown_client", "no such client")
