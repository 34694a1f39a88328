"""The person's pages: login, the consent screen, "my data", revocation.

Every page a person can reach answers with a readable page in their language
(never a stack trace), sends the security headers of :mod:`gateway.web.render`,
and every state-changing form carries the session's CSRF token.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import structlog
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from gateway import consents as consent_ops
from gateway.consents import Consent, ConsentState
from gateway.errors import LoginFailed
from gateway.policy.decision import AuthorizationDetail
from gateway.policy.model import acr_rank
from gateway.runtime import Runtime
from gateway.storage.engine import write_first
from gateway.storage.models import authorization_codes, transfers
from gateway.subjects import subject_lookup
from gateway.trail import EventType, TrailEvent
from gateway.trail.writer import Tx
from gateway.web import session as sessions
from gateway.web.i18n import Lang, choose, error_text, legal_basis_label, translate
from gateway.web.render import (
    render_consent,
    render_error,
    render_me,
    render_message,
    security_headers,
)
from gateway.web.views import (
    ConsentPageView,
    ConsentSummary,
    ErrorPageView,
    MePageView,
    MessagePageView,
    ProviderView,
    ResourceView,
    TransferView,
)

log = structlog.get_logger(__name__)


def _rt(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def page_lang(request: Request, form_lang: str | None = None) -> Lang:
    """``?lang=`` (or a form's hidden ``lang``) wins over Accept-Language."""
    return choose(
        form_lang or request.query_params.get("lang"), request.headers.get("accept-language")
    )


def html(body: str, status: int = 200, *, form_action: Sequence[str] = ()) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=security_headers(form_action))


def error_page(
    request: Request, status: int, code: str, *, back_url: str | None = None
) -> Response:
    """A readable error page; ``code`` selects the explanation shown to the person."""
    lang = page_lang(request)
    # Codes without their own explanation (unknown_client, ...) get their status's.
    title, detail = error_text(lang, code, status)
    view = ErrorPageView(status=status, title=title, detail=detail, code=code, back_url=back_url)
    return html(render_error(view, lang, page_url=request.url.path), status)


async def _refused(rt: Runtime, endpoint: str, code: str, **ids: str | None) -> None:
    await rt.record(
        TrailEvent(
            EventType.REQUEST_REFUSED,
            client_id=ids.get("client_id"),
            consent_id=ids.get("consent_id"),
            details={"endpoint": endpoint, "code": code},
        )
    )


def _safe_next(path: str | None) -> str:
    """Only local paths: the login must not become an open redirect."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/me"
    return path


async def start_login(rt: Runtime, next_path: str) -> Response:
    """Send the browser to the identity provider, remembering where to come back."""
    try:
        url, login = await rt.identity.begin()
    except LoginFailed:
        log.warning("login.identity_provider_unavailable")
        raise
    raw = await sessions.start(rt, {**login.to_dict(), "next": _safe_next(next_path)})
    response = RedirectResponse(url, status_code=303)
    sessions.set_cookie(rt, response, sessions.COOKIE, raw, rt.settings.session_lifetime_seconds)
    return response


async def login_callback(request: Request) -> Response:
    from gateway.identity import LoginRequest

    rt = _rt(request)
    session = await sessions.load(rt, request)
    if session is None or session.login is None:
        return error_page(request, 400, "login_expired")
    params = dict(request.query_params)
    try:
        identity = await rt.identity.complete(params, LoginRequest.from_dict(session.login))
    except LoginFailed as exc:
        log.info("login.failed", code=exc.code)
        await sessions.clear_login(rt, session)
        code = exc.code if exc.code in {"login_cancelled"} else "login_failed"
        return error_page(request, 400, code)
    lookup = subject_lookup(rt.keys.pseudonym_secret, identity.issuer, identity.subject)
    # Read-then-insert: take the write lock first (SQLite) so two logins cannot race.
    async with write_first(rt.engine).begin() as conn:
        subject_id = await consent_ops.ensure_subject(conn, lookup, rt.now())
    raw = await sessions.log_in(
        rt, session, subject_id=subject_id, acr=identity.acr, claims=dict(identity.claims)
    )
    log.info("login.completed", acr=identity.acr)
    response = RedirectResponse(_safe_next(session.login.get("next")), status_code=303)
    sessions.set_cookie(rt, response, sessions.COOKIE, raw, rt.settings.session_lifetime_seconds)
    return response


async def logout(request: Request) -> Response:
    rt = _rt(request)
    session = await sessions.load(rt, request)
    form = await request.form()
    if session is None:
        return RedirectResponse("/me", status_code=303)
    if not session.csrf_ok(_form_str(form.get("csrf_token"))):
        return error_page(request, 403, "csrf")
    await sessions.end(rt, session)
    response = html(
        render_message(
            MessagePageView(
                title=translate(page_lang(request), "logout.title"),
                body=translate(page_lang(request), "logout.body"),
                link_url="/me",
                link_label=None,
            ),
            page_lang(request),
            page_url="/logout",
        )
    )
    response.delete_cookie(sessions.COOKIE, path="/")
    return response


def _form_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------- consent screen


def _provider_views(
    rt: Runtime, details: Sequence[AuthorizationDetail], lang: Lang
) -> tuple[ProviderView, ...]:
    views = []
    for detail in details:
        provider = rt.policy.providers.get(detail.provider)
        if provider is None:
            continue
        resources = []
        for rid in detail.resources:
            resource = provider.resources.get(rid)
            if resource is not None:
                resources.append(
                    ResourceView(
                        label=resource.label.in_(lang),
                        fields=tuple(f.label.in_(lang) for f in resource.fields),
                    )
                )
        views.append(
            ProviderView(
                name=provider.name, resources=tuple(resources), max_transfers=detail.max_transfers
            )
        )
    return tuple(views)


async def _pending_consent(request: Request, rt: Runtime) -> tuple[Consent | None, Response | None]:
    consent_id = request.path_params["consent_id"]
    async with rt.engine.connect() as conn:
        consent = await rt.consents.get(conn, consent_id)
    if consent is None:
        return None, error_page(request, 404, "consent_unknown")
    binding = sessions.browser_binding(request)
    if binding is None or not secrets.compare_digest(binding, consent.browser_binding):
        return None, error_page(request, 403, "other_browser")
    if consent.state != ConsentState.PENDING:
        return None, error_page(request, 409, "already_decided", back_url="/me")
    if consent.expires_at <= rt.now():
        return None, error_page(request, 410, "request_expired")
    return consent, None


async def consent_page(request: Request) -> Response:
    rt = _rt(request)
    consent, problem = await _pending_consent(request, rt)
    if problem is not None:
        return problem
    assert consent is not None
    session = await sessions.load(rt, request)
    if session is None or not session.logged_in:
        return await start_login(rt, request.url.path)
    if _acr_too_low(rt, consent, session.acr):
        return await _refuse_low_assurance(request, rt, consent, session)
    lang = page_lang(request)
    client = rt.policy.clients[consent.client_id]
    purpose = rt.policy.purposes[consent.purpose]
    view = ConsentPageView(
        consent_id=consent.id,
        client_name=client.name,
        purpose_label=purpose.label.in_(lang),
        purpose_description=purpose.description.in_(lang),
        legal_basis_label=legal_basis_label(lang, purpose.legal_basis),
        retention_days=purpose.retention_days,
        providers=_provider_views(rt, consent.details, lang),
        expires_at=rt.now() + timedelta(seconds=purpose.max_validity_seconds),
        person_display_name=session.display_name,
        acr=session.acr,
        action_url=f"/consent/{consent.id}",
        csrf_token=session.csrf,
    )
    return html(
        render_consent(view, lang, page_url=request.url.path),
        form_action=[consent.redirect_uri],
    )


def _acr_too_low(rt: Runtime, consent: Consent, acr: str | None) -> bool:
    """A provider of the request needs a higher level of assurance than this login's.

    Said before the grant, so nobody consents to transfers that would all be refused.
    """
    return any(
        acr_rank(acr) < acr_rank(rt.policy.providers[d.provider].min_acr)
        for d in consent.details
        if d.provider in rt.policy.providers
    )


def _client_url(rt: Runtime, consent: Consent, params: dict[str, str]) -> str:
    if consent.client_state is not None:
        params["state"] = consent.client_state
    # RFC 9207: the authorization response names its issuer.
    params["iss"] = rt.settings.issuer
    return f"{consent.redirect_uri}?{urlencode(params)}"


def _redirect_to_client(rt: Runtime, consent: Consent, params: dict[str, str]) -> Response:
    return RedirectResponse(_client_url(rt, consent, params), status_code=303)


async def _refuse_low_assurance(
    request: Request, rt: Runtime, consent: Consent, session: sessions.PersonSession
) -> Response:
    """End the request (the service learns it was refused) and tell the person why."""
    subject_id = session.subject_id
    assert subject_id is not None

    async def deny(tx: Tx) -> bool:
        return await rt.consents.deny(tx, consent, subject_id=subject_id)

    await rt.writer.run(deny)
    back = _client_url(
        rt,
        consent,
        {"error": "access_denied", "error_description": "level of assurance too low"},
    )
    return error_page(request, 403, "acr_insufficient", back_url=back)


async def consent_decision(request: Request) -> Response:
    rt = _rt(request)
    consent, problem = await _pending_consent(request, rt)
    if problem is not None:
        return problem
    assert consent is not None
    session = await sessions.load(rt, request)
    form = await request.form()
    if session is None or not session.logged_in:
        return error_page(request, 401, "login_required")
    if not session.csrf_ok(_form_str(form.get("csrf_token"))):
        await _refused(
            rt, "consent", "csrf_failed", client_id=consent.client_id, consent_id=consent.id
        )
        return error_page(request, 403, "csrf")
    decision = form.get("decision")
    subject_id = session.subject_id
    assert subject_id is not None
    if decision == "deny":

        async def deny(tx: Tx) -> bool:
            return await rt.consents.deny(tx, consent, subject_id=subject_id)

        await rt.writer.run(deny)
        return _redirect_to_client(
            rt,
            consent,
            {"error": "access_denied", "error_description": "the person refused"},
        )
    if decision != "grant":
        return error_page(request, 400, "bad_decision")
    if _acr_too_low(rt, consent, session.acr):
        return await _refuse_low_assurance(request, rt, consent, session)
    purpose = rt.policy.purposes[consent.purpose]
    needed = {c for d in consent.details for c in rt.policy.providers[d.provider].identity_claims}
    claims = {k: v for k, v in (session.claims or {}).items() if k in needed}
    code = secrets.token_urlsafe(32)
    acr = session.acr

    async def grant(tx: Tx) -> bool:
        now = tx.now
        granted = await rt.consents.grant(
            tx,
            consent,
            subject_id=subject_id,
            acr=acr,
            sealed_claims=rt.claims_box.seal(claims, consent.id),
            expires_at=now + timedelta(seconds=purpose.max_validity_seconds),
        )
        if granted is not None:
            await tx.conn.execute(
                authorization_codes.insert().values(
                    code_hash=_code_hash(code),
                    consent_id=consent.id,
                    client_id=consent.client_id,
                    redirect_uri=consent.redirect_uri,
                    code_challenge=consent.code_challenge,
                    expires_at=now + timedelta(seconds=rt.settings.code_lifetime_seconds),
                )
            )
        return granted is not None

    if not await rt.writer.run(grant):
        return error_page(request, 409, "already_decided", back_url="/me")
    return _redirect_to_client(rt, consent, {"code": code})


def _code_hash(code: str) -> str:
    import hashlib

    return hashlib.sha256(code.encode()).hexdigest()


# --------------------------------------------------------------------------- my data


async def _transfers_by_consent(
    rt: Runtime, subject_id: str, lang: Lang
) -> dict[str, list[TransferView]]:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(transfers)
            .where(transfers.c.subject_id == subject_id)
            .order_by(transfers.c.created_at.desc())
        )
        result: dict[str, list[TransferView]] = {}
        for row in rows:
            provider = rt.policy.providers.get(row.provider)
            resource = provider.resources.get(row.resource) if provider else None
            result.setdefault(row.consent_id, []).append(
                TransferView(
                    at=row.created_at,
                    provider_name=provider.name if provider else row.provider,
                    resource_label=resource.label.in_(lang) if resource else row.resource,
                    outcome=row.state,
                    reason=row.error_code if row.state in ("denied", "failed") else None,
                )
            )
    return result


def _summary(
    rt: Runtime, consent: Consent, lang: Lang, history: list[TransferView]
) -> ConsentSummary:
    client = rt.policy.clients.get(consent.client_id)
    purpose = rt.policy.purposes.get(consent.purpose)
    return ConsentSummary(
        consent_id=consent.id,
        client_name=client.name if client else consent.client_id,
        purpose_label=purpose.label.in_(lang) if purpose else consent.purpose,
        state=str(consent.state),
        providers=_provider_views(rt, consent.details, lang),
        transfers_used=consent.transfers_used,
        transfers_allowed=consent.transfers_allowed,
        created_at=consent.created_at,
        expires_at=consent.expires_at,
        ended_at=consent.ended_at,
        revoke_url=(
            f"/me/consents/{consent.id}/revoke" if consent.state == ConsentState.ACTIVE else None
        ),
        transfers=tuple(history),
        receipt_url=(
            f"/me/consents/{consent.id}/receipt" if consent.granted_index is not None else None
        ),
    )


async def _my_consents(rt: Runtime, subject_id: str) -> list[Consent]:
    async with rt.engine.connect() as conn:
        return [
            c
            for c in await rt.consents.for_subject(conn, subject_id)
            if c.state != ConsentState.PENDING
        ]


async def me(request: Request) -> Response:
    rt = _rt(request)
    session = await sessions.load(rt, request)
    if session is None or not session.logged_in:
        return await start_login(rt, "/me")
    assert session.subject_id is not None
    lang = page_lang(request)
    mine = await _my_consents(rt, session.subject_id)
    history = await _transfers_by_consent(rt, session.subject_id, lang)
    summaries = [_summary(rt, c, lang, history.get(c.id, [])) for c in mine]
    notice = request.query_params.get("notice")
    view = MePageView(
        person_display_name=session.display_name,
        active=tuple(s for s in summaries if s.state == ConsentState.ACTIVE),
        past=tuple(s for s in summaries if s.state != ConsentState.ACTIVE),
        csrf_token=session.csrf,
        logout_url="/logout",
        notice=translate(lang, "me.notice.revoked") if notice == "revoked" else None,
    )
    return html(render_me(view, lang, page_url="/me"))


async def _revoke(rt: Runtime, subject_id: str, consent_id: str) -> str:
    """Revoke one of the person's consents: "revoked", "already_ended" or "not_found"."""

    async def revoke(tx: Tx) -> str:
        consent = await rt.consents.get(tx.conn, consent_id)
        # Another person's consent is indistinguishable from a missing one.
        if consent is None or consent.subject_id != subject_id:
            return "not_found"
        if consent.state != ConsentState.ACTIVE:
            return "already_ended"
        done = await rt.consents.end(tx, consent, to=ConsentState.REVOKED, reason="person_revoked")
        return "revoked" if done else "already_ended"

    return await rt.writer.run(revoke)


async def revoke_form(request: Request) -> Response:
    rt = _rt(request)
    session = await sessions.load(rt, request)
    form = await request.form()
    if session is None or not session.logged_in:
        return error_page(request, 401, "login_required")
    consent_id = request.path_params["consent_id"]
    if not session.csrf_ok(_form_str(form.get("csrf_token"))):
        await _refused(rt, "revoke", "csrf_failed", consent_id=consent_id)
        return error_page(request, 403, "csrf", back_url="/me")
    assert session.subject_id is not None
    outcome = await _revoke(rt, session.subject_id, consent_id)
    if outcome == "not_found":
        return error_page(request, 404, "consent_unknown", back_url="/me")
    lang = page_lang(request, _form_str(form.get("lang")))
    return RedirectResponse(f"/me?notice=revoked&lang={lang}", status_code=303)


# --------------------------------------------------------------------------- JSON twin


def _problem(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": f"urn:gateway:error:{code}", "title": detail, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def _consent_json(rt: Runtime, consent: Consent) -> dict[str, Any]:
    return {
        "id": consent.id,
        "client_id": consent.client_id,
        "client_name": rt.policy.clients[consent.client_id].name
        if consent.client_id in rt.policy.clients
        else consent.client_id,
        "purpose": consent.purpose,
        "state": str(consent.state),
        "authorization_details": consent_ops.details_to_json(consent.details),
        "transfers_used": consent.transfers_used,
        "transfers_allowed": consent.transfers_allowed,
        "created_at": consent.created_at.isoformat(),
        "expires_at": consent.expires_at.isoformat(),
        "ended_at": consent.ended_at.isoformat() if consent.ended_at else None,
    }


async def api_consents(request: Request) -> Response:
    rt = _rt(request)
    session = await sessions.load(rt, request)
    if session is None or not session.logged_in:
        return _problem(401, "login_required", "log in first")
    assert session.subject_id is not None
    mine = await _my_consents(rt, session.subject_id)
    return JSONResponse(
        {"consents": [_consent_json(rt, c) for c in mine], "csrf_token": session.csrf},
        headers={"Cache-Control": "no-store"},
    )


async def api_transfers(request: Request) -> Response:
    rt = _rt(request)
    session = await sessions.load(rt, request)
    if session is None or not session.logged_in:
        return _problem(401, "login_required", "log in first")
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(transfers)
            .where(transfers.c.subject_id == session.subject_id)
            .order_by(transfers.c.created_at.desc())
        )
        items = [
            {
                "id": r.id,
                "consent_id": r.consent_id,
                "client_id": r.client_id,
                "provider": r.provider,
                "resource": r.resource,
                "outcome": r.state,
                "error_code": r.error_code,
                "at": r.created_at.isoformat(),
            }
            for r in rows
        ]
    return JSONResponse({"transfers": items}, headers={"Cache-Control": "no-store"})


async def api_revoke(request: Request) -> Response:
    rt = _rt(request)
    session = await sessions.load(rt, request)
    consent_id = request.path_params["consent_id"]
    if session is None or not session.logged_in:
        return _problem(401, "login_required", "log in first")
    if not session.csrf_ok(request.headers.get("x-csrf-token")):
        await _refused(rt, "revoke", "csrf_failed", consent_id=consent_id)
        return _problem(403, "csrf_failed", "X-CSRF-Token header missing or wrong")
    assert session.subject_id is not None
    outcome = await _revoke(rt, session.subject_id, consent_id)
    if outcome == "not_found":
        return _problem(404, "consent_not_found", "no such consent")
    async with rt.engine.connect() as conn:
        consent = await rt.consents.get(conn, consent_id)
    assert consent is not None
    return JSONResponse(_consent_json(rt, consent))


# --------------------------------------------------------------------------- receipts


async def _my_granted_consent(request: Request) -> tuple[Runtime, Consent | None, Response | None]:
    rt = _rt(request)
    session = await sessions.load(rt, request)
    if session is None or not session.logged_in:
        return rt, None, _problem(401, "login_required", "log in first")
    async with rt.engine.connect() as conn:
        consent = await rt.consents.get(conn, request.path_params["consent_id"])
    if consent is None or consent.subject_id != session.subject_id:
        return rt, None, _problem(404, "consent_not_found", "no such consent")
    return rt, consent, None


async def receipt_download(request: Request) -> Response:
    """The signed receipt of one of the person's consents, as a file to keep."""
    from gateway.receipts import ReceiptUnavailable, issue_receipt

    rt, consent, problem = await _my_granted_consent(request)
    if problem is not None:
        return problem
    assert consent is not None
    try:
        token = await issue_receipt(rt, consent)
    except ReceiptUnavailable:
        return _problem(409, "receipt_unavailable", "this consent was never granted")
    return Response(
        token + "\n",
        media_type="application/jwt",
        headers={
            "Content-Disposition": f'attachment; filename="consent-receipt-{consent.id}.jwt"',
            "Cache-Control": "no-store",
        },
    )


async def api_receipt(request: Request) -> Response:
    from gateway.receipts import ReceiptUnavailable, issue_receipt

    rt, consent, problem = await _my_granted_consent(request)
    if problem is not None:
        return problem
    assert consent is not None
    try:
        token = await issue_receipt(rt, consent)
    except ReceiptUnavailable:
        return _problem(409, "receipt_unavailable", "this consent was never granted")
    return JSONResponse({"receipt": token}, headers={"Cache-Control": "no-store"})
