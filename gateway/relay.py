"""Step (6) of the transfer path: call the data provider, within bounds.

The outbound request is built here from policy, never forwarded: the URL is
``provider.base_url + resource.path`` plus the allowlisted query, and the only
headers are the gateway's assertion, ``Accept``, ``X-Transfer-Id`` and
``User-Agent`` (httpx adds ``Host``). Nothing the service provider sent reaches
the provider.

Bounds: one deadline of ``provider.timeout_seconds`` for the whole exchange,
body included; bodies larger than ``provider.max_response_bytes`` are cut off
while streaming; redirects are not followed; no cookies are kept (there is
no client to keep them: requests go straight to the transport); proxy and
certificate settings from the environment are ignored.

Connections: unless a transport is injected (tests route to ASGI apps), each
provider has its own :class:`~gateway.transport.HTTP1Transport`, a
keep-alive pool bounded per origin, which costs a fraction of httpx's default
transport in CPU (``bench/transport_cost.py``); it verifies certificates
against the system's CA store, never one named by the environment.

Outcomes:

- 200 with a JSON body → :class:`ProviderAnswer` with the parsed ``document``;
- 404 → :class:`ProviderAnswer` with ``status=404`` and ``document=None``: the
  provider has no record for this person, which the caller reports as such
  rather than as a failure;
- anything else raises an :class:`~gateway.errors.UpstreamError` with a code:
  ``provider_unavailable``, ``provider_timeout``, ``provider_error``,
  ``provider_response_too_large``, ``provider_response_not_json``.

Bodies and assertions are never logged.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from gateway.errors import (
    ProviderBadResponse,
    ProviderFailed,
    ProviderTimeout,
    ProviderUnavailable,
    QueryNotAllowed,
)
from gateway.metrics import Metrics
from gateway.policy.model import Provider, Resource
from gateway.transport import HTTP1Transport

__all__ = ["USER_AGENT", "ProviderAnswer", "Relay"]

USER_AGENT = "gateway/0.1"
NOT_FOUND = 404

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ProviderAnswer:
    """What the provider said: status, exact body bytes, and their digest and size."""

    status: int  # 200, or 404 for "no record for this person"
    body: bytes
    document: Any  # parsed JSON for 200; None for 404
    sha256: str  # hex digest of ``body``, recorded in the trail instead of the body
    size: int


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 §6); Python accepts them by default.
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 8259 §4: with duplicate names, receivers disagree on the value; refuse.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _parse_json(body: bytes) -> Any:
    try:
        # RFC 8259 §8.1: JSON exchanged between systems MUST be UTF-8.
        return json.loads(
            body.decode("utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProviderBadResponse(
            "provider_response_not_json", "the provider's answer is not valid JSON"
        ) from exc


@functools.lru_cache(maxsize=1024)
def _policy_url(base_url: str, path: str) -> httpx.URL:
    """A resource's URL, parsed once: httpx spends ~18 µs parsing one per request.

    Keyed by policy strings only (the query, which may name a person, is
    never cached).
    """
    return httpx.URL(base_url + path)


class Relay:
    """Pooled HTTP clients, one per provider, created once at start-up."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``transport`` replaces every provider's own pool (tests route with it)."""
        self.metrics = metrics
        self._transports: dict[str, httpx.AsyncBaseTransport] = {
            provider.id: transport if transport is not None else HTTP1Transport()
            for provider in providers.values()
        }

    async def aclose(self) -> None:
        """Close every pooled connection."""
        for transport in {id(t): t for t in self._transports.values()}.values():
            await transport.aclose()

    async def fetch(
        self,
        provider: Provider,
        resource: Resource,
        *,
        query: Mapping[str, str],
        assertion: str,
        transfer_id: str,
    ) -> ProviderAnswer:
        """Call ``resource`` of ``provider`` for one transfer; see the module docstring."""
        transport = self._transports.get(provider.id)
        if transport is None or resource.provider != provider.id:
            raise ProviderUnavailable(
                "provider_unavailable", f"no connection set up for provider {provider.id!r}"
            )
        # The caller has checked the query already; this is the last line before
        # the network, so check again rather than trust it.
        for name, value in query.items():
            pattern = resource.query.get(name)
            if pattern is None or not pattern.fullmatch(value):
                raise QueryNotAllowed("query_not_allowed", f"query parameter {name!r} refused")

        # Sent straight to the transport, not through an httpx.AsyncClient: a
        # client would add its default headers (Accept-Encoding, Connection),
        # keep cookies, consult the environment for proxies and follow its
        # redirect and auth flows, none of which a relay wants, at ~0.2 ms of
        # CPU per request (bench/README.md). Timeouts travel in the request.
        request = httpx.Request(
            resource.method,
            _policy_url(provider.base_url, resource.path),
            # Merging parameters re-parses the URL: only when there are some.
            params=dict(query) if query else None,
            headers={
                "Authorization": f"Bearer {assertion}",
                "Accept": "application/json",
                "X-Transfer-Id": transfer_id,
                "User-Agent": USER_AGENT,
            },
            extensions={"timeout": httpx.Timeout(provider.timeout_seconds).as_dict()},
        )
        started = time.monotonic()
        try:
            # One deadline for connect, headers and the whole body: httpx's own
            # timeouts are per operation, so a slow trickle could outlast them.
            async with asyncio.timeout(provider.timeout_seconds):
                answer = await self._exchange(transport, request, provider)
        except (TimeoutError, httpx.TimeoutException) as exc:
            self._log(provider, resource, transfer_id, started, outcome="provider_timeout")
            raise ProviderTimeout(
                "provider_timeout",
                f"no answer from {provider.id!r} within {provider.timeout_seconds} s",
            ) from exc
        except httpx.TransportError as exc:
            self._log(provider, resource, transfer_id, started, outcome="provider_unavailable")
            raise ProviderUnavailable(
                "provider_unavailable", f"cannot reach {provider.id!r}: {type(exc).__name__}"
            ) from exc
        except (ProviderFailed, ProviderBadResponse) as exc:
            self._log(provider, resource, transfer_id, started, outcome=exc.code)
            raise
        self._log(
            provider,
            resource,
            transfer_id,
            started,
            outcome="ok",
            status=answer.status,
            size=answer.size,
        )
        return answer

    async def _exchange(
        self, transport: httpx.AsyncBaseTransport, request: httpx.Request, provider: Provider
    ) -> ProviderAnswer:
        response = await transport.handle_async_request(request)
        try:
            status = response.status_code
            # 3xx is refused too: following a redirect would send the assertion elsewhere.
            if status not in (httpx.codes.OK, NOT_FOUND):
                raise ProviderFailed("provider_error", f"the provider answered HTTP {status}")
            if status == httpx.codes.OK and not _is_json(response.headers.get("content-type")):
                raise ProviderBadResponse(
                    "provider_response_not_json", "the provider's answer is not application/json"
                )
            # We sent no Accept-Encoding; an encoded body would have to be inflated
            # before its size is known, so it is refused rather than decoded.
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding != "identity":
                raise ProviderBadResponse(
                    "provider_response_not_json", f"unexpected content encoding {encoding!r}"
                )
            body = await self._read_bounded(response, provider.max_response_bytes)
        finally:
            await response.aclose()
        document = _parse_json(body) if status == httpx.codes.OK else None
        return ProviderAnswer(
            status=status,
            body=body,
            document=document,
            sha256=hashlib.sha256(body).hexdigest(),
            size=len(body),
        )

    @staticmethod
    async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
        def too_large() -> ProviderBadResponse:
            return ProviderBadResponse(
                "provider_response_too_large", f"the provider's answer exceeds {limit} bytes"
            )

        declared = (response.headers.get("content-length") or "").strip()
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise too_large()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise too_large()  # stop reading: the rest is never downloaded
            chunks.append(chunk)
        return b"".join(chunks)

    def _log(
        self,
        provider: Provider,
        resource: Resource,
        transfer_id: str,
        started: float,
        *,
        outcome: str,
        status: int | None = None,
        size: int | None = None,
    ) -> None:
        elapsed = time.monotonic() - started
        if self.metrics is not None:
            counted = "no_record" if outcome == "ok" and status == NOT_FOUND else outcome
            self.metrics.provider_call(provider.id, counted, elapsed)
        # Identifiers and sizes only: never the body, the query or the assertion.
        log.info(
            "relay.fetch",
            provider=provider.id,
            resource=resource.id,
            transfer_id=transfer_id,
            outcome=outcome,
            status=status,
            size=size,
            elapsed_ms=round(elapsed * 1000),
        )
