"""``POST /oauth/token``: an authorization code becomes a DPoP-bound consent token.

Checks, in order:

    (1) the DPoP proof (RFC 9449 §5): htm POST, htu = the token endpoint, no ath
    (2) the client: private_key_jwt (RFC 7523) with a single-use jti
    (3) the proof's jti is used once
    (4) the grant: code known, unused, unexpired, same client and redirect_uri,
        PKCE S256 verifier (RFC 7636 §4.6); a replayed code revokes its consent
    (5) the consent is active; mint the token bound to the proof's key
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import select, update
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import dpop, replay
from gateway.consents import Consent, ConsentState, details_to_json
from gateway.errors import OAuthError, Unauthenticated
from gateway.jose import b64url_encode
from gateway.policy.model import Client
from gateway.runtime import Runtime
from gateway.storage.models import authorization_codes, subjects
from gateway.subjects import pairwise_subject
from gateway.tokens import (
    AUDIT_SCOPE,
    mint_audit_token,
    mint_consent_token,
    unverified_client_id,
    verify_client_assertion,
)
from gateway.trail import EventType, TrailEvent
from gateway.trail.writer import Tx

log = structlog.get_logger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error(error: OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def form_field(form: FormData, name: str) -> str | None:
    """A form parameter given at most once (RFC 6749 §3.2), or None when absent or empty."""
    values = form.getlist(name)
    if len(values) > 1:
        raise OAuthError("invalid_request", f"parameter {name} given more than once")
    value = values[0] if values else None
    return value if isinstance(value, str) and value else None


async def authenticate_client(
    rt: Runtime, form: FormData, now: datetime, *, endpoint: str = "/oauth/token"
) -> Client:
    """private_key_jwt (RFC 7523 §2.2) with a single-use assertion.

    The assertion's ``aud`` is the issuer or the token endpoint; at another
    endpoint (PAR, revocation) that endpoint's URL is accepted too (RFC 9126 §2:
    the server "MUST accept its issuer identifier, token endpoint URL, or pushed
    authorization request endpoint URL").
    """
    if form_field(form, "client_assertion_type") != JWT_BEARER:
        raise OAuthError("invalid_client", "private_key_jwt client authentication required", 401)
    assertion = form_field(form, "client_assertion")
    if assertion is None:
        raise OAuthError("invalid_client", "client_assertion missing", 401)
    client_id = unverified_client_id(assertion)
    claimed = form_field(form, "client_id")
    if claimed is not None and claimed != client_id:
        raise OAuthError("invalid_client", "client_id does not match the assertion", 401)
    client = rt.policy.clients.get(client_id)
    if client is None:
        raise OAuthError("invalid_client", "unknown client", 401)
    audiences = {rt.settings.issuer, rt.url("/oauth/token"), rt.url(endpoint)}
    keys = await rt.client_keys.keys(client)
    try:
        verified = verify_client_assertion(
            assertion,
            client_keys=keys,
            expected_client_id=client.id,
            audiences=audiences,
            now=now.timestamp(),
        )
    except OAuthError:
        # The client may have rotated its keys: look once more, then give up.
        keys = await rt.client_keys.keys(client, refresh=True)
        verified = verify_client_assertion(
            assertion,
            client_keys=keys,
            expected_client_id=client.id,
            audiences=audiences,
            now=now.timestamp(),
        )
    if not await replay.use_once(
        rt.engine,
        kind="client_assertion",
        issuer=client.id,
        jti=verified.jti,
        expires_at=datetime.fromtimestamp(verified.exp, UTC) + timedelta(minutes=1),
    ):
        raise OAuthError("invalid_client", "client assertion already used (jti replay)", 401)
    return client


async def token(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    client_id: str | None = None
    try:
        form = await request.form()
        now = rt.now()
        # (1) DPoP proof: FAPI 2.0 sender-constrained tokens
        try:
            proof = dpop.verify_proof(
                request.headers.getlist("dpop") or None,
                method="POST",
                url=rt.url("/oauth/token"),
                now=now.timestamp(),
            )
        except Unauthenticated as exc:
            raise OAuthError("invalid_dpop_proof", exc.detail) from None
        # (2) the client
        client = await authenticate_client(rt, form, now)
        client_id = client.id
        # (3) the proof is used once
        if not await replay.use_once(
            rt.engine,
            kind="dpop",
            issuer=proof.jkt,
            jti=proof.jti,
            expires_at=now + timedelta(seconds=dpop.DPOP_MAX_AGE_SECONDS + 60),
        ):
            raise OAuthError("invalid_dpop_proof", "DPoP proof jti already used")
        grant_type = form_field(form, "grant_type")
        if grant_type == "client_credentials":
            return await _audit_grant(rt, client, form, proof.jkt)
        if grant_type != "authorization_code":
            raise OAuthError(
                "unsupported_grant_type",
                "use authorization_code, or client_credentials for auditors",
            )
        if client.role != "service_provider":
            raise OAuthError("unauthorized_client", "this client may not use authorization_code")
        return await _code_grant(rt, client, form, proof.jkt)
    except OAuthError as exc:
        await rt.record(
            TrailEvent(
                EventType.REQUEST_REFUSED,
                client_id=client_id,
                details={"endpoint": "token", "code": exc.error},
            )
        )
        return oauth_error(exc)


async def _audit_grant(rt: Runtime, client: Client, form: FormData, jkt: str) -> Response:
    """client_credentials with scope audit:read, for clients whose role is auditor."""
    if client.role != "auditor":
        raise OAuthError("unauthorized_client", "only auditors may use client_credentials")
    scope = (form_field(form, "scope") or "").split()
    if scope != [AUDIT_SCOPE]:
        raise OAuthError("invalid_scope", f"scope must be {AUDIT_SCOPE}")
    lifetime = rt.settings.token_lifetime_seconds
    access_token, minted = mint_audit_token(
        rt.keys.active,
        issuer=rt.settings.issuer,
        audience=rt.audit_audience,
        client_id=client.id,
        jkt=jkt,
        scope=scope,
        lifetime=lifetime,
        now=rt.now().timestamp(),
    )
    await rt.record(
        TrailEvent(
            EventType.TOKEN_ISSUED,
            client_id=client.id,
            details={"jti": minted.jti, "jkt": jkt, "expires_in": lifetime, "scope": AUDIT_SCOPE},
        )
    )
    return JSONResponse(
        {
            "access_token": access_token,
            "token_type": "DPoP",
            "expires_in": lifetime,
            "scope": AUDIT_SCOPE,
        },
        headers=NO_STORE,
    )


def _pkce_ok(verifier: str, challenge: str) -> bool:
    # RFC 7636 §4.1: 43..128 characters from the unreserved set.
    if not 43 <= len(verifier) <= 128:
        return False
    computed = b64url_encode(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
    return hmac.compare_digest(computed, challenge)


async def _code_grant(rt: Runtime, client: Client, form: FormData, jkt: str) -> Response:
    code = form_field(form, "code")
    verifier = form_field(form, "code_verifier")
    redirect_uri = form_field(form, "redirect_uri")
    if code is None or verifier is None or redirect_uri is None:
        raise OAuthError("invalid_request", "code, code_verifier and redirect_uri are required")
    code_hash = hashlib.sha256(code.encode()).hexdigest()

    async def redeem(tx: Tx) -> OAuthError | tuple[str, int, Consent]:
        """Mark the code used and mint the token; a refusal is returned, not raised,
        so that marking the code used (or revoking on replay) still commits."""
        conn, now = tx.conn, tx.now
        row = (
            await conn.execute(
                select(authorization_codes).where(authorization_codes.c.code_hash == code_hash)
            )
        ).first()
        if row is None:
            return OAuthError("invalid_grant", "unknown authorization code")
        used = await conn.execute(
            update(authorization_codes)
            .where(
                authorization_codes.c.code_hash == code_hash,
                authorization_codes.c.used_at.is_(None),
            )
            .values(used_at=now)
        )
        consent = await rt.consents.get(conn, row.consent_id)
        assert consent is not None
        if used.rowcount != 1:
            # RFC 6749 §4.1.2: "If an authorization code is used more than once, the
            # authorization server ... SHOULD revoke (when possible) all tokens
            # previously issued based on that authorization code."
            await rt.consents.end(tx, consent, to=ConsentState.REVOKED, reason="code_replayed")
            return OAuthError("invalid_grant", "authorization code already used")
        if row.expires_at <= now:
            return OAuthError("invalid_grant", "authorization code expired")
        if row.client_id != client.id:
            return OAuthError("invalid_grant", "authorization code issued to another client")
        if row.redirect_uri != redirect_uri:
            return OAuthError(
                "invalid_grant", "redirect_uri differs from the authorization request"
            )
        if not _pkce_ok(verifier, row.code_challenge):
            return OAuthError("invalid_grant", "PKCE code_verifier does not match")
        if consent.state != ConsentState.ACTIVE or consent.expires_at <= now:
            return OAuthError("invalid_grant", f"the consent is {consent.state}")
        lookup = (
            await conn.execute(select(subjects.c.lookup).where(subjects.c.id == consent.subject_id))
        ).scalar_one()
        lifetime = min(
            rt.settings.token_lifetime_seconds,
            max(1, int((consent.expires_at - now).total_seconds())),
        )
        access_token, minted = mint_consent_token(
            rt.keys.active,
            issuer=rt.settings.issuer,
            audience=rt.token_audience,
            client_id=client.id,
            sub=pairwise_subject(rt.keys.pseudonym_secret, "client", client.id, lookup),
            consent_id=consent.id,
            jkt=jkt,
            authorization_details=details_to_json(consent.details),
            acr=consent.acr,
            lifetime=lifetime,
            now=now.timestamp(),
        )
        await tx.record(
            [
                TrailEvent(
                    EventType.TOKEN_ISSUED,
                    client_id=client.id,
                    consent_id=consent.id,
                    details={"jti": minted.jti, "jkt": jkt, "expires_in": lifetime},
                )
            ]
        )
        return access_token, lifetime, consent

    outcome = await rt.writer.run(redeem)
    if isinstance(outcome, OAuthError):
        raise outcome
    access_token, lifetime, consent = outcome
    log.info("token.issued", client_id=client.id)
    return JSONResponse(
        {
            "access_token": access_token,
            "token_type": "DPoP",
            "expires_in": lifetime,
            "authorization_details": details_to_json(consent.details),
            "consent_id": consent.id,
        },
        headers=NO_STORE,
    )
