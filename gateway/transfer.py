"""The transfer path: one request from a service provider to a data provider.

Read :func:`transfer` top to bottom to audit the order of checks (DESIGN §3):

    (1) authenticate the caller: DPoP proof (typ, alg, signature, htm, htu, iat, ath)
    (2) verify the consent token: alg allowlist, kid, iss, aud, exp, typ at+jwt;
        the proof's key is the token's cnf.jkt; its jti is spent once, in (5)'s
        unit of work (or with the denial), so a replay loses even a race
    (3) load the consent: same client, active, not expired, resource covered, uses left
    (4) policy decision: client may still ask this resource for this purpose,
        acr high enough, query parameters allowlisted
    (5) consume one use + record ``transfer.authorized`` — one transaction, durable before (6);
        (3) to (5) run as one unit of work in the trail writer's thread, in plain SQL
    (6) relay to the provider's fixed URL with a gateway-signed assertion
    (7) minimise: keep only the fields the consented resource releases
    (8) record ``transfer.completed`` / ``transfer.failed``; end the consent once used up

Any failed step stops the path with a problem response and a
``transfer.denied`` trail entry naming the step and the code. If the trail
cannot be written at (5), nothing is relayed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from gateway import dpop, replay
from gateway.consents import Consent, ConsentState, new_id, subject_pseudonym
from gateway.errors import (
    Forbidden,
    GatewayError,
    NotFound,
    QueryNotAllowed,
    ServiceUnavailable,
    Unauthenticated,
    UpstreamError,
)
from gateway.minimise import minimise
from gateway.policy.decision import Deny, decide_transfer
from gateway.policy.model import IDENTITY_CLAIMS, Provider, Resource
from gateway.runtime import Runtime
from gateway.storage.sql import Sql, Statement
from gateway.subjects import pairwise_subject, trail_pseudonym
from gateway.tokens import ConsentToken, mint_provider_assertion, verify_consent_token
from gateway.trail import EventType, TrailEvent
from gateway.trail.writer import Tx

log = structlog.get_logger(__name__)

# A proof's jti is remembered for as long as the proof could be accepted.
DPOP_JTI_RETENTION = timedelta(seconds=dpop.DPOP_MAX_AGE_SECONDS + 60)


@dataclass(frozen=True)
class TransferRequest:
    method: str
    path: str  # the request path, no query: htu = GATEWAY_ISSUER + path
    provider: str
    resource: str
    query: Sequence[tuple[str, str]]
    authorization: str | None
    dpop_proofs: Sequence[str]
    request_id: str


@dataclass(frozen=True)
class TransferResult:
    transfer_id: str
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    # The exact JSON bytes delivered: the trail's ``delivered_sha256`` is their digest.
    content: bytes = b"{}"


@dataclass
class _Seen:
    """What the path has learnt so far; recorded with a denial."""

    transfer_id: str
    step: int = 1
    token: ConsentToken | None = None
    proof: dpop.DpopProof | None = None
    consent: Consent | None = None


class _Denied(Exception):
    def __init__(self, step: int, error: GatewayError) -> None:
        super().__init__(error.code)
        self.step = step
        self.error = error


async def transfer(rt: Runtime, req: TransferRequest) -> TransferResult:
    """Run one transfer; return the minimised data or raise a GatewayError."""
    seen = _Seen(transfer_id=new_id())
    metrics = rt.metrics
    try:
        result = await _run(rt, req, seen)
    except _Denied as denied:
        await _record_denial(rt, req, seen, denied.step, denied.error)
        denied.error.extra["transfer_id"] = seen.transfer_id
        if denied.error.code == "trail_unavailable":
            metrics.transfer("trail_unavailable")
        else:
            metrics.denial(denied.step)
        raise denied.error from None
    except UpstreamError:
        metrics.transfer("provider_failed")
        raise
    except ServiceUnavailable:
        metrics.transfer("trail_unavailable")
        raise
    except NotFound as answer:
        if answer.code == "no_record":
            metrics.transfer("no_record")
        raise
    metrics.transfer("completed")
    return result


async def _run(rt: Runtime, req: TransferRequest, seen: _Seen) -> TransferResult:
    now = rt.now()
    ts = now.timestamp()

    # (1) authenticate the caller: the DPoP proof, bound to this request and token
    if not req.authorization:
        raise _Denied(1, Unauthenticated("token_missing", "Authorization: DPoP <token> required"))
    scheme, _, access_token = req.authorization.partition(" ")
    if scheme.lower() != "dpop" or not access_token.strip():
        raise _Denied(
            1, Unauthenticated("token_invalid", "use the DPoP authorization scheme (RFC 9449)")
        )
    access_token = access_token.strip()
    try:
        proof = dpop.verify_proof(
            list(req.dpop_proofs) or None,
            method=req.method,
            url=rt.url(req.path),
            now=ts,
            access_token=access_token,
        )
    except Unauthenticated as exc:
        raise _Denied(1, exc) from None

    # (2) the consent token, then the proof's key against the token's cnf.jkt
    seen.step = 2
    try:
        token = verify_consent_token(
            access_token,
            rt.token_keys,
            issuer=rt.settings.issuer,
            audience=rt.token_audience,
            now=ts,
        )
        dpop.check_binding(proof, token.jkt)
    except Unauthenticated as exc:
        raise _Denied(2, exc) from None
    seen.token = token
    # RFC 9449 §11.1: the server SHOULD refuse a proof whose jti it has seen. The
    # jti is recorded with step (5)'s unit of work (or with the denial), so it
    # costs no commit of its own; the database key makes it single-use.
    seen.proof = proof

    # (3)-(5) run as one unit of work in the trail writer's batch: the consent
    # is read, checked and consumed under the writer's lock, together with
    # the proof's jti and the transfer.authorized entry, durable before (6).
    seen.step = 3
    resource = rt.policy.resource(req.provider, req.resource)
    if resource is None:
        raise _Denied(3, NotFound("unknown_resource", "no such provider or resource"))
    provider = rt.policy.providers[req.provider]

    async def authorize(tx: Tx) -> tuple[Consent, str | None, str, dict[str, str]]:
        sql = tx.sql
        # One round trip: read the consent, and already spend the proof, take
        # the use and write the transfer's row. Any check below that fails
        # fails the unit, and the writer rolls a failed unit back, so none of
        # the three outlives a refusal (tests/e2e/test_transfer_refusals.py).
        rows, (proof_spent, use_taken, recorded) = sql.all_and_run(
            rt.consents.for_transfer_statement(token.consent_id),
            [
                _use_proof_statement(tx, proof),
                rt.consents.consume_statement(sql, token.consent_id, provider.id, tx.now),
                _authorized_statement(
                    sql,
                    transfer_id=seen.transfer_id,
                    consent_id=token.consent_id,
                    client_id=token.client_id,
                    provider=provider.id,
                    resource=resource.id,
                    request_id=req.request_id,
                    now=tx.now,
                ),
            ],
        )
        # (3) the live consent
        loaded = rt.consents.from_transfer_rows(sql, rows)
        if loaded is None or loaded[0].client_id != token.client_id:
            raise _Denied(3, Forbidden("consent_not_found", "the token's consent does not exist"))
        consent, lookup, secret = loaded
        seen.consent = consent
        _check_consent(consent, provider, resource, tx.now)

        # (4) policy decision
        seen.step = 4
        decision = decide_transfer(
            rt.policy,
            client_id=consent.client_id,
            purpose=consent.purpose,
            provider=provider.id,
            resource=resource.id,
            acr=consent.acr,
        )
        if isinstance(decision, Deny):
            raise _Denied(4, Forbidden(decision.code, decision.reason))
        query = _check_query(resource, req.query)

        # (5) the proof spent, one use taken, the transfer's row written (above)
        seen.step = 5
        if proof_spent != 1:
            raise _Denied(2, _replayed())
        if use_taken != 1:
            now_read = rt.consents.read_for_transfer(sql, consent.id)
            raise _Denied(5, _why_not_consumable(now_read[0] if now_read else None))
        if recorded != 1:  # the consent was read just above, for this client
            raise RuntimeError("the transfer's row was not written")
        subject = trail_pseudonym(secret)
        await tx.record(
            [
                TrailEvent(
                    EventType.TRANSFER_AUTHORIZED,
                    client_id=consent.client_id,
                    consent_id=consent.id,
                    transfer_id=seen.transfer_id,
                    provider=provider.id,
                    resource=resource.id,
                    subject=subject,
                    details={"purpose": consent.purpose, "request_id": req.request_id},
                )
            ]
        )
        assert lookup is not None  # an active consent has its subject
        return consent, subject, lookup, query

    try:
        consent, subject, lookup, query = await rt.writer.run(authorize)
    except _Denied:
        raise
    except Exception:
        # Fail closed: whatever kept the entry from being durable, nothing is relayed.
        log.exception("transfer.authorize_failed", transfer_id=seen.transfer_id)
        raise _Denied(
            5,
            ServiceUnavailable(
                "trail_unavailable", "the trail could not be written; nothing was relayed"
            ),
        ) from None

    # (6) relay to the provider
    assert consent.claims is not None and consent.subject_id is not None
    identity = rt.claims_box.open(consent.claims, consent.id)
    assertion = mint_provider_assertion(
        rt.keys.active,
        issuer=rt.settings.issuer,
        provider=provider.id,
        sub=pairwise_subject(rt.keys.pseudonym_secret, "provider", provider.id, lookup),
        identity={
            k: v
            for k, v in identity.items()
            if k in provider.identity_claims and k in IDENTITY_CLAIMS
        },
        resource=resource.id,
        purpose=consent.purpose,
        consent_id=consent.id,
        transfer_id=seen.transfer_id,
        client_id=consent.client_id,
        lifetime=rt.settings.provider_assertion_lifetime_seconds,
        now=ts,
    )
    try:
        answer = await rt.relay.fetch(
            provider, resource, query=query, assertion=assertion, transfer_id=seen.transfer_id
        )
    except UpstreamError as exc:
        # (8) failure: nothing reached the service provider, so the use is given back
        await _record_outcome(rt, consent, resource, seen.transfer_id, subject, failed=exc)
        exc.extra.update(transfer_id=seen.transfer_id, provider=provider.id)
        raise

    # (7) minimise
    delivered = minimise(answer.document, resource.pointers) if answer.status == 200 else {}
    body = json.dumps(delivered, ensure_ascii=False, separators=(",", ":")).encode()

    # (8) outcome
    await _record_outcome(
        rt,
        consent,
        resource,
        seen.transfer_id,
        subject,
        provider_status=answer.status,
        provider_size=answer.size,
        provider_sha256=answer.sha256,
        delivered=body,
    )
    if answer.status == 404:
        raise NotFound(
            "no_record",
            f"{provider.name} has no record for this person",
            transfer_id=seen.transfer_id,
            provider=provider.id,
        )
    return TransferResult(transfer_id=seen.transfer_id, status=200, body=delivered, content=body)


def _replayed() -> Unauthenticated:
    return Unauthenticated("dpop_proof_replayed", "DPoP proof jti already used")


def _use_proof(tx: Tx, proof: dpop.DpopProof) -> bool:
    return tx.sql.run(*_use_proof_statement(tx, proof)) == 1


def _use_proof_statement(tx: Tx, proof: dpop.DpopProof) -> Statement:
    return replay.use_once_statement(
        tx.sql,
        kind="dpop",
        issuer=proof.jkt,
        jti=proof.jti,
        expires_at=tx.now + DPOP_JTI_RETENTION,
    )


def _insert_transfer(
    sql: Sql,
    *,
    transfer_id: str,
    consent: Consent,
    provider: str,
    resource: str,
    request_id: str,
    state: str,
    now: datetime,
    http_status: int | None = None,
    error_code: str | None = None,
    finished: bool = False,
) -> None:
    """The person's record of one transfer (their dashboard lists these)."""
    stored_now = sql.time(now)
    sql.run(
        "INSERT INTO transfers (id, consent_id, client_id, subject_id, provider, resource,"
        " request_id, state, http_status, error_code, created_at, finished_at)"
        " VALUES (:id, :consent_id, :client_id, :subject_id, :provider, :resource,"
        " :request_id, :state, :http_status, :error_code, :created_at, :finished_at)",
        {
            "id": transfer_id,
            "consent_id": consent.id,
            "client_id": consent.client_id,
            "subject_id": consent.subject_id,
            "provider": provider,
            "resource": resource,
            "request_id": request_id,
            "state": state,
            "http_status": http_status,
            "error_code": error_code,
            "created_at": stored_now,
            "finished_at": stored_now if finished else None,
        },
    )


def _authorized_statement(
    sql: Sql,
    *,
    transfer_id: str,
    consent_id: str,
    client_id: str,
    provider: str,
    resource: str,
    request_id: str,
    now: datetime,
) -> Statement:
    """The ``authorized`` row of :func:`_insert_transfer`, its consent's columns read in place.

    It goes in the same round trip as the read of the consent, so the
    person's id comes from the consent's row (one row if the consent exists
    and is this client's, else none).
    """
    return (
        "INSERT INTO transfers (id, consent_id, client_id, subject_id, provider, resource,"
        " request_id, state, http_status, error_code, created_at, finished_at)"
        " SELECT :id, c.id, c.client_id, c.subject_id, :provider, :resource, :request_id,"
        " :state, NULL, NULL, :created_at, NULL FROM consents c"
        " WHERE c.id = :consent_id AND c.client_id = :client_id",
        {
            "id": transfer_id,
            "consent_id": consent_id,
            "client_id": client_id,
            "provider": provider,
            "resource": resource,
            "request_id": request_id,
            "state": "authorized",
            "created_at": sql.time(now),
        },
    )


def _check_consent(consent: Consent, provider: Provider, resource: Resource, now: datetime) -> None:
    if consent.state != ConsentState.ACTIVE:
        raise _Denied(3, _state_error(consent.state))
    if consent.expires_at <= now:
        raise _Denied(3, Forbidden("consent_expired", "the consent has expired"))
    detail = consent.detail_for(provider.id)
    if detail is None:
        raise _Denied(
            3, Forbidden("provider_not_consented", f"the consent does not cover {provider.id}")
        )
    if resource.id not in detail.resources:
        raise _Denied(
            3,
            Forbidden(
                "resource_not_consented",
                f"the consent does not cover {provider.id}/{resource.id}",
            ),
        )
    allowance = consent.allowances.get(provider.id)
    if allowance is None or allowance.uses_left <= 0:
        raise _Denied(3, Forbidden("consent_exhausted", "every consented transfer has been used"))


def _state_error(state: ConsentState) -> GatewayError:
    return {
        ConsentState.REVOKED: Forbidden("consent_revoked", "the person revoked this consent"),
        ConsentState.EXPIRED: Forbidden("consent_expired", "the consent has expired"),
        ConsentState.EXHAUSTED: Forbidden(
            "consent_exhausted", "every consented transfer has been used"
        ),
    }.get(state, Forbidden("consent_not_active", f"the consent is {state}"))


def _why_not_consumable(consent: Consent | None) -> GatewayError:
    """Name the reason a guarded consume lost a race (revoked, expired or used up)."""
    if consent is not None and consent.state != ConsentState.ACTIVE:
        return _state_error(consent.state)
    if consent is not None and any(a.uses_left > 0 for a in consent.allowances.values()):
        return Forbidden("consent_expired", "the consent has expired")
    return Forbidden("consent_exhausted", "every consented transfer has been used")


def _check_query(resource: Resource, query: Sequence[tuple[str, str]]) -> dict[str, str]:
    allowed: dict[str, str] = {}
    for name, value in query:
        pattern = resource.query.get(name)
        if pattern is None:
            raise _Denied(
                4, QueryNotAllowed("query_not_allowed", f"query parameter {name!r} is not allowed")
            )
        if name in allowed:
            raise _Denied(4, QueryNotAllowed("query_not_allowed", f"{name!r} given twice"))
        if not pattern.fullmatch(value):
            raise _Denied(
                4, QueryNotAllowed("query_not_allowed", f"value of {name!r} is not allowed")
            )
        allowed[name] = value
    return allowed


async def _record_outcome(
    rt: Runtime,
    consent: Consent,
    resource: Resource,
    transfer_id: str,
    subject: str | None,
    **outcome: Any,
) -> None:
    """Record step (8); if that fails, fail closed: no data leaves without its entry."""
    try:
        await _write_outcome(rt, consent, resource, transfer_id, subject, **outcome)
    except Exception:
        log.exception("transfer.outcome_not_recorded", transfer_id=transfer_id)
        raise ServiceUnavailable(
            "trail_unavailable",
            "the transfer's outcome could not be recorded; no data was delivered",
            transfer_id=transfer_id,
        ) from None


async def _write_outcome(
    rt: Runtime,
    consent: Consent,
    resource: Resource,
    transfer_id: str,
    subject: str | None,
    *,
    failed: UpstreamError | None = None,
    provider_status: int | None = None,
    provider_size: int | None = None,
    provider_sha256: str | None = None,
    delivered: bytes = b"",
) -> None:
    async def work(tx: Tx) -> None:
        sql = tx.sql
        if failed is not None:
            rt.consents.give_back(sql, consent.id, resource.provider)
            values: dict[str, Any] = {
                "state": "failed",
                "error_code": failed.code,
                "http_status": failed.status,
            }
            event = TrailEvent(
                EventType.TRANSFER_FAILED,
                client_id=consent.client_id,
                consent_id=consent.id,
                transfer_id=transfer_id,
                provider=resource.provider,
                resource=resource.id,
                subject=subject,
                details={"code": failed.code, "use_returned": True},
            )
        else:
            digest = hashlib.sha256(delivered).hexdigest()
            values = {
                # A provider's 404 is an answer ("no record for this person"), not a failure.
                "state": "no_record" if provider_status == 404 else "completed",
                "http_status": provider_status,
                "size": len(delivered),
                "sha256": digest,
            }
            event = TrailEvent(
                EventType.TRANSFER_COMPLETED,
                client_id=consent.client_id,
                consent_id=consent.id,
                transfer_id=transfer_id,
                provider=resource.provider,
                resource=resource.id,
                subject=subject,
                details={
                    "provider_status": provider_status,
                    "provider_size": provider_size,
                    "provider_sha256": provider_sha256,
                    "delivered_size": len(delivered),
                    "delivered_sha256": digest,
                },
            )
        finish: Statement = (
            "UPDATE transfers SET finished_at = :now, state = :state, http_status = :http_status,"
            " error_code = :error_code, size = :size, sha256 = :sha256 WHERE id = :id",
            {
                "now": sql.time(tx.now),
                "id": transfer_id,
                "error_code": None,
                "size": None,
                "sha256": None,
                **values,
            },
        )
        await tx.record([event])  # in the batch, in memory: no statement
        if failed is None:
            # The transfer's row and the consent's end share one round trip.
            await rt.consents.close_if_used_up(tx, consent, subject=subject, along=[finish])
        else:
            sql.run(*finish)

    await rt.writer.run(work)


async def _record_denial(
    rt: Runtime, req: TransferRequest, seen: _Seen, step: int, error: GatewayError
) -> None:
    consent = seen.consent
    client_id = consent.client_id if consent else (seen.token.client_id if seen.token else None)

    async def work(tx: Tx) -> None:
        sql = tx.sql
        if seen.proof is not None and step != 2:
            # A proof shown with a valid token is spent even when the request is
            # refused: it cannot be replayed with, say, another query string.
            _use_proof(tx, seen.proof)
        subject = subject_pseudonym(sql, consent.subject_id) if consent else None
        if consent is not None:
            # The person sees refused attempts on their data too.
            _insert_transfer(
                sql,
                transfer_id=seen.transfer_id,
                consent=consent,
                provider=req.provider[:64],
                resource=req.resource[:64],
                request_id=req.request_id,
                state="denied",
                now=tx.now,
                http_status=error.status,
                error_code=error.code,
                finished=True,
            )
        known = rt.policy.resource(req.provider, req.resource) is not None
        await tx.record(
            [
                TrailEvent(
                    EventType.TRANSFER_DENIED,
                    client_id=client_id,
                    consent_id=consent.id if consent else None,
                    transfer_id=seen.transfer_id,
                    provider=req.provider if known else None,
                    resource=req.resource if known else None,
                    subject=subject,
                    details={"step": step, "code": error.code, "request_id": req.request_id},
                )
            ]
        )

    try:
        await rt.writer.run(work)
    except Exception:
        # The refusal stands either way; nothing was relayed.
        log.exception("transfer.denial_not_recorded", transfer_id=seen.transfer_id)
