"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 signatures. No I/O.

A note is a text ending in a newline, a blank line, then signature lines
``— <key name> <base64(4-byte key id || signature)>`` (em dash U+2014). The key
id of an Ed25519 key is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``; a
verifier key is ``<name>+<hex key id>+<base64(0x01 || public key)>``, and a
private key string ``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>``
(the formats of Go's ``golang.org/x/mod/sumdb/note``).

Errors::

    NoteError (ValueError)
    ├── KeyFormatError         a verifier key or private key string is malformed
    ├── MalformedNoteError     the note does not follow the format
    ├── UnverifiedNoteError    no signature from a known key
    └── InvalidSignatureError  a known key's signature does not verify
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

ALG_ED25519 = 0x01  # signed-note §"Signature types"
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
# The spec: verifiers "MUST accept at least up to 16 signatures"; Go stops at 100.
MAX_SIGNATURES = 100

_HEX_KEY_ID = re.compile(r"[0-9a-fA-F]{8}")


class NoteError(ValueError):
    """A note or key cannot be used; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyFormatError(NoteError):
    """A verifier key or private key string is malformed."""


class MalformedNoteError(NoteError):
    """The note does not follow the signed-note format."""


class UnverifiedNoteError(NoteError):
    """No signature from a known key ("clients MUST reject the note")."""


class InvalidSignatureError(NoteError):
    """A signature from a known key does not verify (the whole note is rejected)."""


def is_valid_name(name: str) -> bool:
    """Key names "MUST be non-empty and MUST NOT contain any Unicode spaces or plus"."""
    return (
        bool(name)
        and "+" not in name
        and not any(c.isspace() or c < " " or c == "\x7f" for c in name)
    )


def key_id(name: str, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || 0x01 || public key)[:4]`` for an Ed25519 key."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def _b64decode(text: str) -> bytes:
    """Standard base64 with padding, nothing else accepted (RFC 4648 §4)."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not base64") from exc


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Verifier:
    """A known Ed25519 note key: its name, key id and public key."""

    name: str
    key_id: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        if not is_valid_name(self.name):
            raise KeyFormatError(f"invalid key name {self.name!r}")
        if len(self.public_key) != 32:
            raise KeyFormatError("an Ed25519 public key is 32 bytes")
        if self.key_id != key_id(self.name, self.public_key):
            raise KeyFormatError("key id does not match the name and public key")

    @classmethod
    def from_public_key(cls, name: str, public_key: Ed25519PublicKey) -> Verifier:
        raw = _raw_public(public_key)
        if not is_valid_name(name):
            raise KeyFormatError(f"invalid key name {name!r}")
        return cls(name, key_id(name, raw), raw)

    @classmethod
    def from_key(cls, vkey: str) -> Verifier:
        """Parse ``<name>+<hex key id>+<base64(0x01 || public key)>``."""
        # Split at the first two pluses: base64 may itself contain '+'.
        name, sep1, rest = vkey.partition("+")
        hex_id, sep2, key64 = rest.partition("+")
        if not (sep1 and sep2) or not _HEX_KEY_ID.fullmatch(hex_id):
            raise KeyFormatError("verifier key must be <name>+<8 hex digits>+<base64 key>")
        try:
            key = _b64decode(key64)
        except ValueError:
            raise KeyFormatError("verifier key data is not base64") from None
        if not key or key[0] != ALG_ED25519:
            raise KeyFormatError("verifier key is not an Ed25519 (0x01) key")
        return cls(name, bytes.fromhex(hex_id), key[1:])

    def verifier_key(self) -> str:
        """``<name>+<hex key id>+<base64(0x01 || public key)>``."""
        encoded = _b64encode(bytes([ALG_ED25519]) + self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except InvalidSignature:
            return False
        return True


class Signer:
    """Signs note texts with an Ed25519 key under a key name."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not is_valid_name(name):
            raise KeyFormatError(f"invalid key name {name!r}")
        self.name = name
        self._private_key = private_key
        self.verifier = Verifier.from_public_key(name, private_key.public_key())
        self.key_id = self.verifier.key_id

    def __repr__(self) -> str:  # never the key itself
        return f"Signer({self.name!r}, key_id={self.key_id.hex()})"

    def verifier_key(self) -> str:
        return self.verifier.verifier_key()

    def signature_line(self, text: str) -> str:
        """``— <name> <base64(key id || signature)>\\n`` over ``text``."""
        _check_text(text)
        signature = self._private_key.sign(text.encode("utf-8"))
        return f"{SIGNATURE_PREFIX}{self.name} {_b64encode(self.key_id + signature)}\n"

    def sign(self, text: str) -> str:
        """The note: ``text``, a blank line, and this key's signature line."""
        return text + "\n" + self.signature_line(text)


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise MalformedNoteError("note text must end with a newline")
    _check_characters(text)


def _check_characters(note: str) -> None:
    # "Signed notes MUST be valid UTF-8 and MUST NOT contain any ASCII control
    # characters (those below U+0020) other than newline."
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedNoteError("note is not valid UTF-8") from None
    if any(c < " " and c != "\n" for c in note):
        raise MalformedNoteError("note contains a control character")


@dataclass(frozen=True)
class NoteSignature:
    """One parsed signature line."""

    name: str
    key_id: bytes
    signature: bytes


def parse_note(note: str) -> tuple[str, list[NoteSignature]]:
    """Split a note into its text and signature lines, without verifying anything."""
    _check_characters(note)
    # The text is separated from the signatures by the last empty line.
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise MalformedNoteError("signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"more than {MAX_SIGNATURES} signatures")
    signatures = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise MalformedNoteError("signature line must start with an em dash and a space")
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not is_valid_name(name):
            raise MalformedNoteError(f"invalid key name in signature line: {name!r}")
        try:
            raw = _b64decode(encoded)
        except ValueError:
            raise MalformedNoteError("signature is not base64") from None
        if len(raw) < 5:
            raise MalformedNoteError("signature shorter than a key id and one byte")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    return text, signatures


def open_note(note: str, verifiers: Iterable[Verifier]) -> str:
    """The note's text, once a known key's signature on it verifies.

    Signatures from unknown keys are ignored (even if they share the name or
    the key id of a known key, but not both); a known key whose signature does
    not verify rejects the note; a note without a verified signature is rejected.
    """
    known = {(v.name, v.key_id): v for v in verifiers}
    text, signatures = parse_note(note)
    encoded = text.encode("utf-8")
    verified = False
    for sig in signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        if not verifier.verify(encoded, sig.signature):
            raise InvalidSignatureError(
                f"signature by {sig.name}+{sig.key_id.hex()} does not verify"
            )
        verified = True
    if not verified:
        raise UnverifiedNoteError("no signature from a known key")
    return text


def format_private_key_string(name: str, private_key: Ed25519PrivateKey) -> str:
    """``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`` (Go's note.GenerateKey)."""
    if not is_valid_name(name):
        raise KeyFormatError(f"invalid key name {name!r}")
    seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    kid = key_id(name, _raw_public(private_key.public_key()))
    return f"PRIVATE+KEY+{name}+{kid.hex()}+{_b64encode(bytes([ALG_ED25519]) + seed)}"


def parse_private_key_string(skey: str) -> Signer:
    """A :class:`Signer` from a Go ``note.NewSigner`` private key string."""
    parts = skey.split("+", 4)
    if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
        raise KeyFormatError("private key must be PRIVATE+KEY+<name>+<key id>+<base64 key>")
    _, _, name, hex_id, key64 = parts
    if not _HEX_KEY_ID.fullmatch(hex_id):
        raise KeyFormatError("private key id must be 8 hex digits")
    try:
        key = _b64decode(key64)
    except ValueError:
        raise KeyFormatError("private key data is not base64") from None
    if len(key) != 33 or key[0] != ALG_ED25519:
        raise KeyFormatError("private key is not an Ed25519 (0x01) seed")
    signer = Signer(name, Ed25519PrivateKey.from_private_bytes(key[1:]))
    # The key id names the public key, which only exists once derived.
    if signer.key_id != bytes.fromhex(hex_id):
        raise KeyFormatError("key id does not match the name and key")
    return signer
