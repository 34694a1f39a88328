"""Small JOSE helpers: base64url, JWK thumbprints, signing keys, JWKS parsing, compact JWS.

Keys are pinned to one algorithm each (RFC 8725 §3.1): a verifier picks the
algorithm from the key it holds, never from the token it is checking.

A compact JWS is split and decoded once (:func:`parse_compact_jws`), its
signature checked over the exact ``header.payload`` octets with the key and
algorithm the verifier chose (:func:`verified_claims`), and only then is its
payload parsed. What each claim must be is the caller's business (``dpop``,
``tokens``). The signature step calls ``cryptography`` with the parameters of
RFC 7518 §3.4-3.5 and RFC 8037 §3.1: PyJWT's algorithm objects do the same
with 10-15 µs more per ES256 call (``bench/jose_cost.py``), and the tests
check that PyJWT and this module accept each other's tokens.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

# What the gateway signs and accepts for its own tokens (DESIGN §7).
TOKEN_ALGS = ("ES256", "EdDSA")
# What clients may use for client assertions and DPoP proofs (FAPI 2.0 §5.4.1).
CLIENT_ALGS = ("ES256", "PS256", "EdDSA")

# Clocks of the gateway's processes and of clients drift a little; 5 s absorbs
# NTP-synchronised drift without meaningfully extending a token's life.
CLOCK_LEEWAY_SECONDS = 5

# FAPI 2.0 §5.4.1: "RSA keys shall have a minimum length of 2048 bits".
MIN_RSA_KEY_BITS = 2048

# RFC 7517 §4.2 / RFC 7518 §6: members that only a private (or symmetric) key has.
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# RFC 7638 §3.2: the required members, per key type, that enter the thumbprint.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}

_B64URL = re.compile(r"[A-Za-z0-9_-]*")

# Public keys built from JWKs, remembered by :func:`public_key_and_thumbprint`: a
# client signs every DPoP proof with the same key. Bounded, so that a stream of
# fresh keys costs what it costs uncached and no more memory than this.
JWK_CACHE_SIZE = 1024

PublicKeyObject = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
PrivateKeyObject = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(s: str) -> bytes:
    """Strict inverse of :func:`b64url_encode`; raises ValueError on anything else."""
    if not _B64URL.fullmatch(s) or len(s) % 4 == 1:
        raise ValueError("not base64url without padding")
    try:
        data = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url without padding") from exc
    # Refuse non-canonical encodings (stray low bits in the last character).
    if b64url_encode(data) != s:
        raise ValueError("non-canonical base64url")
    return data


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK, base64url-encoded."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError("unsupported kty for a thumbprint")
    required: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"JWK member {name!r} missing or not a string")
        required[name] = value
    # RFC 7638 §3.3: lexicographic member order, no whitespace, UTF-8.
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def _int_to_b64(value: int, length: int) -> str:
    return b64url_encode(value.to_bytes(length, "big"))


def _str_member(jwk: Mapping[str, Any], name: str) -> str:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"JWK member {name!r} missing or not a string")
    return value


def public_key_to_jwk(key: PublicKeyObject) -> dict[str, Any]:
    """The public JWK members (kty, crv, x, y / n, e) of a cryptography public key."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("only P-256 EC keys are supported")
        numbers = key.public_numbers()
        # RFC 7518 §6.2.1.2: coordinates are the full 32 octets for P-256.
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _int_to_b64(numbers.x, 32),
            "y": _int_to_b64(numbers.y, 32),
        }
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    if isinstance(key, rsa.RSAPublicKey):
        numbers_rsa = key.public_numbers()
        return {
            "kty": "RSA",
            "n": _int_to_b64(numbers_rsa.n, (numbers_rsa.n.bit_length() + 7) // 8),
            "e": _int_to_b64(numbers_rsa.e, (numbers_rsa.e.bit_length() + 7) // 8),
        }
    raise ValueError("unsupported key type")


def _fits(jwk: Mapping[str, Any], alg: str) -> bool:
    """Whether the JWK's kty/crv is the one that ``alg`` is defined for."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if alg == "ES256":
        return kty == "EC" and crv == "P-256"
    if alg == "EdDSA":
        # Ed448 is also EdDSA, but neither FAPI 2.0 nor the gateway uses it.
        return kty == "OKP" and crv == "Ed25519"
    if alg == "PS256":
        return kty == "RSA"
    return False


def public_key_from_jwk(jwk: Mapping[str, Any], alg: str) -> PublicKeyObject:
    """Build the public key of ``jwk`` for use with ``alg``; ValueError if they disagree.

    Private members are refused: a public JWK that carries them is a leaked key.
    """
    if PRIVATE_JWK_MEMBERS & set(jwk):
        raise ValueError("JWK contains private key members")
    if not _fits(jwk, alg):
        raise ValueError(f"JWK kty/crv does not fit {alg}")
    if alg == "ES256":
        x_raw = b64url_decode(_str_member(jwk, "x"))
        y_raw = b64url_decode(_str_member(jwk, "y"))
        if len(x_raw) != 32 or len(y_raw) != 32:
            raise ValueError("P-256 coordinates must be 32 octets")
        # Raises ValueError when the point is not on the curve (invalid-curve attacks).
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x_raw, "big"), int.from_bytes(y_raw, "big"), ec.SECP256R1()
        ).public_key()
    if alg == "EdDSA":
        x_raw = b64url_decode(_str_member(jwk, "x"))
        if len(x_raw) != 32:
            raise ValueError("Ed25519 public key must be 32 octets")
        return ed25519.Ed25519PublicKey.from_public_bytes(x_raw)
    # PS256
    e = int.from_bytes(b64url_decode(_str_member(jwk, "e")), "big")
    n = int.from_bytes(b64url_decode(_str_member(jwk, "n")), "big")
    rsa_key = rsa.RSAPublicNumbers(e, n).public_key()
    if rsa_key.key_size < MIN_RSA_KEY_BITS:
        raise ValueError(f"RSA key shorter than {MIN_RSA_KEY_BITS} bits")
    return rsa_key


@functools.lru_cache(maxsize=JWK_CACHE_SIZE)
def _key_of_members(
    alg: str, names: tuple[str, ...], values: tuple[str, ...]
) -> tuple[PublicKeyObject, str]:
    # The JWK is rebuilt from the cache key alone: what is cached can only depend on it.
    jwk = dict(zip(names, values, strict=True))
    return public_key_from_jwk(jwk, alg), jwk_thumbprint(jwk)


def public_key_and_thumbprint(jwk: Mapping[str, Any], alg: str) -> tuple[PublicKeyObject, str]:
    """:func:`public_key_from_jwk` and :func:`jwk_thumbprint` of ``jwk``, memoised.

    The cache key is ``alg`` and the exact values of the RFC 7638 required
    members, the only members either function reads: a JWK that differs in any
    of them is another entry. Private members are refused on every call, and a
    failure is never cached.
    """
    if PRIVATE_JWK_MEMBERS & set(jwk):
        raise ValueError("JWK contains private key members")
    kty = jwk.get("kty")
    names = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if names is not None:
        values = tuple(jwk.get(name) for name in names)
        # Exactly str (what JSON gives): hashed and compared by value, no subclass tricks.
        if all(type(value) is str for value in values):
            return _key_of_members(alg, names, values)
    # Not a shape that can be cached: the uncached calls raise the usual errors.
    return public_key_from_jwk(jwk, alg), jwk_thumbprint(jwk)


@dataclass(frozen=True)
class PublicKey:
    """A verification key pinned to one algorithm."""

    kid: str | None
    alg: str
    key: PublicKeyObject = field(repr=False)


@dataclass(frozen=True)
class SigningKey:
    """One of the gateway's private signing keys, pinned to one algorithm."""

    kid: str
    alg: str
    private_key: PrivateKeyObject = field(repr=False)

    def __post_init__(self) -> None:
        # An ES256 key is a P-256 key and an EdDSA key an Ed25519 key, or nothing.
        ok = (
            self.alg == "ES256"
            and isinstance(self.private_key, ec.EllipticCurvePrivateKey)
            and isinstance(self.private_key.curve, ec.SECP256R1)
        ) or (self.alg == "EdDSA" and isinstance(self.private_key, ed25519.Ed25519PrivateKey))
        if not ok:
            raise ValueError(f"key type does not fit alg {self.alg!r}")
        if not self.kid:
            raise ValueError("kid must not be empty")

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK, as published in the JWKS."""
        jwk = public_key_to_jwk(self.private_key.public_key())
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def public_key(self) -> PublicKey:
        """The matching verification key."""
        return PublicKey(kid=self.kid, alg=self.alg, key=self.private_key.public_key())

    def sign_jwt(self, claims: Mapping[str, Any], *, typ: str) -> str:
        """A compact JWS of ``claims`` whose header is exactly alg, typ and kid (RFC 7515 §7.1)."""
        header = {"alg": self.alg, "typ": typ, "kid": self.kid}
        signing_input = f"{_json_segment(header)}.{_json_segment(claims)}"
        data = signing_input.encode("ascii")
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            # RFC 7518 §3.4: R || S, each left-padded to 32 octets (cryptography gives DER).
            r, s = decode_dss_signature(self.private_key.sign(data, _ECDSA_SHA256))
            signature = r.to_bytes(_P256_OCTETS, "big") + s.to_bytes(_P256_OCTETS, "big")
        else:
            signature = self.private_key.sign(data)  # RFC 8037 §3.1
        return f"{signing_input}.{b64url_encode(signature)}"

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM; the caller stores it with restrictive permissions."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """Load a PKCS#8 PEM key; alg follows the key type, kid is its thumbprint."""
        key = serialization.load_pem_private_key(pem, password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return cls._from_private_key(key, "ES256")
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls._from_private_key(key, "EdDSA")
        raise ValueError("signing keys must be P-256 (ES256) or Ed25519 (EdDSA)")

    @classmethod
    def generate_es256(cls) -> SigningKey:
        return cls._from_private_key(ec.generate_private_key(ec.SECP256R1()), "ES256")

    @classmethod
    def generate_ed25519(cls) -> SigningKey:
        return cls._from_private_key(ed25519.Ed25519PrivateKey.generate(), "EdDSA")

    @classmethod
    def _from_private_key(cls, key: PrivateKeyObject, alg: str) -> SigningKey:
        kid = jwk_thumbprint(public_key_to_jwk(key.public_key()))
        return cls(kid=kid, alg=alg, private_key=key)


def _infer_alg(jwk: Mapping[str, Any], allowed_algs: Collection[str]) -> str | None:
    for alg in ("ES256", "EdDSA", "PS256"):
        if alg in allowed_algs and _fits(jwk, alg):
            return alg
    return None


def public_keys_from_jwks(
    jwks: Mapping[str, Any], allowed_algs: Collection[str]
) -> list[PublicKey]:
    """The signature keys of a JWKS usable with ``allowed_algs``, each pinned to its alg.

    Keys of other types, other uses, or unsupported algorithms are skipped; a key
    with private members (someone published a secret), or a malformed or too
    short key of a supported type, raises ValueError.
    """
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise ValueError("JWKS must have a 'keys' list")
    result: list[PublicKey] = []
    for jwk in entries:
        if not isinstance(jwk, Mapping):
            raise ValueError("JWKS entries must be objects")
        if PRIVATE_JWK_MEMBERS & set(jwk):
            raise ValueError("JWKS contains private key members")
        # RFC 7517 §4.2: "use" other than "sig" means not for verifying signatures.
        if jwk.get("use", "sig") != "sig":
            continue
        key_ops = jwk.get("key_ops")
        if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
            continue
        alg = jwk.get("alg")
        if alg is None:
            alg = _infer_alg(jwk, allowed_algs)
        if not isinstance(alg, str) or alg not in allowed_algs or not _fits(jwk, alg):
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise ValueError("JWK kid must be a string")
        # A key of a supported type that is malformed or too weak is a configuration
        # error worth surfacing, not a key to skip quietly.
        result.append(PublicKey(kid=kid, alg=alg, key=public_key_from_jwk(jwk, alg)))
    return result


def jwks_document(keys: Iterable[SigningKey]) -> dict[str, Any]:
    """The JWKS served at /.well-known/jwks.json."""
    return {"keys": [k.public_jwk() for k in keys]}


# --------------------------------------------------------------------------- compact JWS

# Built once: each costs a few µs to build, per call, otherwise.
_SHA256 = hashes.SHA256()
_ECDSA_SHA256 = ec.ECDSA(_SHA256)
# RFC 7518 §3.5: MGF1 with SHA-256, and "The size of the salt value is the same
# size as the hash function output."
_PSS_SHA256 = padding.PSS(mgf=padding.MGF1(_SHA256), salt_length=_SHA256.digest_size)
_P256_OCTETS = 32


class BadSignature(Exception):
    """The JWS signature does not verify with the key and algorithm the verifier chose."""


@dataclass(frozen=True)
class CompactJws:
    """A JWS in compact serialization, split and decoded once; nothing in it is verified.

    The header is only fit for choosing a key; the payload is read by
    :func:`verified_claims`, once the signature has verified.
    """

    header: dict[str, Any]
    signing_input: bytes = field(repr=False)
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    # RFC 7515 §4 (and RFC 7519 §4 for claims): parsers "MUST either reject JWSs with
    # duplicate Header Parameter names or use a JSON parser that returns only the
    # lexically last duplicate member name". We reject: two readers, two meanings.
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


# Built once: json.loads with a hook would build a decoder per call.
_JSON_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members)


def _json_object(data: bytes) -> dict[str, Any]:
    """A UTF-8 JSON object with unique member names, at every depth; ValueError otherwise."""
    try:
        value = _JSON_DECODER.decode(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def parse_compact_jws(token: str) -> CompactJws:
    """Split and decode a compact JWS (RFC 7515 §7.1, §5.2 to step 7); ValueError if malformed.

    Every segment is strict base64url (:func:`b64url_decode`, no padding) and the
    header a JSON object. What PyJWT also refuses while parsing stays refused
    here: a ``kid`` that is not a string, a malformed ``crit``, an unencoded
    (``b64: false``) payload that is not detached.
    """
    if not isinstance(token, str):
        raise ValueError("a compact JWS is a string")
    segments = token.split(".")
    if len(segments) != 3:
        raise ValueError("a compact JWS has exactly three segments")
    header_b64, payload_b64, signature_b64 = segments
    header = _json_object(b64url_decode(header_b64))
    # RFC 7515 §4.1.4: kid's "value MUST be a case-sensitive string".
    if "kid" in header and not isinstance(header["kid"], str):
        raise ValueError("kid must be a string")
    # RFC 7515 §4.1.11: crit is a non-empty list of names present in the header. The
    # one extension PyJWT knows is RFC 7797 b64; any other name is malformed there,
    # so here too. Callers refuse what remains (we implement no extension).
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit or "b64" not in header:
            raise ValueError("malformed crit")
        if any(name != "b64" for name in crit):
            raise ValueError("unsupported critical extension")
    if header.get("b64", True) is False and payload_b64:
        raise ValueError("an unencoded payload must be detached")
    return CompactJws(
        header=header,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        payload=b64url_decode(payload_b64),
        signature=b64url_decode(signature_b64),
    )


def _key_fits(key: PublicKeyObject, alg: str) -> bool:
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey)
    if alg == "PS256":
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_KEY_BITS
    return False


def _signature_verifies(key: PublicKeyObject, signature: bytes, signing_input: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            # RFC 7518 §3.4: "The JWS Signature value MUST be a 64-octet sequence. If
            # it is not a 64-octet sequence, the validation has failed." It is R || S.
            if len(signature) != 2 * _P256_OCTETS:
                return False
            r = int.from_bytes(signature[:_P256_OCTETS], "big")
            s = int.from_bytes(signature[_P256_OCTETS:], "big")
            # OpenSSL refuses r or s outside [1, n-1].
            key.verify(encode_dss_signature(r, s), signing_input, _ECDSA_SHA256)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, signing_input)  # RFC 8037 §3.1
        else:
            key.verify(signature, signing_input, _PSS_SHA256, _SHA256)
    except InvalidSignature:
        return False
    return True


def verified_claims(jws: CompactJws, key: PublicKeyObject, alg: str) -> dict[str, Any]:
    """The JWT claims of ``jws``, once its signature verifies with ``key`` under ``alg``.

    ``alg`` is the verifier's, pinned to ``key`` (RFC 8725 §3.1), never read from
    the header here. Raises BadSignature, or ValueError when the key does not fit
    ``alg`` or the verified payload is not a JSON object (RFC 7519 §7.2 step 10).
    """
    if not _key_fits(key, alg):
        raise ValueError(f"key does not fit {alg}")
    # RFC 7515 §5.2 step 8: validate the signature over ASCII(header || '.' || payload).
    if not _signature_verifies(key, jws.signature, jws.signing_input):
        raise BadSignature
    return _json_object(jws.payload)


# Compact separators, like PyJWT; NaN and infinities are not JSON (RFC 8259 §6).
# Built once: json.dumps with arguments builds an encoder per call.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _json_segment(value: Mapping[str, Any]) -> str:
    return b64url_encode(_JSON_ENCODER.encode(value).encode("ascii"))
