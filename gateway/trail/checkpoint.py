"""C2SP tlog-checkpoint and tlog-proof texts. No I/O.

A checkpoint (c2sp.org/tlog-checkpoint) is the note text::

    <origin>
    <tree size in decimal>
    <base64 root hash>

signed as a C2SP signed note (:mod:`gateway.trail.note`) by the key named after
the origin. A tlog proof (c2sp.org/tlog-proof@v1) carries an entry's index, its
inclusion proof and the signed checkpoint it leads to, so a receipt can be
checked offline.

Errors: :class:`CheckpointError` (a ``NoteError``) for a malformed or
unexpected checkpoint or proof text; the note and Merkle modules' own errors
for bad signatures and bad proofs.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.trail.merkle import HASH_SIZE, verify_inclusion
from gateway.trail.note import NoteError, Signer, Verifier, open_note

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
MAX_TREE_SIZE = 2**63 - 1  # Go's tlog sizes are int64

# "ASCII decimal ... with no leading zeroes (unless the tree is empty ...)".
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class CheckpointError(NoteError):
    """A checkpoint or tlog-proof text is malformed or not the one expected."""


def _decode_hash(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CheckpointError(f"{what} is not base64") from None
    # Exactly one encoding per hash: no malleable texts for the same checkpoint.
    if len(raw) != HASH_SIZE or base64.b64encode(raw).decode("ascii") != text:
        raise CheckpointError(f"{what} is not a base64 {HASH_SIZE}-byte hash")
    return raw


def _decimal(text: str, what: str) -> int:
    if not _DECIMAL.fullmatch(text) or int(text) > MAX_TREE_SIZE:
        raise CheckpointError(f"{what} is not a decimal number without leading zeros")
    return int(text)


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size, root hash."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        # "The origin MUST be non-empty"; it is one line of the note text.
        if not self.origin or "\n" in self.origin:
            raise CheckpointError("origin must be one non-empty line")
        if isinstance(self.size, bool) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError("tree size out of range")
        if len(self.root) != HASH_SIZE:
            raise CheckpointError(f"root hash must be {HASH_SIZE} bytes")

    def body(self) -> str:
        """The note text: origin, size and base64 root, each followed by a newline."""
        root = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root}\n"


def parse(text: str) -> Checkpoint:
    """Parse a checkpoint note text (the text only, signatures already checked)."""
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint must end with a newline")
    lines = text[:-1].split("\n")
    # "a sequence of at least three non-empty lines"; extension lines, if any,
    # "MUST be non-empty" and are otherwise opaque, so ignored here.
    if len(lines) < 3:
        raise CheckpointError("checkpoint needs origin, size and root hash lines")
    if any(not line for line in lines):
        raise CheckpointError("checkpoint has an empty line")
    origin, size, root = lines[:3]
    return Checkpoint(origin, _decimal(size, "tree size"), _decode_hash(root, "root hash"))


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> str:
    """The signed note for ``cp``; refuses an empty tree and a key not named after the origin."""
    if cp.size == 0:
        # DESIGN §4: never a checkpoint for an empty tree (Go's tlog gives the
        # empty tree an all-zero hash, RFC 6962 gives it SHA-256 of nothing).
        raise CheckpointError("never a checkpoint for an empty tree")
    if signer.name != cp.origin:
        # tlog-checkpoint: "The log's key name in its signature line SHOULD
        # match the origin line"; for the gateway it always does.
        raise CheckpointError("signing key name differs from the checkpoint origin")
    return signer.sign(cp.body())


def open_checkpoint(note: str, verifier: Verifier, origin: str | None = None) -> Checkpoint:
    """Verify the signature and parse; the origin must be ``origin`` (default: the key name)."""
    cp = parse(open_note(note, [verifier]))
    expected = verifier.name if origin is None else origin
    if cp.origin != expected:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} is not {expected!r}")
    if cp.size == 0:
        raise CheckpointError("checkpoint for an empty tree")
    return cp


# ---------------------------------------------------------------------------
# c2sp.org/tlog-proof@v1


@dataclass(frozen=True)
class TlogProof:
    """An entry's index, its inclusion proof, and the signed checkpoint it leads to."""

    index: int
    hashes: tuple[bytes, ...]
    checkpoint: str  # the signed note, verbatim
    extra: bytes | None = None  # opaque, unauthenticated

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not 0 <= self.index <= MAX_TREE_SIZE:
            raise CheckpointError("index out of range")
        if any(len(h) != HASH_SIZE for h in self.hashes):
            raise CheckpointError(f"proof hashes must be {HASH_SIZE} bytes")
        if self.extra == b"":
            raise CheckpointError("extra data, when present, is not empty")

    def text(self) -> str:
        """The ``.tlog-proof`` text."""
        lines = [TLOG_PROOF_HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode("ascii"))
        lines.append(f"index {self.index}")
        lines.extend(base64.b64encode(h).decode("ascii") for h in self.hashes)
        return "\n".join(lines) + "\n\n" + self.checkpoint


def format_tlog_proof(
    index: int, hashes: Sequence[bytes], checkpoint_note: str, extra: bytes | None = None
) -> str:
    """The c2sp.org/tlog-proof@v1 text for record ``index``."""
    return TlogProof(index, tuple(hashes), checkpoint_note, extra).text()


def parse_tlog_proof(text: str) -> TlogProof:
    """Parse a tlog-proof text; checks nothing but its form."""
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise CheckpointError("tlog proof has no blank line before the checkpoint")
    lines = head.split("\n")
    if lines[0] != TLOG_PROOF_HEADER:
        raise CheckpointError(f"tlog proof must start with {TLOG_PROOF_HEADER}")
    at = 1
    extra = None
    if at < len(lines) and lines[at].startswith("extra "):
        try:
            extra = base64.b64decode(lines[at][len("extra ") :].encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise CheckpointError("tlog proof extra data is not base64") from None
        at += 1
    if at >= len(lines) or not lines[at].startswith("index "):
        raise CheckpointError("tlog proof has no index line")
    index = _decimal(lines[at][len("index ") :], "index")
    hashes = tuple(_decode_hash(line, "proof hash") for line in lines[at + 1 :])
    return TlogProof(index, hashes, note, extra or None)


def verify_tlog_proof(
    text: str, verifier: Verifier, leaf_hash: bytes, origin: str | None = None
) -> tuple[TlogProof, Checkpoint]:
    """Check a tlog proof for an entry with ``leaf_hash``: signature, then inclusion.

    Raises a ``NoteError`` for the text or the signature, a ``ProofError``
    when the entry is not in the checkpointed tree at the stated index.
    """
    proof = parse_tlog_proof(text)
    cp = open_checkpoint(proof.checkpoint, verifier, origin)
    verify_inclusion(proof.hashes, cp.size, cp.root, proof.index, leaf_hash)
    return proof, cp
