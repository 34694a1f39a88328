"""C2SP tlog-checkpoint and tlog-proof texts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.trail.checkpoint import (
    TLOG_PROOF_HEADER,
    Checkpoint,
    CheckpointError,
    TlogProof,
    format_tlog_proof,
    open_checkpoint,
    parse,
    parse_tlog_proof,
    sign_checkpoint,
    verify_tlog_proof,
)
from gateway.trail.merkle import MemoryTree, ProofError
from gateway.trail.note import (
    InvalidSignatureError,
    NoteError,
    Signer,
    UnverifiedNoteError,
    parse_note,
)

SPEC = json.loads(
    (Path(__file__).parent / "vectors" / "signed-note" / "c2sp_examples.json").read_text("utf-8")
)["checkpoint"]
ORIGIN = "gateway.example/trail"
SIGNER = Signer(ORIGIN, Ed25519PrivateKey.generate())
TREE = MemoryTree(b"entry %d" % i for i in range(20))


def test_spec_example_parses() -> None:
    text, _ = parse_note(SPEC["note"])
    cp = parse(text)
    assert cp == Checkpoint(SPEC["origin"], SPEC["size"], base64.b64decode(SPEC["root"]))
    assert cp.body() == text


def test_body_format() -> None:
    cp = Checkpoint(ORIGIN, 20, TREE.root())
    root = base64.b64encode(TREE.root()).decode()
    assert cp.body() == f"{ORIGIN}\n20\n{root}\n"
    assert parse(cp.body()) == cp


def test_sign_and_open_round_trip() -> None:
    cp = Checkpoint(ORIGIN, 20, TREE.root())
    note = sign_checkpoint(cp, SIGNER)
    assert note.startswith(cp.body() + "\n\u2014 " + ORIGIN + " ")
    assert open_checkpoint(note, SIGNER.verifier) == cp
    assert open_checkpoint(note, SIGNER.verifier, origin=ORIGIN) == cp


def test_extension_lines_are_tolerated_and_ignored() -> None:
    cp = Checkpoint(ORIGIN, 20, TREE.root())
    assert parse(cp.body() + "extension one\nextension two\n") == cp
    note = SIGNER.sign(cp.body() + "extension\n")
    assert open_checkpoint(note, SIGNER.verifier) == cp


def test_never_a_checkpoint_for_an_empty_tree() -> None:
    with pytest.raises(CheckpointError, match="empty tree"):
        sign_checkpoint(Checkpoint(ORIGIN, 0, TREE.root(0)), SIGNER)
    forged = SIGNER.sign(Checkpoint(ORIGIN, 0, TREE.root(0)).body())
    with pytest.raises(CheckpointError, match="empty tree"):
        open_checkpoint(forged, SIGNER.verifier)


def test_the_key_is_named_after_the_origin() -> None:
    with pytest.raises(CheckpointError, match="origin"):
        sign_checkpoint(Checkpoint("other.example/log", 20, TREE.root()), SIGNER)


def test_open_checks_the_origin() -> None:
    note = SIGNER.sign(Checkpoint("other.example/log", 20, TREE.root()).body())
    with pytest.raises(CheckpointError, match="origin"):
        open_checkpoint(note, SIGNER.verifier)
    good = sign_checkpoint(Checkpoint(ORIGIN, 20, TREE.root()), SIGNER)
    with pytest.raises(CheckpointError, match="origin"):
        open_checkpoint(good, SIGNER.verifier, origin="other.example/log")


def test_a_modified_checkpoint_fails() -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 20, TREE.root()), SIGNER)
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(note.replace("\n20\n", "\n21\n"), SIGNER.verifier)
    other = Signer(ORIGIN, Ed25519PrivateKey.generate())
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(note, other.verifier)


ROOT64 = base64.b64encode(TREE.root()).decode()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"{ORIGIN}\n20\n{ROOT64}", id="no final newline"),
        pytest.param(f"{ORIGIN}\n20\n", id="two lines"),
        pytest.param(f"\n20\n{ROOT64}\n", id="empty origin"),
        pytest.param(f"{ORIGIN}\n020\n{ROOT64}\n", id="leading zero"),
        pytest.param(f"{ORIGIN}\n+20\n{ROOT64}\n", id="sign"),
        pytest.param(f"{ORIGIN}\n 20\n{ROOT64}\n", id="space"),
        pytest.param(f"{ORIGIN}\n２０\n{ROOT64}\n", id="non-ASCII digits"),
        pytest.param(f"{ORIGIN}\n-1\n{ROOT64}\n", id="negative"),
        pytest.param(f"{ORIGIN}\n{2**63}\n{ROOT64}\n", id="beyond int64"),
        pytest.param(f"{ORIGIN}\n20\n{ROOT64[:-1]}\n", id="unpadded root"),
        pytest.param(f"{ORIGIN}\n20\n{ROOT64[:-4]}\n", id="short root"),
        pytest.param(f"{ORIGIN}\n20\n{ROOT64[:-2]}B=\n", id="non-canonical base64"),
        pytest.param(f"{ORIGIN}\n20\n{ROOT64}\n\nextension\n", id="empty extension line"),
    ],
)
def test_malformed_checkpoints(text: str) -> None:
    with pytest.raises(CheckpointError):
        parse(text)


def test_checkpoint_errors_are_note_errors() -> None:
    assert issubclass(CheckpointError, NoteError)


@pytest.mark.parametrize(
    ("origin", "size", "root"),
    [("", 1, bytes(32)), ("a\nb", 1, bytes(32)), (ORIGIN, -1, bytes(32)), (ORIGIN, 1, b"x")],
)
def test_checkpoint_cannot_be_built_invalid(origin: str, size: int, root: bytes) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint(origin, size, root)


# ---------------------------------------------------------------------------
# c2sp.org/tlog-proof@v1


def test_tlog_proof_format() -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 20, TREE.root()), SIGNER)
    proof = TREE.inclusion(7, 20)
    text = format_tlog_proof(7, proof, note)
    lines = text.split("\n")
    assert lines[0] == TLOG_PROOF_HEADER
    assert lines[1] == "index 7"
    assert lines[2 : 2 + len(proof)] == [base64.b64encode(h).decode() for h in proof]
    assert lines[2 + len(proof)] == ""
    assert text.endswith("\n\n" + note)


def test_tlog_proof_round_trip_and_verification() -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 20, TREE.root()), SIGNER)
    text = format_tlog_proof(7, TREE.inclusion(7, 20), note, extra=b"receipt context")
    assert text.split("\n")[1] == "extra " + base64.b64encode(b"receipt context").decode()
    parsed = parse_tlog_proof(text)
    assert parsed == TlogProof(7, tuple(TREE.inclusion(7, 20)), note, b"receipt context")
    assert parsed.text() == text
    proof, cp = verify_tlog_proof(text, SIGNER.verifier, TREE.leaf_hash(7))
    assert (proof.index, cp.size) == (7, 20)


def test_tlog_proof_for_another_entry_fails() -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 20, TREE.root()), SIGNER)
    text = format_tlog_proof(7, TREE.inclusion(7, 20), note)
    with pytest.raises(ProofError):
        verify_tlog_proof(text, SIGNER.verifier, TREE.leaf_hash(8))
    with pytest.raises(ProofError):
        verify_tlog_proof(text.replace("index 7", "index 6"), SIGNER.verifier, TREE.leaf_hash(7))
    with pytest.raises(InvalidSignatureError):
        verify_tlog_proof(text.replace("\n20\n", "\n19\n"), SIGNER.verifier, TREE.leaf_hash(7))


def test_single_entry_tlog_proof_has_no_hashes() -> None:
    tree = MemoryTree([b"only"])
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, tree.root()), SIGNER)
    text = format_tlog_proof(0, [], note)
    assert text.startswith(f"{TLOG_PROOF_HEADER}\nindex 0\n\n{ORIGIN}\n1\n")
    verify_tlog_proof(text, SIGNER.verifier, tree.leaf_hash(0))


@pytest.mark.parametrize(
    "head",
    [
        "c2sp.org/tlog-proof@v2\nindex 1",
        f"{TLOG_PROOF_HEADER}\nindex 01",
        f"{TLOG_PROOF_HEADER}\nextra !!\nindex 1",
        f"{TLOG_PROOF_HEADER}\n{ROOT64}",
        f"{TLOG_PROOF_HEADER}\nindex 1\nnot a hash",
    ],
)
def test_malformed_tlog_proofs(head: str) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 20, TREE.root()), SIGNER)
    with pytest.raises(CheckpointError):
        parse_tlog_proof(head + "\n\n" + note)
    with pytest.raises(CheckpointError):
        parse_tlog_proof(head + "\n")
