"""Two gateway processes appending to one database at once: one linear log.

Each child process runs its own ``TrailWriter`` and ``Checkpointer`` (the
gateway's trail key shared, as two workers of one gateway share the data dir)
on the same database, appends 200 entries in waves of concurrent units and
signs checkpoints while it goes. Afterwards the log must be 0..399 with every
entry of both processes, the stored hashes exactly those of the 400 leaves,
and every checkpoint signed by either process consistent with every other.

The PostgreSQL case needs ``GATEWAY_TEST_DATABASE_URL``; the same run on one
SQLite file (several workers of one gateway) always runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import select

import gateway.trail.merkle as merkle
from gateway.settings import Settings
from gateway.storage.engine import create_engine
from gateway.storage.models import checkpoints, trail_hashes
from gateway.trail import tree as trail_tree
from gateway.trail.checkpoint import open_checkpoint
from gateway.trail.note import Signer
from tests.conftest import PG_URL, REPO, reset_database
from tests.trail.test_writer import check_log, fresh_database

ORIGIN = "gateway.example/trail"
PER_PROCESS = 200
WAVE = 10

CHILD = r"""
import asyncio, json, sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.storage.engine import create_engine
from gateway.trail import EventType, Trail, TrailEvent
from gateway.trail.note import Signer
from gateway.trail.tree import Checkpointer
from gateway.trail.writer import TrailWriter

url, name, work, seed, origin, total, wave = sys.argv[1:8]
work, total, wave = Path(work), int(total), int(wave)


def now():
    return datetime.now(UTC)


async def main():
    engine = create_engine(url)
    signer = Signer(origin, Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)))
    checkpointer = Checkpointer(engine, signer, origin)
    writer = TrailWriter(engine, Trail("sha256:" + "00" * 32), now, max_batch=8)
    (work / f"{name}.ready").touch()
    while not (work / "go").exists():
        await asyncio.sleep(0.002)

    async def unit(i):
        async def work_(tx):
            return await tx.record(
                [TrailEvent(EventType.TRANSFER_COMPLETED, transfer_id=f"{name}-{i}")]
            )
        return await writer.run(work_)

    signed = []
    done = asyncio.Event()

    async def sign_while_running():
        while not done.is_set():
            size = await checkpointer.sign_if_grown(now())
            if size is not None:
                signed.append(size)
            await asyncio.sleep(0.02)

    signing = asyncio.create_task(sign_while_running())
    indexes = []
    for start in range(0, total, wave):
        for result in await asyncio.gather(*(unit(i) for i in range(start, start + wave))):
            indexes += result
    done.set()
    await signing
    size = await checkpointer.sign_if_grown(now())
    if size is not None:
        signed.append(size)
    await writer.stop()
    await engine.dispose()
    (work / f"{name}.json").write_text(json.dumps({"indexes": indexes, "signed": signed}))


asyncio.run(main())
"""


def _exists(path: Path) -> bool:
    return path.exists()


def spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 (our interpreter, our script)
        [sys.executable, *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def run_two_processes(url: str, work: Path) -> tuple[Signer, dict[str, dict[str, list[int]]]]:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
    script = work / "child.py"
    script.write_text(CHILD, "utf-8")
    names = ["worker-a", "worker-b"]
    sizes = [str(PER_PROCESS), str(WAVE)]
    procs = [spawn([str(script), url, name, str(work), seed, ORIGIN, *sizes]) for name in names]
    try:
        for _ in range(3000):  # both started before either appends
            if all(_exists(work / f"{n}.ready") for n in names):
                break
            if any(p.poll() is not None for p in procs):
                break
            await asyncio.sleep(0.01)
        (work / "go").touch()
        for proc in procs:
            output, _ = await asyncio.to_thread(proc.communicate, timeout=120)
            assert proc.returncode == 0, output.decode(errors="replace")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = {n: json.loads((work / f"{n}.json").read_text()) for n in names}
    return Signer(ORIGIN, key), results


async def check_one_linear_log(
    url: str, signer: Signer, results: dict[str, dict[str, list[int]]]
) -> None:
    a, b = results["worker-a"], results["worker-b"]
    total = 2 * PER_PROCESS
    assert sorted(a["indexes"] + b["indexes"]) == list(range(total))
    # Both really ran at once: their entries interleave in the log.
    owner = {i: "a" for i in a["indexes"]} | {i: "b" for i in b["indexes"]}
    switches = sum(1 for i in range(1, total) if owner[i] != owner[i - 1])
    # (SQLite's busy handler lets the process holding the lock keep it while
    # the other backs off: there the log may switch writers only once.)
    assert switches >= (3 if url.startswith("postgresql") else 1), "no overlap"
    if url.startswith("postgresql"):
        assert a["signed"] and b["signed"]  # both signed checkpoints during the run
    else:
        assert a["signed"] or b["signed"]  # one may have found each size signed already

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            entries = await check_log(conn)
            assert len(entries) == total
            transfer_ids = {json.loads(e.entry.split(b"\n", 1)[1])["transfer_id"] for e in entries}
            assert transfer_ids == {f"worker-{w}-{i}" for w in "ab" for i in range(PER_PROCESS)}
            notes = [str(n) for n in (await conn.execute(select(checkpoints.c.note))).scalars()]
            signed = [open_checkpoint(n, signer.verifier, origin=ORIGIN) for n in notes]
            assert sorted(c.size for c in signed) == sorted(set(a["signed"]) | set(b["signed"]))
            assert max(c.size for c in signed) == total
            for cp in signed:
                assert await trail_tree.root_at(conn, cp.size) == cp.root
            # Every pair, with proofs built from one snapshot of the stored hashes
            # (the same hashes the gateway's proof endpoint reads, without a
            # round trip per proof).
            rows = (await conn.execute(select(trail_hashes.c.idx, trail_hashes.c.hash))).all()
        stored = {int(r.idx): bytes(r.hash) for r in rows}

        def read(indexes: Sequence[int]) -> list[bytes]:
            return [stored[i] for i in indexes]

        for old in signed:
            for new in signed:
                if old.size <= new.size:
                    proof = merkle.consistency_proof(old.size, new.size, read)
                    merkle.verify_consistency(proof, old.size, old.root, new.size, new.root)
    finally:
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="needs GATEWAY_TEST_DATABASE_URL (PostgreSQL)")
async def test_two_processes_on_postgresql(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    assert PG_URL and settings.database_url.value == PG_URL
    await fresh_database(settings)
    signer, results = await run_two_processes(PG_URL, tmp_path)
    await check_one_linear_log(PG_URL, signer, results)


async def test_two_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    await reset_database(url)
    signer, results = await run_two_processes(url, tmp_path)
    await check_one_linear_log(url, signer, results)
