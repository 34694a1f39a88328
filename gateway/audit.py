"""The trail's public face: checkpoints and proofs for anyone, entries and queries for auditors.

Auditors are clients with role ``auditor`` in policies/; they obtain a
DPoP-bound token with ``grant_type=client_credentials`` and
``scope=audit:read`` whose audience is ``{issuer}/audit`` (a consent token can
never pass for one). Every audit query is itself appended to the trail as
``audit.accessed``. A service provider presenting its consent token gets 403.

Auditor authentication, in order:

    (1) DPoP proof for this method and URL, with ath of the presented token
    (2) the audit token: pinned checks, audience {issuer}/audit; proof key = cnf.jkt
    (3) the proof's jti is used once
    (4) the client is still an auditor in policy and the token carries audit:read
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from gateway import dpop, replay
from gateway.errors import Forbidden, GatewayError, InvalidRequest, NotFound, Unauthenticated
from gateway.runtime import Runtime
from gateway.storage.models import trail_entries
from gateway.tokens import AUDIT_SCOPE, AuditToken, verify_audit_token, verify_consent_token
from gateway.trail import EventType, TrailEvent
from gateway.trail import tree as trail_tree
from gateway.trail.tree import tree_size
from gateway.trail.writer import Tx

EVENTS_PAGE_MAX = 1000
EXPORT_CHUNK = 1000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _problem(error: GatewayError) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'DPoP error="invalid_token", algs="ES256 PS256 EdDSA"'
    return JSONResponse(
        error.problem(),
        status_code=error.status,
        media_type="application/problem+json",
        headers=headers,
    )


async def authenticate_auditor(rt: Runtime, request: Request) -> AuditToken:
    now = rt.now()
    ts = now.timestamp()
    # (1)
    scheme, _, access_token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "dpop" or not access_token.strip():
        raise Unauthenticated("token_missing", "Authorization: DPoP <audit token> required")
    access_token = access_token.strip()
    proof = dpop.verify_proof(
        request.headers.getlist("dpop") or None,
        method=request.method,
        url=rt.url(request.url.path),
        now=ts,
        access_token=access_token,
    )
    # (2)
    try:
        token = verify_audit_token(
            access_token,
            rt.token_keys,
            issuer=rt.settings.issuer,
            audience=rt.audit_audience,
            now=ts,
        )
    except Unauthenticated:
        try:
            verify_consent_token(
                access_token,
                rt.token_keys,
                issuer=rt.settings.issuer,
                audience=rt.token_audience,
                now=ts,
            )
        except Unauthenticated:
            raise
        raise Forbidden(
            "auditor_only", "the audit API is for auditors, not service providers"
        ) from None
    dpop.check_binding(proof, token.jkt)
    # (3)
    if not await replay.use_once(
        rt.engine,
        kind="dpop",
        issuer=proof.jkt,
        jti=proof.jti,
        expires_at=now + timedelta(seconds=dpop.DPOP_MAX_AGE_SECONDS + 60),
    ):
        raise Unauthenticated("dpop_proof_replayed", "DPoP proof jti already used")
    # (4)
    client = rt.policy.clients.get(token.client_id)
    if client is None or client.role != "auditor" or AUDIT_SCOPE not in token.scope:
        raise Forbidden("auditor_only", "this client is not an auditor")
    return token


async def _accessed(rt: Runtime, client_id: str, endpoint: str, query: dict[str, Any]) -> None:
    async def work(tx: Tx) -> None:
        await tx.record(
            [
                TrailEvent(
                    EventType.AUDIT_ACCESSED,
                    client_id=client_id,
                    details={"endpoint": endpoint, "query": query},
                )
            ]
        )

    await rt.writer.run(work)


# --------------------------------------------------------------------------- public trail


# Indexes and sizes are BIGINT columns: anything larger cannot name an entry.
INDEX_LIMIT = 2**63


def _index(raw: str | None) -> int | None:
    """A non-negative index in ASCII digits that fits the database, else None.

    (``str.isdigit`` alone accepts "²", on which ``int`` fails, and an
    oversized number makes the database driver fail rather than match nothing.)
    """
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        return None
    value = int(raw)
    return value if value < INDEX_LIMIT else None


def _int_param(request: Request, name: str, minimum: int = 0) -> int:
    value = _index(request.query_params.get(name))
    if value is None:
        raise InvalidRequest("invalid_parameter", f"{name} must be a non-negative integer")
    if value < minimum:
        raise InvalidRequest("invalid_parameter", f"{name} must be at least {minimum}")
    return value


async def checkpoint(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    async with rt.engine.connect() as conn:
        latest = await trail_tree.latest_checkpoint(conn)
    if latest is None:
        return _problem(NotFound("no_checkpoint", "no checkpoint yet: the trail is empty"))
    return PlainTextResponse(
        latest[2], media_type="text/plain; charset=utf-8", headers={"Cache-Control": "no-cache"}
    )


async def verifier_key(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    return PlainTextResponse(rt.checkpointer.signer.verifier_key() + "\n")


async def inclusion_proof(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        index = _int_param(request, "index")
        size = _int_param(request, "size", 1)
        async with rt.engine.connect() as conn:
            if size > await tree_size(conn):
                raise InvalidRequest("invalid_parameter", "size is beyond the tree")
            if index >= size:
                raise InvalidRequest("invalid_parameter", "index must be below size")
            hashes = await trail_tree.inclusion(conn, index, size)
    except GatewayError as error:
        return _problem(error)
    return JSONResponse({"hashes": [_b64(h) for h in hashes]})


async def consistency_proof(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        old = _int_param(request, "old", 1)
        new = _int_param(request, "new", 1)
        async with rt.engine.connect() as conn:
            if new > await tree_size(conn):
                raise InvalidRequest("invalid_parameter", "new is beyond the tree")
            if old > new:
                raise InvalidRequest("invalid_parameter", "old must not exceed new")
            hashes = await trail_tree.consistency(conn, old, new)
    except GatewayError as error:
        return _problem(error)
    return JSONResponse({"hashes": [_b64(h) for h in hashes]})


def _entry_json(row: Any, decoded: bool = False) -> dict[str, Any]:
    entry = bytes(row.entry)
    out: dict[str, Any] = {
        "index": int(row.idx),
        "entry": _b64(entry),
        "leaf_hash": _b64(bytes(row.leaf_hash)),
    }
    if decoded:
        out["event"] = json.loads(entry.split(b"\n", 1)[1])
    return out


async def entry(request: Request) -> Response:
    """One entry: for auditors, or for the person the entry is about."""
    from gateway.consents import pseudonym_of
    from gateway.subjects import trail_pseudonym
    from gateway.web import session as sessions

    rt: Runtime = request.app.state.runtime
    index = _index(request.path_params["index"])
    if index is None:
        return _problem(NotFound("entry_not_found", "no such entry"))
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(select(trail_entries).where(trail_entries.c.idx == index))
        ).first()
    if request.headers.get("authorization"):
        try:
            token = await authenticate_auditor(rt, request)
        except GatewayError as error:
            return _problem(error)
        await _accessed(rt, token.client_id, "entries", {"index": index})
        if row is None:
            return _problem(NotFound("entry_not_found", "no such entry"))
        return JSONResponse(_entry_json(row, decoded=True))
    session = await sessions.load(rt, request)
    if session is None or not session.logged_in:
        return _problem(
            Unauthenticated(
                "login_required", "an auditor token or the person's session is required"
            )
        )
    async with rt.engine.connect() as conn:
        mine = await pseudonym_of(conn, session.subject_id)
    event = json.loads(bytes(row.entry).split(b"\n", 1)[1]) if row is not None else None
    # Someone else's entry is indistinguishable from a missing one. An erased
    # person has no pseudonym of their own any more: "erased" is shared by
    # everyone erased, so it shows nobody's entries.
    if event is None or mine in (None, trail_pseudonym(None)) or event.get("subject") != mine:
        return _problem(NotFound("entry_not_found", "no such entry"))
    return JSONResponse(_entry_json(row, decoded=True))


# --------------------------------------------------------------------------- audit queries


def _filters(request: Request) -> tuple[Select[Any], dict[str, Any]]:
    query = select(trail_entries)
    used: dict[str, Any] = {}
    columns = {
        "type": trail_entries.c.type,
        "client_id": trail_entries.c.client_id,
        "provider": trail_entries.c.provider,
        "consent_id": trail_entries.c.consent_id,
        "transfer_id": trail_entries.c.transfer_id,
    }
    for name, column in columns.items():
        value = request.query_params.get(name)
        if value:
            query = query.where(column == value)
            used[name] = value
    for name, op in (("since", "ge"), ("until", "lt")):
        value = request.query_params.get(name)
        if value:
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidRequest("invalid_parameter", f"{name} must be RFC 3339") from None
            if moment.tzinfo is None:
                raise InvalidRequest("invalid_parameter", f"{name} needs a time zone")
            query = query.where(
                trail_entries.c.time >= moment if op == "ge" else trail_entries.c.time < moment
            )
            used[name] = value
    return query, used


async def events(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        token = await authenticate_auditor(rt, request)
        query, used = _filters(request)
        cursor = request.query_params.get("cursor")
        if cursor is not None:
            after = _index(cursor)
            if after is None:
                raise InvalidRequest("invalid_parameter", "cursor must be an index")
            query = query.where(trail_entries.c.idx > after)
        limit = min(int(request.query_params.get("limit") or 100), EVENTS_PAGE_MAX)
        if limit < 1:
            raise InvalidRequest("invalid_parameter", "limit must be positive")
    except (GatewayError, ValueError) as error:
        if isinstance(error, ValueError):
            error = InvalidRequest("invalid_parameter", "limit must be an integer")
        return _problem(error)
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(query.order_by(trail_entries.c.idx).limit(limit + 1))).all()
    page = rows[:limit]
    await _accessed(rt, token.client_id, "events", {**used, "returned": len(page)})
    return JSONResponse(
        {
            "events": [_entry_json(r, decoded=True) for r in page],
            "next_cursor": str(page[-1].idx) if len(rows) > limit else None,
        },
        headers={"Cache-Control": "no-store"},
    )


async def export(request: Request) -> Response:
    """NDJSON of entries, streamed in chunks: memory does not grow with the trail."""
    rt: Runtime = request.app.state.runtime
    try:
        token = await authenticate_auditor(rt, request)
        query, used = _filters(request)
    except GatewayError as error:
        return _problem(error)
    await _accessed(rt, token.client_id, "export", used)

    async def lines() -> AsyncIterator[bytes]:
        after = -1
        while True:
            async with rt.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        query.where(trail_entries.c.idx > after)
                        .order_by(trail_entries.c.idx)
                        .limit(EXPORT_CHUNK)
                    )
                ).all()
            if not rows:
                return
            for row in rows:
                yield (json.dumps(_entry_json(row), separators=(",", ":")) + "\n").encode()
            after = int(rows[-1].idx)

    return StreamingResponse(lines(), media_type="application/x-ndjson")
