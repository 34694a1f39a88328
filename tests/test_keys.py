"""Key material under GATEWAY_DATA_DIR/keys: created once, reloaded identically, 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.jose import SigningKey
from gateway.keys import KeyRing, KeysMissing, load_keys


def _public_bytes(ring: KeyRing) -> bytes:
    return ring.trail_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _files(keys_dir: Path) -> list[Path]:
    return sorted(p for p in keys_dir.rglob("*") if p.is_file())


def test_keys_are_created_once_and_reloaded_identically(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    first = load_keys(keys_dir, create=True)
    files = {p: p.read_bytes() for p in _files(keys_dir)}
    assert {p.relative_to(keys_dir).as_posix() for p in files} == {
        f"signing/{first.active.kid}.pem",
        "trail-ed25519.pem",
        "pseudonym.secret",
        "claims.key",
    }

    again = load_keys(keys_dir, create=True)
    # Nothing rewritten, and the same key material comes back.
    assert {p: p.read_bytes() for p in _files(keys_dir)} == files
    assert [k.kid for k in again.signing] == [k.kid for k in first.signing]
    assert again.active.public_jwk() == first.active.public_jwk()
    assert _public_bytes(again) == _public_bytes(first)
    assert again.pseudonym_secret == first.pseudonym_secret
    assert again.claims_key == first.claims_key
    assert len(again.claims_key) == 32  # AES-256
    assert len(again.pseudonym_secret) >= 32
    assert again.demo is None

    # create=False finds everything too.
    loaded = load_keys(keys_dir, create=False)
    assert loaded.active.kid == first.active.kid
    assert loaded.pseudonym_secret == first.pseudonym_secret


def test_two_data_dirs_get_different_keys(tmp_path: Path) -> None:
    a = load_keys(tmp_path / "a", create=True)
    b = load_keys(tmp_path / "b", create=True)
    assert a.active.kid != b.active.kid
    assert a.pseudonym_secret != b.pseudonym_secret
    assert a.claims_key != b.claims_key
    assert _public_bytes(a) != _public_bytes(b)


def test_key_files_are_private(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    load_keys(keys_dir, create=True, demo=True)
    files = _files(keys_dir)
    assert len(files) == 6  # the four keys and the two demo identity provider secrets
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_kid_is_the_thumbprint_of_the_signing_key(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ring = load_keys(keys_dir, create=True)
    pem = (keys_dir / "signing" / f"{ring.active.kid}.pem").read_bytes()
    assert SigningKey.from_pem(pem).kid == ring.active.kid
    assert ring.active.alg == "ES256"


def test_demo_keys_only_in_demo_and_stable(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    first = load_keys(keys_dir, create=True, demo=True)
    again = load_keys(keys_dir, create=False, demo=True)
    assert first.demo is not None and again.demo is not None
    assert first.demo.idp_client_secret == again.demo.idp_client_secret
    assert len(bytes.fromhex(first.demo.idp_client_secret)) >= 32
    assert first.demo.idp_client_secret not in repr(first)
    assert load_keys(tmp_path / "other", create=True).demo is None


@pytest.mark.parametrize(
    "missing", ["signing", "trail-ed25519.pem", "pseudonym.secret", "claims.key"]
)
def test_missing_key_without_create_names_the_command(tmp_path: Path, missing: str) -> None:
    keys_dir = tmp_path / "keys"
    load_keys(keys_dir, create=True)
    target = keys_dir / missing
    if target.is_dir():
        for p in target.iterdir():
            p.unlink()
    else:
        target.unlink()
    with pytest.raises(KeysMissing, match="gateway keys generate"):
        load_keys(keys_dir, create=False)


def test_empty_dir_without_create_raises_and_creates_nothing(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    with pytest.raises(KeysMissing, match="gateway keys generate"):
        load_keys(keys_dir, create=False)
    assert not keys_dir.exists() or _files(keys_dir) == []


def test_short_secret_file_is_refused(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    load_keys(keys_dir, create=True)
    (keys_dir / "pseudonym.secret").write_bytes(b"too short")
    with pytest.raises(ValueError, match="fewer than 32 bytes"):
        load_keys(keys_dir, create=False)


def test_secrets_are_not_in_the_key_ring_repr(tmp_path: Path) -> None:
    ring = load_keys(tmp_path / "keys", create=True, demo=True)
    text = repr(ring)
    assert ring.pseudonym_secret.hex() not in text
    assert ring.claims_key.hex() not in text
    assert repr(ring.pseudonym_secret) not in text
    assert "BEGIN" not in text
