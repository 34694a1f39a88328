"""Trail CPU per entry and per proof, pure Python, no database: before and after.

    python bench/trail_cpu.py [--baseline REV] [--rounds N] [--json out.json]

The "before" column runs ``gateway/trail/{entry,merkle,store}.py`` as they are
at ``--baseline`` (default ``HEAD``; read with ``git show``, loaded as
separate modules), the "after" column the working tree, alternately in the
same process, so that both see the same machine load. Each figure is CPU
time of this thread (``time.thread_time``: this machine is shared, and time
spent descheduled is not the code's), the least of ``--rounds`` timed runs of
about 10 ms, in µs per call; ``ratio`` is before / after.

Measured: ``encode_entry`` of the ``transfer.authorized`` and
``transfer.completed`` objects that gateway/transfer.py records, and its two
halves (the eligibility check, the json encoding) against ``rfc8785.dumps``;
``Trail.event_object``; the three together with the leaf hash (the writer's
CPU per entry before SQL); ``hashes_to_store`` (with its ``*_indexes``) for a
batch of 64 leaves, per leaf, at 10⁴, 10⁵ and 10⁶ entries; an inclusion
proof (indexes, then the build from a dict of stored hashes), a consistency
proof, and their verification at the same sizes.

The stored hashes are those of a tree whose leaves are all equal, so that the
hash of subtree (level, n) depends on the level only: a consistent table of
any size in O(log n) work, whose proofs verify against its real roots.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import rfc8785

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.trail import entry as new_entry  # noqa: E402
from gateway.trail import merkle as new_merkle  # noqa: E402
from gateway.trail import store as new_store  # noqa: E402
from gateway.trail.entry import EventType  # noqa: E402
from gateway.trail.store import TrailEvent  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)
BATCH = 64
PROOF_INDEXES = 16  # proofs of this many random indexes per size, cycled
DIGEST = "sha256:" + "ab" * 32


def git(*args: str) -> str:
    return subprocess.run(  # noqa: S603
        ["git", *args],  # noqa: S607
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def load_baseline(rev: str, tmp: Path) -> dict[str, ModuleType]:
    """The three modules as they are at ``rev``, under private names."""
    out: dict[str, ModuleType] = {}
    for name in ("merkle", "entry", "store"):
        path = tmp / f"baseline_{name}.py"
        path.write_text(git("show", f"{rev}:gateway/trail/{name}.py"), encoding="utf-8")
        spec = importlib.util.spec_from_file_location(f"_baseline_trail_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        out[name] = module
    return out


def transfer_events() -> dict[str, TrailEvent]:
    """Events shaped as gateway/transfer.py records them."""
    ids = {
        "client_id": "mairie-demoville",
        "consent_id": str(uuid.uuid4()),
        "transfer_id": str(uuid.uuid4()),
        "provider": "dgfip",
        "resource": "revenu_fiscal",
        "subject": "Zr3k9vQ2c5nL0a8mT1xY4bW7dH6fJ2sP9uE3gK5hR0c",
    }
    body = hashlib.sha256(b"provider body").hexdigest()
    return {
        "transfer.authorized": TrailEvent(
            EventType.TRANSFER_AUTHORIZED,
            **ids,
            details={"purpose": "family-benefit-eligibility", "request_id": str(uuid.uuid4())},
        ),
        "transfer.completed": TrailEvent(
            EventType.TRANSFER_COMPLETED,
            **ids,
            details={
                "provider_status": 200,
                "provider_size": 512,
                "provider_sha256": body,
                "delivered_size": 301,
                "delivered_sha256": hashlib.sha256(b"minimised").hexdigest(),
            },
        ),
    }


class EqualLeaves:
    """Stored hashes of a tree whose leaves all have the hash ``LEAF``."""

    LEAF = hashlib.sha256(b"\x00same entry").digest()

    def __init__(self) -> None:
        self.by_level = [self.LEAF]
        for _ in range(64):
            h = self.by_level[-1]
            self.by_level.append(hashlib.sha256(b"\x01" + h + h).digest())

    def table(self, indexes: list[int]) -> dict[int, bytes]:
        split = new_merkle.split_stored_hash_index
        return {i: self.by_level[split(i)[0]] for i in indexes}

    def root(self, size: int) -> bytes:
        indexes = new_merkle.tree_hash_indexes(size)
        table = self.table(indexes)
        return new_merkle.tree_hash(size, lambda idx: [table[i] for i in idx])


Case = tuple[str, Callable[[], object], Callable[[], object], int]  # name, before, after, per


def cases(old: dict[str, ModuleType], rng: random.Random) -> list[Case]:
    out: list[Case] = []
    now = datetime.now(UTC)
    events = transfer_events()
    old_trail = old["store"].Trail(DIGEST)
    new_trail = new_store.Trail(DIGEST)
    om, nm = old["merkle"], new_merkle

    for name, event in events.items():
        obj = new_trail.event_object(event, now=now)
        assert old["entry"].encode_entry(obj) == new_entry.encode_entry(obj)
        out.append(
            (
                f"encode_entry {name}",
                lambda obj=obj: old["entry"].encode_entry(obj),
                lambda obj=obj: new_entry.encode_entry(obj),
                1,
            )
        )
    # The two halves of the fast path, each against the whole of rfc8785.dumps.
    obj = new_trail.event_object(events["transfer.completed"], now=now)
    out.append(
        (
            "  its eligibility check alone (vs rfc8785.dumps)",
            lambda: rfc8785.dumps(obj),
            lambda: new_entry._json_writes_jcs(obj),
            1,
        )
    )
    out.append(
        (
            "  its json encoding alone (vs rfc8785.dumps)",
            lambda: rfc8785.dumps(obj),
            lambda: new_entry._json_text(obj).encode(),
            1,
        )
    )
    event = events["transfer.completed"]
    out.append(
        (
            "event_object transfer.completed",
            lambda: old_trail.event_object(event, now=now),
            lambda: new_trail.event_object(event, now=now),
            1,
        )
    )

    def per_entry(trail: Any, encode: Callable[..., bytes], leaf: Callable[..., bytes]) -> object:
        return leaf(encode(trail.event_object(event, now=now)))

    out.append(
        (
            "entry: event_object+encode+leaf_hash",
            lambda: per_entry(old_trail, old["entry"].encode_entry, om.leaf_hash),
            lambda: per_entry(new_trail, new_entry.encode_entry, nm.leaf_hash),
            1,
        )
    )

    tree = EqualLeaves()
    leaves = [hashlib.sha256(b"\x00leaf %d" % i).digest() for i in range(BATCH)]
    for size in SIZES:
        edge = tree.table(nm.hashes_to_store_indexes(size, BATCH))
        assert om.hashes_to_store(size, leaves, _reader(edge)) == nm.hashes_to_store(
            size, leaves, _reader(edge)
        )

        def append(m: ModuleType, size: int = size, edge: dict[int, bytes] = edge) -> object:
            # What the writer does per batch: name the reads, read, compute.
            m.hashes_to_store_indexes(size, BATCH)
            return m.hashes_to_store(size, leaves, _reader(edge))

        out.append(
            (
                f"hashes_to_store per leaf, 64 @ {size:.0e}",
                lambda append=append: append(om),
                lambda append=append: append(nm),
                BATCH,
            )
        )

    for size in SIZES:
        root = tree.root(size)
        picks = [rng.randrange(size) for _ in range(PROOF_INDEXES)]
        olds = [rng.randrange(1, size) for _ in range(PROOF_INDEXES)]
        needed = [i for p in picks for i in nm.inclusion_proof_indexes(p, size)]
        needed += [i for m in olds for i in nm.consistency_proof_indexes(m, size)]
        table = tree.table(needed)
        read = _reader(table)
        proofs = [nm.inclusion_proof(p, size, read) for p in picks]
        consistency = [nm.consistency_proof(m, size, read) for m in olds]
        for p, proof in zip(picks, proofs, strict=True):
            assert om.inclusion_proof(p, size, read) == proof
            nm.verify_inclusion(proof, size, root, p, EqualLeaves.LEAF)
        for m, proof in zip(olds, consistency, strict=True):
            assert om.consistency_proof(m, size, read) == proof
            nm.verify_consistency(proof, m, tree.root(m), size, root)
        old_roots = [tree.root(m) for m in olds]

        def fetch_and_build(
            m: ModuleType, index: int, size: int, table: dict[int, bytes]
        ) -> object:
            # As gateway/trail/tree.py does: name the reads, fetch them, build.
            fetched = {i: table[i] for i in m.inclusion_proof_indexes(index, size)}
            return m.inclusion_proof(index, size, _reader(fetched))

        def consistency_build(m: ModuleType, old_size: int, size: int, read: Any) -> object:
            m.consistency_proof_indexes(old_size, size)
            return m.consistency_proof(old_size, size, read)

        inclusion_args = [(p, size, table) for p in picks]
        build_args = [(p, size, read) for p in picks]
        leaf = EqualLeaves.LEAF
        verify_args = [(q, size, root, p, leaf) for p, q in zip(picks, proofs, strict=True)]
        consistency_args = [(m, size, read) for m in olds]
        check_args = [
            (q, m, r, size, root) for m, q, r in zip(olds, consistency, old_roots, strict=True)
        ]
        for label, name, argument_lists in (
            ("inclusion_proof_indexes+inclusion_proof", fetch_and_build, inclusion_args),
            ("inclusion_proof (build only)", "inclusion_proof", build_args),
            ("verify_inclusion", "verify_inclusion", verify_args),
            ("consistency_proof_indexes+consistency_proof", consistency_build, consistency_args),
            ("verify_consistency", "verify_consistency", check_args),
        ):
            out.append(
                (
                    f"{label} @ {size:.0e}",
                    _cycling(om, name, argument_lists),
                    _cycling(nm, name, argument_lists),
                    1,
                )
            )
    return out


def _reader(table: dict[int, bytes]) -> Callable[[Any], list[bytes]]:
    return lambda idx: [table[i] for i in idx]


def _cycling(
    module: ModuleType, f: str | Callable[..., object], argument_lists: list[tuple[Any, ...]]
) -> Callable[[], object]:
    """A call of ``module.f`` (or ``f(module, ...)``) on the next arguments, in turn."""
    state = {"k": 0}
    count = len(argument_lists)

    if isinstance(f, str):
        function = getattr(module, f)

        def call() -> object:
            k = state["k"] = (state["k"] + 1) % count
            return function(*argument_lists[k])
    else:
        helper = f

        def call() -> object:
            k = state["k"] = (state["k"] + 1) % count
            return helper(module, *argument_lists[k])

    return call


def calibrate(f: Callable[[], object]) -> int:
    """Calls per timed run: about 10 ms worth."""
    n = 1
    while True:
        start = time.thread_time()
        for _ in range(n):
            f()
        if time.thread_time() - start > 0.01:
            return n
        n *= 2


def timed(f: Callable[[], object], n: int) -> float:
    start = time.thread_time()
    for _ in range(n):
        f()
    return (time.thread_time() - start) / n


def measure(all_cases: list[Case], rounds: int) -> list[dict[str, Any]]:
    results = []
    for name, before, after, per in all_cases:
        n_before, n_after = calibrate(before), calibrate(after)
        best_before = best_after = float("inf")
        for _ in range(rounds):  # alternate, so that both see the same load
            best_before = min(best_before, timed(before, n_before))
            best_after = min(best_after, timed(after, n_after))
        us_before, us_after = best_before / per * 1e6, best_after / per * 1e6
        results.append(
            {
                "case": name,
                "before_us": round(us_before, 3),
                "after_us": round(us_after, 3),
                "ratio": round(us_before / us_after, 2),
            }
        )
        row = results[-1]
        print(
            f"{name:<52} {row['before_us']:>10.2f} {row['after_us']:>10.2f} {row['ratio']:>6.2f}x",
            flush=True,
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description="Trail CPU per entry and per proof.")
    parser.add_argument("--baseline", default="HEAD", help="git revision of the 'before' code")
    parser.add_argument("--rounds", type=int, default=40, help="timed runs per case (least kept)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        old = load_baseline(args.baseline, Path(tmp))
        all_cases = cases(old, random.Random(args.seed))
    baseline = git("rev-parse", "--short", args.baseline).strip()
    dirty = bool(git("status", "--porcelain", "--", "gateway/trail").strip())
    print(f"before: gateway/trail at {baseline}; after: the working tree (uncommitted: {dirty})")
    title = f"CPU µs per call (least of {args.rounds} runs)"
    print(f"{title:<52} {'before':>10} {'after':>10} {'ratio':>7}")
    results = measure(all_cases, args.rounds)
    if args.json:
        args.json.write_text(
            json.dumps({"baseline": baseline, "results": results}, indent=2) + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
