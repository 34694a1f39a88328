"""What each person-facing page shows, as frozen data filled by the routes.

Every label is already in the page's language; the templates only lay it out.
Raw codes that the templates translate themselves are noted field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class ResourceView:
    """One resource of a provider and the labels of the fields it releases."""

    label: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProviderView:
    """What one data provider sends, and how many times."""

    name: str
    resources: tuple[ResourceView, ...]
    max_transfers: int


@dataclass(frozen=True, slots=True)
class ConsentPageView:
    """The consent screen: who asks, for what, which data, until when."""

    consent_id: str
    client_name: str
    purpose_label: str
    purpose_description: str
    legal_basis_label: str
    retention_days: int
    providers: tuple[ProviderView, ...]
    expires_at: datetime
    person_display_name: str
    acr: str | None  # raw OIDC acr value; the template shows its plain-words level
    action_url: str
    csrf_token: str


@dataclass(frozen=True, slots=True)
class TransferView:
    """One transfer made under a consent, as the person sees it."""

    at: datetime
    provider_name: str
    resource_label: str
    outcome: str  # raw code: "completed", "failed" or "denied"
    reason: str | None = None  # error code of a refusal or failure


@dataclass(frozen=True, slots=True)
class ConsentSummary:
    """One consent on the "my data" page."""

    consent_id: str
    client_name: str
    purpose_label: str
    state: str  # raw consent state: "active", "revoked", ...
    providers: tuple[ProviderView, ...]
    transfers_used: int
    transfers_allowed: int
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    revoke_url: str | None  # None when the consent cannot be revoked
    transfers: tuple[TransferView, ...] = ()  # newest first, as the route orders them
    receipt_url: str | None = None


@dataclass(frozen=True, slots=True)
class MePageView:
    """The "my data" page."""

    person_display_name: str
    active: tuple[ConsentSummary, ...]
    past: tuple[ConsentSummary, ...]
    csrf_token: str
    logout_url: str
    notice: str | None  # e.g. "consent revoked" after the revoke redirect


@dataclass(frozen=True, slots=True)
class ErrorPageView:
    """An error shown to a person; ``code`` is the stable error code for support."""

    status: int
    title: str
    detail: str
    code: str
    back_url: str | None


@dataclass(frozen=True, slots=True)
class MessagePageView:
    """A short message with an optional link onwards."""

    title: str
    body: str
    link_url: str | None
    link_label: str | None  # defaults to "Continue" when a link has no label
