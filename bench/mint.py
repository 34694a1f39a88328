"""Pre-mint per-transfer consents, consent tokens and DPoP proofs for wrk.

Consents are created through the gateway's own code (``ConsentStore.create_pending``
and ``grant`` inside ``rt.writer.run``, a subject via ``ensure_subject``, claims
sealed with ``rt.claims_box``), never by writing rows by hand, so what the
benchmark consumes is what the browser flow would have produced. Each consent
allows one transfer. Tokens (``mint_consent_token``) and DPoP proofs (one per
request: ``htm`` GET, ``htu`` = issuer + path, ``ath``) are signed in a process
pool. Output: one line per request, ``<consent token>\\t<DPoP proof>``.

Configuration comes from the same ``GATEWAY_*`` variables as ``gateway serve``::

    python bench/mint.py --count 20000 --dpop-key dpop.pem --out pairs.tsv
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenario

# A consent token may live 600 s at most (gateway.tokens); the proofs' iat must
# be under DPOP_MAX_AGE_SECONDS (300 s) old when used: run wrk right after minting.
TOKEN_LIFETIME_SECONDS = 600
CONSENTS_PER_UNIT = 250  # consents created per group-commit unit of work
SUBJECTS = 64  # persons the consents are spread over
SIGN_CHUNK = 1000

_SIGNER: dict[str, Any] = {}


def _init_signer(keys_dir: str, dpop_pem: bytes) -> None:
    from gateway.jose import SigningKey
    from gateway.keys import load_keys

    _SIGNER["token"] = load_keys(Path(keys_dir), create=False).active
    dpop = SigningKey.from_pem(dpop_pem)
    _SIGNER["dpop"] = dpop
    jwk = dpop.public_jwk()
    _SIGNER["dpop_jwk"] = {k: jwk[k] for k in ("kty", "crv", "x", "y")}


def _sign_chunk(args: tuple[list[tuple[str, str]], str]) -> list[str]:
    """Sign (consent token, DPoP proof) for each (consent id, client sub)."""
    from gateway.consents import details_to_json
    from gateway.jose import b64url_encode, jwk_thumbprint
    from gateway.policy.decision import AuthorizationDetail
    from gateway.tokens import mint_consent_token

    items, issuer = args
    token_key = _SIGNER["token"]
    dpop = _SIGNER["dpop"]
    jwk = _SIGNER["dpop_jwk"]
    jkt = jwk_thumbprint(jwk)
    details = details_to_json(
        [AuthorizationDetail(scenario.PROVIDER, (scenario.RESOURCE,), scenario.PURPOSE, 1)]
    )
    htu = issuer + scenario.DATA_PATH
    now = time.time()
    lines = []
    for consent_id, sub in items:
        token, _ = mint_consent_token(
            token_key,
            issuer=issuer,
            audience=issuer + "/data",
            client_id=scenario.CLIENT_ID,
            sub=sub,
            consent_id=consent_id,
            jkt=jkt,
            authorization_details=details,
            acr=scenario.ACR,
            lifetime=TOKEN_LIFETIME_SECONDS,
            now=now,
        )
        proof = jwt.encode(
            {
                "jti": secrets.token_urlsafe(18),
                "htm": "GET",
                "htu": htu,
                "iat": int(now),
                "ath": b64url_encode(hashlib.sha256(token.encode("ascii")).digest()),
            },
            dpop.private_key,
            algorithm=dpop.alg,
            headers={"typ": "dpop+jwt", "alg": dpop.alg, "jwk": jwk},
        )
        lines.append(f"{token}\t{proof}\n")
    return lines


class PairSigner:
    """A process pool that signs (token, proof) pairs with the gateway's key."""

    def __init__(self, keys_dir: Path, dpop_pem: bytes, processes: int | None = None) -> None:
        self._pool = ProcessPoolExecutor(
            processes or os.cpu_count() or 1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_signer,
            initargs=(str(keys_dir), dpop_pem),
        )

    def write(self, items: Sequence[tuple[str, str]], issuer: str, out: Path) -> None:
        """Write one fresh ``token\\tproof`` line per (consent id, sub) to ``out``."""
        chunks = [
            (list(items[i : i + SIGN_CHUNK]), issuer) for i in range(0, len(items), SIGN_CHUNK)
        ]
        with out.open("w", encoding="ascii") as f:
            for lines in self._pool.map(_sign_chunk, chunks):
                f.writelines(lines)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


async def create_consents(
    count: int, env: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """Create ``count`` active single-transfer consents; return their (consent id, client sub)."""
    from gateway import logs
    from gateway.app import build_runtime, close_runtime
    from gateway.consents import ensure_subject
    from gateway.policy.decision import AuthorizationDetail
    from gateway.settings import Settings
    from gateway.subjects import pairwise_subject, subject_lookup
    from gateway.trail.writer import Tx

    settings = Settings.from_env(env)
    logs.configure("json", "warning")
    rt = await build_runtime(settings)
    try:
        detail = AuthorizationDetail(
            provider=scenario.PROVIDER,
            resources=(scenario.RESOURCE,),
            purpose=scenario.PURPOSE,
            max_transfers=1,
        )

        async def make_subjects(tx: Tx) -> list[tuple[str, str]]:
            out = []
            for i in range(SUBJECTS):
                lookup = subject_lookup(rt.keys.pseudonym_secret, "bench-idp", f"person-{i}")
                out.append((await ensure_subject(tx.conn, lookup, tx.now), lookup))
            return out

        people = await rt.writer.run(make_subjects)

        async def make(tx: Tx, first: int, n: int) -> list[tuple[str, str]]:
            made = []
            for i in range(first, first + n):
                subject_id, lookup = people[i % len(people)]
                consent_id = await rt.consents.create_pending(
                    tx,
                    client_id=scenario.CLIENT_ID,
                    details=[detail],
                    redirect_uri="http://127.0.0.1:9/callback",
                    client_state=None,
                    code_challenge=secrets.token_urlsafe(32),
                    browser_binding=secrets.token_hex(32),
                    expires_at=tx.now + timedelta(minutes=10),
                )
                consent = await rt.consents.get(tx.conn, consent_id)
                assert consent is not None
                index = await rt.consents.grant(
                    tx,
                    consent,
                    subject_id=subject_id,
                    acr=scenario.ACR,
                    sealed_claims=rt.claims_box.seal(scenario.IDENTITY, consent_id),
                    expires_at=tx.now + timedelta(minutes=60),
                )
                assert index is not None
                sub = pairwise_subject(
                    rt.keys.pseudonym_secret, "client", scenario.CLIENT_ID, lookup
                )
                made.append((consent_id, sub))
            return made

        units = [
            rt.writer.run(lambda tx, f=first: make(tx, f, min(CONSENTS_PER_UNIT, count - f)))
            for first in range(0, count, CONSENTS_PER_UNIT)
        ]
        made: list[tuple[str, str]] = []
        for part in await asyncio.gather(*units):
            made.extend(part)
        return made
    finally:
        await close_runtime(rt)


def mint(count: int, dpop_pem: bytes, out: Path) -> dict[str, float]:
    """Create ``count`` consents and write their (token, proof) lines to ``out``."""
    from gateway.settings import Settings

    settings = Settings.from_env()
    started = time.monotonic()
    made = asyncio.run(create_consents(count))
    created = time.monotonic()
    signer = PairSigner(settings.keys_dir, dpop_pem)
    try:
        signer.write(made, settings.issuer, out)
    finally:
        signer.close()
    return {
        "count": count,
        "consents_seconds": round(created - started, 2),
        "sign_seconds": round(time.monotonic() - created, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--dpop-key", type=Path, required=True, help="PEM of the client DPoP key")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    timing = mint(args.count, args.dpop_key.read_bytes(), args.out)
    print(
        f"minted {timing['count']} consents in {timing['consents_seconds']} s, "
        f"signed in {timing['sign_seconds']} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
