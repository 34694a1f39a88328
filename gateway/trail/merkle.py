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
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

ReadHashes = Callable[[Sequence[int]], Sequence[bytes]]
"""Fetch stored hashes by stored-hash index, in the order asked."""

SubtreeId = tuple[int, int]  # (level, n): leaves [n * 2**level, (n + 1) * 2**level)


class ProofError(ValueError):
    """A proof, root or leaf hash does not verify; ``reason`` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------
# Hashing (RFC 6962 §2.1)


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


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
    # The subtree is completed, and its hash stored, by its last leaf; that
    # leaf's own hash sits after all hashes of the records before it, and the
    # subtree's hash comes ``level`` places later.
    last = ((n + 1) << level) - 1
    return stored_hash_count(last) + level


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
        _check_hash(h, "stored hash")
    return hashes


def _siblings_completed_by(n: int) -> list[SubtreeId]:
    """Left siblings that record n joins, lowest level first (one per trailing 1 bit of n)."""
    return [(level, (n >> level) - 1) for level in range(_trailing_ones(n))]


def stored_hashes_for_record(n: int, leaf: bytes, read: ReadHashes) -> list[bytes]:
    """Hashes to store, from ``stored_hash_index(0, n)`` on, when record ``n`` is appended.

    ``leaf`` is the record's leaf hash (:func:`leaf_hash` of the entry), as
    in Go's ``StoredHashesForRecordHash``. Reads at most log2(n) earlier hashes.
    """
    if n < 0:
        raise ValueError("negative record number")
    _check_hash(leaf, "leaf hash")
    siblings = _siblings_completed_by(n)
    old = _read(read, [stored_hash_index(level, k) for level, k in siblings])
    hashes = [leaf]
    h = leaf
    for sibling in old:
        h = node_hash(sibling, h)
        hashes.append(h)
    return hashes


def hashes_to_store_indexes(start_n: int, count: int) -> list[int]:
    """Stored hashes that :func:`hashes_to_store` reads to append ``count`` records."""
    if start_n < 0 or count < 0:
        raise ValueError("negative record number or count")
    needed: set[SubtreeId] = set()
    for n in range(start_n, start_n + count):
        for level, k in _siblings_completed_by(n):
            # Siblings that end before start_n already exist; the others are
            # computed within the batch.
            if ((k + 1) << level) <= start_n:
                needed.add((level, k))
    return sorted(stored_hash_index(level, k) for level, k in needed)


def hashes_to_store(
    start_n: int, leaves: Sequence[bytes], read: ReadHashes
) -> list[tuple[int, bytes]]:
    """All ``(stored index, hash)`` pairs to store when appending ``leaves`` at ``start_n``.

    ``leaves`` are leaf hashes. One read of at most popcount(start_n) existing
    hashes (the right edge of the current tree); the pairs come out in index
    order, contiguous from ``stored_hash_index(0, start_n)``.
    """
    for h in leaves:
        _check_hash(h, "leaf hash")
    indexes = hashes_to_store_indexes(start_n, len(leaves))
    known: dict[int, bytes] = dict(zip(indexes, _read(read, indexes), strict=True))
    out: list[tuple[int, bytes]] = []
    for offset, leaf in enumerate(leaves):
        n = start_n + offset
        h = leaf
        index = stored_hash_index(0, n)
        out.append((index, h))
        known[index] = h
        for level, k in _siblings_completed_by(n):
            h = node_hash(known[stored_hash_index(level, k)], h)
            index += 1
            out.append((index, h))
            known[index] = h
    return out


# ---------------------------------------------------------------------------
# Tree hashes and proofs (RFC 6962 §2.1, §2.1.1, §2.1.2)


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 6962 §2.1: largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtrees(lo: int, hi: int) -> list[SubtreeId]:
    """Complete subtrees covering leaves [lo, hi), largest first.

    Every range met while following RFC 6962's recursive split starts at a
    multiple of a power of two at least as large as the range, so greedy
    aligned blocks are exactly the left-heavy shape of MTH(D[lo:hi]).
    """
    out: list[SubtreeId] = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        if lo:
            level = min(level, (lo & -lo).bit_length() - 1)
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def _fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of a range from its complete subtrees, largest (leftmost) first."""
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = node_hash(left, h)
    return h


Plan = list[list[SubtreeId]]  # one entry per output hash: the subtrees to fold into it


def _inclusion_plan(index: int, lo: int, hi: int) -> Plan:
    """PATH(index, D[lo:hi]) of RFC 6962 §2.1.1, as subtrees, leaf end first."""
    plan: Plan = []
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if index < lo + k:
            plan.append(_subtrees(lo + k, hi))
            hi = lo + k
        else:
            plan.append(_subtrees(lo, lo + k))
            lo = lo + k
    plan.reverse()
    return plan


def _consistency_plan(m: int, lo: int, hi: int) -> Plan:
    """SUBPROOF(m, D[lo:hi], true) of RFC 6962 §2.1.2, as subtrees, bottom first."""
    plan: Plan = []
    whole = True  # the b flag: is D[lo:hi] still a prefix of the old tree's left edge?
    while m != hi:
        k = _largest_power_of_two_below(hi - lo)
        if m <= lo + k:
            plan.append(_subtrees(lo + k, hi))
            hi = lo + k
        else:
            plan.append(_subtrees(lo, lo + k))
            lo = lo + k
            whole = False
    if not whole:
        plan.append(_subtrees(lo, hi))
    plan.reverse()
    return plan


def _plan_indexes(plan: Plan) -> list[int]:
    return [stored_hash_index(level, n) for part in plan for level, n in part]


def _run_plan(plan: Plan, read: ReadHashes) -> list[bytes]:
    hashes = _read(read, _plan_indexes(plan))
    out: list[bytes] = []
    at = 0
    for part in plan:
        out.append(_fold(hashes[at : at + len(part)]))
        at += len(part)
    return out


def tree_hash_indexes(size: int) -> list[int]:
    """Stored hashes that :func:`tree_hash` reads."""
    if size < 0:
        raise ValueError("negative tree size")
    return [stored_hash_index(level, n) for level, n in _subtrees(0, size)]


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
    return _plan_indexes(_inclusion_plan(index, 0, size))


def inclusion_proof(index: int, size: int, read: ReadHashes) -> list[bytes]:
    """Audit path of record ``index`` in the tree of ``size`` records (as Go's ProveRecord)."""
    _check_inclusion_args(index, size)
    return _run_plan(_inclusion_plan(index, 0, size), read)


def _check_consistency_args(old: int, new: int) -> None:
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")


def consistency_proof_indexes(old: int, new: int) -> list[int]:
    """Stored hashes that :func:`consistency_proof` reads."""
    _check_consistency_args(old, new)
    if old in (0, new):
        return []
    return _plan_indexes(_consistency_plan(old, 0, new))


def consistency_proof(old: int, new: int, read: ReadHashes) -> list[bytes]:
    """Proof that the tree of ``new`` records extends the one of ``old`` (as Go's ProveTree).

    Empty when ``old`` is 0 or equals ``new`` (nothing to prove; Go refuses old = 0).
    """
    _check_consistency_args(old, new)
    if old in (0, new):
        return []
    return _run_plan(_consistency_plan(old, 0, new), read)


# ---------------------------------------------------------------------------
# Verification (RFC 9162 §2.1.3.2 and §2.1.4.2)


def _check_lengths(**hashes: bytes | Iterable[bytes]) -> None:
    for what, value in hashes.items():
        items = [value] if isinstance(value, bytes) else list(value)
        for h in items:
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash")


def verify_inclusion(
    proof: Sequence[bytes], size: int, root: bytes, index: int, leaf_hash: bytes
) -> None:
    """Check that ``leaf_hash`` is record ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 §2.1.3.2. Same argument order as Go's ``tlog.CheckRecord``.
    """
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
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
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
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
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
