"""Consent receipts: what the person keeps, signed by the gateway, provable in the trail.

A receipt is a JWS (``typ: consent-receipt+jwt``) signed with the gateway's
token key, carrying the consent record in the spirit of ISO/IEC TS 27560 and
the Kantara consent receipt: receipt id, times, the controller (the client),
purposes with their DPV purpose IRI and legal basis, each provider with the
resources and fields it may release, the transfer limit, the expiry and the
state at the time the receipt was issued. It also carries the exact bytes of
the consent's ``consent.granted`` trail entry and a C2SP ``tlog-proof`` of its
inclusion under a signed checkpoint, so that anyone holding the gateway's
published keys (its JWKS and the trail verifier key) can check, offline, both
that the gateway issued the receipt and that the grant is in the log.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from sqlalchemy import select

import gateway.trail.merkle as merkle
from gateway.consents import Consent, pseudonym_of
from gateway.jose import TOKEN_ALGS, PublicKey, b64url_decode
from gateway.runtime import Runtime
from gateway.storage.models import checkpoints, trail_entries
from gateway.trail import tree as trail_tree
from gateway.trail.checkpoint import format_tlog_proof, verify_tlog_proof
from gateway.trail.entry import ENTRY_PREFIX
from gateway.trail.note import NoteError, Verifier

RECEIPT_TYP = "consent-receipt+jwt"
RECEIPT_VERSION = "gateway-receipt/1"


class ReceiptUnavailable(Exception):
    """The consent has no grant in the trail yet (pending or denied)."""


def _iso(value: Any) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def receipt_record(rt: Runtime, consent: Consent) -> dict[str, Any]:
    """The consent record, in plain data, as the receipt states it."""
    client = rt.policy.clients.get(consent.client_id)
    purpose = rt.policy.purposes.get(consent.purpose)
    data = []
    for detail in consent.details:
        provider = rt.policy.providers.get(detail.provider)
        allowance = consent.allowances.get(detail.provider)
        resources = []
        for rid in detail.resources:
            resource = provider.resources.get(rid) if provider else None
            resources.append(
                {
                    "id": rid,
                    "label": {"fr": resource.label.fr, "en": resource.label.en}
                    if resource
                    else None,
                    "fields": [
                        {"pointer": f.pointer, "label": {"fr": f.label.fr, "en": f.label.en}}
                        for f in (resource.fields if resource else ())
                    ],
                }
            )
        data.append(
            {
                "provider": detail.provider,
                "provider_name": provider.name if provider else detail.provider,
                "resources": resources,
                "max_transfers": detail.max_transfers,
                "transfers_used": (
                    allowance.max_transfers - allowance.uses_left if allowance else 0
                ),
            }
        )
    return {
        "version": RECEIPT_VERSION,
        "consent_id": consent.id,
        "state": str(consent.state),
        "created_at": _iso(consent.created_at),
        "granted_at": _iso(consent.decided_at),
        "expires_at": _iso(consent.expires_at),
        "ended_at": _iso(consent.ended_at),
        "end_reason": consent.end_reason,
        "controller": {"id": consent.client_id, "name": client.name if client else None},
        "purposes": [
            {
                "id": consent.purpose,
                "label": {"fr": purpose.label.fr, "en": purpose.label.en} if purpose else None,
                "dpv_purpose": purpose.dpv if purpose else None,
                "legal_basis": purpose.legal_basis if purpose else None,
                "retention_days": purpose.retention_days if purpose else None,
            }
        ],
        "data": data,
        "transfers": {"allowed": consent.transfers_allowed, "used": consent.transfers_used},
        "policy": rt.policy.digest,
    }


async def issue_receipt(rt: Runtime, consent: Consent) -> str:
    """Sign a receipt for a granted consent, with its tlog proof."""
    if consent.granted_index is None:
        raise ReceiptUnavailable("the consent was never granted")
    index = consent.granted_index
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(
                select(checkpoints)
                .where(checkpoints.c.size > index)
                .order_by(checkpoints.c.size.desc())
                .limit(1)
            )
        ).first()
    if row is None:
        await rt.checkpointer.sign_if_grown(rt.now())
        async with rt.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(checkpoints)
                    .where(checkpoints.c.size > index)
                    .order_by(checkpoints.c.size.desc())
                    .limit(1)
                )
            ).first()
    if row is None:
        raise ReceiptUnavailable("no checkpoint covers the grant yet")
    async with rt.engine.connect() as conn:
        entry = (
            await conn.execute(select(trail_entries.c.entry).where(trail_entries.c.idx == index))
        ).scalar_one()
        proof = await trail_tree.inclusion(conn, index, int(row.size))
        subject = await pseudonym_of(conn, consent.subject_id)
    now = rt.now()
    claims = {
        "iss": rt.settings.issuer,
        "iat": int(now.timestamp()),
        "jti": str(uuid.uuid4()),
        "subject": subject,
        "receipt": receipt_record(rt, consent),
        "trail": {
            "index": index,
            "entry": base64.b64encode(bytes(entry)).decode("ascii"),
            "proof": format_tlog_proof(index, proof, str(row.note)),
        },
    }
    key = rt.keys.active
    return jwt.encode(
        claims, key.private_key, algorithm=key.alg, headers={"typ": RECEIPT_TYP, "kid": key.kid}
    )


@dataclass(frozen=True)
class VerifiedReceipt:
    claims: dict[str, Any]
    checkpoint_size: int
    proof_checked: bool


class ReceiptInvalid(Exception):
    pass


def verify_receipt(
    token: str, keys: Sequence[PublicKey], *, verifier: Verifier | None
) -> VerifiedReceipt:
    """Check a receipt offline: signature, the granted entry, its inclusion proof.

    Steps: (1) header typ and a kid among the gateway's published keys, with its
    alg; (2) signature and required claims; (3) the trail entry is a
    ``consent.granted`` entry for this consent; (4) its tlog proof: checkpoint
    signature (trail verifier key) and inclusion of the entry's leaf hash.
    """
    # (1) three canonical base64url segments: a receipt has exactly one spelling,
    # so no altered byte of the file can still verify
    segments = token.split(".")
    try:
        if len(segments) != 3:
            raise ValueError("not three segments")
        for segment in segments:
            b64url_decode(segment)
    except ValueError:
        raise ReceiptInvalid("not a compact JWS in canonical base64url") from None
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise ReceiptInvalid("not a JWS") from None
    if header.get("typ") != RECEIPT_TYP:
        raise ReceiptInvalid(f"typ must be {RECEIPT_TYP}")
    key = next((k for k in keys if k.kid == header.get("kid")), None)
    if key is None or key.alg not in TOKEN_ALGS or header.get("alg") != key.alg:
        raise ReceiptInvalid("not signed by a published gateway key")
    # (2)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[key.alg],
            options={"require": ["iss", "iat", "jti", "receipt", "trail"], "verify_aud": False},
        )
    except jwt.PyJWTError as exc:
        raise ReceiptInvalid(f"signature or claims do not hold: {exc}") from None
    # (3)
    trail = claims["trail"]
    receipt = claims["receipt"]
    if not isinstance(trail, dict) or not isinstance(receipt, dict):
        raise ReceiptInvalid("receipt and trail must be objects")
    try:
        entry = base64.b64decode(trail["entry"], validate=True)
        event = json.loads(entry[len(ENTRY_PREFIX) :])
    except (KeyError, ValueError, TypeError):
        raise ReceiptInvalid("the trail entry is unreadable") from None
    if not entry.startswith(ENTRY_PREFIX) or event.get("type") != "consent.granted":
        raise ReceiptInvalid("the trail entry is not a consent.granted entry")
    if event.get("consent_id") != receipt.get("consent_id"):
        raise ReceiptInvalid("the trail entry is about another consent")
    # (4)
    if verifier is None:
        return VerifiedReceipt(claims, 0, proof_checked=False)
    try:
        proof, checkpoint = verify_tlog_proof(
            str(trail.get("proof", "")), verifier, merkle.leaf_hash(entry)
        )
    except (NoteError, merkle.ProofError, ValueError) as exc:
        raise ReceiptInvalid(f"the trail proof does not hold: {exc}") from None
    if proof.index != trail.get("index"):
        raise ReceiptInvalid("the proof is for another index")
    return VerifiedReceipt(claims, checkpoint.size, proof_checked=True)
