"""C2SP signed notes: Go's PeterNeumann example, the spec's rules, tampering.

Vectors: tests/trail/vectors/signed-note/ (README names the sources).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.trail.note import (
    InvalidSignatureError,
    KeyFormatError,
    MalformedNoteError,
    NoteError,
    Signer,
    UnverifiedNoteError,
    Verifier,
    format_private_key_string,
    is_valid_name,
    key_id,
    open_note,
    parse_note,
    parse_private_key_string,
)

VECTORS = Path(__file__).parent / "vectors" / "signed-note"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


PETER = load("peterneumann.json")
SPEC = load("c2sp_examples.json")
PETER_VERIFIER = Verifier.from_key(PETER["verifier_key"])
PETER_SIGNER = parse_private_key_string(PETER["private_key"])


def fresh_signer(name: str = "gateway.example/trail") -> Signer:
    return Signer(name, Ed25519PrivateKey.generate())


# ---------------------------------------------------------------------------
# The published example


def test_example_note_opens() -> None:
    assert open_note(PETER["note"], [PETER_VERIFIER]) == PETER["text"]


def test_example_key_id_is_computed_as_the_spec_says() -> None:
    public = PETER_VERIFIER.public_key
    # key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]
    want = hashlib.sha256(b"PeterNeumann\n\x01" + public).digest()[:4]
    assert want.hex() == PETER["key_id_hex"]
    assert key_id("PeterNeumann", public) == want == PETER_VERIFIER.key_id
    assert PETER_SIGNER.key_id == want


def test_signing_reproduces_the_example_byte_for_byte() -> None:
    # Ed25519 is deterministic: same key and text, same note.
    assert PETER_SIGNER.sign(PETER["text"]) == PETER["note"]
    assert PETER_SIGNER.verifier_key() == PETER["verifier_key"]


def test_private_key_string_round_trips() -> None:
    private = PETER_SIGNER._private_key
    assert format_private_key_string("PeterNeumann", private) == PETER["private_key"]
    signer = fresh_signer()
    again = parse_private_key_string(format_private_key_string(signer.name, signer._private_key))
    assert again.verifier_key() == signer.verifier_key()


def test_unknown_cosignature_is_ignored() -> None:
    # EnochRoot's key is not known: its signature line is skipped.
    assert open_note(PETER["cosigned_note"], [PETER_VERIFIER]) == PETER["text"]


def test_spec_examples_parse_but_no_key_is_known() -> None:
    note = SPEC["signed_note"]["note"]
    text, signatures = parse_note(note)
    # The text keeps its own blank line: the last empty line separates the signatures.
    assert text == SPEC["signed_note"]["text"]
    assert [s.name for s in signatures] == ["quasimodo.example/salvatore"]
    with pytest.raises(UnverifiedNoteError):
        open_note(note, [PETER_VERIFIER])
    with pytest.raises(UnverifiedNoteError):
        open_note(SPEC["checkpoint"]["note"], [])


# ---------------------------------------------------------------------------
# Tampering


def test_a_modified_text_fails() -> None:
    tampered = PETER["note"].replace("problem is", "problem was")
    with pytest.raises(InvalidSignatureError):
        open_note(tampered, [PETER_VERIFIER])


def test_every_flipped_signature_byte_fails() -> None:
    text, _, line = PETER["note"].rpartition("\n\n")
    prefix, _, encoded = line.rstrip("\n").rpartition(" ")
    raw = base64.b64decode(encoded)
    for i in range(4, len(raw)):
        bad = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        note = f"{text}\n\n{prefix} {base64.b64encode(bad).decode()}\n"
        with pytest.raises(InvalidSignatureError):
            open_note(note, [PETER_VERIFIER])


def test_a_changed_key_id_makes_the_signature_unknown() -> None:
    text, _, line = PETER["note"].rpartition("\n\n")
    prefix, _, encoded = line.rstrip("\n").rpartition(" ")
    raw = base64.b64decode(encoded)
    other_id = base64.b64encode(bytes([raw[0] ^ 1]) + raw[1:]).decode()
    note = f"{text}\n\n{prefix} {other_id}\n"
    with pytest.raises(UnverifiedNoteError):
        open_note(note, [PETER_VERIFIER])


def test_same_name_other_key_does_not_verify() -> None:
    impostor = Signer("PeterNeumann", Ed25519PrivateKey.generate())
    with pytest.raises(UnverifiedNoteError):
        open_note(impostor.sign(PETER["text"]), [PETER_VERIFIER])


def test_a_known_key_with_a_bad_signature_rejects_the_note_even_if_another_verifies() -> None:
    other = fresh_signer("other.example")
    good = other.signature_line(PETER["text"])
    forged = PETER["note"].replace("x08go/ZJ", "x08go/ZK")
    with pytest.raises(InvalidSignatureError):
        open_note(forged + good, [PETER_VERIFIER, other.verifier])


def test_either_of_two_known_keys_is_enough() -> None:
    other = fresh_signer("other.example")
    note = PETER["note"] + other.signature_line(PETER["text"])
    assert open_note(note, [other.verifier]) == PETER["text"]
    assert open_note(note, [PETER_VERIFIER, other.verifier]) == PETER["text"]


# ---------------------------------------------------------------------------
# Malformed notes

SIG = PETER["note"].rpartition("\n\n")[2]


@pytest.mark.parametrize(
    "note",
    [
        pytest.param(PETER["text"] + SIG, id="no blank line"),
        pytest.param(PETER["note"].rstrip("\n"), id="no final newline"),
        pytest.param(PETER["text"] + "\n", id="no signature"),
        pytest.param(PETER["text"] + "\n" + SIG.replace("\u2014", "-"), id="hyphen not em dash"),
        pytest.param(
            PETER["text"] + "\n" + SIG.replace("PeterNeumann", "Peter+Neumann"), id="plus"
        ),
        pytest.param(
            PETER["text"] + "\n" + SIG.replace("PeterNeumann", "Peter Neumann"), id="space"
        ),
        pytest.param(PETER["text"] + "\n" + SIG.replace(" x08go", "  x08go"), id="double space"),
        pytest.param(PETER["text"] + "\n" + SIG.replace("x08go", "x08g*"), id="not base64"),
        pytest.param(PETER["text"] + "\n" + SIG.replace("=\n", "\n"), id="unpadded"),
        pytest.param(PETER["text"] + "\n\u2014 PeterNeumann x08gow==\n", id="short signature"),
        pytest.param(PETER["note"].replace("you", "y\tou", 1), id="control character"),
        pytest.param(PETER["note"] + "\n", id="trailing blank line"),
        pytest.param(PETER["text"] + "\n" + SIG * 101, id="too many signatures"),
        pytest.param(PETER["note"].replace("If", "\ud800If"), id="not UTF-8"),
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(MalformedNoteError):
        open_note(note, [PETER_VERIFIER])


def test_errors_share_one_base() -> None:
    for cls in (KeyFormatError, MalformedNoteError, UnverifiedNoteError, InvalidSignatureError):
        assert issubclass(cls, NoteError)
    assert issubclass(NoteError, ValueError)


# ---------------------------------------------------------------------------
# Signing


def test_sign_round_trip_and_format() -> None:
    signer = fresh_signer()
    text = "gateway.example/trail\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    note = signer.sign(text)
    assert note.startswith(text + "\n\u2014 gateway.example/trail ")
    assert note.endswith("\n")
    raw = base64.b64decode(note.rpartition(" ")[2])
    assert raw[:4] == signer.key_id and len(raw) == 4 + 64
    verifier = Verifier.from_key(signer.verifier_key())
    assert verifier == signer.verifier
    assert open_note(note, [verifier]) == text


def test_text_with_blank_lines_round_trips() -> None:
    signer = fresh_signer()
    text = "first\n\nthird\n\n"
    assert open_note(signer.sign(text), [signer.verifier]) == text


@pytest.mark.parametrize("text", ["no newline", "bell\x07\n", ""])
def test_sign_refuses_bad_text(text: str) -> None:
    with pytest.raises(MalformedNoteError):
        fresh_signer().sign(text)


@pytest.mark.parametrize("name", ["", "a+b", "a b", "a\u00a0b", "a\nb", "tab\t"])
def test_bad_key_names(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(KeyFormatError):
        Signer(name, Ed25519PrivateKey.generate())


def test_good_key_names() -> None:
    for name in ["PeterNeumann", "gateway.example/trail", "127.0.0.1:8080", "démo.fr/journal"]:
        assert is_valid_name(name)


def test_signer_repr_hides_the_key() -> None:
    assert "PRIVATE" not in repr(PETER_SIGNER)
    assert repr(PETER_SIGNER) == "Signer('PeterNeumann', key_id=c74f20a3)"


# ---------------------------------------------------------------------------
# Key strings


def test_verifier_key_refuses_every_truncation_and_mangling() -> None:
    # As Go's TestNewVerifier: every proper substring and every +1 byte change.
    vkey = PETER["verifier_key"]
    for i in range(len(vkey) + 1):
        for j in range(i + 1, len(vkey) + 1):
            if (i, j) != (0, len(vkey)):
                with pytest.raises(KeyFormatError):
                    Verifier.from_key(vkey[i:j])
    for i in range(len(vkey)):
        mangled = vkey[:i] + chr(ord(vkey[i]) + 1) + vkey[i + 1 :]
        with pytest.raises(KeyFormatError):
            Verifier.from_key(mangled)


@pytest.mark.parametrize("vkey", PETER["bad_verifier_keys"])
def test_go_bad_verifier_keys(vkey: str) -> None:
    with pytest.raises(KeyFormatError):
        Verifier.from_key(vkey)


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+0xc74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # int() would take it
        "PeterNeumann+c74f_20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        " PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW\n",
    ],
)
def test_other_bad_verifier_keys(vkey: str) -> None:
    with pytest.raises(KeyFormatError):
        Verifier.from_key(vkey)


def test_verifier_key_hex_is_case_insensitive_like_go() -> None:
    upper = PETER["verifier_key"].replace("c74f20a3", "C74F20A3")
    assert Verifier.from_key(upper) == PETER_VERIFIER


@pytest.mark.parametrize(
    "skey",
    [
        "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",  # id
        "PRIVATE+KEY+PeterNeumanm+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",  # name
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AoEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",  # alg
        "PRIVATE+KEX+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKD",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_bad_private_key_strings(skey: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_private_key_string(skey)
