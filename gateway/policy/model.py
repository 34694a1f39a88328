"""The loaded policy set as frozen data: providers, resources, purposes, clients.

Built only by :mod:`gateway.policy.loader`; everything else reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

# eIDAS levels of assurance as OIDC acr values, lowest first.
ACR_LEVELS: tuple[str, ...] = ("eidas1", "eidas2", "eidas3")

IDENTITY_CLAIMS: tuple[str, ...] = (
    "given_name",
    "family_name",
    "birthdate",
    "gender",
    "birthplace",
    "birthcountry",
)

Role = Literal["service_provider", "auditor"]


def acr_rank(acr: str | None) -> int:
    """Rank of an acr value; unknown or missing values rank below every level."""
    return ACR_LEVELS.index(acr) if acr in ACR_LEVELS else -1


@dataclass(frozen=True)
class Label:
    fr: str
    en: str

    def in_(self, lang: str) -> str:
        return self.en if lang == "en" else self.fr


@dataclass(frozen=True)
class Field:
    """One released field: a JSON pointer (RFC 6901) into the provider's answer."""

    pointer: str
    label: Label


@dataclass(frozen=True)
class Resource:
    id: str
    provider: str
    label: Label
    method: str
    path: str
    query: dict[str, re.Pattern[str]]  # allowed query parameter -> full-match pattern
    fields: tuple[Field, ...]

    @property
    def pointers(self) -> tuple[str, ...]:
        return tuple(f.pointer for f in self.fields)


@dataclass(frozen=True)
class Provider:
    id: str
    name: str
    base_url: str
    identity_claims: tuple[str, ...]
    min_acr: str
    timeout_seconds: float
    max_response_bytes: int
    resources: dict[str, Resource]


@dataclass(frozen=True)
class Purpose:
    id: str
    label: Label
    description: Label
    legal_basis: str  # DPV legal basis IRI
    dpv: str  # DPV purpose IRI
    max_transfers: int
    max_validity_seconds: int
    retention_days: int


@dataclass(frozen=True)
class Grant:
    """What a client may ask for: one purpose, one provider, some of its resources."""

    purpose: str
    provider: str
    resources: frozenset[str]


@dataclass(frozen=True)
class Client:
    id: str
    name: str
    role: Role
    redirect_uris: tuple[str, ...]
    jwks: dict[str, Any] | None
    jwks_uri: str | None
    grants: tuple[Grant, ...]
    # Where revocation notices (RFC 8417 SETs, RFC 8935 push) go; None: not notified.
    notification_endpoint: str | None = None


@dataclass(frozen=True)
class PolicySet:
    providers: dict[str, Provider]
    purposes: dict[str, Purpose]
    clients: dict[str, Client]
    digest: str  # "sha256:<hex>" of the canonical form; goes into every trail entry

    def resource(self, provider: str, resource: str) -> Resource | None:
        p = self.providers.get(provider)
        return p.resources.get(resource) if p else None
