"""Instructions per transfer, counted by callgrind: a measure that does not drift.

On this VM quick runs of the harness spread by ±15 % and CPU per request by
±10 % from one minute to the next, so a change worth 3 % cannot be seen
with them. Valgrind's callgrind counts the instructions a process executes
in user space (every thread, run one at a time), and gives nearly the same
count for the same code and input whatever else the machine is doing.

This script prepares a SQLite database with pre-minted consents and pairs
(``path_profile.py --prepare-only``, outside valgrind), then runs the
transfer path in process (``path_profile.py --prepared``: the app over
ASGI, the provider stub in process) under callgrind twice, on two copies
of that database: once with N transfers and once with 2 N. The difference
divided by N is what one transfer costs; imports, start-up, warm-up and
shutdown cancel out. With ``--ref REV`` it does the same with the gateway
package of a checkout of REV (a git worktree, removed afterwards; the
driver scripts stay this tree's) and prints the ratio::

    python bench/instructions.py [--count 100] [--concurrency 8] [--ref HEAD] [--repeat 2]

What it does not count: the kernel (system calls, the futex waits of the
GIL changing hands: bench/README.md), waiting, and uvicorn with httptools
(no sockets here). An instruction is not a fixed time: a cache miss costs
more than an add. Use it to rank small changes on the Python path; the
harness (``run.py``) stays the reference for throughput. Each run takes
about a minute (callgrind runs Python ~60 times slower).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VALGRIND = shutil.which("valgrind")
GIT = shutil.which("git")


@dataclass
class Count:
    code: str
    small: int  # instructions of the whole run with N transfers
    large: int  # ... and with 2 N
    per_transfer: float


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100, help="N (the runs do N and 2 N)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--ref", help="also count the gateway package of this git revision")
    parser.add_argument("--repeat", type=int, default=1, help="counts per code, alternating")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--json", type=Path, help="write the counts here too")
    args = parser.parse_args()
    if VALGRIND is None or GIT is None:
        print("needs valgrind and git (Debian: apt-get install valgrind git)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="gw-instr-"))
    trees: list[tuple[str, Path]] = [(_describe("HEAD") + _dirty(), REPO)]
    try:
        if args.ref:
            checkout = work / "ref"
            _run(
                [GIT, "-C", str(REPO), "worktree", "add", "--detach", str(checkout), args.ref],
                check=True,
                capture_output=True,
            )
            label = _describe(args.ref)
            trees.append((label + " (ref)" if label == trees[0][0] else label, checkout))
        counts: dict[str, list[Count]] = {label: [] for label, _ in trees}
        for round_ in range(args.repeat):
            for label, tree in trees:
                count = _count(args, tree, work / f"{round_}-{len(counts[label])}-{tree.name}")
                count.code = label
                counts[label].append(count)
                print(
                    f"{label}: {count.per_transfer / 1e6:.3f} M instructions per transfer "
                    f"({count.small:,} with {args.count}, {count.large:,} with "
                    f"{2 * args.count})",
                    flush=True,
                )
    finally:
        if args.ref:
            _run(
                [GIT, "-C", str(REPO), "worktree", "remove", "--force", str(work / "ref")],
                capture_output=True,
            )
        shutil.rmtree(work, ignore_errors=True)

    medians = {label: statistics.median(c.per_transfer for c in cs) for label, cs in counts.items()}
    print()
    for label, cs in counts.items():
        spread = ", ".join(f"{c.per_transfer / 1e6:.3f}" for c in cs)
        print(f"{label:40} {medians[label] / 1e6:8.3f} M per transfer  (runs: {spread})")
    if args.ref:
        (new, _), (old, _) = trees
        print(f"{new} / {old}: {medians[new] / medians[old]:.3f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "count": args.count,
                    "concurrency": args.concurrency,
                    "runs": [asdict(c) for cs in counts.values() for c in cs],
                    "median_per_transfer": medians,
                },
                indent=2,
            )
        )
    return 0


def _count(args: argparse.Namespace, tree: Path, base: Path) -> Count:
    """Prepare once with ``tree``'s gateway, then count N and 2 N transfers."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    where = _run(
        [sys.executable, "-c", "import gateway; print(gateway.__file__)"],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(str(tree)):
        raise SystemExit(f"the gateway package of {tree} is shadowed by {where}")
    profile = str(BENCH / "path_profile.py")
    common = ["--warmup", str(args.warmup), "--log-level", args.log_level]
    prepared = base / "prepared"
    _run(
        [
            sys.executable,
            profile,
            "--prepare-only",
            str(prepared),
            "--count",
            str(2 * args.count),
            *common,
        ],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
    )
    totals = []
    for n in (args.count, 2 * args.count):
        copy = base / f"run-{n}"
        shutil.copytree(prepared, copy)
        out = base / f"callgrind-{n}.out"
        done = _run(
            [
                VALGRIND,
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                profile,
                "--prepared",
                str(copy),
                "--count",
                str(n),
                "--concurrency",
                str(args.concurrency),
                *common,
            ],
            env=env,
            cwd=tree,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            # path_profile exits 1 when a transfer did not answer 200.
            failed = f"{done.stdout}\n{done.stderr[-3000:]}"
            raise SystemExit(f"the run of {n} transfers failed:\n{failed}")
        totals.append(_total(out))
        shutil.rmtree(copy)
    small, large = totals
    return Count("", small, large, (large - small) / args.count)


def _run(argv: list[str | None], **options: Any) -> subprocess.CompletedProcess[Any]:
    return subprocess.run([str(a) for a in argv], **options)  # noqa: S603 (argv built here)


def _total(out: Path) -> int:
    """The instruction total of a callgrind output file."""
    for line in out.read_text().splitlines():
        matched = re.match(r"(?:summary|totals): (\d+)", line)
        if matched:
            return int(matched.group(1))
    raise SystemExit(f"no total in {out}")


def _describe(rev: str) -> str:
    done = _run(
        [GIT, "-C", str(REPO), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    )
    return str(done.stdout).strip()


def _dirty() -> str:
    status = _run(
        [GIT, "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "gateway"],
        capture_output=True,
        text=True,
    ).stdout
    return " + changes" if status.strip() else ""


if __name__ == "__main__":
    raise SystemExit(main())
