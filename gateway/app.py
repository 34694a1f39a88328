"""Wiring: settings → runtime → routes. ``create_app`` is the ASGI factory."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

import httpx
import structlog
from sqlalchemy import select, text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from gateway import __version__, audit, logs, metrics, notices, openapi, replay
from gateway.clients import ClientKeys
from gateway.consents import ConsentStore
from gateway.errors import GatewayError, LoginFailed
from gateway.identity import OidcRelyingParty
from gateway.keys import load_keys
from gateway.oauth import metadata, pushed
from gateway.oauth.authorize import authorize
from gateway.oauth.par import par
from gateway.oauth.revoke import revoke
from gateway.oauth.token import token
from gateway.policy.loader import load_policies
from gateway.relay import Relay
from gateway.runtime import Runtime, system_clock
from gateway.settings import Settings
from gateway.storage.engine import create_engine
from gateway.storage.migrate import check_schema
from gateway.storage.models import checkpoints
from gateway.subjects import ClaimsBox
from gateway.trail import EventType, Trail, TrailEvent
from gateway.trail.note import Signer
from gateway.trail.tree import Checkpointer, tree_size
from gateway.trail.writer import TrailWriter
from gateway.transfer import TransferRequest, transfer
from gateway.web import pages
from gateway.web import session as sessions
from gateway.web.render import STATIC_DIR

log = structlog.get_logger(__name__)


async def build_runtime(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], datetime] = system_clock,
    handlers: Sequence[str] = (),
) -> Runtime:
    """Load keys and policies, open the database (refusing a schema that is behind).

    ``handlers`` are the route templates the request metrics count by.
    """
    keys = load_keys(settings.keys_dir, create=True, demo=settings.demo)
    policy = load_policies(settings.policies_dir, allow_http=settings.demo)
    engine = create_engine(settings.database_url.value)
    try:
        await check_schema(engine)
    except Exception:
        await engine.dispose()
        raise
    http = httpx.AsyncClient(
        transport=transport, timeout=10.0, follow_redirects=False, trust_env=False
    )
    idp_secret = settings.idp_client_secret.value
    if not idp_secret and keys.demo is not None:
        idp_secret = keys.demo.idp_client_secret
    trail = Trail(policy.digest)
    counters = metrics.create(handlers, sorted(policy.providers))
    runtime_ref: list[Runtime] = []  # the outbox hook needs the runtime built below
    rt = Runtime(
        settings=settings,
        engine=engine,
        keys=keys,
        policy=policy,
        trail=trail,
        consents=ConsentStore(on_end=notices.outbox_hook(runtime_ref)),
        relay=Relay(policy.providers, transport=transport, metrics=counters),
        http=http,
        identity=OidcRelyingParty(
            issuer=settings.idp_issuer,
            client_id=settings.idp_client_id,
            client_secret=idp_secret,
            redirect_uri=f"{settings.issuer}/login/callback",
            http=http,
        ),
        client_keys=ClientKeys(http),
        claims_box=ClaimsBox(keys.claims_key),
        writer=TrailWriter(
            engine,
            trail,
            clock,
            max_batch=settings.trail_batch_max,
            linger_seconds=settings.trail_batch_linger_ms / 1000,
            metrics=counters,
        ),
        checkpointer=Checkpointer(
            engine, Signer(settings.trail_origin, keys.trail_key), settings.trail_origin
        ),
        metrics=counters,
        clock=clock,
    )
    runtime_ref.append(rt)
    async with engine.connect() as conn:
        recorded = await Trail.latest_policy_digest(conn)
    if recorded != policy.digest:
        await rt.record(
            TrailEvent(EventType.POLICY_LOADED, details={"clients": len(policy.clients)})
        )
    return rt


async def close_runtime(rt: Runtime) -> None:
    await rt.writer.stop()
    await rt.relay.aclose()
    await rt.http.aclose()
    await rt.engine.dispose()


async def sweep(rt: Runtime) -> None:
    """End consents at their expiry (with nobody calling) and forget stale state."""
    now = rt.now()
    ended = await rt.writer.run(rt.consents.expire_due)
    if ended:
        log.info("consents.expired", count=len(ended))
    await replay.prune(rt.engine, now)
    await pushed.prune(rt, now)
    await sessions.prune(rt)


async def _sweeper(rt: Runtime) -> None:
    while True:
        try:
            await sweep(rt)
        except Exception:
            log.exception("sweep.failed")
        await asyncio.sleep(rt.settings.expiry_sweep_seconds)


async def _notifier(rt: Runtime) -> None:
    while True:
        try:
            await notices.deliver_due(rt)
        except Exception:
            log.exception("notices.failed")
        await asyncio.sleep(rt.settings.notice_interval_seconds)


async def _checkpointer(rt: Runtime) -> None:
    while True:
        try:
            await rt.checkpointer.sign_if_grown(rt.now())
        except Exception:
            log.exception("checkpoint.failed")
        await asyncio.sleep(rt.settings.checkpoint_interval_seconds)


# --------------------------------------------------------------------------- routes


def problem_response(error: GatewayError, request_id: str | None = None) -> JSONResponse:
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    if error.status == 401:
        # RFC 9449 §7.1: errors on a DPoP-protected resource name the DPoP scheme.
        headers["WWW-Authenticate"] = 'DPoP error="invalid_token", algs="ES256 PS256 EdDSA"'
    transfer_id = error.extra.get("transfer_id")
    if isinstance(transfer_id, str):
        headers["Transfer-Id"] = transfer_id
    return JSONResponse(
        error.problem(),
        status_code=error.status,
        media_type="application/problem+json",
        headers=headers,
    )


async def data(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    req = TransferRequest(
        method=request.method,
        path=request.scope["path"],
        provider=request.path_params["provider"],
        resource=request.path_params["resource"],
        query=list(request.query_params.multi_items()),
        authorization=request.headers.get("authorization"),
        dpop_proofs=request.headers.getlist("dpop"),
        request_id=request.state.request_id,
    )
    try:
        result = await transfer(rt, req)
    except GatewayError as error:
        return problem_response(error)
    # The bytes whose digest the trail recorded, sent as they are (not encoded again).
    return Response(
        result.content,
        media_type="application/json",
        headers={"Transfer-Id": result.transfer_id, "Cache-Control": "no-store"},
    )


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    checks: dict[str, Any] = {"keys": bool(rt.keys.signing), "policies": rt.policy.digest}
    try:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
        status = 200
    except Exception:
        checks["database"] = "unavailable"
        status = 503
    return JSONResponse(checks, status_code=status)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text: every worker's counts summed, and a few values read from the database."""
    rt: Runtime = request.app.state.runtime
    expected = rt.settings.metrics_token.value
    if expected:
        sent = request.headers.get("authorization", "")
        scheme, _, given = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            return JSONResponse(
                {
                    "type": "urn:gateway:error:metrics_token_required",
                    "title": "Unauthorized",
                    "status": 401,
                    "detail": "GET /metrics needs Authorization: Bearer <GATEWAY_METRICS_TOKEN>",
                },
                status_code=401,
                media_type="application/problem+json",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    gauges = [
        metrics.Gauge(
            "gateway_info",
            "The running code and the digest of the loaded policy set.",
            1,
            (("version", __version__), ("policy_digest", rt.policy.digest)),
        )
    ]
    try:
        async with rt.engine.connect() as conn:
            size = await tree_size(conn)
            latest = (
                await conn.execute(
                    select(checkpoints.c.size, checkpoints.c.created_at)
                    .order_by(checkpoints.c.size.desc())
                    .limit(1)
                )
            ).first()
    except Exception:
        log.warning("metrics.database_unavailable", exc_info=True)
        gauges.append(metrics.Gauge("gateway_database_up", "1 if the database answered.", 0))
    else:
        gauges.append(metrics.Gauge("gateway_database_up", "1 if the database answered.", 1))
        gauges.append(metrics.Gauge("gateway_trail_size", "Entries in the trail.", size))
        if latest is not None:
            gauges.append(
                metrics.Gauge(
                    "gateway_trail_checkpoint_size",
                    "Tree size of the last signed checkpoint.",
                    int(latest.size),
                )
            )
            gauges.append(
                metrics.Gauge(
                    "gateway_trail_checkpoint_age_seconds",
                    "Seconds since the last checkpoint was signed.",
                    max(0.0, (rt.now() - latest.created_at).total_seconds()),
                )
            )
    return Response(
        rt.metrics.render(gauges),
        media_type="text/plain; version=0.0.4; charset=utf-8",
        headers={"Cache-Control": "no-store"},
    )


async def openapi_document(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    return JSONResponse(openapi.document(rt.settings.issuer))


class _DemoIdentityProviderMount:
    """Forwards to the demo identity provider built at start-up (demo mode only)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        idp = scope["app"].state.demo_idp
        await idp.app(scope, receive, send)


async def _login_failed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginFailed)
    return pages.error_page(request, 502, "identity_provider_unavailable")


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("request.failed", exc_info=exc)
    if request.url.path.startswith(
        ("/data/", "/api/", "/oauth/token", "/oauth/par", "/oauth/revoke", "/audit/", "/trail/")
    ):
        return JSONResponse(
            {
                "type": "urn:gateway:error:internal",
                "title": "Internal error",
                "status": 500,
                "detail": "the gateway failed; quote the X-Request-ID when reporting",
            },
            status_code=500,
            media_type="application/problem+json",
        )
    return pages.error_page(request, 500, "internal")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith(
        ("/data/", "/api/", "/oauth/", "/.well-known/", "/audit/", "/trail/")
    ):
        return JSONResponse(
            {
                "type": "urn:gateway:error:method_not_allowed",
                "title": "Method not allowed",
                "status": 405,
                "detail": f"{request.method} is not allowed here",
            },
            status_code=405,
            media_type="application/problem+json",
        )
    return pages.error_page(request, 405, "method_not_allowed", back_url="/me")


async def _not_found(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith(
        ("/data/", "/api/", "/oauth/", "/.well-known/", "/audit/", "/trail/")
    ):
        return JSONResponse(
            {
                "type": "urn:gateway:error:not_found",
                "title": "Not found",
                "status": 404,
                "detail": "no such endpoint",
            },
            status_code=404,
            media_type="application/problem+json",
        )
    return pages.error_page(request, 404, "page_not_found")


def create_app(
    settings: Settings | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], datetime] = system_clock,
    background: bool = True,
) -> Starlette:
    """The gateway as an ASGI app; ``transport`` routes outbound HTTP in tests."""
    settings = settings or Settings.from_env()
    logs.configure(settings.log_format, settings.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        rt = await build_runtime(
            settings, transport=transport, clock=clock, handlers=list(templates.values())
        )
        app.state.runtime = rt
        if settings.demo:
            from gateway.demo.idp import DemoIdentityProvider

            assert rt.keys.demo is not None
            app.state.demo_idp = DemoIdentityProvider(
                issuer=settings.idp_issuer,
                clients={
                    settings.idp_client_id: (
                        rt.keys.demo.idp_client_secret,
                        [f"{settings.issuer}/login/callback"],
                    )
                },
                signing_key=rt.keys.demo.idp_key,
            )
        rt.writer.start()
        tasks = (
            [
                asyncio.create_task(_sweeper(rt)),
                asyncio.create_task(_checkpointer(rt)),
                asyncio.create_task(_notifier(rt)),
            ]
            if background
            else []
        )
        log.info("gateway.started", issuer=settings.issuer, demo=settings.demo)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await close_runtime(rt)

    routes: list[Route | Mount] = [
        # First: nearly every request is a transfer, and Starlette tries the
        # routes in order, matching each one's pattern (no other route starts
        # with /data/, so the order changes no outcome).
        Route("/data/{provider}/{resource}", data, methods=["GET"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/openapi.json", openapi_document),
        Route("/.well-known/oauth-authorization-server", metadata.metadata),
        Route("/.well-known/jwks.json", metadata.jwks),
        Route("/oauth/authorize", authorize),
        Route("/oauth/par", par, methods=["POST"]),
        Route("/oauth/token", token, methods=["POST"]),
        Route("/oauth/revoke", revoke, methods=["POST"]),
        Route("/consent/{consent_id}", pages.consent_page, methods=["GET"]),
        Route("/consent/{consent_id}", pages.consent_decision, methods=["POST"]),
        Route("/login/callback", pages.login_callback),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/me", pages.me),
        Route("/me/consents/{consent_id}/revoke", pages.revoke_form, methods=["POST"]),
        Route("/me/consents/{consent_id}/receipt", pages.receipt_download),
        Route("/api/me/consents", pages.api_consents),
        Route("/api/me/consents/{consent_id}/receipt", pages.api_receipt),
        Route("/api/me/transfers", pages.api_transfers),
        Route("/api/me/consents/{consent_id}/revoke", pages.api_revoke, methods=["POST"]),
        Route("/trail/checkpoint", audit.checkpoint),
        Route("/trail/verifier-key", audit.verifier_key),
        Route("/trail/proof/inclusion", audit.inclusion_proof),
        Route("/trail/proof/consistency", audit.consistency_proof),
        Route("/trail/entries/{index}", audit.entry),
        Route("/audit/events", audit.events),
        Route("/audit/export", audit.export),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    if settings.demo:
        routes.append(Mount("/demo-idp", app=_DemoIdentityProviderMount()))
    # What a route puts in the scope as its endpoint → its template (the
    # metrics' ``handler`` label: bounded, and never an id from a path).
    templates = {
        id(route.endpoint if isinstance(route, Route) else route.app): route.path
        for route in routes
    }

    def observe(scope: Scope, status: int, seconds: float) -> None:
        rt: Runtime | None = getattr(scope["app"].state, "runtime", None)
        if rt is not None:
            handler = templates.get(id(scope.get("endpoint")), metrics.UNMATCHED)
            rt.metrics.request(handler, status, seconds)

    return Starlette(
        routes=routes,
        middleware=[Middleware(logs.RequestContextMiddleware, observe=observe)],
        exception_handlers={
            LoginFailed: _login_failed,
            404: _not_found,
            405: _method_not_allowed,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
