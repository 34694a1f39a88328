"""RFC 6962 / RFC 9162 Merkle tree arithmetic: hashes, proofs, verification. No I/O.

Hashing (RFC 6962 §2.1): leaf ``SHA-256(0x00 || entry)``, node
``SHA-256(0x01 || left || right)``, the empty tree ``SHA-256("")``.

Storage layout: the hash of every *complete* subtree is stored once, addressed
by ``(level, n)`` — the n-th subtree of 2**level leaves — and numbered densely
in the order the subtrees are completed, exactly as Go's
``golang.org/x/mod/sumdb/tlog`` numbers them (``StoredHashIndex``), so a table
of stored hashes keyed by that index is interchangeable with Go's. Appending
record n stores its leaf hash and then the hash of each subtree that record
completes; ``2n - popcount(n)`` hashes are stored for n records.

Any tree hash or proof is made of O(log n) complete subtrees, so every function
here asks its ``read`` callback for the stored hashes it needs in **one call**
with at most about 2·log2(n) indexes; the ``*_indexes`` companions name those
indexes in advance for callers that fetch asynchronously (read them, then pass
a dict lookup as ``read``).

Proofs are in RFC 6962 order, from the leaf (or old tree) upwards, as Go's
``tlog.ProveRecord`` / ``tlog.ProveTree`` produce and ``tlog.CheckRecord`` /
``tlog.CheckTree`` check them. The verifiers are the RFC 9162 §2.1.3.2 and
§2.1.4.2 algorithms and raise :class:`ProofError` with a reason.

Shapes, read off the bits of the sizes instead of following RFC 6962's
recursion (these functions run for every appended batch and every proof):

- The tree of ``size`` records is the fold of its *right edge*: one complete
  subtree per 1 bit of ``size``, largest (leftmost) first.
- ``PATH(i, D[size])`` (§2.1.1): let ``d`` be the highest bit where ``i`` and
  ``size`` differ, so that ``i`` lies in the edge subtree of level ``d``. The
  path is the siblings of ``i`` inside that perfect subtree (levels 0 to
  d - 1), then the fold of the edge subtrees right of it (the edge bits below
  ``d``) if there are any, then the edge subtrees left of it, nearest first.
- ``PROOF(m, D[n])`` (§2.1.2): RFC 6962's recursion stops at the largest
  complete subtree that ends at ``m`` (level ``tz``, the trailing zeros of
  ``m``), written first unless it is the whole old tree (``m`` a power of
  two). The rest is the path of leaf ``m - 1`` from level ``tz`` up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

ReadHashes = Callable[[Sequence[int]], Sequence[bytes]]
"""Fetch stored hashes by stored-hash index, in the order asked."""

SubtreeId = tuple[int, int]  # (level, n): leaves [n * 2**level, (n + 1) * 2**level)

_sha256 = hashlib.sha256
_NODE = b"\x01"


class ProofError(ValueError):
    """A proof, root or leaf hash does not verify; ``reason`` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------
# Hashing (RFC 6962 §2.1)
#
# The hot loops below inline node_hash as ``_sha256(_NODE + left + right)``:
# a Python call costs about as much as the hash of 65 bytes.


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE + left + right).digest()


# ---------------------------------------------------------------------------
# Stored-hash numbering (Go tlog's StoredHashIndex / SplitStoredHashIndex)


def _trailing_ones(n: int) -> int:
    return (n ^ (n + 1)).bit_length() - 1


def stored_hash_count(size: int) -> int:
    """Number of stored hashes for a tree of ``size`` records (Go's StoredHashCount)."""
    if size < 0:
        raise ValueError("negative tree size")
    return 2 * size - size.bit_count()


def stored_hash_index(level: int, n: int) -> int:
    """Dense index of the hash of subtree ``(level, n)``, as Go's ``tlog.StoredHashIndex``."""
    if level < 0 or n < 0:
        raise ValueError("negative level or subtree number")
    return _index(level, n)


def _index(level: int, n: int) -> int:
    """:func:`stored_hash_index` without the checks."""
    # The subtree is completed, and its hash stored, by its last leaf; that
    # leaf's own hash sits after all hashes of the records before it, and the
    # subtree's hash comes ``level`` places later.
    last = ((n + 1) << level) - 1
    return 2 * last - last.bit_count() + level


def _edge_index(size: int, level: int) -> int:
    """Stored index of the right-edge subtree of ``level`` in a tree of ``size`` (bit set)."""
    last = ((size >> level) << level) - 1
    return 2 * last - last.bit_count() + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """Inverse of :func:`stored_hash_index`: ``(level, n)``."""
    if index < 0:
        raise ValueError("negative stored hash index")
    # stored_hash_count(m) <= 2m, so the record that stored this hash is at
    # least index // 2, and at most log2(index) records further.
    m = index // 2
    while stored_hash_count(m + 1) <= index:
        m += 1
    level = index - stored_hash_count(m)
    return level, m >> level


# ---------------------------------------------------------------------------
# Appending


def _check_hash(h: bytes, what: str) -> None:
    if len(h) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(h)}")


def _read(read: ReadHashes, indexes: Sequence[int]) -> list[bytes]:
    """Call ``read`` once (or not at all) and check what it returned."""
    if not indexes:
        return []
    hashes = list(read(indexes))
    if len(hashes) != len(indexes):
        raise ValueError(f"read returned {len(hashes)} hashes for {len(indexes)} indexes")
    for h in hashes:
        if len(h) != HASH_SIZE:
            _check_hash(h, "stored hash")
    return hashes


def stored_hashes_for_record(n: int, leaf: bytes, read: ReadHashes) -> list[bytes]:
    """Hashes to store, from ``stored_hash_index(0, n)`` on, when record ``n`` is appended.

    ``leaf`` is the record's leaf hash (:func:`leaf_hash` of the entry), as
    in Go's ``StoredHashesForRecordHash``. Reads at most log2(n) earlier hashes.
    """
    if n < 0:
        raise ValueError("negative record number")
    _check_hash(leaf, "leaf hash")
    # Record n joins one left sibling per trailing 1 bit of n, lowest level first.
    siblings = [_edge_index(n, level) for level in range(_trailing_ones(n))]
    hashes = [leaf]
    h = leaf
    for sibling in _read(read, siblings):
        h = _sha256(_NODE + sibling + h).digest()
        hashes.append(h)
    return hashes


def _levels_joined(start_n: int, count: int) -> list[int]:
    """Levels of the right-edge subtrees of tree ``start_n`` that ``count`` appends join.

    The edge subtree of level L (bit L of start_n) gets its right sibling once
    the size reaches the next multiple of 2**(L+1): when start_n and the new
    size differ above bit L. Highest level first, which is stored-index order.
    """
    top = (start_n ^ (start_n + count)).bit_length() - 1
    return [level for level in range(top - 1, -1, -1) if start_n >> level & 1]


def hashes_to_store_indexes(start_n: int, count: int) -> list[int]:
    """Stored hashes that :func:`hashes_to_store` reads to append ``count`` records."""
    if start_n < 0 or count < 0:
        raise ValueError("negative record number or count")
    return [_edge_index(start_n, level) for level in _levels_joined(start_n, count)]


def hashes_to_store(
    start_n: int, leaves: Sequence[bytes], read: ReadHashes
) -> list[tuple[int, bytes]]:
    """All ``(stored index, hash)`` pairs to store when appending ``leaves`` at ``start_n``.

    ``leaves`` are leaf hashes. One read of at most popcount(start_n) existing
    hashes (the right edge of the current tree); the pairs come out in index
    order, contiguous from ``stored_hash_index(0, start_n)``.
    """
    for h in leaves:
        if len(h) != HASH_SIZE:
            _check_hash(h, "leaf hash")
    if start_n < 0:
        raise ValueError("negative record number or count")
    count = len(leaves)
    levels = _levels_joined(start_n, count)
    old = _read(read, [_edge_index(start_n, level) for level in levels])
    # edge[L]: hash of the right-edge subtree of level L of the tree so far
    # (meaningful where that bit of the size is set; only those read are used).
    edge = [b""] * ((start_n + count).bit_length() + 1)
    for level, h in zip(levels, old, strict=True):
        edge[level] = h
    out: list[tuple[int, bytes]] = []
    append = out.append
    index = 2 * start_n - start_n.bit_count()  # stored_hash_index(0, start_n)
    n = start_n
    for leaf in leaves:
        append((index, leaf))
        index += 1
        h = leaf
        level = 0
        m = n
        while m & 1:  # record n completes one subtree per trailing 1 bit
            h = _sha256(_NODE + edge[level] + h).digest()
            append((index, h))
            index += 1
            level += 1
            m >>= 1
        edge[level] = h
        n += 1
    return out


# ---------------------------------------------------------------------------
# Tree hashes and proofs (RFC 6962 §2.1, §2.1.1, §2.1.2)


def _fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of a range from its complete subtrees, largest (leftmost) first."""
    h = hashes[-1]
    for i in range(len(hashes) - 2, -1, -1):
        h = _sha256(_NODE + hashes[i] + h).digest()
    return h


def _path(leaf: int, size: int, low: int, out: list[int]) -> tuple[int, int]:
    """Append to ``out`` the stored indexes of PATH(leaf, D[size]) from level ``low`` up.

    Returns ``(alone, folded)``: of the hashes at ``out``'s indexes, the first
    ``alone`` are proof hashes as they are, the next ``folded`` (largest first)
    fold into one proof hash, and the rest are proof hashes as they are (see
    the module docstring).
    """
    d = (leaf ^ size).bit_length() - 1
    alone = len(out) + d - low
    append = out.append
    for level in range(low, d):  # siblings inside the perfect subtree holding the leaf
        last = ((((leaf >> level) ^ 1) + 1) << level) - 1
        append(2 * last - last.bit_count() + level)
    right = size & ((1 << d) - 1)  # edge subtrees on its right, largest first
    folded = right.bit_count()
    while right:
        level = right.bit_length() - 1
        right ^= 1 << level
        append(_edge_index(size, level))
    left = size >> (d + 1) << (d + 1)  # edge subtrees on its left, nearest first
    while left:
        bit = left & -left
        left ^= bit
        append(_edge_index(size, bit.bit_length() - 1))
    return alone, folded


def _proof(hashes: list[bytes], alone: int, folded: int) -> list[bytes]:
    if folded < 2:
        return hashes
    return [*hashes[:alone], _fold(hashes[alone : alone + folded]), *hashes[alone + folded :]]


def tree_hash_indexes(size: int) -> list[int]:
    """Stored hashes that :func:`tree_hash` reads."""
    if size < 0:
        raise ValueError("negative tree size")
    return [
        _edge_index(size, level)
        for level in range(size.bit_length() - 1, -1, -1)
        if size >> level & 1
    ]


def tree_hash(size: int, read: ReadHashes) -> bytes:
    """Root hash of the first ``size`` records; ``EMPTY_ROOT`` for 0 (RFC 6962, unlike Go)."""
    if size == 0:
        return EMPTY_ROOT
    return _fold(_read(read, tree_hash_indexes(size)))


def _check_inclusion_args(index: int, size: int) -> None:
    if not 0 <= index < size:
        raise ValueError(f"index {index} not in a tree of size {size}")


def inclusion_proof_indexes(index: int, size: int) -> list[int]:
    """Stored hashes that :func:`inclusion_proof` reads."""
    _check_inclusion_args(index, size)
    out: list[int] = []
    _path(index, size, 0, out)
    return out


def inclusion_proof(index: int, size: int, read: ReadHashes) -> list[bytes]:
    """Audit path of record ``index`` in the tree of ``size`` records (as Go's ProveRecord)."""
    _check_inclusion_args(index, size)
    indexes: list[int] = []
    alone, folded = _path(index, size, 0, indexes)
    return _proof(_read(read, indexes), alone, folded)


def _check_consistency_args(old: int, new: int) -> None:
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")


def _consistency(old: int, new: int, out: list[int]) -> tuple[int, int]:
    """:func:`_path` for PROOF(old, D[new]), 0 < old < new."""
    low = (old & -old).bit_length() - 1  # the subtree [old - 2**low, old) ends the old tree
    if old & (old - 1):  # not the whole old tree: RFC 6962's SUBPROOF with b false
        last = old - 1
        out.append(2 * last - last.bit_count() + low)
    return _path(old - 1, new, low, out)


def consistency_proof_indexes(old: int, new: int) -> list[int]:
    """Stored hashes that :func:`consistency_proof` reads."""
    _check_consistency_args(old, new)
    out: list[int] = []
    if old in (0, new):
        return out
    _consistency(old, new, out)
    return out


def consistency_proof(old: int, new: int, read: ReadHashes) -> list[bytes]:
    """Proof that the tree of ``new`` records extends the one of ``old`` (as Go's ProveTree).

    Empty when ``old`` is 0 or equals ``new`` (nothing to prove; Go refuses old = 0).
    """
    _check_consistency_args(old, new)
    if old in (0, new):
        return []
    indexes: list[int] = []
    alone, folded = _consistency(old, new, indexes)
    return _proof(_read(read, indexes), alone, folded)


# ---------------------------------------------------------------------------
# Verification (RFC 9162 §2.1.3.2 and §2.1.4.2)


def _check_lengths(**hashes: bytes | Iterable[bytes]) -> None:
    for what, value in hashes.items():
        items = [value] if isinstance(value, bytes) else list(value)
        for h in items:
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash")


def _plain_hashes(proof: Sequence[bytes], *hashes: bytes) -> bool:
    """Whether all are exact 32-byte ``bytes``, so that :func:`_check_lengths` would pass."""
    if isinstance(proof, bytes):  # one hash, not a list of them: _check_lengths decides
        return False
    for h in (*hashes, *proof):  # noqa: SIM110 (a loop: all() of a generator costs more)
        if type(h) is not bytes or len(h) != HASH_SIZE:
            return False
    return True


def verify_inclusion(
    proof: Sequence[bytes], size: int, root: bytes, index: int, leaf_hash: bytes
) -> None:
    """Check that ``leaf_hash`` is record ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 §2.1.3.2. Same argument order as Go's ``tlog.CheckRecord``.
    """
    if not _plain_hashes(proof, root, leaf_hash):
        _check_lengths(proof=proof, root=root, leaf_hash=leaf_hash)
    # (1) leaf_index < tree_size.
    if not 0 <= index < size:
        raise ProofError(f"index {index} not in a tree of size {size}")
    # (2) fn = leaf_index, sn = tree_size - 1; (3) r = leaf hash.
    fn, sn = index, size - 1
    r = leaf_hash
    # (4) fold in each proof hash.
    for p in proof:
        # (4a) a hash beyond the root.
        if sn == 0:
            raise ProofError("inclusion proof too long")
        # (4b)
        if fn & 1 or fn == sn:
            r = _sha256(_NODE + p + r).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(_NODE + r + p).digest()
        # (4c)
        fn >>= 1
        sn >>= 1
    # (5) sn is 0 and r is the root.
    if sn != 0:
        raise ProofError("inclusion proof too short")
    if r != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    proof: Sequence[bytes], old_size: int, old_root: bytes, new_size: int, new_root: bytes
) -> None:
    """Check that the tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``).

    RFC 9162 §2.1.4.2 for 0 < old_size < new_size; equal sizes need equal roots
    and an empty proof; old_size 0 needs the empty root and an empty proof.
    """
    if not _plain_hashes(proof, old_root, new_root):
        _check_lengths(proof=proof, old_root=old_root, new_root=new_root)
    if not 0 <= old_size <= new_size:
        raise ProofError(f"size {old_size} cannot precede size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("different roots for the same tree size")
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise ProofError("old root is not the empty tree's root")
        return
    # (1) a proof between different non-empty sizes is never empty.
    if not proof:
        raise ProofError("empty consistency proof")
    # (2) when the old tree is a complete subtree, its root is the first node.
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # (3) fn = first - 1, sn = second - 1; (4) skip the levels where fn is a right child.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # (5)
    fr = sr = path[0]
    # (6)
    for c in path[1:]:
        # (6a)
        if sn == 0:
            raise ProofError("consistency proof too long")
        # (6b)
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE + c + fr).digest()
            sr = _sha256(_NODE + c + sr).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(_NODE + sr + c).digest()
        # (6c)
        fn >>= 1
        sn >>= 1
    # (7)
    if sn != 0:
        raise ProofError("consistency proof too short")
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("consistency proof does not lead to the new root")


# ---------------------------------------------------------------------------
# In memory


class MemoryTree:
    """A log kept in memory with the same stored-hash layout as the database.

    For tests and for the offline verifier, which rebuilds the tree from an export.
    """

    def __init__(self, entries: Iterable[bytes] = ()) -> None:
        self._entries: list[bytes] = []
        self._hashes: list[bytes] = []
        self.extend(entries)

    @property
    def size(self) -> int:
        return len(self._entries)

    @property
    def stored_hashes(self) -> tuple[bytes, ...]:
        """The stored-hash table, indexed by :func:`stored_hash_index`."""
        return tuple(self._hashes)

    def read(self, indexes: Sequence[int]) -> list[bytes]:
        """A :data:`ReadHashes` over this tree."""
        return [self._hashes[i] for i in indexes]

    def append(self, entry: bytes) -> int:
        """Append one entry; returns its index."""
        n = self.size
        self._hashes.extend(stored_hashes_for_record(n, leaf_hash(entry), self.read))
        self._entries.append(entry)
        return n

    def extend(self, entries: Iterable[bytes]) -> range:
        """Append several entries with one batch computation; returns their indexes."""
        batch = list(entries)
        start = self.size
        for index, h in hashes_to_store(start, [leaf_hash(e) for e in batch], self.read):
            assert index == len(self._hashes)
            self._hashes.append(h)
        self._entries.extend(batch)
        return range(start, self.size)

    def entry(self, index: int) -> bytes:
        return self._entries[index]

    def leaf_hash(self, index: int) -> bytes:
        return self._hashes[stored_hash_index(0, index)]

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} not in 0..{self.size}")

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check_size(size)
        return tree_hash(size, self.read)

    def inclusion(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        self._check_size(size)
        return inclusion_proof(index, size, self.read)

    def consistency(self, old: int, new: int | None = None) -> list[bytes]:
        new = self.size if new is None else new
        self._check_size(new)
        return consistency_proof(old, new, self.read)
