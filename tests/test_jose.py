from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.jose import (
    CLIENT_ALGS,
    TOKEN_ALGS,
    SigningKey,
    b64url_decode,
    b64url_encode,
    jwk_thumbprint,
    jwks_document,
    public_keys_from_jwks,
)

# RFC 7638 §3.1
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}


def rsa_jwk(bits: int = 2048) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- base64url


def test_b64url_round_trip_without_padding() -> None:
    for data in (b"", b"\x00", b"\xff\xfe", b"hello world", bytes(range(256))):
        encoded = b64url_encode(data)
        assert "=" not in encoded and "+" not in encoded and "/" not in encoded
        assert b64url_decode(encoded) == data


@pytest.mark.parametrize("bad", ["AA==", "A", "a+b/", "ab!c", "AB", "ab c"])
def test_b64url_decode_is_strict(bad: str) -> None:
    # Padding, the standard alphabet, junk and non-canonical trailing bits are all refused.
    with pytest.raises(ValueError):
        b64url_decode(bad)


# --------------------------------------------------------------------------- thumbprints


def test_thumbprint_matches_rfc7638_example() -> None:
    assert jwk_thumbprint(RFC7638_JWK) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_ignores_optional_members() -> None:
    jwk = SigningKey.generate_es256().public_jwk()
    bare = {k: jwk[k] for k in ("kty", "crv", "x", "y")}
    assert jwk_thumbprint(jwk) == jwk_thumbprint(bare)


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "oct", "k": "AAAA"},
        {"crv": "P-256", "x": "AAAA", "y": "AAAA"},
        {"kty": "EC", "crv": "P-256", "x": "AAAA"},
        {"kty": "OKP", "crv": "Ed25519"},
        {"kty": "RSA", "n": "AAAA"},
        {"kty": "RSA", "n": "AAAA", "e": 3},
    ],
)
def test_thumbprint_refuses_unknown_kty_and_missing_members(jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint(jwk)


# --------------------------------------------------------------------------- signing keys


@pytest.mark.parametrize(
    ("factory", "alg", "members"),
    [
        (SigningKey.generate_es256, "ES256", {"kty", "crv", "x", "y"}),
        (SigningKey.generate_ed25519, "EdDSA", {"kty", "crv", "x"}),
    ],
)
def test_signing_key_public_jwk(factory: Any, alg: str, members: set[str]) -> None:
    key: SigningKey = factory()
    jwk = key.public_jwk()
    assert set(jwk) == members | {"kid", "alg", "use"}
    assert jwk["alg"] == alg and jwk["use"] == "sig"
    assert jwk["kid"] == key.kid == jwk_thumbprint(jwk)
    assert "d" not in jwk


@pytest.mark.parametrize("factory", [SigningKey.generate_es256, SigningKey.generate_ed25519])
def test_signing_key_pem_round_trip(factory: Any) -> None:
    key: SigningKey = factory()
    loaded = SigningKey.from_pem(key.to_pem())
    assert (loaded.kid, loaded.alg) == (key.kid, key.alg)
    assert loaded.public_jwk() == key.public_jwk()


def test_signing_key_repr_hides_private_key() -> None:
    key = SigningKey.generate_es256()
    assert "private_key" not in repr(key)


@pytest.mark.parametrize(
    "private_key",
    [
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
)
def test_from_pem_refuses_other_key_types(private_key: Any) -> None:
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError):
        SigningKey.from_pem(pem)


def test_signing_key_refuses_alg_that_does_not_fit_the_key() -> None:
    with pytest.raises(ValueError):
        SigningKey(kid="k", alg="ES256", private_key=ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ValueError):
        SigningKey(kid="k", alg="EdDSA", private_key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValueError):
        SigningKey(kid="k", alg="ES256", private_key=ec.generate_private_key(ec.SECP384R1()))


# --------------------------------------------------------------------------- JWKS


def test_jwks_document_round_trips_into_usable_public_keys() -> None:
    es, ed = SigningKey.generate_es256(), SigningKey.generate_ed25519()
    document = json.loads(json.dumps(jwks_document([es, ed])))
    keys = public_keys_from_jwks(document, TOKEN_ALGS)
    assert [(k.kid, k.alg) for k in keys] == [(es.kid, "ES256"), (ed.kid, "EdDSA")]
    for signing, public in zip([es, ed], keys, strict=True):
        token = jwt.encode({"a": 1}, signing.private_key, algorithm=signing.alg)
        assert jwt.decode(token, public.key, algorithms=[public.alg]) == {"a": 1}


def test_jwks_infers_alg_from_key_type() -> None:
    es = {k: v for k, v in SigningKey.generate_es256().public_jwk().items() if k != "alg"}
    ed = {k: v for k, v in SigningKey.generate_ed25519().public_jwk().items() if k != "alg"}
    rs = rsa_jwk()
    keys = public_keys_from_jwks({"keys": [es, ed, rs]}, CLIENT_ALGS)
    assert [k.alg for k in keys] == ["ES256", "EdDSA", "PS256"]


def test_jwks_rsa_only_when_ps256_allowed() -> None:
    rs = rsa_jwk()
    assert public_keys_from_jwks({"keys": [rs]}, TOKEN_ALGS) == []
    # An RSA key declared RS256 (PKCS#1 v1.5) is not usable under FAPI 2.0.
    assert public_keys_from_jwks({"keys": [{**rs, "alg": "RS256"}]}, CLIENT_ALGS) == []


def test_jwks_skips_keys_for_other_uses_and_types() -> None:
    es = SigningKey.generate_es256().public_jwk()
    ed = SigningKey.generate_ed25519().public_jwk()
    p384 = {k: v for k, v in es.items() if k != "alg"} | {"crv": "P-384"}
    keys = public_keys_from_jwks(
        {
            "keys": [
                {**es, "use": "enc"},
                {**es, "key_ops": ["encrypt"]},
                {**ed, "alg": "ES256"},  # declared alg does not fit the key type
                p384,  # no alg to read, and P-256 is the only EC curve allowed
                {**es, "alg": "HS256"},
            ]
        },
        CLIENT_ALGS,
    )
    assert keys == []


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "k"])
def test_jwks_refuses_private_members(member: str) -> None:
    jwk = {**SigningKey.generate_es256().public_jwk(), member: "AAAA"}
    with pytest.raises(ValueError, match="private"):
        public_keys_from_jwks({"keys": [jwk]}, CLIENT_ALGS)


def test_jwks_refuses_weak_rsa_and_off_curve_points() -> None:
    with pytest.raises(ValueError, match="2048"):
        public_keys_from_jwks({"keys": [rsa_jwk(1024)]}, CLIENT_ALGS)
    es = SigningKey.generate_es256().public_jwk()
    # Invalid-curve attack: a point that is not on P-256.
    off_curve = {**es, "y": b64url_encode((1).to_bytes(32, "big"))}
    with pytest.raises(ValueError):
        public_keys_from_jwks({"keys": [off_curve]}, CLIENT_ALGS)


def test_jwks_refuses_malformed_documents() -> None:
    with pytest.raises(ValueError):
        public_keys_from_jwks({}, CLIENT_ALGS)
    with pytest.raises(ValueError):
        public_keys_from_jwks({"keys": ["not a key"]}, CLIENT_ALGS)
