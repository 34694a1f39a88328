"""Key material, kept in files under the data dir (``GATEWAY_DATA_DIR/keys``).

Generated on first run (``gateway keys generate`` or any start); never in the
repository. Files are created with mode 0600.

    keys/signing/<kid>.pem      ES256 keys that sign consent tokens and provider
                                assertions; the newest file signs, all are published
    keys/trail-ed25519.pem      signs trail checkpoints (signed notes)
    keys/pseudonym.secret       HMAC key for pairwise subjects and subject lookup
    keys/claims.key             AES-256-GCM key for identity claims at rest
    keys/demo-idp.pem           demo identity provider's id_token key (demo only)
    keys/demo-idp-client.secret the gateway's client secret at the demo IdP (demo only)
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.jose import SigningKey


class KeysMissing(Exception):
    """Key files are absent and the caller asked not to create them."""


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _secret_file(path: Path, create: bool, size: int = 32) -> bytes:
    if not path.exists():
        if not create:
            raise KeysMissing(f"{path} is missing: run `gateway keys generate`")
        _write_private(path, secrets.token_bytes(size))
    data = path.read_bytes()
    if len(data) < 32:
        raise ValueError(f"{path} holds fewer than 32 bytes")
    return data


def _signing_keys(directory: Path, create: bool) -> list[SigningKey]:
    files = sorted(directory.glob("*.pem"), key=lambda p: (p.stat().st_mtime, p.name))
    if not files:
        if not create:
            raise KeysMissing(f"no signing key in {directory}: run `gateway keys generate`")
        key = SigningKey.generate_es256()
        _write_private(directory / f"{key.kid}.pem", key.to_pem())
        return [key]
    return [SigningKey.from_pem(p.read_bytes()) for p in files]


def _ed25519(path: Path, create: bool) -> ed25519.Ed25519PrivateKey:
    if not path.exists():
        if not create:
            raise KeysMissing(f"{path} is missing: run `gateway keys generate`")
        key = ed25519.Ed25519PrivateKey.generate()
        _write_private(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return loaded


def _ec_p256(path: Path, create: bool) -> ec.EllipticCurvePrivateKey:
    if not path.exists():
        if not create:
            raise KeysMissing(f"{path} is missing")
        _write_private(path, SigningKey.generate_es256().to_pem())
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return loaded


@dataclass(frozen=True)
class DemoKeys:
    idp_key: ec.EllipticCurvePrivateKey = field(repr=False)
    idp_client_secret: str = field(repr=False)


@dataclass(frozen=True)
class KeyRing:
    signing: tuple[SigningKey, ...] = field(repr=False)  # oldest first; the last one signs
    trail_key: ed25519.Ed25519PrivateKey = field(repr=False)
    pseudonym_secret: bytes = field(repr=False)
    claims_key: bytes = field(repr=False)
    demo: DemoKeys | None = field(default=None, repr=False)

    @property
    def active(self) -> SigningKey:
        return self.signing[-1]


def load_keys(keys_dir: Path, *, create: bool, demo: bool = False) -> KeyRing:
    """Load the key ring, creating missing keys when ``create`` is true."""
    demo_keys = None
    if demo:
        demo_keys = DemoKeys(
            idp_key=_ec_p256(keys_dir / "demo-idp.pem", create=True),
            idp_client_secret=_secret_file(keys_dir / "demo-idp-client.secret", True).hex(),
        )
    return KeyRing(
        signing=tuple(_signing_keys(keys_dir / "signing", create)),
        trail_key=_ed25519(keys_dir / "trail-ed25519.pem", create),
        pseudonym_secret=_secret_file(keys_dir / "pseudonym.secret", create),
        claims_key=_secret_file(keys_dir / "claims.key", create)[:32],
        demo=demo_keys,
    )
