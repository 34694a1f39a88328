"""Proofs against RFC 6962's recursive definitions, written out literally.

gateway.trail.merkle builds proofs from the bits of the sizes; here MTH, PATH
and PROOF are RFC 6962 §2.1, §2.1.1 and §2.1.2 as the RFC states them, over
every size up to 70 and every index or older size in it.
"""

from __future__ import annotations

import hashlib

import pytest

from gateway.trail.merkle import (
    MemoryTree,
    hashes_to_store,
    stored_hash_count,
    tree_hash,
)

MAX = 70
LEAVES = [b"leaf %d" % i for i in range(MAX)]
TREE = MemoryTree(LEAVES)


def mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two smaller than n
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


@pytest.mark.parametrize("size", range(MAX + 1))
def test_root_is_mth(size: int) -> None:
    assert TREE.root(size) == mth(LEAVES[:size])


@pytest.mark.parametrize("size", range(1, MAX + 1))
def test_inclusion_proof_is_path(size: int) -> None:
    for index in range(size):
        assert TREE.inclusion(index, size) == path(index, LEAVES[:size])


@pytest.mark.parametrize("new", range(1, MAX + 1))
def test_consistency_proof_is_proof(new: int) -> None:
    for old in range(1, new):
        assert TREE.consistency(old, new) == subproof(old, LEAVES[:new], True)


@pytest.mark.parametrize("start", range(0, MAX, 7))
def test_batches_store_the_subtree_roots(start: int) -> None:
    # Every stored hash of the table is the MTH of its complete subtree, batch or not.
    table = dict(enumerate(TREE.stored_hashes[: stored_hash_count(start)]))
    leaves = [hashlib.sha256(b"\x00" + e).digest() for e in LEAVES[start:]]
    table.update(hashes_to_store(start, leaves, lambda idx: [table[i] for i in idx]))
    assert [table[i] for i in range(len(table))] == list(TREE.stored_hashes)
    assert tree_hash(MAX, lambda idx: [table[i] for i in idx]) == mth(LEAVES)
