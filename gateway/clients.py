"""Client keys: inline JWKS from policy, or fetched from the client's ``jwks_uri``.

Fetched sets are cached; an unknown ``kid`` or a failed verification triggers
at most one refetch per :data:`JWKS_REFETCH_SECONDS`, so a client can rotate
keys without an operator and an attacker cannot make us hammer its server.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from gateway.errors import OAuthError
from gateway.jose import CLIENT_ALGS, PublicKey, public_keys_from_jwks
from gateway.policy.model import Client

JWKS_CACHE_SECONDS = 300.0
JWKS_REFETCH_SECONDS = 10.0
JWKS_MAX_BYTES = 64 * 1024


class ClientKeys:
    def __init__(
        self, http: httpx.AsyncClient, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._http = http
        self._clock = clock
        self._cache: dict[str, tuple[float, list[PublicKey]]] = {}

    async def keys(self, client: Client, *, refresh: bool = False) -> list[PublicKey]:
        if client.jwks is not None:
            return public_keys_from_jwks(client.jwks, CLIENT_ALGS)
        assert client.jwks_uri is not None
        cached = self._cache.get(client.id)
        now = self._clock()
        if cached is not None:
            fetched_at, keys = cached
            fresh = now - fetched_at < JWKS_CACHE_SECONDS
            may_refetch = now - fetched_at >= JWKS_REFETCH_SECONDS
            if fresh and not (refresh and may_refetch):
                return keys
        try:
            response = await self._http.get(client.jwks_uri, timeout=5.0)
            if response.status_code != 200 or len(response.content) > JWKS_MAX_BYTES:
                raise OAuthError("invalid_client", "client JWKS could not be fetched", 401)
            keys = public_keys_from_jwks(response.json(), CLIENT_ALGS)
        except (httpx.HTTPError, ValueError) as exc:
            if cached is not None:
                return cached[1]
            raise OAuthError("invalid_client", "client JWKS could not be fetched", 401) from exc
        self._cache[client.id] = (now, keys)
        return keys
