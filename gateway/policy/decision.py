"""Policy decisions: may this client ask for this, and may this transfer go ahead?

Pure functions of the loaded :class:`PolicySet`: values in, a :class:`Permit` or
a :class:`Deny` with a stable code and a reason out. Anything the policy does
not grant is denied, and an empty request is denied too.

Also parses RFC 9396 ``authorization_details`` of type ``personal_data`` into
:class:`AuthorizationDetail` values, so dicts from the request never travel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.errors import InvalidRequest
from gateway.policy.model import Client, PolicySet, acr_rank

__all__ = [
    "AUTHORIZATION_DETAILS_TYPE",
    "AuthorizationDetail",
    "Decision",
    "Deny",
    "DenyCode",
    "Permit",
    "decide_request",
    "decide_transfer",
    "parse_authorization_details",
]

AUTHORIZATION_DETAILS_TYPE = "personal_data"
_DETAIL_MEMBERS = frozenset({"type", "provider", "resources", "purpose", "max_transfers"})
_REQUIRED_MEMBERS = ("type", "provider", "resources", "purpose")


class DenyCode(StrEnum):
    """Stable codes of :class:`Deny`; they reach callers and the trail."""

    UNKNOWN_CLIENT = "unknown_client"
    CLIENT_NOT_SERVICE_PROVIDER = "client_not_service_provider"
    INVALID_AUTHORIZATION_DETAILS = "invalid_authorization_details"
    UNKNOWN_PURPOSE = "unknown_purpose"
    UNKNOWN_PROVIDER = "unknown_provider"
    UNKNOWN_RESOURCE = "unknown_resource"
    PURPOSE_NOT_GRANTED = "purpose_not_granted"
    TOO_MANY_TRANSFERS = "too_many_transfers"
    ACR_INSUFFICIENT = "acr_insufficient"


@dataclass(frozen=True)
class Permit:
    """The policy allows it."""


@dataclass(frozen=True)
class Deny:
    """The policy does not allow it; ``code`` is a :class:`DenyCode` value."""

    code: str
    reason: str


Decision = Permit | Deny


def _deny(code: DenyCode, reason: str) -> Deny:
    # Plain str, so the code serialises the same everywhere (JSON, JCS, SQL).
    return Deny(code.value, reason)


@dataclass(frozen=True)
class AuthorizationDetail:
    """One RFC 9396 ``personal_data`` object: some resources of one provider, for a purpose."""

    provider: str
    resources: tuple[str, ...]
    purpose: str
    max_transfers: int


def _invalid(detail: str) -> InvalidRequest:
    return InvalidRequest("invalid_authorization_details", detail)


def _non_empty_string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid(f"{where} must be a non-empty string")
    return value


def parse_authorization_details(raw: Any) -> tuple[AuthorizationDetail, ...]:
    """Parse the decoded ``authorization_details`` JSON array; raise ``InvalidRequest``.

    Checks shape only; whether the policy allows it is :func:`decide_request`'s job.
    One request is one consent, so every object names the same purpose and a
    different provider. An empty array parses (and is then denied).
    """
    # RFC 9396 §2: the parameter is a JSON array of JSON objects.
    if not isinstance(raw, list):
        raise _invalid("authorization_details must be a JSON array")
    details: list[AuthorizationDetail] = []
    for i, item in enumerate(raw):
        where = f"authorization_details[{i}]"
        if not isinstance(item, dict):
            raise _invalid(f"{where} must be a JSON object")
        unknown = sorted(set(item) - _DETAIL_MEMBERS)
        if unknown:
            raise _invalid(f"{where} has unknown member(s): {', '.join(unknown)}")
        for member in _REQUIRED_MEMBERS:
            if member not in item:
                raise _invalid(f"{where}.{member} is required")
        # RFC 9396 §2: "type" identifies the kind of authorization details.
        if item["type"] != AUTHORIZATION_DETAILS_TYPE:
            raise _invalid(f'{where}.type must be "{AUTHORIZATION_DETAILS_TYPE}"')
        resources = item["resources"]
        if not isinstance(resources, list) or not resources:
            raise _invalid(f"{where}.resources must be a non-empty array of strings")
        for j, resource in enumerate(resources):
            _non_empty_string(resource, f"{where}.resources[{j}]")
        if len(set(resources)) != len(resources):
            raise _invalid(f"{where}.resources must not repeat a resource")
        max_transfers = item.get("max_transfers", 1)
        # bool is an int in Python; JSON true is not a count.
        if not isinstance(max_transfers, int) or isinstance(max_transfers, bool):
            raise _invalid(f"{where}.max_transfers must be an integer")
        if max_transfers < 1:
            raise _invalid(f"{where}.max_transfers must be at least 1")
        details.append(
            AuthorizationDetail(
                provider=_non_empty_string(item["provider"], f"{where}.provider"),
                resources=tuple(resources),
                purpose=_non_empty_string(item["purpose"], f"{where}.purpose"),
                max_transfers=max_transfers,
            )
        )
    # An empty array is well-formed JSON; decide_request denies it.
    problem = _shape_problem(details) if details else None
    if problem:
        raise _invalid(problem)
    return tuple(details)


def _shape_problem(details: Sequence[AuthorizationDetail]) -> str | None:
    """What makes a list of details unusable as one consent, if anything."""
    if not details:
        return "no authorization details"
    if len({d.purpose for d in details}) > 1:
        return "all authorization details must name the same purpose (one consent, one purpose)"
    if len({d.provider for d in details}) != len(details):
        return "each provider may appear in only one authorization detail"
    if any(not d.resources or len(set(d.resources)) != len(d.resources) for d in details):
        return "resources must be non-empty and distinct"
    if any(d.max_transfers < 1 for d in details):
        return "max_transfers must be at least 1"
    return None


def _covers(client: Client, purpose: str, provider: str, resource: str) -> bool:
    return any(
        g.purpose == purpose and g.provider == provider and resource in g.resources
        for g in client.grants
    )


def decide_request(
    policy: PolicySet, client_id: str, details: Sequence[AuthorizationDetail]
) -> Decision:
    """May ``client_id`` ask a person to consent to ``details``?

    Steps, first failure wins:
    (1) the client exists; (2) it is a service provider; (3) the details form
    one consent (non-empty, one purpose, distinct providers); (4) the purpose
    exists; then for each detail (5) the provider and (6) its resources exist,
    (7) a grant of the client covers each (purpose, provider, resource), and
    (8) max_transfers does not exceed the purpose's limit.
    """
    # (1)
    client = policy.clients.get(client_id)
    if client is None:
        return _deny(DenyCode.UNKNOWN_CLIENT, f"unknown client {client_id!r}")
    # (2)
    if client.role != "service_provider":
        return _deny(
            DenyCode.CLIENT_NOT_SERVICE_PROVIDER,
            f"client {client_id!r} is an {client.role}, not a service provider",
        )
    # (3) Re-checked here because details may be built without the parser.
    problem = _shape_problem(details)
    if problem:
        return _deny(DenyCode.INVALID_AUTHORIZATION_DETAILS, problem)
    # (4)
    purpose = policy.purposes.get(details[0].purpose)
    if purpose is None:
        return _deny(DenyCode.UNKNOWN_PURPOSE, f"unknown purpose {details[0].purpose!r}")
    for detail in details:
        # (5)
        provider = policy.providers.get(detail.provider)
        if provider is None:
            return _deny(DenyCode.UNKNOWN_PROVIDER, f"unknown provider {detail.provider!r}")
        for resource in detail.resources:
            # (6)
            if resource not in provider.resources:
                return _deny(
                    DenyCode.UNKNOWN_RESOURCE, f"unknown resource {provider.id}/{resource}"
                )
            # (7)
            if not _covers(client, purpose.id, provider.id, resource):
                return _deny(
                    DenyCode.PURPOSE_NOT_GRANTED,
                    f"client {client_id!r} may not ask for {provider.id}/{resource} "
                    f"for the purpose {purpose.id!r}",
                )
        # (8)
        if detail.max_transfers > purpose.max_transfers:
            return _deny(
                DenyCode.TOO_MANY_TRANSFERS,
                f"max_transfers {detail.max_transfers} exceeds {purpose.max_transfers}, "
                f"the limit of the purpose {purpose.id!r}",
            )
    return Permit()


def decide_transfer(
    policy: PolicySet,
    *,
    client_id: str,
    purpose: str,
    provider: str,
    resource: str,
    acr: str | None,
) -> Decision:
    """Step (4) of the transfer path: does the current policy still allow this transfer?

    The consent was checked against the policy when it was given; the policy may
    have changed since. (1) The client must still be a service provider whose
    grant covers (purpose, provider, resource), otherwise ``purpose_not_granted``;
    (2) the person's login must reach the provider's minimum acr.
    """
    # (1) One code for all three: from the caller's side the grant is gone.
    client = policy.clients.get(client_id)
    if client is None or client.role != "service_provider":
        return _deny(
            DenyCode.PURPOSE_NOT_GRANTED,
            f"client {client_id!r} is no longer a service provider in the policy",
        )
    if not _covers(client, purpose, provider, resource):
        return _deny(
            DenyCode.PURPOSE_NOT_GRANTED,
            f"the policy no longer lets client {client_id!r} receive {provider}/{resource} "
            f"for the purpose {purpose!r}",
        )
    # (2) A grant never names a missing provider once loaded; deny anyway if it does.
    declared = policy.providers.get(provider)
    if declared is None:
        return _deny(DenyCode.PURPOSE_NOT_GRANTED, f"unknown provider {provider!r}")
    required = declared.min_acr
    if acr_rank(acr) < acr_rank(required):
        return _deny(
            DenyCode.ACR_INSUFFICIENT,
            f"provider {provider!r} requires a login of level {required} or higher, "
            f"got {acr or 'none'}",
        )
    return Permit()
