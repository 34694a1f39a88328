"""Pre-mint per-transfer consents, consent tokens and DPoP proofs for wrk.

Consents are created through the gateway's own code (``ConsentStore.create_pending``
and ``grant`` inside ``rt.writer.run``, subjects via ``ensure_subject``, claims
sealed with ``rt.claims_box``), never by writing rows by hand, so what the
benchmark consumes is what the browser flow would have produced. Each consent
allows one transfer. Tokens (``mint_consent_token``) and DPoP proofs (one per
request: ``htm`` GET, ``htu`` = issuer + path, ``ath``) are signed in a process
pool while the next consents are being created. Output: one line per request,
``<consent token>\\t<DPoP proof>``.

Where the time goes (bench/README.md): creating a consent costs five
SQLAlchemy Core statements and two trail entries in the trail writer's single
thread, under the database's write lock, so creation runs on one core and
bounds the rate; signing (two ES256 signatures per pair) runs beside it.
:class:`MintTiming` keeps the one-off start-up (runtime, subjects) out of the
rate, so a caller can size a pool from it.

Configuration comes from the same ``GATEWAY_*`` variables as ``gateway serve``::

    python bench/mint.py --count 20000 --dpop-key dpop.pem --out pairs.tsv
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import multiprocessing
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenario

if TYPE_CHECKING:
    from gateway.consents import Consent
    from gateway.runtime import Runtime
    from gateway.trail.writer import Tx

# A consent token may live 600 s at most (gateway.tokens); the proofs' iat must
# be under DPOP_MAX_AGE_SECONDS (300 s) old when used: run wrk right after minting.
TOKEN_LIFETIME_SECONDS = 600
CONSENTS_PER_UNIT = 250  # consents created per unit of work; also one signing chunk
# Units queued at once: the writer commits one batch while the next units wait,
# and each committed unit goes to the signers at once (a batch of every unit
# would sign nothing until the very end).
UNITS_IN_FLIGHT = 2
SUBJECTS = 64  # persons the consents are spread over

Made = tuple[str, str]  # (consent id, the client's pairwise sub)

_SIGNER: dict[str, Any] = {}


# ------------------------------------------------------------------ signing (process pool)


def _init_signer(keys_dir: str, dpop_pem: bytes) -> None:
    from gateway.jose import SigningKey
    from gateway.keys import load_keys

    _SIGNER["token"] = load_keys(Path(keys_dir), create=False).active
    dpop = SigningKey.from_pem(dpop_pem)
    _SIGNER["dpop"] = dpop
    jwk = dpop.public_jwk()
    _SIGNER["dpop_jwk"] = {k: jwk[k] for k in ("kty", "crv", "x", "y")}


def _ready() -> int:
    """A no-op run in a signer process: proves it has started and loaded the keys."""
    return os.getpid()


def _sign_chunk(args: tuple[list[Made], str]) -> list[str]:
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


def signer_processes() -> int:
    """One signer per core but the one consent creation runs on (at least one)."""
    return max(1, (os.cpu_count() or 1) - 1)


class PairSigner:
    """A process pool that signs (token, proof) pairs with the gateway's key.

    Start-up (spawn, imports, keys) takes a second or two; :meth:`warm` pays it
    up front so that it is not mistaken for signing time. Keep one signer for
    many mints.
    """

    def __init__(self, keys_dir: Path, dpop_pem: bytes, processes: int | None = None) -> None:
        self.processes = processes or signer_processes()
        self._pool = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_signer,
            initargs=(str(keys_dir), dpop_pem),
        )

    def warm(self) -> float:
        """Start every process now; returns the seconds it took."""
        started = time.monotonic()
        # One task per process at once: each submit finding no idle worker spawns one.
        for future in [self._pool.submit(_ready) for _ in range(self.processes)]:
            future.result()
        return time.monotonic() - started

    def submit(self, items: Sequence[Made], issuer: str) -> Future[list[str]]:
        """Sign one chunk in the background; the future gives its ``token\\tproof`` lines."""
        return self._pool.submit(_sign_chunk, (list(items), issuer))

    def write(self, items: Sequence[Made], issuer: str, out: Path) -> None:
        """Write one fresh ``token\\tproof`` line per (consent id, sub) to ``out``."""
        chunks = [items[i : i + CONSENTS_PER_UNIT] for i in range(0, len(items), CONSENTS_PER_UNIT)]
        futures = [self.submit(chunk, issuer) for chunk in chunks]
        with out.open("w", encoding="ascii") as f:
            for future in futures:
                f.writelines(future.result())

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


# ------------------------------------------------------------------ consents (gateway code)


@dataclass(frozen=True)
class Person:
    """A subject the consents are granted by, and its pairwise sub for the client."""

    subject_id: str
    sub: str


class ConsentMaker:
    """Creates active single-transfer consents with one gateway runtime's own code.

    Each unit of work creates :data:`CONSENTS_PER_UNIT` consents: for each,
    ``create_pending``, then ``grant`` with claims sealed by ``rt.claims_box``.
    ``grant`` needs the pending :class:`~gateway.consents.Consent`; the first
    one is read back with ``rt.consents.get``, every later one is that Consent
    with its own id, challenge, binding and times (``dataclasses.replace``)
    instead of two more SELECTs per consent.
    """

    def __init__(self, rt: Runtime, people: Sequence[Person]) -> None:
        from gateway.policy.decision import AuthorizationDetail

        self.rt = rt
        self.people = people
        self.detail = AuthorizationDetail(
            provider=scenario.PROVIDER,
            resources=(scenario.RESOURCE,),
            purpose=scenario.PURPOSE,
            max_transfers=1,
        )
        self._template: Consent | None = None

    @classmethod
    async def open(cls, env: Mapping[str, str] | None = None) -> ConsentMaker:
        """Build a runtime on the database of ``env`` and ensure the subjects exist."""
        from gateway import logs
        from gateway.app import build_runtime
        from gateway.settings import Settings

        logs.configure("json", "warning")
        rt = await build_runtime(Settings.from_env(env))
        return cls(rt, await rt.writer.run(lambda tx: _ensure_people(rt, tx)))

    async def close(self) -> None:
        from gateway.app import close_runtime

        await close_runtime(self.rt)

    async def create(
        self, count: int, on_unit: Callable[[list[Made]], None] | None = None
    ) -> list[Made]:
        """Create ``count`` consents; ``on_unit`` gets each unit's as soon as it commits."""
        gate = asyncio.Semaphore(UNITS_IN_FLIGHT)

        async def one(first: int, n: int) -> list[Made]:
            async with gate:
                made = await self.rt.writer.run(lambda tx: self._unit(tx, first, n))
            if on_unit is not None:
                on_unit(made)
            return made

        parts = await asyncio.gather(
            *(
                one(first, min(CONSENTS_PER_UNIT, count - first))
                for first in range(0, count, CONSENTS_PER_UNIT)
            )
        )
        return [item for part in parts for item in part]

    async def _unit(self, tx: Tx, first: int, n: int) -> list[Made]:
        made = []
        for i in range(first, first + n):
            person = self.people[i % len(self.people)]
            consent_id = await self._grant(tx, await self._create_pending(tx), person)
            made.append((consent_id, person.sub))
        return made

    async def _create_pending(self, tx: Tx) -> Consent:
        """``create_pending``, and the Consent it stored."""
        challenge, binding = secrets.token_urlsafe(32), secrets.token_hex(32)
        expires_at = tx.now + timedelta(minutes=10)
        consent_id = await self.rt.consents.create_pending(
            tx,
            client_id=scenario.CLIENT_ID,
            details=[self.detail],
            redirect_uri="http://127.0.0.1:9/callback",
            client_state=None,
            code_challenge=challenge,
            browser_binding=binding,
            expires_at=expires_at,
        )
        if self._template is None:
            self._template = await self.rt.consents.get(tx.conn, consent_id)
            assert self._template is not None
            return self._template
        return dataclasses.replace(
            self._template,
            id=consent_id,
            code_challenge=challenge,
            browser_binding=binding,
            created_at=tx.now,
            expires_at=expires_at,
        )

    async def _grant(self, tx: Tx, consent: Consent, person: Person) -> str:
        index = await self.rt.consents.grant(
            tx,
            consent,
            subject_id=person.subject_id,
            acr=scenario.ACR,
            sealed_claims=self.rt.claims_box.seal(scenario.IDENTITY, consent.id),
            expires_at=tx.now + timedelta(minutes=60),
        )
        if index is None:
            raise RuntimeError(f"consent {consent.id} was not granted")
        return consent.id


async def _ensure_people(rt: Runtime, tx: Tx) -> list[Person]:
    from gateway.consents import ensure_subject
    from gateway.subjects import pairwise_subject, subject_lookup

    people = []
    for i in range(SUBJECTS):
        lookup = subject_lookup(rt.keys.pseudonym_secret, "bench-idp", f"person-{i}")
        subject_id = await ensure_subject(tx.conn, lookup, tx.now)
        sub = pairwise_subject(rt.keys.pseudonym_secret, "client", scenario.CLIENT_ID, lookup)
        people.append(Person(subject_id, sub))
    return people


async def create_consents(count: int, env: Mapping[str, str] | None = None) -> list[Made]:
    """Create ``count`` active single-transfer consents; return their (consent id, client sub)."""
    maker = await ConsentMaker.open(env)
    try:
        return await maker.create(count)
    finally:
        await maker.close()


# ------------------------------------------------------------------ both, pipelined


@dataclass(frozen=True)
class MintTiming:
    """Where one mint's wall time went."""

    count: int
    startup_seconds: float  # runtime, subjects, closing: once per mint, not per consent
    create_seconds: float  # first unit queued .. last unit committed (signing meanwhile)
    sign_seconds: float  # signing still left after the last consent, and the file

    @property
    def work_seconds(self) -> float:
        return self.create_seconds + self.sign_seconds

    @property
    def seconds(self) -> float:
        return self.startup_seconds + self.work_seconds

    @property
    def rate(self) -> float:
        """Consents (signed pairs) per second, start-up excluded: what sizes a pool."""
        return self.count / max(self.work_seconds, 1e-3)

    def describe(self) -> str:
        return (
            f"{self.count} pairs in {self.seconds:.1f} s ({self.rate:,.0f}/s; start-up "
            f"{self.startup_seconds:.1f} s, consents {self.create_seconds:.1f} s, "
            f"signing after them {self.sign_seconds:.1f} s)"
        )


async def mint_pairs(
    count: int, env: Mapping[str, str] | None, signer: PairSigner, issuer: str, out: Path
) -> MintTiming:
    """Create ``count`` consents and write their (token, proof) lines to ``out``.

    Each unit of consents is handed to ``signer`` as soon as it commits, so
    signing overlaps creation; ``signer`` should be warm (:meth:`PairSigner.warm`).
    """
    started = time.monotonic()
    maker = await ConsentMaker.open(env)
    try:
        ready = time.monotonic()
        chunks: list[Future[list[str]]] = []
        await maker.create(count, on_unit=lambda made: chunks.append(signer.submit(made, issuer)))
        created = time.monotonic()
        with out.open("w", encoding="ascii") as f:
            for chunk in chunks:
                f.writelines(await asyncio.wrap_future(chunk))
        signed = time.monotonic()
    finally:
        await maker.close()
    return MintTiming(
        count=count,
        startup_seconds=(ready - started) + (time.monotonic() - signed),
        create_seconds=created - ready,
        sign_seconds=signed - created,
    )


def mint(count: int, dpop_pem: bytes, out: Path) -> tuple[MintTiming, float]:
    """:func:`mint_pairs` with a signer of its own; also returns the signer's start-up."""
    from gateway.keys import load_keys
    from gateway.settings import Settings

    settings = Settings.from_env()
    # The signer processes only read keys; make sure the gateway's exist first.
    load_keys(settings.keys_dir, create=True, demo=settings.demo)
    signer = PairSigner(settings.keys_dir, dpop_pem)
    try:
        warm = signer.warm()
        return asyncio.run(mint_pairs(count, None, signer, settings.issuer, out)), warm
    finally:
        signer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--dpop-key", type=Path, required=True, help="PEM of the client DPoP key")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    timing, warm = mint(args.count, args.dpop_key.read_bytes(), args.out)
    print(f"minted {timing.describe()}; signer start-up {warm:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
