"""Consent tokens, client assertions and provider assertions, attacked from outside.

Forged tokens are built with PyJWT, cryptography and hmac directly, as an
attacker or a foreign client would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.errors import OAuthError, Unauthenticated
from gateway.jose import (
    CLIENT_ALGS,
    TOKEN_ALGS,
    PublicKey,
    SigningKey,
    jwks_document,
    public_keys_from_jwks,
)
from gateway.tokens import (
    CLIENT_ASSERTION_MAX_LIFETIME,
    LEEWAY_SECONDS,
    ClientAssertion,
    ConsentToken,
    mint_audit_token,
    mint_consent_token,
    mint_provider_assertion,
    unverified_client_id,
    verify_audit_token,
    verify_client_assertion,
    verify_consent_token,
    verify_provider_assertion,
)

NOW = 1_750_000_000.0
ISSUER = "https://gateway.example"
AUDIENCE = "https://gateway.example/data"
DETAILS = [
    {
        "type": "personal_data",
        "provider": "dgfip",
        "resources": ["revenu_fiscal"],
        "purpose": "family-benefit-eligibility",
        "max_transfers": 1,
    }
]
ES = SigningKey.generate_es256()
ED = SigningKey.generate_ed25519()
# What a verifier gets from our published JWKS.
KEYS = public_keys_from_jwks(jwks_document([ES, ED]), TOKEN_ALGS)
_DROP: Any = object()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    segments = [json.dumps(header).encode(), json.dumps(claims).encode()]
    return ".".join([*(b64(s) for s in segments), b64(signature)])


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    unsigned = hand_made(header, claims).rsplit(".", 1)[0]
    mac = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{b64(mac)}"


def consent_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "sp-pairwise-sub",
        "client_id": "mairie-exemple",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": "token-jti",
        "cnf": {"jkt": "client-thumbprint"},
        "consent_id": "consent-1",
        "authorization_details": DETAILS,
        "acr": "eidas2",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not _DROP}


def foreign_token(
    key: Any = None,
    alg: str = "ES256",
    *,
    header: dict[str, Any] | None = None,
    **overrides: Any,
) -> str:
    """A consent token signed with PyJWT directly (by default with our ES256 key)."""
    head: dict[str, Any] = {"typ": "at+jwt", "kid": ES.kid}
    head.update(header or {})
    head = {k: v for k, v in head.items() if v is not _DROP}
    signing_key = ES.private_key if key is None else key
    return jwt.encode(consent_claims(**overrides), signing_key, algorithm=alg, headers=head)


def refused_token(token: str, code: str = "token_invalid", **kwargs: Any) -> str:
    args: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "now": NOW}
    args.update(kwargs)
    with pytest.raises(Unauthenticated) as info:
        verify_consent_token(token, KEYS, **args)
    assert info.value.code == code
    assert info.value.status == 401
    assert token not in info.value.detail
    return info.value.detail


# --------------------------------------------------------------------------- consent tokens: mint


@pytest.mark.parametrize("key", [ES, ED])
def test_minted_consent_token_verifies(key: SigningKey) -> None:
    token, minted = mint_consent_token(
        key,
        issuer=ISSUER,
        audience=AUDIENCE,
        client_id="mairie-exemple",
        sub="sp-pairwise-sub",
        consent_id="consent-1",
        jkt="client-thumbprint",
        authorization_details=DETAILS,
        acr="eidas2",
        lifetime=300,
        now=NOW,
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": key.alg, "typ": "at+jwt", "kid": key.kid}
    assert verify_consent_token(token, KEYS, issuer=ISSUER, audience=AUDIENCE, now=NOW) == minted
    assert minted.exp == int(NOW) + 300
    assert minted.authorization_details == tuple(DETAILS)
    # Readable by any RFC 9068 verifier, with the claims the transfer path needs.
    claims = jwt.decode(
        token,
        key.private_key.public_key(),
        algorithms=[key.alg],
        audience=AUDIENCE,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["cnf"] == {"jkt": "client-thumbprint"}
    assert claims["iss"] == ISSUER


def test_mint_without_acr_omits_the_claim() -> None:
    token, minted = mint_consent_token(
        ES,
        issuer=ISSUER,
        audience=AUDIENCE,
        client_id="c",
        sub="s",
        consent_id="k",
        jkt="j",
        authorization_details=DETAILS,
        acr=None,
        lifetime=60,
        now=NOW,
    )
    assert minted.acr is None
    assert verify_consent_token(token, KEYS, issuer=ISSUER, audience=AUDIENCE, now=NOW).acr is None


@pytest.mark.parametrize("lifetime", [0, -1, 601])
def test_mint_refuses_long_or_empty_lifetimes(lifetime: int) -> None:
    with pytest.raises(ValueError):
        mint_consent_token(
            ES,
            issuer=ISSUER,
            audience=AUDIENCE,
            client_id="c",
            sub="s",
            consent_id="k",
            jkt="j",
            authorization_details=DETAILS,
            acr=None,
            lifetime=lifetime,
            now=NOW,
        )


# --------------------------------------------------------------------------- consent tokens: verify


def test_foreign_built_valid_token_accepted() -> None:
    parsed = verify_consent_token(foreign_token(), KEYS, issuer=ISSUER, audience=AUDIENCE, now=NOW)
    assert parsed == ConsentToken(
        jti="token-jti",
        client_id="mairie-exemple",
        sub="sp-pairwise-sub",
        consent_id="consent-1",
        jkt="client-thumbprint",
        authorization_details=tuple(DETAILS),
        acr="eidas2",
        iat=int(NOW),
        exp=int(NOW) + 300,
    )


def test_application_at_jwt_typ_accepted() -> None:
    # RFC 9068 §4: "at+jwt or application/at+jwt".
    token = foreign_token(header={"typ": "application/AT+JWT"})
    assert verify_consent_token(token, KEYS, issuer=ISSUER, audience=AUDIENCE, now=NOW)


def test_expired_token() -> None:
    token = foreign_token(iat=int(NOW) - 400, exp=int(NOW) - LEEWAY_SECONDS)
    assert "expired" in refused_token(token, "token_expired")


def test_expiry_within_leeway_accepted() -> None:
    token = foreign_token(iat=int(NOW) - 300, exp=int(NOW) - LEEWAY_SECONDS + 1)
    assert verify_consent_token(token, KEYS, issuer=ISSUER, audience=AUDIENCE, now=NOW)


def test_iat_in_future_refused() -> None:
    token = foreign_token(iat=int(NOW) + LEEWAY_SECONDS + 1, exp=int(NOW) + 300)
    assert "iat" in refused_token(token)


def test_lifetime_longer_than_we_issue_refused() -> None:
    # Even correctly signed, a day-long token is not one we would have minted.
    assert "lifetime" in refused_token(foreign_token(exp=int(NOW) + 86_400))


def test_wrong_issuer() -> None:
    # A token from another deployment that happens to share nothing but the format.
    assert "issuer" in refused_token(foreign_token(iss="https://other.example"))


@pytest.mark.parametrize("aud", ["https://other.example", [AUDIENCE, "https://other.example"]])
def test_wrong_audience(aud: Any) -> None:
    # Exact match only: a token meant for several audiences is not ours alone.
    assert "audience" in refused_token(foreign_token(aud=aud))


@pytest.mark.parametrize("typ", ["JWT", "gateway-assertion+jwt", "dpop+jwt", _DROP])
def test_wrong_typ(typ: Any) -> None:
    # Stops a provider assertion (same key, same issuer) being used as a consent token.
    assert "typ" in refused_token(foreign_token(header={"typ": typ}))


def test_alg_none_refused() -> None:
    token = hand_made({"alg": "none", "typ": "at+jwt", "kid": ES.kid}, consent_claims())
    assert "alg" in refused_token(token)


def test_hs256_keyed_with_our_public_key_refused() -> None:
    # The classic confusion: an HMAC "signed" with the PEM of our public key.
    public_pem = ES.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = hs256({"alg": "HS256", "typ": "at+jwt", "kid": ES.kid}, consent_claims(), public_pem)
    assert "alg" in refused_token(token)


def test_alg_of_another_of_our_keys_refused() -> None:
    # EdDSA is allowed, but not under the kid of our ES256 key.
    token = foreign_token(ED.private_key, "EdDSA", header={"kid": ES.kid})
    assert "alg" in refused_token(token)


def test_unknown_key_with_known_kid_refused() -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    assert "signature" in refused_token(foreign_token(attacker))


@pytest.mark.parametrize("kid", ["unknown-kid", _DROP, ""])
def test_unknown_or_missing_kid_refused(kid: Any) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    assert "kid" in refused_token(foreign_token(attacker, header={"kid": kid}))


def test_tampered_payload_refused() -> None:
    head, _, sig = foreign_token().split(".")
    forged = b64(json.dumps(consent_claims(consent_id="someone-elses-consent")).encode())
    assert "signature" in refused_token(f"{head}.{forged}.{sig}")


@pytest.mark.parametrize(
    "claim",
    [
        "iss",
        "aud",
        "sub",
        "client_id",
        "iat",
        "exp",
        "jti",
        "cnf",
        "consent_id",
        "authorization_details",
    ],
)
def test_missing_required_claim(claim: str) -> None:
    # Without cnf the token would be a bearer token: stolen, it could be replayed by anyone.
    assert claim in refused_token(foreign_token(**{claim: _DROP}))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("cnf", {}),
        ("cnf", {"jkt": ""}),
        ("cnf", "client-thumbprint"),
        ("authorization_details", []),
        ("authorization_details", ["personal_data"]),
        ("authorization_details", {"type": "personal_data"}),
        ("acr", 2),
        ("sub", 1),
        ("client_id", ""),
        ("consent_id", ["consent-1"]),
        ("jti", 5),
        ("exp", "later"),
        ("exp", True),
        ("iat", float("inf")),
    ],
)
def test_badly_typed_claim(claim: str, value: Any) -> None:
    refused_token(foreign_token(**{claim: value}))


def test_not_yet_valid_refused() -> None:
    assert "not yet valid" in refused_token(foreign_token(nbf=int(NOW) + 60))


def test_critical_header_refused() -> None:
    refused_token(foreign_token(header={"crit": ["exp"], "exp": 1}))


@pytest.mark.parametrize("value", ["", "garbage", "a.b.c", "e30.e30.e30"])
def test_garbage_refused(value: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        verify_consent_token(value, KEYS, issuer=ISSUER, audience=AUDIENCE, now=NOW)
    assert info.value.code == "token_invalid"


# --------------------------------------------------------------------------- client assertions

CLIENT_ID = "mairie-exemple"
TOKEN_ENDPOINT = "https://gateway.example/oauth/token"
AUDIENCES = (ISSUER, TOKEN_ENDPOINT)
CLIENT_ES = ec.generate_private_key(ec.SECP256R1())
CLIENT_ES_2 = ec.generate_private_key(ec.SECP256R1())
CLIENT_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def client_jwks() -> dict[str, Any]:
    def jwk(algorithm: Any, key: Any, kid: str) -> dict[str, Any]:
        return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid}

    return {
        "keys": [
            jwk(jwt.algorithms.ECAlgorithm, CLIENT_ES, "es-1"),
            jwk(jwt.algorithms.ECAlgorithm, CLIENT_ES_2, "es-2"),
            jwk(jwt.algorithms.RSAAlgorithm, CLIENT_RSA, "rsa-1"),
        ]
    }


CLIENT_KEYS = public_keys_from_jwks(client_jwks(), CLIENT_ALGS)


def assertion_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": ISSUER,
        "iat": int(NOW),
        "exp": int(NOW) + 60,
        "jti": "assertion-jti",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not _DROP}


def assertion(
    key: Any = CLIENT_ES, alg: str = "ES256", *, kid: Any = "es-1", **overrides: Any
) -> str:
    headers = {} if kid is _DROP else {"kid": kid}
    return jwt.encode(assertion_claims(**overrides), key, algorithm=alg, headers=headers)


def refused_assertion(value: str, keys: list[PublicKey] | None = None, **kwargs: Any) -> str:
    args: dict[str, Any] = {
        "client_keys": CLIENT_KEYS if keys is None else keys,
        "expected_client_id": CLIENT_ID,
        "audiences": AUDIENCES,
        "now": NOW,
    }
    args.update(kwargs)
    with pytest.raises(OAuthError) as info:
        verify_client_assertion(value, **args)
    assert info.value.error == "invalid_client"
    assert info.value.status == 401
    return info.value.description


def accept_assertion(value: str, **kwargs: Any) -> ClientAssertion:
    args: dict[str, Any] = {
        "client_keys": CLIENT_KEYS,
        "expected_client_id": CLIENT_ID,
        "audiences": AUDIENCES,
        "now": NOW,
    }
    args.update(kwargs)
    return verify_client_assertion(value, **args)


def test_valid_client_assertion() -> None:
    assert accept_assertion(assertion()) == ClientAssertion(
        client_id=CLIENT_ID, jti="assertion-jti", exp=int(NOW) + 60
    )


def test_assertion_with_audience_list_and_token_endpoint() -> None:
    assert accept_assertion(assertion(aud=["https://elsewhere", TOKEN_ENDPOINT]))


def test_assertion_without_kid_tries_each_key_of_that_alg() -> None:
    assert accept_assertion(assertion(CLIENT_ES_2, kid=_DROP)).jti == "assertion-jti"
    assert accept_assertion(assertion(CLIENT_RSA, "PS256", kid=_DROP)).jti == "assertion-jti"


def test_assertion_without_iat_accepted() -> None:
    # RFC 7523 §3: iat is optional.
    assert accept_assertion(assertion(iat=_DROP))


def test_assertion_alg_none_refused() -> None:
    value = hand_made({"alg": "none", "kid": "es-1"}, assertion_claims())
    assert "alg" in refused_assertion(value)


def test_assertion_hs256_with_public_key_refused() -> None:
    pem = CLIENT_ES.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert "alg" in refused_assertion(hs256({"alg": "HS256"}, assertion_claims(), pem))


def test_assertion_rs256_refused() -> None:
    # FAPI 2.0 allows PS256 for RSA, not PKCS#1 v1.5.
    assert "alg" in refused_assertion(assertion(CLIENT_RSA, "RS256", kid="rsa-1"))


def test_assertion_alg_without_registered_key_refused() -> None:
    # The client registered no Ed25519 key: an EdDSA assertion has nothing to verify with.
    value = assertion(ed25519.Ed25519PrivateKey.generate(), "EdDSA", kid=_DROP)
    assert "no registered client key" in refused_assertion(value)


def test_assertion_kid_of_a_key_for_another_alg_refused() -> None:
    value = assertion(CLIENT_RSA, "PS256", kid="es-1")
    assert "no registered client key" in refused_assertion(value)


def test_assertion_unknown_kid_refused() -> None:
    assert "no registered client key" in refused_assertion(assertion(kid="nope"))


def test_assertion_signed_by_a_foreign_key_refused() -> None:
    # Someone who knows the client_id but not its key.
    intruder = ec.generate_private_key(ec.SECP256R1())
    assert "signature" in refused_assertion(assertion(intruder))
    assert "signature" in refused_assertion(assertion(intruder, kid=_DROP))


def test_assertion_of_another_client_refused() -> None:
    # Client B cannot authenticate as A with B's own keys and B's own claims.
    assert "issuer" in refused_assertion(assertion(iss="other-client", sub="other-client"))


@pytest.mark.parametrize(("iss", "sub"), [("other", CLIENT_ID), (CLIENT_ID, "other")])
def test_assertion_iss_and_sub_must_be_the_client(iss: str, sub: str) -> None:
    refused_assertion(assertion(iss=iss, sub=sub))


@pytest.mark.parametrize("aud", ["https://other-as.example", ["https://other-as.example"]])
def test_assertion_for_another_server_refused(aud: Any) -> None:
    # An assertion the client made for another authorization server cannot be replayed here.
    assert "audience" in refused_assertion(assertion(aud=aud))


@pytest.mark.parametrize("claim", ["iss", "sub", "aud", "exp", "jti"])
def test_assertion_missing_claim_refused(claim: str) -> None:
    assert claim in refused_assertion(assertion(**{claim: _DROP}))


def test_assertion_expired_refused() -> None:
    assert "expired" in refused_assertion(assertion(exp=int(NOW) - LEEWAY_SECONDS))


def test_assertion_too_long_lived_refused() -> None:
    # A long-lived assertion is a reusable bearer credential.
    late = int(NOW) + CLIENT_ASSERTION_MAX_LIFETIME + LEEWAY_SECONDS + 1
    assert "ahead" in refused_assertion(assertion(exp=late))


def test_assertion_iat_in_future_refused() -> None:
    assert "iat" in refused_assertion(assertion(iat=int(NOW) + LEEWAY_SECONDS + 1))


def test_assertion_not_yet_valid_refused() -> None:
    assert "not yet valid" in refused_assertion(assertion(nbf=int(NOW) + 60))


def test_assertion_empty_jti_refused() -> None:
    assert "jti" in refused_assertion(assertion(jti=""))


def test_unverified_client_id() -> None:
    assert unverified_client_id(assertion()) == CLIENT_ID


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        jwt.encode({"iss": "a", "sub": "b"}, CLIENT_ES, algorithm="ES256"),
        jwt.encode({"sub": "a"}, CLIENT_ES, algorithm="ES256"),
        hand_made({"alg": "ES256"}, {"iss": 1, "sub": 1}),
    ],
)
def test_unverified_client_id_refuses_unusable_assertions(value: str) -> None:
    with pytest.raises(OAuthError) as info:
        unverified_client_id(value)
    assert (info.value.error, info.value.status) == ("invalid_client", 401)


# --------------------------------------------------------------------------- provider assertions

IDENTITY = {"given_name": "Marie", "family_name": "Curie", "birthdate": "1867-11-07"}


def provider_assertion(**overrides: Any) -> str:
    args: dict[str, Any] = {
        "issuer": ISSUER,
        "provider": "dgfip",
        "sub": "dp-pairwise-sub",
        "identity": IDENTITY,
        "resource": "revenu_fiscal",
        "purpose": "family-benefit-eligibility",
        "consent_id": "consent-1",
        "transfer_id": "transfer-1",
        "client_id": CLIENT_ID,
        "lifetime": 60,
        "now": NOW,
    }
    args.update(overrides)
    return mint_provider_assertion(ES, **args)


def verify_as_provider(token: str, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"issuer": ISSUER, "provider": "dgfip", "now": NOW}
    args.update(overrides)
    return verify_provider_assertion(token, KEYS, **args)


def test_provider_assertion_round_trip() -> None:
    token = provider_assertion()
    assert jwt.get_unverified_header(token) == {
        "alg": "ES256",
        "typ": "gateway-assertion+jwt",
        "kid": ES.kid,
    }
    claims = verify_as_provider(token)
    assert claims["aud"] == "dgfip" and claims["sub"] == "dp-pairwise-sub"
    assert claims["exp"] - claims["iat"] == 60
    assert {k: claims[k] for k in IDENTITY} == IDENTITY
    assert (claims["resource"], claims["transfer_id"]) == ("revenu_fiscal", "transfer-1")


@pytest.mark.parametrize("lifetime", [0, 61])
def test_provider_assertion_lifetime_bounded(lifetime: int) -> None:
    with pytest.raises(ValueError):
        provider_assertion(lifetime=lifetime)


@pytest.mark.parametrize("claim", ["aud", "sub", "iss", "exp", "consent_id"])
def test_identity_claims_cannot_override_assertion_claims(claim: str) -> None:
    # A provider-declared identity claim named "aud" would retarget the assertion.
    with pytest.raises(ValueError, match="reserved"):
        provider_assertion(identity={**IDENTITY, claim: "x"})


def test_provider_assertion_for_another_provider_refused() -> None:
    # An assertion for the tax office cannot be replayed at the benefits agency.
    with pytest.raises(ValueError, match="audience"):
        verify_as_provider(provider_assertion(), provider="cnaf")


def test_provider_assertion_from_another_issuer_refused() -> None:
    with pytest.raises(ValueError, match="issuer"):
        verify_as_provider(provider_assertion(), issuer="https://other.example")


def test_provider_assertion_expired_refused() -> None:
    with pytest.raises(ValueError, match="expired"):
        verify_as_provider(provider_assertion(), now=NOW + 60 + LEEWAY_SECONDS)


def test_consent_token_is_not_a_provider_assertion() -> None:
    # Same keys, same issuer: typ is what keeps the two kinds apart.
    token = foreign_token(aud="dgfip")
    with pytest.raises(ValueError, match="typ"):
        verify_as_provider(token)


def test_provider_assertion_is_not_a_consent_token() -> None:
    token = provider_assertion()
    assert "typ" in refused_token(token, audience="dgfip")


def test_provider_assertion_unknown_kid_refused() -> None:
    with pytest.raises(ValueError, match="kid"):
        verify_provider_assertion(
            provider_assertion(), [], issuer=ISSUER, provider="dgfip", now=NOW
        )


def test_provider_assertion_forged_signature_refused() -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    claims = jwt.decode(provider_assertion(), options={"verify_signature": False})
    forged = jwt.encode(
        claims, attacker, algorithm="ES256", headers={"typ": "gateway-assertion+jwt", "kid": ES.kid}
    )
    with pytest.raises(ValueError, match="signature"):
        verify_as_provider(forged)


def test_provider_assertion_is_read_by_pyjwt() -> None:
    # What a provider without our code runs: any RFC 7519 library.
    token = provider_assertion()
    claims = jwt.decode(
        token,
        ES.private_key.public_key(),
        algorithms=["ES256"],
        audience="dgfip",
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == verify_as_provider(token)
    assert {k: claims[k] for k in IDENTITY} == IDENTITY


def test_eddsa_provider_assertion_round_trip() -> None:
    token = mint_provider_assertion(
        ED,
        issuer=ISSUER,
        provider="dgfip",
        sub="dp-pairwise-sub",
        identity={"given_name": "Marie-Thérèse"},
        resource="revenu_fiscal",
        purpose="family-benefit-eligibility",
        consent_id="consent-1",
        transfer_id="transfer-1",
        client_id=CLIENT_ID,
        lifetime=60,
        now=NOW,
    )
    assert jwt.get_unverified_header(token) == {
        "alg": "EdDSA",
        "typ": "gateway-assertion+jwt",
        "kid": ED.kid,
    }
    assert verify_as_provider(token)["given_name"] == "Marie-Thérèse"
    options: Any = {"verify_exp": False, "verify_iat": False}
    public = ED.private_key.public_key()
    claims = jwt.decode(token, public, algorithms=["EdDSA"], audience="dgfip", options=options)
    assert claims["given_name"] == "Marie-Thérèse"


def test_audit_token_round_trip() -> None:
    token, minted = mint_audit_token(
        ES,
        issuer=ISSUER,
        audience=f"{ISSUER}/audit",
        client_id="auditor",
        jkt="auditor-thumbprint",
        scope=["audit:read"],
        lifetime=300,
        now=NOW,
    )
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "typ": "at+jwt", "kid": ES.kid}
    verified = verify_audit_token(token, KEYS, issuer=ISSUER, audience=f"{ISSUER}/audit", now=NOW)
    assert verified == minted
    # An audit token is not a consent token (no consent, another audience).
    refused_token(token)


# --------------------------------------------------------------------------- parsing once


def signed_by_us(header: bytes, payload: bytes) -> str:
    """Raw JSON octets signed with our own ES256 key (what json.dumps would not produce)."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = jwt.get_algorithm_by_name("ES256").sign(signing_input.encode(), ES.private_key)
    return f"{signing_input}.{b64(signature)}"


OUR_HEADER = json.dumps({"typ": "at+jwt", "alg": "ES256", "kid": ES.kid})


def test_signed_by_us_is_accepted() -> None:
    token = signed_by_us(OUR_HEADER.encode(), json.dumps(consent_claims()).encode())
    assert verify_consent_token(token, KEYS, issuer=ISSUER, audience=AUDIENCE, now=NOW)


@pytest.mark.parametrize(
    "payload",
    [
        # One reader sees the victim's consent, another the attacker's (RFC 7519 §4).
        json.dumps(consent_claims()).replace("}", ', "consent_id": "someone-else"}'),
        '{"aud": "https://other.example", ' + json.dumps(consent_claims())[1:],
        json.dumps(consent_claims(cnf={"jkt": "a"})).replace(
            '"jkt": "a"', '"jkt": "a", "jkt": "b"'
        ),
    ],
)
def test_duplicate_claim_names_refused(payload: str) -> None:
    token = signed_by_us(OUR_HEADER.encode(), payload.encode())
    assert "malformed" in refused_token(token)


@pytest.mark.parametrize(
    "header",
    [
        '{"typ": "JWT", ' + OUR_HEADER[1:],
        OUR_HEADER.replace('"kid"', '"kid": "unknown", "kid"'),
        OUR_HEADER.replace(f'"{ES.kid}"', "7"),
    ],
)
def test_malformed_headers_refused(header: str) -> None:
    token = signed_by_us(header.encode(), json.dumps(consent_claims()).encode())
    assert "well-formed" in refused_token(token)


def test_padded_or_non_canonical_token_refused() -> None:
    head, body, sig = foreign_token().split(".")
    refused_token(f"{head}.{body}.{sig}==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(sig[-1]) + 1]  # same signature octets, another text
    assert "well-formed" in refused_token(f"{head}.{body}.{sig[:-1]}{twin}")


# The order of the P-256 group (SEC 2 §2.4.2).
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.mark.parametrize(
    "forge",
    [
        lambda r, s: r.to_bytes(32, "big") + s.to_bytes(32, "big")[:-1],
        lambda r, s: r.to_bytes(32, "big") + s.to_bytes(32, "big") + b"\x00",
        lambda r, s: bytes(64),
        lambda r, s: r.to_bytes(32, "big") + P256_N.to_bytes(32, "big"),
        lambda r, s: encode_dss_signature(r, s),  # DER is not the JWS form (RFC 7518 §3.4)
        lambda r, s: b"garbage",
        lambda r, s: b"",
    ],
)
def test_malformed_signatures_refused(forge: Any) -> None:
    unsigned, _, sig = foreign_token().rpartition(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    assert "signature" in refused_token(f"{unsigned}.{b64(forge(r, s))}")


def test_signed_payload_that_is_not_an_object_refused() -> None:
    assert "malformed" in refused_token(signed_by_us(OUR_HEADER.encode(), b"[]"))
