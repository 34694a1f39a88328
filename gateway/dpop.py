"""RFC 9449 DPoP proof verification: a pure function of the proof and the request.

:func:`verify_proof` runs the checks of RFC 9449 §4.3 except one: replay.
Check 11 ("the jti ... has not been seen before") needs shared state, so the
caller records :attr:`DpopProof.jti` in the database (unique per key thumbprint,
kept at least DPOP_MAX_AGE_SECONDS + DPOP_LEEWAY_SECONDS) and refuses a repeat.
No server nonce is used (§8 is optional).

Steps of :func:`verify_proof`, repeated as ``# (n)`` in the code:

1. exactly one proof is present;
2. it is a compact JWS whose header parses;
3. ``typ`` is ``dpop+jwt``, no ``crit`` extension is asked for;
4. ``alg`` is in the client allowlist (never ``none`` nor a MAC);
5. ``jwk`` is a public key of the type that ``alg`` is defined for;
6. the signature verifies with that key;
7. ``jti``, ``htm``, ``htu`` and ``iat`` are present and well typed;
8. ``htm`` is the request method;
9. ``htu`` is the request URL (scheme, host, port, path; query ignored);
10. ``iat`` is recent;
11. ``ath`` is the hash of the access token, when one is presented.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.errors import Unauthenticated
from gateway.jose import (
    CLIENT_ALGS,
    CLOCK_LEEWAY_SECONDS,
    BadSignature,
    b64url_encode,
    parse_compact_jws,
    public_key_and_thumbprint,
    verified_claims,
)

# How old a proof may be. RFC 9449 §11.1 leaves the window to the server; five
# minutes covers slow clients while bounding how long jtis must be remembered.
DPOP_MAX_AGE_SECONDS = 300
# How far in the future iat may be: the client's clock may run slightly ahead.
DPOP_LEEWAY_SECONDS = CLOCK_LEEWAY_SECONDS
# jtis are stored for replay detection; a bound keeps that table sane. A UUID or
# 96 random bits (RFC 9449 §4.2 minimum) fits with plenty of room.
DPOP_MAX_JTI_LENGTH = 256
# RFC 9449 §4.2: the claims every proof carries (ath only with an access token).
_REQUIRED_CLAIMS = ("jti", "htm", "htu", "iat")

_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

MISSING = "dpop_proof_missing"
INVALID = "dpop_proof_invalid"
KEY_MISMATCH = "dpop_key_mismatch"


@dataclass(frozen=True)
class DpopProof:
    """A DPoP proof that passed every stateless check."""

    jti: str
    jkt: str  # RFC 7638 thumbprint of the proof's public key
    htm: str
    htu: str
    iat: int
    ath: str | None


def _invalid(detail: str) -> Unauthenticated:
    return Unauthenticated(INVALID, f"DPoP proof refused: {detail}")


def access_token_hash(access_token: str) -> str:
    """The ``ath`` value for ``access_token`` (RFC 9449 §4.2)."""
    return b64url_encode(hashlib.sha256(access_token.encode("ascii")).digest())


def _normalise_percent(path: str) -> str:
    # RFC 3986 §6.2.2.1-2: hex digits are case-insensitive, unreserved need no encoding.
    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(0)[1:], 16))
        return char if char in _UNRESERVED else match.group(0).upper()

    return _PERCENT_ENCODED.sub(fix, path)


def _normalise_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) per RFC 3986 §6.2.2-6.2.3; ValueError if unusable."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("htu must be an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("htu must not carry user information")
    port = parts.port if parts.port is not None else _DEFAULT_PORTS[scheme]
    return scheme, parts.hostname.lower(), port, _normalise_percent(parts.path or "/")


def verify_proof(
    proof: str | Sequence[str] | None,
    *,
    method: str,
    url: str,
    now: float,
    access_token: str | None = None,
) -> DpopProof:
    """Check a DPoP header value against the request; raise Unauthenticated if it fails.

    ``proof`` is the header value, or the list of all values of the header.
    ``url`` is the expected htu built by the caller (issuer + path, no query).
    """
    # (1) "There is not more than one DPoP HTTP request header field." (§4.3)
    if proof is not None and not isinstance(proof, str):
        if len(proof) != 1:
            raise Unauthenticated(MISSING, "exactly one DPoP header is required")
        proof = proof[0]
    if not proof:
        raise Unauthenticated(MISSING, "a DPoP proof is required")
    # A JWS has no commas: a comma means several header fields were folded into one.
    if "," in proof:
        raise Unauthenticated(MISSING, "exactly one DPoP header is required")

    # (2) "The DPoP HTTP request header field value is a single and well-formed JWT."
    # Split and decoded once; the header is read without being trusted.
    try:
        jws = parse_compact_jws(proof)
    except ValueError:
        raise _invalid("not a well-formed JWT") from None
    header = jws.header

    # (3) "The typ JOSE Header Parameter has the value dpop+jwt."
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() != "dpop+jwt":
        raise _invalid("typ must be dpop+jwt")
    # RFC 7515 §4.1.11: a listed extension "not understood and supported by the
    # recipient" makes the JWS invalid; we support none.
    if "crit" in header or "b64" in header:
        raise _invalid("critical header extensions are not supported")

    # (4) "The alg JOSE Header Parameter indicates a registered asymmetric digital
    # signature algorithm [...], is not none, is supported by the application, and
    # is acceptable per local policy."
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in CLIENT_ALGS:
        raise _invalid("alg not allowed")

    # (5) "The jwk JOSE Header Parameter does not contain a private key." The alg
    # was read from the proof (RFC 9449 requires that), so it must fit the key.
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise _invalid("jwk header missing")
    try:
        public_key, jkt = public_key_and_thumbprint(jwk, alg)
    except ValueError as exc:
        raise _invalid(f"jwk unusable ({exc})") from None

    # (6) "The JWT signature verifies with the public key contained in the jwk."
    # With that key and the alg of step (4) only; the payload is parsed after this.
    try:
        claims = verified_claims(jws, public_key, alg)
    except BadSignature:
        raise _invalid("bad signature") from None
    except ValueError:
        raise _invalid("not a well-formed JWT") from None

    # (7) "All required claims per Section 4.2 are contained in the JWT."
    for name in _REQUIRED_CLAIMS:
        if claims.get(name) is None:  # a JSON null is no claim
            raise _invalid(f"missing claim {name}")
    # RFC 7519 §4.1.7: "The "jti" value is a case-sensitive string." Else not a JWT.
    if not isinstance(claims["jti"], str):
        raise _invalid("not a well-formed JWT")
    jti, htm, htu, iat, ath = (claims.get(n) for n in ("jti", "htm", "htu", "iat", "ath"))
    if not isinstance(jti, str) or not jti or len(jti) > DPOP_MAX_JTI_LENGTH:
        raise _invalid("jti must be a non-empty string of bounded length")
    if not isinstance(htm, str) or not isinstance(htu, str):
        raise _invalid("htm and htu must be strings")
    # bool is an int in Python; NaN would slip through every comparison below.
    if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
        raise _invalid("iat must be a number")
    if ath is not None and not isinstance(ath, str):
        raise _invalid("ath must be a string")

    # (8) "The htm claim matches the HTTP method of the current request."
    if htm != method:
        raise _invalid("htm does not match the request method")

    # (9) "The htu claim matches the HTTP URI value for the HTTP request in which
    # the JWT was received, ignoring any query and fragment parts."
    try:
        htu_matches = _normalise_url(htu) == _normalise_url(url)
    except ValueError:
        htu_matches = False
    if not htu_matches:
        raise _invalid("htu does not match the request URL")

    # (10) "The creation time of the JWT, as determined by [...] the iat claim, is
    # within an acceptable window."
    if iat < now - DPOP_MAX_AGE_SECONDS:
        raise _invalid("iat too old")
    if iat > now + DPOP_LEEWAY_SECONDS:
        raise _invalid("iat in the future")

    # (11) "If presented to a protected resource in conjunction with an access
    # token, ensure that the value of the ath claim equals the hash of that
    # access token."
    if access_token is not None:
        try:
            expected = access_token_hash(access_token)
        except UnicodeEncodeError:
            raise _invalid("access token is not ASCII") from None
        if ath is None or not hmac.compare_digest(ath.encode(), expected.encode()):
            raise _invalid("ath does not match the access token")

    return DpopProof(jti=jti, jkt=jkt, htm=htm, htu=htu, iat=int(iat), ath=ath)


def check_binding(proof: DpopProof, cnf_jkt: str) -> None:
    """Refuse unless the proof's key is the one the token is bound to (RFC 9449 §6.1)."""
    # §7.1: the resource server MUST "ensure that the public key to which the access
    # token is bound matches the public key from the DPoP proof".
    if not hmac.compare_digest(proof.jkt.encode(), cnf_jkt.encode()):
        raise Unauthenticated(KEY_MISMATCH, "the DPoP key is not the key the token is bound to")
