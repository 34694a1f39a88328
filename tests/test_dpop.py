"""DPoP proofs built the way a foreign client builds them: PyJWT + cryptography."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.dpop import (
    DPOP_LEEWAY_SECONDS,
    DPOP_MAX_AGE_SECONDS,
    DpopProof,
    check_binding,
    verify_proof,
)
from gateway.errors import Unauthenticated

NOW = 1_750_000_000.0
URL = "https://gateway.example/data/dgfip/revenu_fiscal"
ACCESS_TOKEN = "eyJ.consent.token"

_ALG_KEYS: dict[str, Callable[[], Any]] = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
    "PS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
_KEYS: dict[str, Any] = {}


def client_key(alg: str) -> Any:
    # RSA generation is slow; one key per algorithm is enough.
    if alg not in _KEYS:
        _KEYS[alg] = _ALG_KEYS[alg]()
    return _KEYS[alg]


def public_jwk(private_key: Any) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))  # type: ignore[no-any-return]
    if isinstance(public, ed25519.Ed25519PublicKey):
        return json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))  # type: ignore[no-any-return]
    return json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))  # type: ignore[no-any-return]


def thumbprint(jwk: dict[str, Any]) -> str:
    members = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
    canonical = json.dumps({m: jwk[m] for m in members[jwk["kty"]]}, separators=(",", ":"))
    return b64(hashlib.sha256(canonical.encode()).digest())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ath_of(token: str) -> str:
    return b64(hashlib.sha256(token.encode("ascii")).digest())


_DROP: Any = object()


def make_proof(
    alg: str = "ES256",
    *,
    key: Any = None,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A proof for GET URL at NOW; keyword claims override (``_DROP`` removes)."""
    key = key if key is not None else client_key(alg)
    body: dict[str, Any] = {"jti": "jti-1", "htm": "GET", "htu": URL, "iat": int(NOW)}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not _DROP}
    head: dict[str, Any] = {"typ": "dpop+jwt", "jwk": public_jwk(key)}
    head.update(header or {})
    head = {k: v for k, v in head.items() if v is not _DROP}
    return jwt.encode(body, key, algorithm=alg, headers=head)


def hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    segments = [json.dumps(header).encode(), json.dumps(claims).encode()]
    return ".".join([*(b64(s) for s in segments), b64(signature)])


def refused(proof: Any, code: str = "dpop_proof_invalid", **kwargs: Any) -> Unauthenticated:
    args: dict[str, Any] = {"method": "GET", "url": URL, "now": NOW}
    args.update(kwargs)
    with pytest.raises(Unauthenticated) as info:
        verify_proof(proof, **args)
    assert info.value.code == code
    assert info.value.status == 401
    if isinstance(proof, str) and proof:
        assert proof not in info.value.detail  # never echo the proof
    return info.value


def accepted(proof: Any, **kwargs: Any) -> DpopProof:
    args: dict[str, Any] = {"method": "GET", "url": URL, "now": NOW}
    args.update(kwargs)
    return verify_proof(proof, **args)


# --------------------------------------------------------------------------- accepted proofs


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256"])
def test_valid_proof_for_each_client_alg(alg: str) -> None:
    proof = accepted(make_proof(alg))
    assert proof == DpopProof(
        jti="jti-1",
        jkt=thumbprint(public_jwk(client_key(alg))),
        htm="GET",
        htu=URL,
        iat=int(NOW),
        ath=None,
    )


def test_valid_proof_with_access_token_hash() -> None:
    proof = accepted(make_proof(ath=ath_of(ACCESS_TOKEN)), access_token=ACCESS_TOKEN)
    assert proof.ath == ath_of(ACCESS_TOKEN)


def test_single_header_given_as_list() -> None:
    assert accepted([make_proof()]).jti == "jti-1"


# --------------------------------------------------------------------------- (1) presence


@pytest.mark.parametrize("value", [None, "", [], ["a.b.c", "d.e.f"]])
def test_missing_or_several_proofs(value: Any) -> None:
    refused(value, "dpop_proof_missing")


def test_two_headers_folded_into_one_value() -> None:
    refused(f"{make_proof()}, {make_proof(jti='other')}", "dpop_proof_missing")


# --------------------------------------------------------------------------- (2)-(5) header


@pytest.mark.parametrize("value", ["not-a-jwt", "a.b.c", "....", "e30.e30"])
def test_not_a_jwt(value: str) -> None:
    refused(value)


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", _DROP])
def test_wrong_typ(typ: Any) -> None:
    # Stops another JWT of the client (e.g. a client assertion) being replayed as a proof.
    assert "typ" in refused(make_proof(header={"typ": typ})).detail


def test_alg_none_refused() -> None:
    jwk = public_jwk(client_key("ES256"))
    claims = {"jti": "j", "htm": "GET", "htu": URL, "iat": int(NOW)}
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": jwk}
    assert "alg" in refused(hand_made(header, claims)).detail


def test_hmac_alg_refused() -> None:
    # An HS256 "proof" keyed with the public JWK itself would prove nothing.
    jwk = public_jwk(client_key("ES256"))
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk}
    claims = {"jti": "j", "htm": "GET", "htu": URL, "iat": int(NOW)}
    unsigned = hand_made(header, claims).rsplit(".", 1)[0]
    mac = hmac.new(json.dumps(jwk).encode(), unsigned.encode(), hashlib.sha256).digest()
    assert "alg" in refused(f"{unsigned}.{b64(mac)}").detail


def test_alg_outside_allowlist_refused() -> None:
    # RS256 is a valid asymmetric alg, but FAPI 2.0 allows only PS256 for RSA.
    assert "alg" in refused(make_proof("RS256", key=client_key("PS256"))).detail
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert "alg" in refused(make_proof("ES384", key=p384)).detail


def test_missing_jwk_refused() -> None:
    assert "jwk" in refused(make_proof(header={"jwk": _DROP})).detail


def test_private_jwk_refused() -> None:
    jwk = public_jwk(client_key("ES256"))
    numbers = client_key("ES256").private_numbers()
    jwk["d"] = b64(numbers.private_value.to_bytes(32, "big"))
    assert "private" in refused(make_proof(header={"jwk": jwk})).detail


def test_jwk_not_matching_alg_refused() -> None:
    # An Ed25519 key announced with alg ES256: the alg must fit the embedded key.
    ed_jwk = public_jwk(client_key("EdDSA"))
    assert "jwk" in refused(make_proof("ES256", header={"jwk": ed_jwk})).detail


def test_critical_extension_refused() -> None:
    # RFC 7515 §4.1.11: an extension the recipient does not implement must fail.
    refused(make_proof(header={"crit": ["exp"], "exp": 1}))
    # RFC 7797 unencoded payloads change what is signed; we support none of it.
    assert "critical" in refused(make_proof(header={"b64": False})).detail


# --------------------------------------------------------------------------- (6) signature


def test_signature_by_another_key_refused() -> None:
    # The proof says "my key is X" but was signed by Y: possession of X is not shown.
    other = ec.generate_private_key(ec.SECP256R1())
    proof = make_proof(key=other, header={"jwk": public_jwk(client_key("ES256"))})
    assert "signature" in refused(proof).detail


def test_tampered_claims_refused() -> None:
    head, _, sig = make_proof().split(".")
    forged = b64(json.dumps({"jti": "x", "htm": "POST", "htu": URL, "iat": int(NOW)}).encode())
    assert "signature" in refused(f"{head}.{forged}.{sig}").detail


# --------------------------------------------------------------------------- (7) claims


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
def test_missing_required_claim(claim: str) -> None:
    assert claim in refused(make_proof(**{claim: _DROP})).detail


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("jti", ""),
        ("jti", 7),
        ("jti", "x" * 257),
        ("htm", ["GET"]),
        ("htu", 1),
        ("iat", "1750000000"),
        ("iat", True),
        ("iat", float("nan")),
        ("ath", 3),
    ],
)
def test_badly_typed_claim(claim: str, value: Any) -> None:
    refused(make_proof(**{claim: value}))


# --------------------------------------------------------------------------- (8) htm


@pytest.mark.parametrize("htm", ["POST", "get"])
def test_htm_mismatch(htm: str) -> None:
    # A proof made for one request cannot authorise another method.
    assert "htm" in refused(make_proof(htm=htm)).detail


# --------------------------------------------------------------------------- (9) htu


@pytest.mark.parametrize(
    "htu",
    [
        "https://gateway.example/data/dgfip/other",
        "https://gateway.example/data/dgfip/revenu_fiscal/",
        "https://gateway.example/DATA/dgfip/revenu_fiscal",
        "http://gateway.example/data/dgfip/revenu_fiscal",
        "https://evil.example/data/dgfip/revenu_fiscal",
        "https://gateway.example:8443/data/dgfip/revenu_fiscal",
        "https://user@gateway.example/data/dgfip/revenu_fiscal",
        "/data/dgfip/revenu_fiscal",
        "ftp://gateway.example/data/dgfip/revenu_fiscal",
        "https://gateway.example:notaport/data/dgfip/revenu_fiscal",
    ],
)
def test_htu_mismatch(htu: str) -> None:
    # A proof captured for one URL (or one server) cannot be spent on another.
    assert "htu" in refused(make_proof(htu=htu)).detail


@pytest.mark.parametrize(
    "htu",
    [
        "HTTPS://Gateway.Example/data/dgfip/revenu_fiscal",
        "https://gateway.example:443/data/dgfip/revenu_fiscal",
        "https://gateway.example/data/dgfip/revenu_fiscal?year=2024",
        "https://gateway.example/data/dgfip/revenu_fiscal#frag",
        "https://gateway.example/data/dgfip/revenu%5Ffiscal",
    ],
)
def test_htu_equivalent_forms_accepted(htu: str) -> None:
    # RFC 9449 §4.3: query and fragment ignored; RFC 3986 §6.2.2-6.2.3 normalisation.
    assert accepted(make_proof(htu=htu)).htu == htu


def test_htu_percent_encoding_case_is_normalised() -> None:
    url = "https://gateway.example/data/a%2Fb"
    assert accepted(make_proof(htu="https://gateway.example/data/a%2fb"), url=url).jti == "jti-1"


def test_htu_default_port_on_expected_side() -> None:
    assert accepted(make_proof(), url="https://gateway.example:443/data/dgfip/revenu_fiscal")


# --------------------------------------------------------------------------- (10) iat


def test_iat_window_bounds_accepted() -> None:
    accepted(make_proof(iat=int(NOW) - DPOP_MAX_AGE_SECONDS))
    accepted(make_proof(iat=int(NOW) + DPOP_LEEWAY_SECONDS))


def test_iat_too_old_refused() -> None:
    # A proof captured long ago (and whose jti may have left the replay table) is dead.
    assert "old" in refused(make_proof(iat=int(NOW) - DPOP_MAX_AGE_SECONDS - 1)).detail


def test_iat_in_future_refused() -> None:
    # Pre-computed proofs (made on a compromised device for later use) are refused.
    assert "future" in refused(make_proof(iat=int(NOW) + DPOP_LEEWAY_SECONDS + 1)).detail


# --------------------------------------------------------------------------- (11) ath


def test_ath_missing_when_token_presented() -> None:
    assert "ath" in refused(make_proof(), access_token=ACCESS_TOKEN).detail


def test_ath_for_another_token_refused() -> None:
    # A proof made for token A cannot accompany a stolen token B.
    proof = make_proof(ath=ath_of("another.token"))
    assert "ath" in refused(proof, access_token=ACCESS_TOKEN).detail


def test_non_ascii_access_token_refused() -> None:
    refused(make_proof(ath=ath_of(ACCESS_TOKEN)), access_token="é")


# --------------------------------------------------------------------------- binding


def test_check_binding_accepts_the_bound_key() -> None:
    proof = accepted(make_proof())
    check_binding(proof, thumbprint(public_jwk(client_key("ES256"))))


def test_check_binding_refuses_another_key() -> None:
    # A stolen token presented with the thief's own (valid) proof.
    thief = ec.generate_private_key(ec.SECP256R1())
    proof = accepted(make_proof(key=thief))
    with pytest.raises(Unauthenticated) as info:
        check_binding(proof, thumbprint(public_jwk(client_key("ES256"))))
    assert info.value.code == "dpop_key_mismatch"


# --------------------------------------------------------------------------- parsing once

# The order of the P-256 group (SEC 2 §2.4.2).
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def raw_proof(header: bytes, payload: bytes, key: Any = None) -> str:
    """A proof over raw JSON octets (which json.dumps would not produce), signed ES256."""
    key = key if key is not None else client_key("ES256")
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = jwt.get_algorithm_by_name("ES256").sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def proof_header() -> str:
    return json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(client_key("ES256"))})


def proof_claims(**claims: Any) -> dict[str, Any]:
    return {"jti": "jti-1", "htm": "GET", "htu": URL, "iat": int(NOW), **claims}


def test_raw_proof_is_accepted() -> None:
    assert accepted(raw_proof(proof_header().encode(), json.dumps(proof_claims()).encode()))


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        # Two readers of one proof must not see two requests (RFC 7515 §4, RFC 7519 §4).
        ('{"typ":"JWT",' + proof_header()[1:], json.dumps(proof_claims())),
        (proof_header(), '{"htm":"POST",' + json.dumps(proof_claims())[1:]),
        (proof_header().replace('"kty"', '"kty": "EC", "kty"', 1), json.dumps(proof_claims())),
        (proof_header(), json.dumps(proof_claims()).replace("}", ', "jti": "x"}')),
    ],
)
def test_duplicate_member_names_refused(header: str, payload: str) -> None:
    assert "well-formed" in refused(raw_proof(header.encode(), payload.encode())).detail


@pytest.mark.parametrize(
    "header",
    [
        proof_header().encode("utf-16"),
        b"\xef\xbb\xbf" + proof_header().encode(),
        b"[" * 50_000 + b"]" * 50_000,
    ],
)
def test_header_not_utf8_json_object_refused(header: bytes) -> None:
    assert "well-formed" in refused(raw_proof(header, json.dumps(proof_claims()).encode())).detail


def test_padded_or_non_canonical_base64url_refused() -> None:
    head, body, sig = make_proof().split(".")
    # PyJWT accepts a padded segment; RFC 7515 §2 base64url has none.
    refused(f"{head}.{body}.{sig}==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(sig[-1]) + 1]  # same 64 octets, another spelling
    assert "well-formed" in refused(f"{head}.{body}.{sig[:-1]}{twin}").detail


def _signature_of(proof: str) -> tuple[str, int, int]:
    unsigned, _, sig = proof.rpartition(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    return unsigned, int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


@pytest.mark.parametrize(
    "forge",
    [
        lambda r, s: r.to_bytes(32, "big") + s.to_bytes(32, "big")[:-1],  # 63 octets
        lambda r, s: r.to_bytes(32, "big") + s.to_bytes(32, "big") + b"\x00",
        lambda r, s: b"\x00" + r.to_bytes(32, "big") + s.to_bytes(32, "big"),
        lambda r, s: bytes(64),
        lambda r, s: r.to_bytes(32, "big") + P256_N.to_bytes(32, "big"),  # s = n
        lambda r, s: P256_N.to_bytes(32, "big") + s.to_bytes(32, "big"),
        lambda r, s: encode_dss_signature(r, s),  # DER is not the JWS form (RFC 7518 §3.4)
        lambda r, s: b"garbage",
        lambda r, s: b"",
    ],
)
def test_malformed_es256_signatures_refused(forge: Any) -> None:
    unsigned, r, s = _signature_of(make_proof())
    assert "signature" in refused(f"{unsigned}.{b64(forge(r, s))}").detail


def test_high_s_signature_gets_the_verdict_pyjwt_gives() -> None:
    # (r, n - s) verifies as ECDSA; JOSE does not require low S, and half the honest
    # signatures are high S. The jti, not the signature, is what replay is keyed on.
    unsigned, r, s = _signature_of(make_proof())
    mirrored = f"{unsigned}.{b64(r.to_bytes(32, 'big') + (P256_N - s).to_bytes(32, 'big'))}"
    pub = client_key("ES256").public_key()
    assert jwt.decode(mirrored, pub, algorithms=["ES256"], options={"verify_iat": False})
    assert accepted(mirrored).jti == "jti-1"


# --------------------------------------------------------------------------- the key cache


def test_a_key_differing_in_one_member_is_not_taken_from_the_cache() -> None:
    # (x, p - y) is the public key of n - d: a valid key one member away from ours.
    key = client_key("ES256")
    ours = accepted(make_proof(key=key))  # cached now
    mirror_key = ec.derive_private_key(P256_N - key.private_numbers().private_value, ec.SECP256R1())
    mirror_jwk = public_jwk(mirror_key)
    assert {k for k in mirror_jwk if mirror_jwk[k] != public_jwk(key)[k]} == {"y"}
    # Our private key cannot sign for the mirror key, even with our key cached...
    assert "signature" in refused(make_proof(key=key, header={"jwk": mirror_jwk})).detail
    # ...and the mirror key's own proofs are bound to its own thumbprint.
    theirs = accepted(make_proof(key=mirror_key))
    assert theirs.jkt == thumbprint(mirror_jwk) != ours.jkt


def test_private_members_refused_even_once_the_key_is_cached() -> None:
    key = client_key("ES256")
    accepted(make_proof(key=key))
    jwk = {**public_jwk(key), "d": b64(key.private_numbers().private_value.to_bytes(32, "big"))}
    assert "private" in refused(make_proof(key=key, header={"jwk": jwk})).detail


def test_cached_key_for_one_alg_is_not_used_for_another() -> None:
    accepted(make_proof())
    ed_signed = make_proof("EdDSA", header={"jwk": public_jwk(client_key("ES256"))})
    assert "jwk" in refused(ed_signed).detail
