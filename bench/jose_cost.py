"""CPU cost of the JOSE work of one transfer, next to the raw cryptographic floor.

    python bench/jose_cost.py [--iterations 200] [--rounds 50] [--ref HEAD] [--json out.json]

Every transfer runs, in the request's event loop, ``dpop.verify_proof`` (the
client's ES256 proof), ``tokens.verify_consent_token`` (the gateway's ES256
consent token) and ``tokens.mint_provider_assertion`` (ES256). Measured here,
as process CPU per call (``time.process_time``): ``--rounds`` rounds, each
running every case for ``--iterations`` calls in turn, and per case the best
round. Short rounds, interleaved, and the best of many: on a shared machine a
neighbour's burst spoils a few rounds of every case rather than all of one.

- the floor: one P-256 ECDSA verify and one sign with ``cryptography``, the DER
  signature and the signing input prepared beforehand;
- the three functions of the working tree;
- the same three at git revision ``--ref`` (default HEAD), their modules taken
  from ``git show`` into a temporary package (skipped, and said so, without git);
- ``verify_proof`` with a new client key on every call (the key cache missing);
- the signature step alone through PyJWT's ES256 algorithm object;
- what ``Runtime.token_keys`` costs per call (a PublicKey per signing key).

Ratios: a verification against the verify floor, the mint against the sign
floor, the transfer (proof + consent token + assertion) against two verifies
and one sign. Inputs are what the transfer path sees: a proof with ``ath`` over
the consent token it accompanies, a token with one authorization detail, three
identity claims in the assertion.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway import dpop, tokens
from gateway.jose import JWK_CACHE_SIZE, SigningKey, b64url_decode

REPO = Path(__file__).resolve().parent.parent

NOW = 1_750_000_000.0
ISSUER = "https://gateway.example"
AUDIENCE = f"{ISSUER}/data"
PATH = "/data/dgfip/revenu_fiscal"
DETAILS = [
    {
        "type": "personal_data",
        "provider": "dgfip",
        "resources": ["revenu_fiscal"],
        "purpose": "family-benefit-eligibility",
        "max_transfers": 1,
    }
]
IDENTITY = {"given_name": "Marie", "family_name": "Curie", "birthdate": "1867-11-07"}
MODULES = ("jose", "dpop", "tokens")


def load_ref(ref: str) -> tuple[ModuleType, ModuleType] | str:
    """(dpop, tokens) as of ``ref``, or why they could not be loaded."""
    git = shutil.which("git")
    if git is None:
        return "git not found"
    package = "_gateway_at_ref"
    directory = Path(tempfile.mkdtemp(prefix="jose_cost_")) / package
    atexit.register(shutil.rmtree, directory.parent, ignore_errors=True)
    directory.mkdir()
    (directory / "__init__.py").write_text("")
    for name in MODULES:
        try:
            source = subprocess.run(  # noqa: S603 (argv built here, no shell)
                [git, "-C", str(REPO), "show", f"{ref}:gateway/{name}.py"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            return f"git show {ref}:gateway/{name}.py failed ({type(exc).__name__})"
        # The modules of `ref` use each other, not the working tree's jose.
        source = source.replace("from gateway.jose import", f"from {package}.jose import")
        (directory / f"{name}.py").write_text(source)
    sys.path.insert(0, str(directory.parent))
    return (
        importlib.import_module(f"{package}.dpop"),
        importlib.import_module(f"{package}.tokens"),
    )


def client_proof(key: ec.EllipticCurvePrivateKey, access_token: str, jti: str) -> str:
    """A DPoP proof built the way a foreign client builds it (PyJWT)."""
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    claims = {
        "jti": jti,
        "htm": "GET",
        "htu": ISSUER + PATH,
        "iat": int(NOW),
        "ath": dpop.access_token_hash(access_token),
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": jwk})


def cases(ref: tuple[ModuleType, ModuleType] | None) -> dict[str, Callable[[], Any]]:
    signing = SigningKey.generate_es256()
    keys = [signing.public_key()]
    token, _ = tokens.mint_consent_token(
        signing,
        issuer=ISSUER,
        audience=AUDIENCE,
        client_id="mairie-exemple",
        sub="sp-pairwise-subject-0123456789abcdefghijklmno",
        consent_id="consent-0123456789abcdef",
        jkt="x" * 43,
        authorization_details=DETAILS,
        acr="eidas2",
        lifetime=600,
        now=NOW,
    )
    client = ec.generate_private_key(ec.SECP256R1())
    proof = client_proof(client, token, "jti-0123456789abcdefghij")
    # More distinct keys than the cache holds: cycling through them, every call misses.
    fresh = [
        client_proof(ec.generate_private_key(ec.SECP256R1()), token, f"jti-{i:020}")
        for i in range(JWK_CACHE_SIZE + 64)
    ]
    fresh_index = [0]

    def next_fresh() -> str:
        fresh_index[0] = (fresh_index[0] + 1) % len(fresh)
        return fresh[fresh_index[0]]

    assertion_args: dict[str, Any] = {
        "issuer": ISSUER,
        "provider": "dgfip",
        "sub": "dp-pairwise-subject-0123456789abcdefghijklmno",
        "identity": IDENTITY,
        "resource": "revenu_fiscal",
        "purpose": "family-benefit-eligibility",
        "consent_id": "consent-0123456789abcdef",
        "transfer_id": "transfer-0123456789abcdef",
        "client_id": "mairie-exemple",
        "lifetime": 60,
        "now": NOW,
    }
    proof_args: dict[str, Any] = {
        "method": "GET",
        "url": ISSUER + PATH,
        "now": NOW,
        "access_token": token,
    }
    token_args: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "now": NOW}

    # The floor: the signature operations alone, inputs prepared.
    header, payload, signature = proof.split(".")
    signing_input = f"{header}.{payload}".encode("ascii")
    raw = b64url_decode(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    client_public = client.public_key()
    ecdsa = ec.ECDSA(hashes.SHA256())
    private = signing.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)

    def floor_verify() -> None:
        client_public.verify(der, signing_input, ecdsa)

    def floor_sign() -> bytes:
        return private.sign(signing_input, ecdsa)

    # What the signature step would cost through PyJWT's algorithm object instead.
    es256 = jwt.get_algorithm_by_name("ES256")
    result: dict[str, Callable[[], Any]] = {
        "floor: ECDSA P-256 verify": floor_verify,
        "floor: ECDSA P-256 sign": floor_sign,
        "PyJWT ES256 algorithm: verify": partial(es256.verify, signing_input, client_public, raw),
        "PyJWT ES256 algorithm: sign": partial(es256.sign, signing_input, private),
    }

    def with_new_key(verify_proof: Callable[..., Any]) -> Callable[[], Any]:
        return lambda: verify_proof(next_fresh(), **proof_args)

    versions = [("after", (dpop, tokens))] + ([("before", ref)] if ref is not None else [])
    for label, (d, t) in versions:
        result[f"{label}: verify_proof"] = partial(d.verify_proof, proof, **proof_args)
        result[f"{label}: verify_proof, new key"] = with_new_key(d.verify_proof)
        result[f"{label}: verify_consent_token"] = partial(
            t.verify_consent_token, token, keys, **token_args
        )
        result[f"{label}: mint_provider_assertion"] = partial(
            t.mint_provider_assertion, signing, **assertion_args
        )
    result["Runtime.token_keys (1 key)"] = lambda: [k.public_key() for k in [signing]]
    return result


def measure(work: dict[str, Callable[[], Any]], iterations: int, rounds: int) -> dict[str, float]:
    best = dict.fromkeys(work, float("inf"))
    for fn in work.values():  # warm-up: caches, first-call imports
        for _ in range(50):
            fn()
    for _ in range(rounds):
        for name, fn in work.items():
            started = time.process_time()
            for _ in range(iterations):
                fn()
            best[name] = min(best[name], (time.process_time() - started) / iterations * 1e6)
    return best


def report(us: dict[str, float]) -> dict[str, Any]:
    verify = us["floor: ECDSA P-256 verify"]
    sign = us["floor: ECDSA P-256 sign"]
    floors = {
        "verify_proof": verify,
        "verify_proof, new key": verify,
        "verify_consent_token": verify,
        "mint_provider_assertion": sign,
    }
    print(f"floor: one ECDSA P-256 verify {verify:6.1f} µs, one sign {sign:6.1f} µs")
    print(f"{'µs CPU per call (× floor)':34} {'before':>16} {'after':>16}")
    table: dict[str, Any] = {"floor_verify_us": verify, "floor_sign_us": sign, "rows": {}}
    for name, floor in floors.items():
        cells = []
        row: dict[str, float] = {}
        for label in ("before", "after"):
            value = us.get(f"{label}: {name}")
            if value is None:
                cells.append(f"{'-':>16}")
                continue
            row[f"{label}_us"] = value
            row[f"{label}_ratio"] = value / floor
            cells.append(f"{value:8.1f} ({value / floor:4.2f}×)")
        table["rows"][name] = row
        print(f"{name:34} {' '.join(cells)}")
    transfer_floor = 2 * verify + sign
    cells = []
    for label in ("before", "after"):
        parts = [f"{label}: {n}" for n in ("verify_proof", "verify_consent_token")]
        parts.append(f"{label}: mint_provider_assertion")
        if all(p in us for p in parts):
            total = sum(us[p] for p in parts)
            table[f"transfer_{label}_us"] = total
            cells.append(f"{total:8.1f} ({total / transfer_floor:4.2f}×)")
        else:
            cells.append(f"{'-':>16}")
    print(f"{'transfer (2 verify + 1 sign floor)':34} {' '.join(cells)}")
    print(f"{'  floor of the transfer':34} {transfer_floor:8.1f}")
    for op, floor in (("verify", verify), ("sign", sign)):
        value = us[f"PyJWT ES256 algorithm: {op}"]
        table[f"pyjwt_algorithm_{op}_us"] = value
        print(f"PyJWT's ES256 algorithm object, {op}: {value:.1f} µs ({value / floor:.2f}× floor)")
    token_keys = us["Runtime.token_keys (1 key)"]
    table["token_keys_us"] = token_keys
    print(f"Runtime.token_keys, 1 signing key: {token_keys:.1f} µs per call")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200, help="calls per round")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--ref", default="HEAD", help="git revision for the 'before' column")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    loaded = load_ref(args.ref)
    if isinstance(loaded, str):
        print(f"no 'before' column: {loaded}")
    us = measure(cases(None if isinstance(loaded, str) else loaded), args.iterations, args.rounds)
    table = report(us)
    if args.json:
        table.update(iterations=args.iterations, rounds=args.rounds, ref=args.ref)
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
