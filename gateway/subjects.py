"""The person inside the gateway: pseudonyms only, identity claims sealed.

- ``lookup``: HMAC of the identity provider's issuer and ``sub``; finds the
  same person at the next login without storing who they are.
- pairwise subjects: one per client and one per provider (like OIDC pairwise
  ``sub``), so two recipients cannot link a person by identifier.
- trail pseudonym: derived from a per-person secret; deleting the secret
  leaves the trail intact and provable, but no longer linkable to the person.
- identity claims at rest: AES-256-GCM, bound to the row they belong to.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.jose import b64url_encode


def _framed(*parts: str) -> bytes:
    """Length-prefixed parts: no two different tuples give the same bytes."""
    out = bytearray()
    for part in parts:
        raw = part.encode()
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def subject_lookup(secret: bytes, issuer: str, sub: str) -> str:
    return hmac.new(secret, _framed("lookup", issuer, sub), hashlib.sha256).hexdigest()


def pairwise_subject(secret: bytes, kind: str, audience: str, lookup: str) -> str:
    """Stable per (person, audience) identifier; ``kind`` is "client" or "provider"."""
    msg = _framed("pairwise", kind, audience, lookup)
    return b64url_encode(hmac.new(secret, msg, hashlib.sha256).digest())


def trail_pseudonym(trail_secret: bytes | None) -> str:
    """The person's name in the trail; "erased" once their secret is deleted."""
    if trail_secret is None:
        return "erased"
    return b64url_encode(hmac.new(trail_secret, b"trail", hashlib.sha256).digest()[:16])


class ClaimsBox:
    """Seals identity claims with AES-256-GCM; ``context`` binds them to one row."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, claims: Mapping[str, str], context: str) -> bytes:
        nonce = os.urandom(12)
        plain = json.dumps(dict(claims), sort_keys=True).encode()
        return nonce + self._aead.encrypt(nonce, plain, context.encode())

    def open(self, sealed: bytes, context: str) -> dict[str, str]:
        plain = self._aead.decrypt(sealed[:12], sealed[12:], context.encode())
        data = json.loads(plain)
        assert isinstance(data, dict)
        return {str(k): str(v) for k, v in data.items()}
