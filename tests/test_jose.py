from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.jose import (
    CLIENT_ALGS,
    JWK_CACHE_SIZE,
    TOKEN_ALGS,
    BadSignature,
    SigningKey,
    _key_of_members,
    b64url_decode,
    b64url_encode,
    jwk_thumbprint,
    jwks_document,
    parse_compact_jws,
    public_key_and_thumbprint,
    public_key_from_jwk,
    public_keys_from_jwks,
    verified_claims,
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


# --------------------------------------------------------------------------- compact JWS

# The order of the P-256 group (SEC 2 §2.4.2).
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_PRIVATE: dict[str, Any] = {"ES256": EC_KEY, "EdDSA": ED_KEY, "PS256": RSA_KEY}
_NEW_KEY: dict[str, Callable[[], Any]] = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
    "PS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


def segment(raw: bytes) -> str:
    return b64url_encode(raw)


def signed(
    alg: str = "ES256",
    *,
    header: bytes | None = None,
    payload: bytes = b'{"sub":"a"}',
    key: Any = None,
) -> str:
    """A compact JWS over raw header and payload octets, signed with PyJWT's algorithm."""
    head = header if header is not None else json.dumps({"alg": alg}).encode()
    signing_input = f"{segment(head)}.{segment(payload)}".encode()
    algorithm = jwt.get_algorithm_by_name(alg)
    signature = algorithm.sign(signing_input, key if key is not None else _PRIVATE[alg])
    return f"{signing_input.decode()}.{segment(signature)}"


def with_signature(token: str, signature: bytes) -> str:
    return f"{token.rsplit('.', 1)[0]}.{segment(signature)}"


def r_s(token: str) -> tuple[int, int]:
    raw = b64url_decode(token.rsplit(".", 1)[1])
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


def raw_signature(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def pyjwt_accepts(token: str, alg: str) -> bool:
    try:
        jwt.decode(token, _PRIVATE[alg].public_key(), algorithms=[alg])
    except jwt.InvalidSignatureError:
        return False
    return True


def test_parse_compact_jws() -> None:
    token = signed()
    jws = parse_compact_jws(token)
    assert jws.header == {"alg": "ES256"}
    assert jws.payload == b'{"sub":"a"}'
    assert jws.signing_input == token.rsplit(".", 1)[0].encode()
    assert len(jws.signature) == 64
    # The payload may hold personal data: a logged parse shows the header only.
    assert "payload=" not in repr(jws) and "signature=" not in repr(jws)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.rsplit(".", 1)[0],  # two segments
        lambda t: t + ".",  # four
        lambda t: t + "." + t.split(".")[2],
        lambda t: "." + t,
        lambda t: t.replace(".", "=.", 1),  # padding, which PyJWT tolerates
        lambda t: t + "==",
        lambda t: t[:-1] + "+",  # the standard alphabet, not base64url
        lambda t: t[:-1] + "/",
        lambda t: t[:10] + " " + t[10:],
        lambda t: t[:10] + "é" + t[11:],
        lambda t: "",
    ],
)
def test_parse_refuses_malformed_compact_serialisations(mangle: Any) -> None:
    with pytest.raises(ValueError):
        parse_compact_jws(mangle(signed()))


def test_parse_refuses_non_canonical_base64url() -> None:
    # Two spellings of one token would defeat anything keyed by the token's text.
    token = signed()
    head, payload, sig = token.split(".")
    assert len(sig) % 4 == 2  # 64 octets: the last character carries 4 spare bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(sig[-1]) + 1]
    assert base64.urlsafe_b64decode(sig[:-1] + twin + "==") == b64url_decode(sig)
    with pytest.raises(ValueError):
        parse_compact_jws(f"{head}.{payload}.{sig[:-1]}{twin}")


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"ES256","alg":"none"}',
        b'{"alg":"ES256","jwk":{"kty":"EC","kty":"OKP"}}',
        b"[]",
        b'"ES256"',
        b"{",
        b'{"alg":"ES256"} {}',
        '{"alg":"ES256"}'.encode("utf-16"),  # JSON, but not UTF-8 (RFC 7515 §5.2)
        b'\xef\xbb\xbf{"alg":"ES256"}',  # UTF-8 with a byte order mark
        b'{"alg":"\xff"}',
        b'{"alg":"ES256","kid":7}',  # RFC 7515 §4.1.4
        b'{"alg":"ES256","crit":[]}',  # RFC 7515 §4.1.11
        b'{"alg":"ES256","crit":["exp"],"exp":1}',
        b'{"alg":"ES256","crit":["b64"]}',
        b'{"alg":"ES256","crit":"b64","b64":false}',
        b'{"alg":"ES256","b64":false}',  # an unencoded payload must be detached
    ],
)
def test_parse_refuses_bad_headers(header: bytes) -> None:
    # Duplicate names would let two readers see two different headers.
    with pytest.raises(ValueError):
        parse_compact_jws(signed(header=header))


def test_parse_keeps_a_well_formed_crit_for_the_caller_to_refuse() -> None:
    # dpop and tokens refuse every extension; the parser only refuses malformed ones.
    header = b'{"alg":"ES256","crit":["b64"],"b64":false}'
    head = segment(header)
    jws = parse_compact_jws(f"{head}..{segment(b'x')}")
    assert jws.header["crit"] == ["b64"]


def test_parse_survives_deep_nesting() -> None:
    with pytest.raises(ValueError):
        parse_compact_jws(signed(header=b"[" * 100_000 + b"]" * 100_000))


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256"])
def test_verified_claims_accepts_what_pyjwt_signs(alg: str) -> None:
    token = jwt.encode({"sub": "a"}, _PRIVATE[alg], algorithm=alg)
    jws = parse_compact_jws(token)
    assert verified_claims(jws, _PRIVATE[alg].public_key(), alg) == {"sub": "a"}


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256"])
def test_verified_claims_refuses_another_key(alg: str) -> None:
    jws = parse_compact_jws(signed(alg, key=_NEW_KEY[alg]()))
    with pytest.raises(BadSignature):
        verified_claims(jws, _PRIVATE[alg].public_key(), alg)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256"])
@pytest.mark.parametrize(
    "forge",
    [
        lambda sig: sig[:-1],
        lambda sig: sig + b"\x00",
        lambda sig: b"\x00" + sig,
        lambda sig: b"",
        lambda sig: bytes(len(sig)),
        lambda sig: sig[::-1],
        lambda sig: bytes([sig[0] ^ 1]) + sig[1:],
    ],
)
def test_verified_claims_refuses_forged_signatures(alg: str, forge: Any) -> None:
    token = signed(alg)
    sig = b64url_decode(token.rsplit(".", 1)[1])
    jws = parse_compact_jws(with_signature(token, forge(sig)))
    with pytest.raises(BadSignature):
        verified_claims(jws, _PRIVATE[alg].public_key(), alg)


@pytest.mark.parametrize(
    "forge",
    [
        lambda r, s: raw_signature(0, s),
        lambda r, s: raw_signature(r, 0),
        lambda r, s: raw_signature(0, 0),
        lambda r, s: raw_signature(r, P256_N),  # s out of [1, n-1]
        lambda r, s: raw_signature(P256_N, s),
        lambda r, s: encode_dss_signature(r, s),  # DER, not R || S (RFC 7518 §3.4)
    ],
)
def test_es256_signature_out_of_range_or_der_refused(forge: Any) -> None:
    token = signed()
    jws = parse_compact_jws(with_signature(token, forge(*r_s(token))))
    with pytest.raises(BadSignature):
        verified_claims(jws, EC_KEY.public_key(), "ES256")


def test_es256_high_s_gets_the_verdict_pyjwt_gives() -> None:
    # (r, n - s) is the same ECDSA signature mirrored; RFC 7518 does not ask for low S
    # and OpenSSL signers produce high S half the time, so refusing it would refuse
    # honest clients (and our own tokens). Nothing here keys on signature bytes.
    token = signed()
    r, s = r_s(token)
    mirrored = with_signature(token, raw_signature(r, P256_N - s))
    jws = parse_compact_jws(mirrored)
    assert pyjwt_accepts(mirrored, "ES256")
    assert verified_claims(jws, EC_KEY.public_key(), "ES256") == {"sub": "a"}


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (ED_KEY.public_key(), "ES256"),
        (ec.generate_private_key(ec.SECP384R1()).public_key(), "ES256"),
        (EC_KEY.public_key(), "EdDSA"),
        (EC_KEY.public_key(), "PS256"),
        # A weak key is the point of this case.
        (rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(), "PS256"),  # noqa: S505
        (EC_KEY.public_key(), "HS256"),
        (EC_KEY.public_key(), "none"),
    ],
)
def test_verified_claims_refuses_a_key_that_does_not_fit_the_alg(key: Any, alg: str) -> None:
    jws = parse_compact_jws(signed())
    with pytest.raises(ValueError, match="does not fit"):
        verified_claims(jws, key, alg)


@pytest.mark.parametrize(
    "payload", [b"[]", b"null", b"{", b'{"sub":"a","sub":"b"}', b'{"a":{"b":1,"b":2}}', b"\xff"]
)
def test_verified_claims_refuses_a_signed_payload_that_is_not_one_json_object(
    payload: bytes,
) -> None:
    # Duplicate claim names (RFC 7519 §4): "sub" read as "a" by one reader, "b" by another.
    jws = parse_compact_jws(signed(payload=payload))
    with pytest.raises(ValueError):
        verified_claims(jws, EC_KEY.public_key(), "ES256")


# --------------------------------------------------------------------------- signing


@pytest.mark.parametrize("factory", [SigningKey.generate_es256, SigningKey.generate_ed25519])
def test_sign_jwt_is_read_by_pyjwt_and_by_our_verifier(factory: Any) -> None:
    key: SigningKey = factory()
    token = key.sign_jwt({"sub": "a", "n": 1, "name": "Thérèse"}, typ="x+jwt")
    head, payload, sig = token.split(".")
    header = {"alg": key.alg, "typ": "x+jwt", "kid": key.kid}
    assert b64url_decode(head) == json.dumps(header, separators=(",", ":")).encode()
    assert b" " not in b64url_decode(payload)
    assert jwt.get_unverified_header(token) == header
    public = key.private_key.public_key()
    claims = {"sub": "a", "n": 1, "name": "Thérèse"}
    assert jwt.decode(token, public, algorithms=[key.alg]) == claims
    assert verified_claims(parse_compact_jws(token), public, key.alg) == claims
    assert len(b64url_decode(sig)) == 64  # ES256 R || S, Ed25519 alike


def test_sign_jwt_es256_pads_short_r_and_s() -> None:
    # About 1 in 128 signatures has an r or s below 2**248: each must still be 32 octets.
    key = SigningKey.generate_es256()
    for i in range(300):
        token = key.sign_jwt({"i": i}, typ="x+jwt")
        assert len(b64url_decode(token.rsplit(".", 1)[1])) == 64
        assert jwt.decode(token, key.private_key.public_key(), algorithms=["ES256"]) == {"i": i}


def test_sign_jwt_refuses_what_is_not_json() -> None:
    key = SigningKey.generate_es256()
    with pytest.raises(ValueError):
        key.sign_jwt({"iat": float("nan")}, typ="x+jwt")


# --------------------------------------------------------------------------- JWK cache


def ec_jwk(key: Any = None) -> dict[str, Any]:
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    return json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))  # type: ignore[no-any-return]


def test_cached_key_is_the_uncached_one() -> None:
    jwk = ec_jwk()
    first = public_key_and_thumbprint(jwk, "ES256")
    again = public_key_and_thumbprint(dict(jwk), "ES256")
    assert again[0] is first[0]  # served from the cache
    assert again[1] == first[1] == jwk_thumbprint(jwk)
    uncached = public_key_from_jwk(jwk, "ES256")
    assert isinstance(first[0], ec.EllipticCurvePublicKey)
    assert isinstance(uncached, ec.EllipticCurvePublicKey)
    assert first[0].public_numbers() == uncached.public_numbers()


def test_members_outside_the_key_share_the_entry() -> None:
    jwk = ec_jwk()
    first = public_key_and_thumbprint(jwk, "ES256")
    assert public_key_and_thumbprint({**jwk, "kid": "k", "use": "sig"}, "ES256") == first


@pytest.mark.parametrize(
    ("member", "value"), [("kty", "OKP"), ("crv", "P-384"), ("x", "x"), ("y", "y")]
)
def test_a_jwk_differing_in_one_member_is_not_served_the_cached_key(
    member: str, value: str
) -> None:
    jwk = ec_jwk()
    public_key_and_thumbprint(jwk, "ES256")
    changed = {**jwk, member: ec_jwk()[value] if value in "xy" else value}
    # Another x (or y) for the same y (or x) is off the curve: refused, not looked up.
    with pytest.raises(ValueError):
        public_key_and_thumbprint(changed, "ES256")


# The P-256 field prime (SEC 2 §2.4.2).
P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1


def test_the_mirror_point_differs_in_y_only_and_gets_its_own_key() -> None:
    # (x, p - y) is on the curve too: a valid key that differs from a cached one in
    # exactly one member.
    jwk = ec_jwk()
    cached_key, cached_jkt = public_key_and_thumbprint(jwk, "ES256")
    y = int.from_bytes(b64url_decode(jwk["y"]), "big")
    mirror = {**jwk, "y": b64url_encode((P256_P - y).to_bytes(32, "big"))}
    key, jkt = public_key_and_thumbprint(mirror, "ES256")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(cached_key, ec.EllipticCurvePublicKey)
    assert key.public_numbers().y == P256_P - y != cached_key.public_numbers().y
    assert jkt == jwk_thumbprint(mirror) != cached_jkt


def test_an_rsa_key_differing_in_e_only_gets_its_own_key() -> None:
    jwk = rsa_jwk()
    cached_key, cached_jkt = public_key_and_thumbprint(jwk, "PS256")
    key, jkt = public_key_and_thumbprint({**jwk, "e": "Aw"}, "PS256")  # e = 3
    assert isinstance(key, rsa.RSAPublicKey) and key.public_numbers().e == 3
    assert jkt != cached_jkt and key is not cached_key


def test_an_ed25519_key_differing_in_x_only_gets_its_own_key() -> None:
    jwk = SigningKey.generate_ed25519().public_jwk()
    cached_key, cached_jkt = public_key_and_thumbprint(jwk, "EdDSA")
    other = SigningKey.generate_ed25519().public_jwk()
    key, jkt = public_key_and_thumbprint({**jwk, "x": other["x"]}, "EdDSA")
    assert jkt == jwk_thumbprint(other) != cached_jkt and key is not cached_key


def test_another_valid_key_gets_its_own_entry() -> None:
    a, b = ec_jwk(), ec_jwk()
    key_a, jkt_a = public_key_and_thumbprint(a, "ES256")
    key_b, jkt_b = public_key_and_thumbprint(b, "ES256")
    assert isinstance(key_a, ec.EllipticCurvePublicKey)
    assert isinstance(key_b, ec.EllipticCurvePublicKey)
    assert jkt_a != jkt_b and key_a.public_numbers() != key_b.public_numbers()


def test_the_alg_is_part_of_the_cache_key() -> None:
    jwk = ec_jwk()
    public_key_and_thumbprint(jwk, "ES256")
    with pytest.raises(ValueError, match="does not fit"):
        public_key_and_thumbprint(jwk, "EdDSA")


def test_private_members_refused_even_when_the_public_key_is_cached() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = ec_jwk(private)
    public_key_and_thumbprint(jwk, "ES256")
    d = b64url_encode(private.private_numbers().private_value.to_bytes(32, "big"))
    with pytest.raises(ValueError, match="private"):
        public_key_and_thumbprint({**jwk, "d": d}, "ES256")


def test_failures_are_not_cached_and_keep_their_message() -> None:
    off_curve = {**ec_jwk(), "y": b64url_encode((1).to_bytes(32, "big"))}
    for _ in range(2):
        with pytest.raises(ValueError):
            public_key_and_thumbprint(off_curve, "ES256")
    for bad in ({**ec_jwk(), "x": 5}, {"kty": "EC", "crv": "P-256", "x": "AAAA"}):
        with pytest.raises(ValueError) as ours:
            public_key_and_thumbprint(bad, "ES256")
        with pytest.raises(ValueError) as plain:
            public_key_from_jwk(bad, "ES256")
        assert str(ours.value) == str(plain.value)


def test_a_str_subclass_cannot_pass_for_a_cached_member() -> None:
    # A member that claims to equal anything must not reach the cache by equality.
    class Chameleon(str):
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash(cached_x)

    jwk = ec_jwk()
    cached_x = jwk["x"]
    cached_key, _ = public_key_and_thumbprint(jwk, "ES256")
    other = ec_jwk()
    forged = {**other, "x": Chameleon(other["x"])}
    key, jkt = public_key_and_thumbprint(forged, "ES256")
    assert key is not cached_key and jkt == jwk_thumbprint(other)


def test_the_cache_is_bounded() -> None:
    for _ in range(3):
        public_key_and_thumbprint(ec_jwk(), "ES256")
    info = _key_of_members.cache_info()
    assert info.maxsize == JWK_CACHE_SIZE and info.currsize <= JWK_CACHE_SIZE
