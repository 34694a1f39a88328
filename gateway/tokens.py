"""The JWTs the gateway mints and checks.

- consent tokens: RFC 9068 JWT access tokens carrying one consent id, bound to
  the client's DPoP key (``cnf.jkt``);
- client assertions: ``private_key_jwt`` client authentication (RFC 7523 §3);
- provider assertions: what the gateway tells a data provider about a transfer.

Every verification reads the header only to find *our* key by ``kid``; the
algorithm comes from that key (RFC 8725 §3.1), and every claim check is pinned
here rather than left to library defaults. Single use of a client assertion's
``jti`` is the caller's job (database), as is any replay bookkeeping.

The gateway's own tokens (consent, provider assertion, audit) are on every
transfer: they are parsed once and signed with ``gateway.jose``; client
assertions, at the token endpoint, go through ``jwt.decode``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from gateway import ids
from gateway.errors import OAuthError, Unauthenticated
from gateway.jose import (
    CLIENT_ALGS,
    CLOCK_LEEWAY_SECONDS,
    TOKEN_ALGS,
    BadSignature,
    CompactJws,
    PublicKey,
    SigningKey,
    parse_compact_jws,
    verified_claims,
)

# One leeway for every time check (DESIGN §7). Our own tokens are checked by
# other gateway processes, client assertions against the client's clock; both
# drift a little, and 5 s does not meaningfully lengthen any lifetime below.
LEEWAY_SECONDS = CLOCK_LEEWAY_SECONDS

# Issue 2: a consent token lives at most 10 minutes.
CONSENT_TOKEN_MAX_LIFETIME = 600
# DESIGN §4: the provider assertion is only needed for the one call.
PROVIDER_ASSERTION_MAX_LIFETIME = 60
# A client assertion is made for one request and its jti is single-use, so its
# lifetime matters little; 1 hour is the default of common client libraries
# (authlib's private_key_jwt_sign), and refusing it would break them.
CLIENT_ASSERTION_MAX_LIFETIME = 3600

CONSENT_JWT_TYP = "at+jwt"
PROVIDER_ASSERTION_TYP = "gateway-assertion+jwt"

EXPIRED_CODE = "token_expired"
INVALID_CODE = "token_invalid"

_CONSENT_CLAIMS = (
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
)
_PROVIDER_CLAIMS = (
    "iss",
    "aud",
    "sub",
    "iat",
    "exp",
    "jti",
    "resource",
    "purpose",
    "consent_id",
    "transfer_id",
    "client_id",
)
# Identity claims share the top level with these and must never overwrite them.
_PROVIDER_RESERVED = frozenset({*_PROVIDER_CLAIMS, "nbf", "cnf", "acr", "typ"})


class _Refused(Exception):
    """Internal: a check failed; each public function maps it to its own error."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


# --------------------------------------------------------------------------- helpers


def _refuse_extensions(header: Mapping[str, Any]) -> None:
    # RFC 7515 §4.1.11: a listed extension "not understood and supported by the
    # recipient" makes the JWS invalid; we support none.
    if "crit" in header or "b64" in header:
        raise _Refused("critical header extensions are not supported")


def _header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _Refused("not a well-formed JWT") from None
    _refuse_extensions(header)
    return header


def _parse(token: str) -> CompactJws:
    try:
        jws = parse_compact_jws(token)
    except ValueError:
        raise _Refused("not a well-formed JWT") from None
    _refuse_extensions(jws.header)
    return jws


def _typ_is(header: Mapping[str, Any], typ: str) -> bool:
    # RFC 7515 §4.1.9: the "application/" prefix may be omitted; media types
    # compare case-insensitively.
    value = header.get("typ")
    return isinstance(value, str) and value.lower() in {typ, f"application/{typ}"}


def _key_by_kid(header: Mapping[str, Any], keys: Sequence[PublicKey]) -> PublicKey:
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _Refused("kid missing")
    for key in keys:
        if key.kid == kid:
            return key
    raise _Refused("unknown kid")


def _describe(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim}"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, InvalidSubjectError):
        return "wrong subject"
    if isinstance(exc, InvalidJTIError):
        return "jti must be a string"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "alg not allowed"
    return "malformed token"


def _options(required: Sequence[str]) -> jwt.types.Options:
    # Every check named. Time checks are off here because we make them against
    # the caller's `now` (testable, one clock); presence is still required.
    return {
        "verify_signature": True,
        "verify_iss": True,
        "verify_aud": True,
        "verify_sub": True,
        "verify_jti": True,
        "verify_exp": False,
        "verify_iat": False,
        "verify_nbf": False,
        "require": list(required),
        "enforce_minimum_key_length": True,
    }


def _check_registered_claims(
    claims: Mapping[str, Any], *, issuer: str, audience: str, required: Sequence[str]
) -> None:
    """Presence of ``required`` (iss and aud among them), then iss, aud, sub and jti."""
    for name in required:
        if claims.get(name) is None:  # a JSON null is no claim
            raise _Refused(f"missing claim {name}")
    # RFC 9068 §4: the issuer identifier "MUST exactly match the value of the iss
    # claim" (our profile for every token we sign).
    if claims["iss"] != issuer:
        raise _Refused("wrong issuer")
    # RFC 7519 §4.1.3: "If the principal processing the claim does not identify itself
    # with a value in the aud claim when this claim is present, then the JWT MUST be
    # rejected." Exactly our audience: a token meant for several is not ours alone.
    aud = claims["aud"]
    if not aud:
        raise _Refused("missing claim aud")
    if aud != audience:
        raise _Refused("wrong audience")
    # RFC 7519 §4.1.2 and §4.1.7: sub and jti are strings.
    if "sub" in claims and not isinstance(claims["sub"], str):
        raise _Refused("wrong subject")
    if "jti" in claims and not isinstance(claims["jti"], str):
        raise _Refused("jti must be a string")


def _numeric_date(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    # bool is an int in Python; NaN and infinities would defeat every comparison.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Refused(f"{name} must be a number")
    return int(value)


def _check_times(
    claims: Mapping[str, Any], *, now: float, max_lifetime: int, accept_expired: bool = False
) -> None:
    """exp, iat and nbf against ``now``, and a lifetime we could have issued."""
    exp = _numeric_date(claims, "exp")
    iat = _numeric_date(claims, "iat")
    # RFC 7519 §4.1.4: the JWT "MUST NOT be accepted for processing" on or after exp.
    if exp <= now - LEEWAY_SECONDS and not accept_expired:
        raise _Refused("token expired", expired=True)
    if iat > now + LEEWAY_SECONDS:
        raise _Refused("iat in the future")
    if "nbf" in claims and _numeric_date(claims, "nbf") > now + LEEWAY_SECONDS:
        raise _Refused("token not yet valid")
    # Even with a valid signature, refuse a lifetime we would never have issued.
    if exp - iat > max_lifetime:
        raise _Refused("lifetime too long")


def _non_empty_str(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise _Refused(f"{name} must be a non-empty string")
    return value


def _cnf_jkt(claims: Mapping[str, Any]) -> str:
    """The DPoP key thumbprint a token is bound to (RFC 9449 §6.1)."""
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str) or not jkt:
        raise _Refused("cnf.jkt missing")
    return jkt


def _verify_own_jwt(
    token: str,
    keys: Sequence[PublicKey],
    *,
    typ: str,
    issuer: str,
    audience: str,
    required: Sequence[str],
    max_lifetime: int,
    now: float,
    accept_expired: bool = False,
) -> dict[str, Any]:
    """Steps shared by every JWT the gateway signs; see :func:`verify_consent_token`."""
    # (1) parse the header without trusting it (the whole JWS is split and decoded
    # once, here; its payload is parsed only after step (5)'s signature check)
    jws = _parse(token)
    header = jws.header
    # (2) typ
    if not _typ_is(header, typ):
        raise _Refused(f"typ must be {typ}")
    # (3) kid names one of our keys
    key = _key_by_kid(header, keys)
    # (4) alg is the key's own, and in the gateway's allowlist
    if header.get("alg") != key.alg or key.alg not in TOKEN_ALGS:
        raise _Refused("alg not allowed")
    # (5) signature with that key and alg only; iss and aud exactly; claims present
    try:
        claims = verified_claims(jws, key.key, key.alg)
    except BadSignature:
        raise _Refused("bad signature") from None
    except ValueError:
        raise _Refused("malformed token") from None
    _check_registered_claims(claims, issuer=issuer, audience=audience, required=required)
    # (6) exp, iat, nbf against `now`
    _check_times(claims, now=now, max_lifetime=max_lifetime, accept_expired=accept_expired)
    return claims


# --------------------------------------------------------------------------- consent tokens


@dataclass(frozen=True)
class ConsentToken:
    """The claims of a verified consent token."""

    jti: str
    client_id: str
    sub: str
    consent_id: str
    jkt: str
    authorization_details: tuple[dict[str, Any], ...]
    acr: str | None
    iat: int
    exp: int


def mint_consent_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    client_id: str,
    sub: str,
    consent_id: str,
    jkt: str,
    authorization_details: Sequence[Mapping[str, Any]],
    acr: str | None,
    lifetime: int,
    now: float,
) -> tuple[str, ConsentToken]:
    """Sign a consent token (RFC 9068 profile) bound to the DPoP key ``jkt``."""
    if not 0 < lifetime <= CONSENT_TOKEN_MAX_LIFETIME:
        raise ValueError(f"consent token lifetime must be 1..{CONSENT_TOKEN_MAX_LIFETIME} s")
    if key.alg not in TOKEN_ALGS:
        raise ValueError("signing key alg not in TOKEN_ALGS")
    iat = int(now)
    parsed = ConsentToken(
        jti=ids.token(16),
        client_id=client_id,
        sub=sub,
        consent_id=consent_id,
        jkt=jkt,
        authorization_details=tuple(dict(d) for d in authorization_details),
        acr=acr,
        iat=iat,
        exp=iat + lifetime,
    )
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": sub,
        "client_id": client_id,
        "iat": parsed.iat,
        "exp": parsed.exp,
        "jti": parsed.jti,
        "cnf": {"jkt": jkt},
        "consent_id": consent_id,
        "authorization_details": list(parsed.authorization_details),
    }
    if acr is not None:
        claims["acr"] = acr
    # RFC 9068 §2.1: JWT access tokens "MUST include this media type in the typ
    # header parameter".
    return key.sign_jwt(claims, typ=CONSENT_JWT_TYP), parsed


def verify_consent_token(
    token: str,
    keys: Sequence[PublicKey],
    *,
    issuer: str,
    audience: str,
    now: float,
    accept_expired: bool = False,
) -> ConsentToken:
    """Verify a consent token; raise Unauthenticated (token_expired / token_invalid).

    Steps: (1) parse the header without trusting it; (2) typ is at+jwt;
    (3) kid names one of ``keys``; (4) alg is that key's alg and in TOKEN_ALGS;
    (5) signature, iss, aud and presence of the required claims; (6) exp/iat
    against ``now``; (7) types of the gateway's own claims.

    ``accept_expired`` skips only the ``exp`` check of step (6): revocation
    (RFC 7009 §2.2) may name an expired token. Never for access.
    """
    try:
        # RFC 9068 §4: resource servers "MUST verify that the typ header value
        # is at+jwt or application/at+jwt and reject tokens carrying any other value".
        claims = _verify_own_jwt(
            token,
            keys,
            typ=CONSENT_JWT_TYP,
            issuer=issuer,
            audience=audience,
            required=_CONSENT_CLAIMS,
            max_lifetime=CONSENT_TOKEN_MAX_LIFETIME,
            now=now,
            accept_expired=accept_expired,
        )
        # (7) the claims the transfer path relies on, with their types
        jkt = _cnf_jkt(claims)
        details = claims.get("authorization_details")
        if (
            not isinstance(details, list)
            or not details
            or not all(isinstance(d, dict) for d in details)
        ):
            raise _Refused("authorization_details must be a non-empty list of objects")
        acr = claims.get("acr")
        if acr is not None and not isinstance(acr, str):
            raise _Refused("acr must be a string")
        return ConsentToken(
            jti=_non_empty_str(claims, "jti"),
            client_id=_non_empty_str(claims, "client_id"),
            sub=_non_empty_str(claims, "sub"),
            consent_id=_non_empty_str(claims, "consent_id"),
            jkt=jkt,
            authorization_details=tuple(details),
            acr=acr,
            iat=_numeric_date(claims, "iat"),
            exp=_numeric_date(claims, "exp"),
        )
    except _Refused as refused:
        code = EXPIRED_CODE if refused.expired else INVALID_CODE
        raise Unauthenticated(code, f"consent token refused: {refused.reason}") from None


# --------------------------------------------------------------------------- client assertions


@dataclass(frozen=True)
class ClientAssertion:
    """A verified private_key_jwt assertion; the caller enforces single use of ``jti``."""

    client_id: str
    jti: str
    exp: int


def unverified_client_id(assertion: str) -> str:
    """The client id an assertion claims (iss == sub), read only to find the client's keys."""
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise OAuthError("invalid_client", "client assertion is not a JWT", 401) from None
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss or claims.get("sub") != iss:
        raise OAuthError("invalid_client", "client assertion iss and sub must be the client", 401)
    return iss


def verify_client_assertion(
    assertion: str,
    *,
    client_keys: Sequence[PublicKey],
    expected_client_id: str,
    audiences: Collection[str],
    now: float,
) -> ClientAssertion:
    """Verify a private_key_jwt assertion (RFC 7523 §3); raise OAuthError invalid_client.

    Steps: (1) parse the header; (2) alg in CLIENT_ALGS; (3) candidate keys of the
    client with that alg (and kid, if given); (4) signature with one of them, iss
    and sub are the client, aud names us, jti and exp present; (5) exp, iat, nbf
    against ``now``, lifetime bounded.
    """
    try:
        # (1)
        header = _header(assertion)
        # (2) the alg is the client's to choose, but only among the allowlist
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in CLIENT_ALGS:
            raise _Refused("alg not allowed")
        # (3) a key of the client registered for exactly that alg
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _Refused("kid must be a string")
        candidates = [k for k in client_keys if k.alg == alg and (kid is None or k.kid == kid)]
        if not candidates:
            raise _Refused("no registered client key fits the assertion")
        # (4) RFC 7523 §3: "the subject MUST be the client_id of the OAuth client";
        # the JWT "MUST contain an aud (audience) claim containing a value that
        # identifies the authorization server" and "MUST contain an exp". iss is
        # the client too (RFC 7521 §5.2); jti is REQUIRED by OIDC Core §9.
        claims: dict[str, Any] | None = None
        for candidate in candidates:
            try:
                claims = jwt.decode(
                    assertion,
                    candidate.key,
                    algorithms=[candidate.alg],
                    issuer=expected_client_id,
                    subject=expected_client_id,
                    audience=list(audiences),
                    options={
                        **_options(("iss", "sub", "aud", "exp", "jti")),
                        "strict_aud": False,  # aud may be a list holding one of ours
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue  # another of the client's keys may have signed it
            except jwt.PyJWTError as exc:
                raise _Refused(_describe(exc)) from None
        if claims is None:
            raise _Refused("bad signature")
        # (5) times; iat is optional in RFC 7523 but checked when present
        exp = _numeric_date(claims, "exp")
        if exp <= now - LEEWAY_SECONDS:
            raise _Refused("assertion expired")
        if exp > now + CLIENT_ASSERTION_MAX_LIFETIME + LEEWAY_SECONDS:
            raise _Refused(f"exp more than {CLIENT_ASSERTION_MAX_LIFETIME} s ahead")
        if "iat" in claims and _numeric_date(claims, "iat") > now + LEEWAY_SECONDS:
            raise _Refused("iat in the future")
        if "nbf" in claims and _numeric_date(claims, "nbf") > now + LEEWAY_SECONDS:
            raise _Refused("assertion not yet valid")
        return ClientAssertion(
            client_id=expected_client_id, jti=_non_empty_str(claims, "jti"), exp=exp
        )
    except _Refused as refused:
        raise OAuthError(
            "invalid_client", f"client assertion refused: {refused.reason}", 401
        ) from None


# --------------------------------------------------------------------------- provider assertions


def mint_provider_assertion(
    key: SigningKey,
    *,
    issuer: str,
    provider: str,
    sub: str,
    identity: Mapping[str, str],
    resource: str,
    purpose: str,
    consent_id: str,
    transfer_id: str,
    client_id: str,
    lifetime: int,
    now: float,
) -> str:
    """Sign the assertion sent to ``provider`` for one transfer."""
    if not 0 < lifetime <= PROVIDER_ASSERTION_MAX_LIFETIME:
        raise ValueError(
            f"provider assertion lifetime must be 1..{PROVIDER_ASSERTION_MAX_LIFETIME} s"
        )
    clash = _PROVIDER_RESERVED & set(identity)
    if clash:
        # An identity claim named "aud" or "sub" would rewrite the assertion's meaning.
        raise ValueError(f"identity claims clash with reserved claims: {sorted(clash)}")
    iat = int(now)
    claims: dict[str, Any] = {
        **identity,
        "iss": issuer,
        "aud": provider,
        "sub": sub,
        "iat": iat,
        "exp": iat + lifetime,
        "jti": ids.token(16),
        "resource": resource,
        "purpose": purpose,
        "consent_id": consent_id,
        "transfer_id": transfer_id,
        "client_id": client_id,
    }
    return key.sign_jwt(claims, typ=PROVIDER_ASSERTION_TYP)


def verify_provider_assertion(
    token: str, keys: Sequence[PublicKey], *, issuer: str, provider: str, now: float
) -> dict[str, Any]:
    """What a data provider runs on the gateway's assertion; ValueError(reason) if refused.

    ``keys`` come from the gateway's JWKS (``public_keys_from_jwks(jwks, TOKEN_ALGS)``).
    """
    try:
        return _verify_own_jwt(
            token,
            keys,
            typ=PROVIDER_ASSERTION_TYP,
            issuer=issuer,
            audience=provider,
            required=_PROVIDER_CLAIMS,
            max_lifetime=PROVIDER_ASSERTION_MAX_LIFETIME,
            now=now,
        )
    except _Refused as refused:
        raise ValueError(f"provider assertion refused: {refused.reason}") from None


# --------------------------------------------------------------------------- audit tokens

AUDIT_SCOPE = "audit:read"
_AUDIT_CLAIMS = ("iss", "aud", "sub", "client_id", "iat", "exp", "jti", "cnf", "scope")


@dataclass(frozen=True)
class AuditToken:
    """The claims of a verified auditor token (client_credentials, DPoP-bound)."""

    jti: str
    client_id: str
    scope: tuple[str, ...]
    jkt: str
    iat: int
    exp: int


def mint_audit_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    client_id: str,
    jkt: str,
    scope: Sequence[str],
    lifetime: int,
    now: float,
) -> tuple[str, AuditToken]:
    """Sign an auditor's access token; its audience is the audit API, not /data."""
    if not 0 < lifetime <= CONSENT_TOKEN_MAX_LIFETIME:
        raise ValueError(f"audit token lifetime must be 1..{CONSENT_TOKEN_MAX_LIFETIME} s")
    iat = int(now)
    parsed = AuditToken(
        jti=ids.token(16),
        client_id=client_id,
        scope=tuple(scope),
        jkt=jkt,
        iat=iat,
        exp=iat + lifetime,
    )
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": client_id,
        "client_id": client_id,
        "iat": parsed.iat,
        "exp": parsed.exp,
        "jti": parsed.jti,
        "cnf": {"jkt": jkt},
        "scope": " ".join(scope),
    }
    return key.sign_jwt(claims, typ=CONSENT_JWT_TYP), parsed


def verify_audit_token(
    token: str, keys: Sequence[PublicKey], *, issuer: str, audience: str, now: float
) -> AuditToken:
    """Verify an auditor token (same pinned checks as consent tokens, audit audience)."""
    try:
        claims = _verify_own_jwt(
            token,
            keys,
            typ=CONSENT_JWT_TYP,
            issuer=issuer,
            audience=audience,
            required=_AUDIT_CLAIMS,
            max_lifetime=CONSENT_TOKEN_MAX_LIFETIME,
            now=now,
        )
        jkt = _cnf_jkt(claims)
        return AuditToken(
            jti=_non_empty_str(claims, "jti"),
            client_id=_non_empty_str(claims, "client_id"),
            scope=tuple(_non_empty_str(claims, "scope").split()),
            jkt=jkt,
            iat=_numeric_date(claims, "iat"),
            exp=_numeric_date(claims, "exp"),
        )
    except _Refused as refused:
        code = EXPIRED_CODE if refused.expired else INVALID_CODE
        raise Unauthenticated(code, f"audit token refused: {refused.reason}") from None
