"""A gateway process killed between enqueue and commit: nothing relayed, the log intact.

A child process runs the whole system (gateway, demo identity provider,
service provider, and a CNAF stub that counts every request it receives in a
file), grants a consent and relays one transfer, signs a checkpoint, then asks
for a second transfer. Its ``transfer.authorized`` unit of work is queued to
the trail writer and the batch is held before it commits:

- ``lock``: the test holds the database's write lock (SQLite ``BEGIN
  IMMEDIATE`` from another connection, or the trail's advisory lock on
  PostgreSQL), so the batch waits for it;
- ``uncommitted``: the batch has inserted its rows but stalls before storing
  the hashes and committing.

The child is then killed with SIGKILL. On restart the request left nothing:
no trail entry, no transfer row, no use of the consent, no request to the
provider; entries are 0..n-1, the stored hashes are exactly those of n leaves,
and the next append is consistent with the checkpoint signed before the crash.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

import gateway.trail.merkle as merkle
from gateway.app import create_app
from gateway.settings import Settings
from gateway.storage.engine import create_engine
from gateway.storage.models import consent_allowances, transfers
from gateway.trail.checkpoint import open_checkpoint
from gateway.trail.note import Verifier
from gateway.trail.writer import PG_TRAIL_LOCK
from tests.conftest import ISSUER, PG_URL, REPO, RoutingTransport
from tests.trail.test_writer import check_log, fresh_database

CHILD = r'''
import asyncio, json, sys, time
from pathlib import Path

import httpx

import gateway.trail.writer as writer_module
from gateway.app import create_app
from gateway.demo.client import DemoServiceProvider
from gateway.demo.providers import cnaf_app, dgfip_app
from gateway.demo.run import demo_client_key
from gateway.demo.spclient import ServiceProviderClient
from gateway.settings import Settings
from gateway.trail.store import Trail
from gateway.trail.tree import latest_checkpoint
from tests.conftest import (
    CNAF, DGFIP, ISSUER, SP_BASE, Clock, RoutingTransport, Stack, cnaf_details,
)

work, mode = Path(sys.argv[1]), sys.argv[2]
env = json.loads((work / "env.json").read_text())
PARAMS = {"annee": "2025", "mois": "01"}


class Relayed:
    """The CNAF stub, writing one line per request it receives (the count survives a kill)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            with open(work / "relayed", "a") as f:
                f.write(scope["path"] + "\n")
        await self.app(scope, receive, send)


async def main():
    settings = Settings.from_env(env)
    transport, clock = RoutingTransport(), Clock()
    app = create_app(settings, transport=transport, clock=clock, background=False)
    http = httpx.AsyncClient(transport=transport, follow_redirects=False)
    sp_key = demo_client_key(settings.data_dir)
    sp_app = DemoServiceProvider(
        gateway_issuer=ISSUER, base_url=SP_BASE, signing_key=sp_key, http=http
    )
    transport.route(ISSUER, app)
    transport.route(SP_BASE, sp_app.app)
    transport.route(CNAF, Relayed(cnaf_app(gateway_issuer=ISSUER, http=http)))
    transport.route(DGFIP, dgfip_app(gateway_issuer=ISSUER, http=http))
    sp = ServiceProviderClient(
        client_id="mairie-demoville", signing_key=sp_key, gateway_issuer=ISSUER,
        redirect_uri=f"{SP_BASE}/callback", http=http,
    )
    async with app.router.lifespan_context(app):
        stack = Stack(settings, app, transport, clock, http, sp, sp_app)
        rt = stack.rt
        grant = await stack.grant([cnaf_details(max_transfers=2)])
        first = await sp.fetch("cnaf", "quotient_familial", grant.access_token, params=PARAMS)
        assert first.status_code == 200, first.text
        await rt.checkpointer.sign_if_grown(rt.now())
        async with rt.engine.connect() as conn:
            size = len(await Trail.read(conn))
            note = (await latest_checkpoint(conn))[2]
        (work / "state.json").write_text(
            json.dumps({"size": size, "checkpoint": note, "consent_id": grant.consent_id})
        )
        if mode == "lock":
            original = rt.writer._write

            async def gated(items):
                (work / "batch-started").touch()
                while not (work / "go").exists():
                    await asyncio.sleep(0.005)
                await original(items)  # waits for the lock the test holds

            rt.writer._write = gated
        else:
            def stalled(sql, start, leaves):
                # In the writer's thread, at the batch's flush: its units' rows
                # are written, uncommitted; its entries are about to be.
                (work / "batch-started").touch()
                time.sleep(3600)

            writer_module._new_hashes = stalled
        second = await sp.fetch("cnaf", "quotient_familial", grant.access_token, params=PARAMS)
        (work / "answered").write_text(str(second.status_code))  # never reached


asyncio.run(main())
'''


def crash_env(work: Path) -> dict[str, str]:
    env = {
        "GATEWAY_DATA_DIR": str(work / "var"),
        "GATEWAY_POLICIES": str(REPO / "policies"),
        "GATEWAY_ISSUER": ISSUER,
        "GATEWAY_DEMO": "1",
        "GATEWAY_LOG_FORMAT": "json",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    if PG_URL:
        env["GATEWAY_DATABASE_URL"] = PG_URL
    return env


@contextmanager
def child_process(work: Path, mode: str) -> Iterator[subprocess.Popen[bytes]]:
    script = work / "child.py"
    script.write_text(CHILD, "utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with (work / "child.log").open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 (our interpreter, our script)
            [sys.executable, str(script), str(work), mode],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _exists(path: Path) -> bool:
    return path.exists()


async def wait_for(path: Path, proc: subprocess.Popen[bytes], work: Path) -> None:
    for _ in range(3000):
        if _exists(path):
            return
        if proc.poll() is not None:
            log = (work / "child.log").read_text(errors="replace")
            pytest.fail(f"child exited with {proc.returncode} before {path.name}:\n{log}")
        await asyncio.sleep(0.01)
    pytest.fail(f"child never reached {path.name}")


@asynccontextmanager
async def write_lock(settings: Settings) -> AsyncIterator[None]:
    """Hold the lock a trail batch needs, from outside the gateway."""
    if PG_URL:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", PG_TRAIL_LOCK)
            yield
            await conn.execute("SELECT pg_advisory_unlock($1)", PG_TRAIL_LOCK)
        finally:
            await conn.close()
        return
    path = settings.database_url.value.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def _count(settings: Settings, query: Any) -> int:
    engine = create_engine(settings.database_url.value)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())
    finally:
        await engine.dispose()


@pytest.mark.parametrize("mode", ["lock", "uncommitted"])
async def test_killed_between_enqueue_and_commit(tmp_path: Path, mode: str, pg_ready: bool) -> None:
    work = tmp_path
    env = crash_env(work)
    (work / "env.json").write_text(json.dumps(env))
    settings = Settings.from_env(env)
    await fresh_database(settings)

    with child_process(work, mode) as proc:
        await wait_for(work / "batch-started", proc, work)
        if mode == "lock":
            async with write_lock(settings):
                (work / "go").touch()
                await asyncio.sleep(0.3)  # the batch is waiting for the lock
                assert proc.poll() is None
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
        else:
            await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL

    state = json.loads((work / "state.json").read_text())
    # The request was never answered and never relayed: one request reached the CNAF.
    assert not (work / "answered").exists()
    assert (work / "relayed").read_text().splitlines() == ["/cnaf/v1/quotient-familial"]

    engine = create_engine(settings.database_url.value)
    try:
        async with engine.connect() as conn:
            entries = await check_log(conn)
            assert len(entries) == state["size"]
            types = [json.loads(e.entry.split(b"\n", 1)[1])["type"] for e in entries]
            assert types.count("transfer.authorized") == 1
            assert types.count("transfer.completed") == 1
            assert await conn.scalar(select(func.count()).select_from(transfers)) == 1
            uses_left = await conn.scalar(
                select(consent_allowances.c.uses_left).where(
                    consent_allowances.c.consent_id == state["consent_id"]
                )
            )
            assert uses_left == 1  # the killed request did not consume a use
    finally:
        await engine.dispose()

    # Restart: the gateway appends again, and its new checkpoint extends the old one.
    transport = RoutingTransport()
    app = create_app(settings, transport=transport, background=False)
    transport.route(ISSUER, app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport) as http,
    ):
        rt = app.state.runtime
        refused = await http.post(f"{ISSUER}/oauth/token", data={"grant_type": "password"})
        assert refused.status_code == 400
        size = await rt.checkpointer.sign_if_grown(rt.now())
        assert size == state["size"] + 1
        async with rt.engine.connect() as conn:
            entries = await check_log(conn)
        assert json.loads(entries[-1].entry.split(b"\n", 1)[1])["type"] == "request.refused"
        verifier = Verifier.from_key((await http.get(f"{ISSUER}/trail/verifier-key")).text.strip())
        old = open_checkpoint(state["checkpoint"], verifier)
        new = open_checkpoint((await http.get(f"{ISSUER}/trail/checkpoint")).text, verifier)
        assert (old.size, new.size) == (state["size"], size)
        answer = await http.get(
            f"{ISSUER}/trail/proof/consistency", params={"old": old.size, "new": new.size}
        )
        proof = [base64.b64decode(h) for h in answer.json()["hashes"]]
        merkle.verify_consistency(proof, old.size, old.root, new.size, new.root)
