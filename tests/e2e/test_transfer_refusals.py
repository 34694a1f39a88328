"""Every refusal of the transfer path (DESIGN §3), attacked the way a foreign client would.

Each request is built here with PyJWT and ``cryptography`` directly, not with the
gateway's own helpers, except where the attack needs the gateway's signing key
(a token the gateway itself could have minted, with one claim wrong). Each test
checks what the caller sees (status, problem ``type``, ``Transfer-Id``), what the
auditor sees (one ``transfer.denied`` entry naming the step and the code, no
``transfer.authorized``) and that the data provider was never called.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from gateway.app import sweep
from gateway.demo.story import revoke_on_my_page
from gateway.storage.models import consent_allowances, transfers
from gateway.tokens import mint_consent_token
from tests.conftest import (
    CNAF,
    DGFIP,
    ISSUER,
    CountingApp,
    Stack,
    cnaf_details,
    count_calls,
)

QF_URL = f"{ISSUER}/data/cnaf/quotient_familial"
QF_PARAMS = {"annee": "2025", "mois": "01"}


# --------------------------------------------------------------------------- a foreign client


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ath_of(token: str) -> str:
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def make_proof(
    key: ec.EllipticCurvePrivateKey,
    *,
    token: str | None,
    htm: str = "GET",
    htu: str = QF_URL,
    iat: float | None = None,
    ath: str | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    """An RFC 9449 proof; ``ath`` defaults to the hash of ``token`` (none if token is None)."""
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16),
        "htm": htm,
        "htu": htu,
        "iat": int(time.time() if iat is None else iat),
    }
    if ath is not None:
        claims["ath"] = ath
    elif token is not None:
        claims["ath"] = ath_of(token)
    header = {"typ": "dpop+jwt", "jwk": public_jwk(key), **(headers or {})}
    return jwt.encode(claims, key, algorithm="ES256", headers=header)


def sp_key(stack: Stack) -> ec.EllipticCurvePrivateKey:
    """The private half of the DPoP key the service provider's tokens are bound to."""
    key = stack.sp.dpop_key.private_key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a token, read without checking anything, as an attacker can."""
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def unsigned_jws(header: dict[str, Any], claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return b64url(json.dumps(obj, separators=(",", ":")).encode())

    return f"{part(header)}.{part(claims)}"


async def get(
    stack: Stack,
    url: str = QF_URL,
    *,
    authorization: str | None,
    proofs: Sequence[str] = (),
    params: Any = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> httpx.Response:
    headers: list[tuple[str, str]] = []
    if authorization is not None:
        headers.append(("Authorization", authorization))
    headers.extend(("DPoP", proof) for proof in proofs)
    headers.extend(extra_headers)
    return await stack.http.get(
        url, params=QF_PARAMS if params is None else params, headers=headers
    )


async def call_with(stack: Stack, token: str, *, now: float | None = None) -> httpx.Response:
    """A well-formed call presenting ``token`` with a proof of the right key."""
    proof = make_proof(sp_key(stack), token=token, iat=now)
    return await get(stack, authorization=f"DPoP {token}", proofs=[proof])


# --------------------------------------------------------------------------- checks


@dataclasses.dataclass
class Providers:
    cnaf: CountingApp
    dgfip: CountingApp

    @property
    def calls(self) -> int:
        return self.cnaf.calls + self.dgfip.calls


@pytest.fixture
def providers(stack: Stack) -> Providers:
    return Providers(cnaf=count_calls(stack, CNAF), dgfip=count_calls(stack, DGFIP))


async def assert_refused(
    stack: Stack,
    providers: Providers,
    response: httpx.Response,
    *,
    status: int,
    code: str,
    step: int,
    relayed: int = 0,
) -> dict[str, Any]:
    """The refusal as the caller and the auditor see it; returns the trail entry.

    ``relayed`` is how many legitimate transfers this test made before the attack.
    """
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"urn:gateway:error:{code}", body
    assert body["status"] == status
    assert body["title"] and body["detail"]
    transfer_id = response.headers["Transfer-Id"]
    assert transfer_id and body["transfer_id"] == transfer_id
    if status == 401:
        # RFC 9449 §7.1: a DPoP-protected resource names the DPoP scheme in its challenge.
        assert response.headers["WWW-Authenticate"].startswith("DPoP ")

    trail = await stack.trail()
    mine = [e for e in trail if e.get("transfer_id") == transfer_id]
    assert [e["type"] for e in mine] == ["transfer.denied"]
    denied = mine[0]
    assert denied["details"]["code"] == code
    assert denied["details"]["step"] == step
    # Nothing was relayed for the refused request.
    assert [e["type"] for e in trail].count("transfer.authorized") == relayed
    assert providers.calls == relayed
    # The unit that refused it may have spent the proof, taken the use and
    # written an "authorized" row in its one round trip: the refusal undid the
    # last two (only the "denied" row is left, and only relayed uses are gone).
    async with stack.rt.engine.connect() as conn:
        states = (
            (await conn.execute(select(transfers.c.state).where(transfers.c.id == transfer_id)))
            .scalars()
            .all()
        )
        allowance = consent_allowances.c
        used = func.sum(allowance.max_transfers - allowance.uses_left)
        taken = (await conn.execute(select(func.coalesce(used, 0)))).scalar_one()
    assert states in ([], ["denied"])
    assert taken == relayed
    return denied


# --------------------------------------------------------------------------- (1) the caller


async def test_no_authorization_header(stack: Stack, providers: Providers) -> None:
    grant = await stack.grant()
    proof = make_proof(sp_key(stack), token=grant.access_token)
    response = await get(stack, authorization=None, proofs=[proof])
    denied = await assert_refused(
        stack, providers, response, status=401, code="token_missing", step=1
    )
    assert "client_id" not in denied and "consent_id" not in denied


async def test_bearer_scheme_is_refused(stack: Stack, providers: Providers) -> None:
    grant = await stack.grant()
    proof = make_proof(sp_key(stack), token=grant.access_token)
    response = await get(stack, authorization=f"Bearer {grant.access_token}", proofs=[proof])
    await assert_refused(stack, providers, response, status=401, code="token_invalid", step=1)


async def test_no_dpop_proof(stack: Stack, providers: Providers) -> None:
    grant = await stack.grant()
    response = await get(stack, authorization=f"DPoP {grant.access_token}")
    await assert_refused(stack, providers, response, status=401, code="dpop_proof_missing", step=1)


@pytest.mark.parametrize("kind", ["garbage", "bad_signature", "private_key_in_jwk", "no_typ"])
async def test_malformed_dpop_proof(stack: Stack, providers: Providers, kind: str) -> None:
    grant = await stack.grant()
    key = sp_key(stack)
    good = make_proof(key, token=grant.access_token)
    if kind == "garbage":
        proof = "this-is-not-a-jwt"
    elif kind == "bad_signature":
        head, claims, signature = good.split(".")
        flipped = bytearray(base64.urlsafe_b64decode(signature + "=="))
        flipped[0] ^= 0x01
        proof = f"{head}.{claims}.{b64url(bytes(flipped))}"
    elif kind == "private_key_in_jwk":
        d = key.private_numbers().private_value.to_bytes(32, "big")
        proof = make_proof(
            key, token=grant.access_token, headers={"jwk": {**public_jwk(key), "d": b64url(d)}}
        )
    else:
        proof = make_proof(key, token=grant.access_token, headers={"typ": "JWT"})
    response = await get(stack, authorization=f"DPoP {grant.access_token}", proofs=[proof])
    await assert_refused(stack, providers, response, status=401, code="dpop_proof_invalid", step=1)


@pytest.mark.parametrize("folded", [False, True], ids=["two_fields", "folded_with_comma"])
async def test_two_dpop_headers(stack: Stack, providers: Providers, folded: bool) -> None:
    grant = await stack.grant()
    first = make_proof(sp_key(stack), token=grant.access_token)
    second = make_proof(sp_key(stack), token=grant.access_token)
    proofs = [f"{first}, {second}"] if folded else [first, second]
    response = await get(stack, authorization=f"DPoP {grant.access_token}", proofs=proofs)
    await assert_refused(stack, providers, response, status=401, code="dpop_proof_missing", step=1)


@pytest.mark.parametrize(
    ("htm", "htu", "host"),
    [
        ("GET", f"{ISSUER}/data/dgfip/revenu_fiscal", None),
        ("GET", "http://gateway.evil.example/data/cnaf/quotient_familial", None),
        # htu is checked against GATEWAY_ISSUER, never against the Host header.
        ("GET", "http://gateway.evil.example/data/cnaf/quotient_familial", "gateway.evil.example"),
        ("POST", QF_URL, None),
        ("get", QF_URL, None),
    ],
    ids=["other_resource", "other_origin", "spoofed_host_header", "other_method", "lowercase_htm"],
)
async def test_proof_for_another_request(
    stack: Stack, providers: Providers, htm: str, htu: str, host: str | None
) -> None:
    grant = await stack.grant()
    proof = make_proof(sp_key(stack), token=grant.access_token, htm=htm, htu=htu)
    response = await get(
        stack,
        authorization=f"DPoP {grant.access_token}",
        proofs=[proof],
        extra_headers=[("Host", host)] if host else (),
    )
    await assert_refused(stack, providers, response, status=401, code="dpop_proof_invalid", step=1)


@pytest.mark.parametrize("kind", ["missing", "other_token", "not_base64url_of_sha256"])
async def test_proof_ath(stack: Stack, providers: Providers, kind: str) -> None:
    grant = await stack.grant()
    key = sp_key(stack)
    if kind == "missing":
        proof = make_proof(key, token=None)
    elif kind == "other_token":
        proof = make_proof(key, token=grant.access_token, ath=ath_of(grant.access_token + "x"))
    else:
        proof = make_proof(key, token=grant.access_token, ath=grant.access_token)
    response = await get(stack, authorization=f"DPoP {grant.access_token}", proofs=[proof])
    await assert_refused(stack, providers, response, status=401, code="dpop_proof_invalid", step=1)


@pytest.mark.parametrize("offset", [-400, +60], ids=["stale", "future"])
async def test_proof_iat_outside_window(stack: Stack, providers: Providers, offset: int) -> None:
    grant = await stack.grant()
    proof = make_proof(sp_key(stack), token=grant.access_token, iat=time.time() + offset)
    response = await get(stack, authorization=f"DPoP {grant.access_token}", proofs=[proof])
    await assert_refused(stack, providers, response, status=401, code="dpop_proof_invalid", step=1)


# --------------------------------------------------------------------------- (2) the token


async def test_replayed_proof(stack: Stack, providers: Providers) -> None:
    # Two transfers allowed, so only the replayed jti can explain the refusal.
    grant = await stack.grant([cnaf_details(max_transfers=2)])
    proof = make_proof(sp_key(stack), token=grant.access_token)
    first = await get(stack, authorization=f"DPoP {grant.access_token}", proofs=[proof])
    assert first.status_code == 200, first.text
    again = await get(stack, authorization=f"DPoP {grant.access_token}", proofs=[proof])
    denied = await assert_refused(
        stack, providers, again, status=401, code="dpop_proof_replayed", step=2, relayed=1
    )
    assert denied["client_id"] == "mairie-demoville"
    # The replayed request's unit spent the proof, took a use and wrote its
    # transfer row in one round trip: the refusal undid the last two.
    async with stack.rt.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(transfers.c.id, transfers.c.state).order_by(transfers.c.created_at)
            )
        ).all()
        uses = (await conn.execute(select(consent_allowances.c.uses_left))).scalars().all()
    assert [(row.id, row.state) for row in rows] == [
        (first.headers["Transfer-Id"], "completed"),
        (again.headers["Transfer-Id"], "denied"),
    ]
    assert uses == [1]
    # The replay did not cost the client its second transfer.
    assert (await call_with(stack, grant.access_token)).status_code == 200


async def test_proof_key_is_not_the_tokens(stack: Stack, providers: Providers) -> None:
    grant = await stack.grant()
    thief = ec.generate_private_key(ec.SECP256R1())
    proof = make_proof(thief, token=grant.access_token)
    response = await get(stack, authorization=f"DPoP {grant.access_token}", proofs=[proof])
    denied = await assert_refused(
        stack, providers, response, status=401, code="dpop_key_mismatch", step=2
    )
    assert "client_id" not in denied


def _gateway_public_pem(jwks: dict[str, Any], kid: str) -> bytes:
    """The gateway's public key as PEM, from its published JWKS (what an attacker has)."""
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]

    def coordinate(name: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(jwk[name] + "=="), "big")

    public = ec.EllipticCurvePublicNumbers(
        coordinate("x"), coordinate("y"), ec.SECP256R1()
    ).public_key()
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    "forgery",
    [
        "unknown_key_same_kid",
        "unknown_key_random_kid",
        "unknown_key_embedded_jwk",
        "alg_none",
        "hs256_public_pem_as_secret",
        "no_kid",
    ],
)
async def test_forged_token(stack: Stack, providers: Providers, forgery: str) -> None:
    grant = await stack.grant()
    header, claims = unverified(grant.access_token)
    kid = header["kid"]
    attacker = ec.generate_private_key(ec.SECP256R1())
    if forgery == "unknown_key_same_kid":
        token = jwt.encode(
            claims, attacker, algorithm="ES256", headers={"typ": "at+jwt", "kid": kid}
        )
    elif forgery == "unknown_key_random_kid":
        token = jwt.encode(
            claims,
            attacker,
            algorithm="ES256",
            headers={"typ": "at+jwt", "kid": secrets.token_urlsafe(8)},
        )
    elif forgery == "unknown_key_embedded_jwk":
        # The key to check the token with must never come from the token itself.
        token = jwt.encode(
            claims,
            attacker,
            algorithm="ES256",
            headers={"typ": "at+jwt", "kid": kid, "jwk": public_jwk(attacker)},
        )
    elif forgery == "alg_none":
        token = unsigned_jws({"alg": "none", "typ": "at+jwt", "kid": kid}, claims) + "."
    elif forgery == "hs256_public_pem_as_secret":
        jwks = (await stack.http.get(f"{ISSUER}/.well-known/jwks.json")).json()
        secret = _gateway_public_pem(jwks, kid)
        signing_input = unsigned_jws({"alg": "HS256", "typ": "at+jwt", "kid": kid}, claims)
        mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        token = f"{signing_input}.{b64url(mac)}"
    else:
        token = jwt.encode(
            claims, stack.rt.keys.active.private_key, algorithm="ES256", headers={"typ": "at+jwt"}
        )
    response = await call_with(stack, token)
    denied = await assert_refused(
        stack, providers, response, status=401, code="token_invalid", step=2
    )
    # A token that did not verify is not trusted for the trail either.
    assert "client_id" not in denied and "consent_id" not in denied


async def test_expired_token(stack: Stack, providers: Providers) -> None:
    grant = await stack.grant()
    # Past the token's lifetime and the leeway, well inside the consent's validity.
    stack.clock.advance(seconds=grant.expires_in + 10)
    response = await call_with(stack, grant.access_token, now=stack.clock.timestamp())
    await assert_refused(stack, providers, response, status=401, code="token_expired", step=2)


async def test_token_minted_long_ago(stack: Stack, providers: Providers) -> None:
    grant = await stack.grant()
    _, claims = unverified(grant.access_token)
    token, _ = mint_consent_token(
        stack.rt.keys.active,
        issuer=ISSUER,
        audience=stack.rt.token_audience,
        client_id=claims["client_id"],
        sub=claims["sub"],
        consent_id=claims["consent_id"],
        jkt=claims["cnf"]["jkt"],
        authorization_details=claims["authorization_details"],
        acr=claims.get("acr"),
        lifetime=300,
        now=time.time() - 3600,
    )
    response = await call_with(stack, token)
    await assert_refused(stack, providers, response, status=401, code="token_expired", step=2)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("iss", "http://gateway.evil.example"),
        ("aud", ISSUER),  # the authorization server, not the data endpoint
        ("aud", [f"{ISSUER}/data", "http://other.example"]),
        ("typ", "JWT"),
        ("typ", "dpop+jwt"),
    ],
    ids=["iss", "aud_issuer", "aud_list", "typ_jwt", "typ_dpop"],
)
async def test_token_with_a_wrong_claim(
    stack: Stack, providers: Providers, claim: str, value: Any
) -> None:
    """Signed with the gateway's own key, so only the named check can refuse it."""
    grant = await stack.grant()
    header, claims = unverified(grant.access_token)
    signing = stack.rt.keys.active
    assert header["kid"] == signing.kid
    headers = {"typ": "at+jwt", "kid": signing.kid}
    if claim == "typ":
        headers["typ"] = value
    else:
        claims[claim] = value
    token = jwt.encode(claims, signing.private_key, algorithm="ES256", headers=headers)
    response = await call_with(stack, token)
    await assert_refused(stack, providers, response, status=401, code="token_invalid", step=2)


# --------------------------------------------------------------------------- (3) the consent


@pytest.mark.parametrize("where", ["api", "my_page"])
async def test_revoked_consent(stack: Stack, providers: Providers, where: str) -> None:
    browser = stack.browser()
    grant = await stack.grant(browser=browser)
    if where == "api":
        mine = await browser.http.get(f"{ISSUER}/api/me/consents")
        assert mine.status_code == 200, mine.text
        revoked = await browser.http.post(
            f"{ISSUER}/api/me/consents/{grant.consent_id}/revoke",
            headers={"X-CSRF-Token": mine.json()["csrf_token"]},
        )
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["state"] == "revoked"
    else:
        page = await revoke_on_my_page(browser, f"{ISSUER}/me", grant.consent_id)
        assert page.status_code == 200, page.text
    # The token itself is still within its lifetime.
    response = await call_with(stack, grant.access_token)
    denied = await assert_refused(
        stack, providers, response, status=403, code="consent_revoked", step=3
    )
    assert denied["consent_id"] == grant.consent_id
    assert denied["client_id"] == "mairie-demoville"


async def test_resource_not_in_the_consent(stack: Stack, providers: Providers) -> None:
    grant = await stack.grant([cnaf_details(resources=["quotient_familial"])])
    url = f"{ISSUER}/data/cnaf/composition_familiale"
    proof = make_proof(sp_key(stack), token=grant.access_token, htu=url)
    response = await get(
        stack, url, authorization=f"DPoP {grant.access_token}", proofs=[proof], params={}
    )
    await assert_refused(
        stack, providers, response, status=403, code="resource_not_consented", step=3
    )


async def test_provider_not_in_the_consent(stack: Stack, providers: Providers) -> None:
    grant = await stack.grant([cnaf_details()])
    url = f"{ISSUER}/data/dgfip/revenu_fiscal"
    proof = make_proof(sp_key(stack), token=grant.access_token, htu=url)
    response = await get(
        stack,
        url,
        authorization=f"DPoP {grant.access_token}",
        proofs=[proof],
        params={"annee": "2024"},
    )
    await assert_refused(
        stack, providers, response, status=403, code="provider_not_consented", step=3
    )


@pytest.mark.parametrize(
    "path",
    ["cnaf/no_such_resource", "no_such_provider/quotient_familial", "dgfip/quotient_familial"],
)
async def test_unknown_resource(stack: Stack, providers: Providers, path: str) -> None:
    grant = await stack.grant()
    url = f"{ISSUER}/data/{path}"
    proof = make_proof(sp_key(stack), token=grant.access_token, htu=url)
    response = await get(stack, url, authorization=f"DPoP {grant.access_token}", proofs=[proof])
    denied = await assert_refused(
        stack, providers, response, status=404, code="unknown_resource", step=3
    )
    # Names the caller made up do not go into the trail.
    assert "provider" not in denied and "resource" not in denied


@pytest.mark.parametrize(
    "params",
    [
        {**QF_PARAMS, "debug": "1"},
        {"annee": "1999", "mois": "01"},
        {"annee": "2025", "mois": "13"},
        {"annee": "2025 ", "mois": "01"},
        [("annee", "2025"), ("annee", "2024"), ("mois", "01")],
    ],
    ids=["unknown_name", "bad_year", "bad_month", "trailing_space", "given_twice"],
)
async def test_query_not_allowed(stack: Stack, providers: Providers, params: Any) -> None:
    grant = await stack.grant()
    proof = make_proof(sp_key(stack), token=grant.access_token)
    response = await get(
        stack, authorization=f"DPoP {grant.access_token}", proofs=[proof], params=params
    )
    await assert_refused(stack, providers, response, status=400, code="query_not_allowed", step=4)
    # The refusal did not use up the consent's only transfer.
    assert (await call_with(stack, grant.access_token)).status_code == 200


async def test_consent_used_up(stack: Stack, providers: Providers) -> None:
    grant = await stack.grant([cnaf_details(max_transfers=1)])
    first = await call_with(stack, grant.access_token)
    assert first.status_code == 200, first.text
    again = await call_with(stack, grant.access_token)
    await assert_refused(
        stack, providers, again, status=403, code="consent_exhausted", step=3, relayed=1
    )


@pytest.mark.parametrize("swept", [False, True], ids=["not_yet_swept", "swept"])
async def test_consent_expired(stack: Stack, providers: Providers, swept: bool) -> None:
    grant = await stack.grant()
    purpose = stack.rt.policy.purposes["family-benefit-eligibility"]
    stack.clock.advance(seconds=purpose.max_validity_seconds + 1)
    if swept:
        await sweep(stack.rt)
    # Every token of the consent has expired with it; a fresh one, as the gateway
    # would mint it, isolates the consent's own expiry.
    _, claims = unverified(grant.access_token)
    now = stack.clock.timestamp()
    token, _ = mint_consent_token(
        stack.rt.keys.active,
        issuer=ISSUER,
        audience=stack.rt.token_audience,
        client_id=claims["client_id"],
        sub=claims["sub"],
        consent_id=claims["consent_id"],
        jkt=claims["cnf"]["jkt"],
        authorization_details=claims["authorization_details"],
        acr=claims.get("acr"),
        lifetime=300,
        now=now,
    )
    response = await call_with(stack, token, now=now)
    await assert_refused(stack, providers, response, status=403, code="consent_expired", step=3)


# --------------------------------------------------------------------------- (4) the policy


async def test_acr_below_the_providers_minimum(stack: Stack, providers: Providers) -> None:
    """The provider raised its minimum after the grant (eidas2 login, now eidas3 needed)."""
    grant = await stack.grant([cnaf_details()])  # marianne logs in at eidas2
    policy = stack.rt.policy
    stricter = dataclasses.replace(policy.providers["cnaf"], min_acr="eidas3")
    stack.rt.policy = dataclasses.replace(policy, providers={**policy.providers, "cnaf": stricter})
    response = await call_with(stack, grant.access_token)
    await assert_refused(stack, providers, response, status=403, code="acr_insufficient", step=4)


async def test_low_assurance_login_cannot_grant(stack: Stack, providers: Providers) -> None:
    """alix logs in at eidas1; cnaf needs eidas2: the consent page says so, nothing is granted."""
    from gateway.demo.story import StoryError

    assert stack.rt.policy.providers["cnaf"].min_acr == "eidas2"
    try:
        await stack.consent([cnaf_details()], persona="alix")
    except StoryError as exc:
        assert "403" in str(exc)
    else:
        raise AssertionError("the consent page should have refused the low-assurance login")
    assert "consent.granted" not in await stack.trail_types()


async def test_client_no_longer_granted_the_purpose(stack: Stack, providers: Providers) -> None:
    grant = await stack.grant([cnaf_details()])
    policy = stack.rt.policy
    client = policy.clients["mairie-demoville"]
    without_cnaf = dataclasses.replace(
        client, grants=tuple(g for g in client.grants if g.provider != "cnaf")
    )
    assert without_cnaf.grants != client.grants
    stack.rt.policy = dataclasses.replace(
        policy, clients={**policy.clients, client.id: without_cnaf}
    )
    response = await call_with(stack, grant.access_token)
    await assert_refused(stack, providers, response, status=403, code="purpose_not_granted", step=4)
