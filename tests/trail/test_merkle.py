"""RFC 6962 / RFC 9162 Merkle arithmetic: published vectors, properties, read costs.

Vectors (tests/trail/vectors/README.md names each source): the 8-leaf tree
of transparency-dev/merkle (Go test tables and testdata JSON) and the C2SP
CCTV ``merkle`` vectors.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.trail import merkle
from gateway.trail.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    ProofError,
    consistency_proof,
    consistency_proof_indexes,
    hashes_to_store,
    hashes_to_store_indexes,
    inclusion_proof,
    inclusion_proof_indexes,
    leaf_hash,
    node_hash,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
    stored_hashes_for_record,
    tree_hash,
    tree_hash_indexes,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def b64(text: str) -> bytes:
    return base64.b64decode(text)


def b64_list(items: Sequence[str] | None) -> list[bytes]:
    return [b64(x) for x in items or []]


class CountingStore:
    """Stored hashes in a dict, counting the calls and indexes read."""

    def __init__(self) -> None:
        self.hashes: dict[int, bytes] = {}
        self.calls = 0
        self.indexes_read = 0

    def read(self, indexes: Sequence[int]) -> list[bytes]:
        self.calls += 1
        self.indexes_read += len(indexes)
        return [self.hashes[i] for i in indexes]

    def reset(self) -> None:
        self.calls = self.indexes_read = 0


# ---------------------------------------------------------------------------
# transparency-dev/merkle: proof/verify_test.go tables

TABLES = load("transparency-dev/verify_test_tables.json")
RFC_LEAVES = [bytes.fromhex(x) for x in TABLES["leaves_hex"]]
RFC_ROOTS = [bytes.fromhex(x) for x in TABLES["roots_hex"]]
RFC_TREE = MemoryTree(RFC_LEAVES)


def test_hashing_follows_rfc6962() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"") == RFC_ROOTS[0]  # a one-leaf tree's root is its leaf hash
    assert node_hash(leaf_hash(b""), leaf_hash(b"\x00")) == RFC_ROOTS[1]
    assert tree_hash(0, RFC_TREE.read) == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_of_the_rfc_tree(size: int) -> None:
    assert RFC_TREE.root(size) == RFC_ROOTS[size - 1]


@pytest.mark.parametrize("case", TABLES["inclusion"], ids=lambda c: f"{c['index']}@{c['size']}")
def test_inclusion_table(case: dict[str, Any]) -> None:
    index, size = case["index"], case["size"]
    want = [bytes.fromhex(h) for h in case["proof_hex"]]
    assert RFC_TREE.inclusion(index, size) == want
    verify_inclusion(want, size, RFC_ROOTS[size - 1], index, leaf_hash(RFC_LEAVES[index]))


@pytest.mark.parametrize("case", TABLES["consistency"], ids=lambda c: f"{c['old']}-{c['new']}")
def test_consistency_table(case: dict[str, Any]) -> None:
    old, new = case["old"], case["new"]
    want = [bytes.fromhex(h) for h in case["proof_hex"]]
    assert RFC_TREE.consistency(old, new) == want
    verify_consistency(want, old, RFC_ROOTS[old - 1], new, RFC_ROOTS[new - 1])


# ---------------------------------------------------------------------------
# transparency-dev/merkle: testdata/ JSON (happy paths and mutations)


@pytest.mark.parametrize("case", load("transparency-dev/inclusion.json"), ids=lambda c: c["source"])
def test_transparency_dev_inclusion(case: dict[str, Any]) -> None:
    proof = b64_list(case["proof"])
    args = (proof, case["treeSize"], b64(case["root"]), case["leafIdx"], b64(case["leafHash"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
        return
    verify_inclusion(*args)
    # Every happy path is over the same 8-leaf tree: we build the same proof.
    assert RFC_TREE.inclusion(case["leafIdx"], case["treeSize"]) == proof


@pytest.mark.parametrize(
    "case", load("transparency-dev/consistency.json"), ids=lambda c: c["source"]
)
def test_transparency_dev_consistency(case: dict[str, Any]) -> None:
    proof = b64_list(case["proof"])
    args = (proof, case["size1"], b64(case["root1"]), case["size2"], b64(case["root2"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
        return
    verify_consistency(*args)
    assert RFC_TREE.consistency(case["size1"], case["size2"]) == proof


# ---------------------------------------------------------------------------
# C2SP CCTV merkle vectors

CCTV_TREE_VECTOR = load("cctv/merkle_tree.json")
CCTV_TREE = MemoryTree(item["leaf_data"].encode() for item in CCTV_TREE_VECTOR)


@pytest.mark.parametrize("size", range(1, len(CCTV_TREE_VECTOR) + 1))
def test_cctv_tree_heads(size: int) -> None:
    item = CCTV_TREE_VECTOR[size - 1]
    assert leaf_hash(item["leaf_data"].encode()) == b64(item["leaf_hash"])
    assert CCTV_TREE.root(size) == b64(item["root_hash"])


@pytest.mark.parametrize("case", load("cctv/inclusion-valid.json"))
def test_cctv_inclusion_valid(case: dict[str, Any]) -> None:
    proof = b64_list(case["inclusion_path"])
    index, size = case["leaf_index"], case["tree_size"]
    verify_inclusion(proof, size, b64(case["root_hash"]), index, b64(case["leaf_hash"]))
    assert CCTV_TREE.inclusion(index, size) == proof


@pytest.mark.parametrize("case", load("cctv/inclusion-invalid.json"))
def test_cctv_inclusion_invalid(case: dict[str, Any]) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(
            b64_list(case["inclusion_path"]),
            case["tree_size"],
            b64(case["root_hash"]),
            case["leaf_index"],
            b64(case["leaf_hash"]),
        )


@pytest.mark.parametrize("case", load("cctv/consistency-valid.json"))
def test_cctv_consistency_valid(case: dict[str, Any]) -> None:
    proof = b64_list(case["consistency_path"])
    old, new = case["old_size"], case["new_size"]
    verify_consistency(proof, old, b64(case["old_root"]), new, b64(case["new_root"]))
    assert CCTV_TREE.consistency(old, new) == proof


@pytest.mark.parametrize("case", load("cctv/consistency-invalid.json"))
def test_cctv_consistency_invalid(case: dict[str, Any]) -> None:
    with pytest.raises(ProofError):
        verify_consistency(
            b64_list(case["consistency_path"]),
            case["old_size"],
            b64(case["old_root"]),
            case["new_size"],
            b64(case["new_root"]),
        )


# ---------------------------------------------------------------------------
# Edge cases of the verifiers (transparency-dev proof/verify_test.go inline cases)

H = leaf_hash(b"data")
OTHER = leaf_hash(b"other")


@pytest.mark.parametrize(
    ("index", "size", "root", "leaf"),
    [
        (0, 1, H, b""),  # wrong hash size
        (0, 1, b"", H),
        (0, 1, b"", b""),
        (0, 0, H, H),  # index outside the tree
        (1, 1, H, H),
        (2, 1, H, H),
        (-1, 1, H, H),
        (0, 1, OTHER, H),  # wrong root for a one-leaf tree
    ],
)
def test_inclusion_refusals(index: int, size: int, root: bytes, leaf: bytes) -> None:
    with pytest.raises(ProofError):
        verify_inclusion([], size, root, index, leaf)


def test_single_leaf_inclusion() -> None:
    verify_inclusion([], 1, H, 0, H)


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof"),
    [
        (0, 0, H, OTHER, []),  # equal sizes, different roots
        (1, 1, H, OTHER, []),
        (1, 0, H, H, []),  # time travel
        (2, 1, H, H, []),
        (1, 2, H, OTHER, []),  # empty proof between different sizes
        (1, 1, H, H, [H]),  # equal roots but a proof
        (0, 1, EMPTY_ROOT, H, [H]),  # proof from the empty tree
        (0, 1, H, H, []),  # "empty" tree with a non-empty root
        (-1, 1, EMPTY_ROOT, H, []),
    ],
)
def test_consistency_refusals(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> None:
    with pytest.raises(ProofError):
        verify_consistency(proof, old, old_root, new, new_root)


def test_trivially_consistent_sizes() -> None:
    verify_consistency([], 0, EMPTY_ROOT, 0, EMPTY_ROOT)
    verify_consistency([], 0, EMPTY_ROOT, 5, H)
    verify_consistency([], 3, H, 3, H)


def test_proof_error_names_the_failed_check() -> None:
    proof = RFC_TREE.inclusion(5, 8)
    with pytest.raises(ProofError, match="too short") as info:
        verify_inclusion(proof[:-1], 8, RFC_ROOTS[7], 5, leaf_hash(RFC_LEAVES[5]))
    assert info.value.reason == "inclusion proof too short"
    with pytest.raises(ProofError, match="too long"):
        verify_inclusion([*proof, H], 8, RFC_ROOTS[7], 5, leaf_hash(RFC_LEAVES[5]))
    with pytest.raises(ProofError, match="old root"):
        verify_consistency(RFC_TREE.consistency(6, 8), 6, RFC_ROOTS[4], 8, RFC_ROOTS[7])


# ---------------------------------------------------------------------------
# Stored-hash layout (Go tlog's StoredHashIndex numbering)


def test_stored_hash_index_matches_go_numbering() -> None:
    # Hashes in the order Go's tlog stores them while appending records 0..7:
    # each leaf, then every subtree that leaf completes, lowest level first.
    order = [
        (0, 0),
        (0, 1),
        (1, 0),
        (0, 2),
        (0, 3),
        (1, 1),
        (2, 0),
        (0, 4),
        (0, 5),
        (1, 2),
        (0, 6),
        (0, 7),
        (1, 3),
        (2, 1),
        (3, 0),
    ]
    assert [stored_hash_index(level, n) for level, n in order] == list(range(len(order)))


def test_split_stored_hash_index_inverts() -> None:
    for index in range(5000):
        level, n = split_stored_hash_index(index)
        assert stored_hash_index(level, n) == index
    for level, n in [(0, 10**12), (17, 3), (40, 1), (0, 2**62)]:
        assert split_stored_hash_index(stored_hash_index(level, n)) == (level, n)


def test_stored_hash_count_and_layout_of_a_tree() -> None:
    tree = MemoryTree(b"%d" % i for i in range(100))
    assert len(tree.stored_hashes) == stored_hash_count(100)
    for index, h in enumerate(tree.stored_hashes):
        level, n = split_stored_hash_index(index)
        # The stored hash of (level, n) is the root of leaves [n·2^level, (n+1)·2^level).
        leaves = [b"%d" % i for i in range(n << level, (n + 1) << level)]
        assert h == MemoryTree(leaves).root()


def test_bad_arguments() -> None:
    tree = MemoryTree([b"a", b"b", b"c"])
    with pytest.raises(ValueError, match="not in a tree"):
        inclusion_proof(3, 3, tree.read)
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_proof(3, 2, tree.read)
    with pytest.raises(ValueError, match="tree size"):
        tree.root(4)
    with pytest.raises(ValueError, match="leaf hash"):
        stored_hashes_for_record(3, b"not a leaf hash", tree.read)
    with pytest.raises(ValueError, match="read returned"):
        tree_hash(3, lambda indexes: [])
    with pytest.raises(ValueError):
        stored_hash_index(-1, 0)
    with pytest.raises(ValueError):
        split_stored_hash_index(-1)


# ---------------------------------------------------------------------------
# Properties over random trees (one shared tree: a prefix of it is a smaller tree)

MAX_SIZE = 300
TREE = MemoryTree(b"entry %d" % i for i in range(MAX_SIZE))
ROOTS = [TREE.root(size) for size in range(MAX_SIZE + 1)]
PROPERTY = settings(max_examples=150, deadline=None, database=None)


def flip(h: bytes, bit: int) -> bytes:
    return h[: bit // 8] + bytes([h[bit // 8] ^ (1 << bit % 8)]) + h[bit // 8 + 1 :]


@st.composite
def size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX_SIZE))
    return size, draw(st.integers(0, size - 1))


@st.composite
def old_and_new(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(1, MAX_SIZE))
    return draw(st.integers(1, new)), new


@PROPERTY
@given(size_and_index())
def test_every_inclusion_proof_verifies(case: tuple[int, int]) -> None:
    size, index = case
    proof = TREE.inclusion(index, size)
    verify_inclusion(proof, size, ROOTS[size], index, TREE.leaf_hash(index))
    assert len(proof) <= size.bit_length()


@PROPERTY
@given(size_and_index(), st.data())
def test_any_flipped_bit_breaks_an_inclusion_proof(
    case: tuple[int, int], data: st.DataObject
) -> None:
    size, index = case
    proof = TREE.inclusion(index, size)
    root, leaf = ROOTS[size], TREE.leaf_hash(index)
    target = data.draw(st.integers(-2, len(proof) - 1), label="target")
    bit = data.draw(st.integers(0, 8 * merkle.HASH_SIZE - 1), label="bit")
    if target == -2:
        root = flip(root, bit)
    elif target == -1:
        leaf = flip(leaf, bit)
    else:
        proof[target] = flip(proof[target], bit)
    with pytest.raises(ProofError):
        verify_inclusion(proof, size, root, index, leaf)


@PROPERTY
@given(size_and_index(), st.integers(0, MAX_SIZE - 1))
def test_an_inclusion_proof_proves_only_its_index(case: tuple[int, int], other: int) -> None:
    size, index = case
    proof = TREE.inclusion(index, size)
    if other != index:
        with pytest.raises(ProofError):
            verify_inclusion(proof, size, ROOTS[size], other, TREE.leaf_hash(index))
    # Doubling or halving the size changes the tree's depth (transparency-dev's
    # probes). Other sizes may share the proof's shape: the signed checkpoint,
    # not the proof, binds a root to its size.
    for wrong_size in (2 * size, size // 2):
        with pytest.raises(ProofError):
            verify_inclusion(proof, wrong_size, ROOTS[size], index, TREE.leaf_hash(index))


@PROPERTY
@given(old_and_new())
def test_every_consistency_proof_verifies(case: tuple[int, int]) -> None:
    old, new = case
    proof = TREE.consistency(old, new)
    verify_consistency(proof, old, ROOTS[old], new, ROOTS[new])
    assert len(proof) <= 2 * new.bit_length()


@PROPERTY
@given(old_and_new(), st.data())
def test_any_flipped_bit_breaks_a_consistency_proof(
    case: tuple[int, int], data: st.DataObject
) -> None:
    old, new = case
    proof = TREE.consistency(old, new)
    old_root, new_root = ROOTS[old], ROOTS[new]
    target = data.draw(st.integers(-2, len(proof) - 1), label="target")
    bit = data.draw(st.integers(0, 8 * merkle.HASH_SIZE - 1), label="bit")
    if target == -2:
        old_root = flip(old_root, bit)
    elif target == -1:
        new_root = flip(new_root, bit)
    else:
        proof[target] = flip(proof[target], bit)
    with pytest.raises(ProofError):
        verify_consistency(proof, old, old_root, new, new_root)


@PROPERTY
@given(old_and_new(), st.integers(1, MAX_SIZE))
def test_a_consistency_proof_proves_only_its_sizes(case: tuple[int, int], other: int) -> None:
    old, new = case
    proof = TREE.consistency(old, new)
    if other not in (old, new) and other < new:
        with pytest.raises(ProofError):
            verify_consistency(proof, other, ROOTS[old], new, ROOTS[new])


@PROPERTY
@given(st.lists(st.integers(1, 40), min_size=1, max_size=12))
def test_batch_appends_store_what_single_appends_store(chunks: list[int]) -> None:
    store = CountingStore()
    size = 0
    for count in chunks:
        leaves = [TREE.leaf_hash(i) for i in range(size, min(size + count, MAX_SIZE))]
        store.reset()
        new = hashes_to_store(size, leaves, store.read)
        # One read, of at most the right edge of the tree so far.
        assert store.calls <= 1
        assert store.indexes_read <= size.bit_count()
        assert [i for i, _ in new] == list(
            range(stored_hash_count(size), stored_hash_count(size + len(leaves)))
        )
        store.hashes.update(new)
        size += len(leaves)
    assert [store.hashes[i] for i in range(len(store.hashes))] == list(
        TREE.stored_hashes[: stored_hash_count(size)]
    )
    index = size // 3
    assert inclusion_proof(index, size, store.read) == TREE.inclusion(index, size)
    assert consistency_proof(index + 1, size, store.read) == TREE.consistency(index + 1, size)
    assert tree_hash(size, store.read) == ROOTS[size]


def test_hashes_to_store_reads_only_the_right_edge() -> None:
    assert hashes_to_store_indexes(0, 10) == []
    # Record 7 completes subtrees with (0, 6), (1, 2) and (2, 0): all already stored.
    assert hashes_to_store_indexes(7, 1) == [
        stored_hash_index(2, 0),
        stored_hash_index(1, 2),
        stored_hash_index(0, 6),
    ]
    # Records 7..8 need the same; record 8 completes nothing.
    assert hashes_to_store_indexes(7, 2) == hashes_to_store_indexes(7, 1)
    # Records 5..7: only (0, 4) and (2, 0) predate the batch.
    assert hashes_to_store_indexes(5, 3) == [stored_hash_index(2, 0), stored_hash_index(0, 4)]
    assert hashes_to_store_indexes(8, 0) == []


# ---------------------------------------------------------------------------
# Read costs: one call of O(log n) indexes per root or proof


@PROPERTY
@given(size_and_index(), old_and_new())
def test_one_read_of_logarithmically_many_hashes(
    inc: tuple[int, int], con: tuple[int, int]
) -> None:
    store = CountingStore()
    store.hashes = dict(enumerate(TREE.stored_hashes))
    size, index = inc
    old, new = con
    cases: list[tuple[Callable[[], object], list[int], int]] = [
        (lambda: tree_hash(size, store.read), tree_hash_indexes(size), size.bit_length()),
        (
            lambda: inclusion_proof(index, size, store.read),
            inclusion_proof_indexes(index, size),
            2 * size.bit_length(),
        ),
        (
            lambda: consistency_proof(old, new, store.read),
            consistency_proof_indexes(old, new),
            2 * new.bit_length(),
        ),
    ]
    for compute, indexes, bound in cases:
        store.reset()
        compute()
        assert store.calls <= 1
        assert store.indexes_read == len(indexes) <= bound


@PROPERTY
@given(st.integers(1, 2**48), st.data())
def test_index_counts_stay_logarithmic_in_huge_trees(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(1, size))
    assert len(tree_hash_indexes(size)) <= size.bit_length()
    assert len(inclusion_proof_indexes(index, size)) <= 2 * size.bit_length()
    assert len(consistency_proof_indexes(old, size)) <= 2 * size.bit_length()
    assert len(hashes_to_store_indexes(size, 256)) <= size.bit_length()


def test_appending_one_record_reads_its_completed_siblings_once() -> None:
    store = CountingStore()
    store.hashes = dict(enumerate(TREE.stored_hashes[: stored_hash_count(255)]))
    new = stored_hashes_for_record(255, TREE.leaf_hash(255), store.read)
    assert store.calls == 1
    assert store.indexes_read == 8  # record 255 completes subtrees of 2, 4, ... 256 leaves
    assert new == list(TREE.stored_hashes[stored_hash_count(255) : stored_hash_count(256)])
    assert new[-1] == ROOTS[256]
