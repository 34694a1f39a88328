"""Everything a request handler needs, built once at start-up (DESIGN §8 "wiring").

Handlers receive the :class:`Runtime` from ``request.app.state.runtime``; tests
build one with an injected clock and an ``httpx`` transport that routes to
local ASGI apps instead of the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.clients import ClientKeys
from gateway.consents import ConsentStore
from gateway.identity import OidcRelyingParty
from gateway.jose import PublicKey, SigningKey
from gateway.keys import KeyRing
from gateway.metrics import Metrics
from gateway.policy.model import PolicySet
from gateway.relay import Relay
from gateway.settings import Settings
from gateway.subjects import ClaimsBox
from gateway.trail import Trail, TrailEvent
from gateway.trail.tree import Checkpointer
from gateway.trail.writer import TrailWriter, Tx

log = structlog.get_logger(__name__)


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    keys: KeyRing
    policy: PolicySet
    trail: Trail
    consents: ConsentStore
    relay: Relay
    http: httpx.AsyncClient  # outbound: identity provider, client JWKS
    identity: OidcRelyingParty
    client_keys: ClientKeys
    claims_box: ClaimsBox
    writer: TrailWriter
    checkpointer: Checkpointer
    metrics: Metrics
    clock: Callable[[], datetime] = field(default=system_clock)
    _token_keys: tuple[tuple[SigningKey, ...], list[PublicKey]] | None = field(
        default=None, init=False, repr=False
    )

    def now(self) -> datetime:
        return self.clock()

    @property
    def token_audience(self) -> str:
        """The consent token's ``aud``: the gateway's data endpoint (RFC 9068 §3)."""
        return f"{self.settings.issuer}/data"

    @property
    def audit_audience(self) -> str:
        """An auditor token's ``aud``: the audit API (never accepted at /data)."""
        return f"{self.settings.issuer}/audit"

    @property
    def token_keys(self) -> list[PublicKey]:
        """Verification keys of the signing keys, derived once per key ring (every transfer)."""
        signing = self.keys.signing
        if self._token_keys is None or self._token_keys[0] is not signing:
            self._token_keys = (signing, [k.public_key() for k in signing])
        return self._token_keys[1]

    def url(self, path: str) -> str:
        """Public URL of a path: always from GATEWAY_ISSUER, never from the Host header."""
        return self.settings.issuer + path

    async def record(self, *events: TrailEvent) -> None:
        """Append events in a transaction of their own (refusals, which change nothing else)."""

        async def work(tx: Tx) -> None:
            await tx.record(list(events))

        try:
            await self.writer.run(work)
        except SQLAlchemyError:
            log.exception("trail.write_failed", types=[str(e.type) for e in events])
