"""CPU cost of one transfer, in process: no HTTP server, no network, no wrk.

Builds the gateway app (``create_app``) on a temporary SQLite file (or
``--database-url``), answers the provider call with the bare ASGI stub
(``stub_app.py``, in process), pre-mints consents with ``bench/mint.py`` and
calls the app with ASGI messages as uvicorn would (no HTTP client in
between), one transfer at a time (``--concurrency 1``) or N at a time, after
the collector is tuned as in a served worker (``gateway.server.tune_gc``).
Prints CPU per transfer (all threads, and the event-loop thread alone),
with ``--statements`` the SQL statements one transfer executes, and with
``--cprofile`` the functions where the CPU goes (cProfile follows
SQLAlchemy's greenlets, which py-spy shows detached).

    python bench/path_profile.py [--count 300] [--concurrency 1] [--statements] [--cprofile]

Use it to see what a change to the transfer path costs before running the
whole harness; the harness (``bench/run.py``) stays the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import mint
import scenario
import stub_app

ISSUER = "http://127.0.0.1:18999"
STUB = "http://127.0.0.1:18998"


def _env(args: argparse.Namespace, tmp: Path) -> dict[str, str]:
    env = {
        "GATEWAY_DEMO": "1",
        "GATEWAY_DATA_DIR": str(tmp / "data"),
        "GATEWAY_POLICIES": str(tmp / "policies"),
        "GATEWAY_ISSUER": ISSUER,
        "GATEWAY_LOG_FORMAT": "json",
        "GATEWAY_LOG_LEVEL": args.log_level,
    }
    if args.database_url:
        env["GATEWAY_DATABASE_URL"] = args.database_url
    return env


async def prepare(args: argparse.Namespace, tmp: Path) -> list[list[str]]:
    """Policies, keys, a migrated database and the pre-minted pairs, in ``tmp``."""
    from gateway.jose import SigningKey
    from gateway.settings import Settings
    from gateway.storage.engine import create_engine
    from gateway.storage.migrate import upgrade

    client_key = SigningKey.generate_es256()
    dpop_pem = SigningKey.generate_es256().to_pem()
    jwk = client_key.public_jwk()
    scenario.write_policies(
        tmp / "policies",
        stub_url=STUB,
        client_jwk={k: jwk[k] for k in ("kty", "crv", "x", "y", "kid")},
    )
    env = _env(args, tmp)
    settings = Settings.from_env(env)
    settings.data_dir.mkdir(parents=True)
    engine = create_engine(settings.database_url.value)
    await upgrade(engine)
    await engine.dispose()

    made = await mint.create_consents(args.count + args.warmup, env)
    signer = mint.PairSigner(settings.keys_dir, dpop_pem)
    pairs_file = tmp / "pairs.tsv"
    try:
        await asyncio.to_thread(signer.write, made, ISSUER, pairs_file)
    finally:
        signer.close()
    return [line.rstrip("\n").split("\t") for line in pairs_file.open()]


async def run(args: argparse.Namespace, tmp: Path) -> int:
    from gateway.app import create_app
    from gateway.server import tune_gc
    from gateway.settings import GC_THRESHOLDS, Settings

    if args.prepared:
        # Made earlier by --prepare-only (bench/instructions.py copies it per run).
        pairs = [line.rstrip("\n").split("\t") for line in (tmp / "pairs.tsv").open()]
        pairs = pairs[: args.warmup + args.count]
    else:
        pairs = await prepare(args, tmp)
        if args.prepare_only:
            return 0
    settings = Settings.from_env(_env(args, tmp))

    # The provider is the bare ASGI stub, in process: its (small) CPU is counted too.
    app = create_app(settings, transport=httpx.ASGITransport(app=stub_app.app), background=False)
    # Logs go to stderr; keep them out of the report.
    devnull = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 (once, before measuring)
    real_stderr, sys.stderr = sys.stderr, devnull
    statuses: dict[int, int] = {}
    try:
        async with app.router.lifespan_context(app):
            # As a served worker does once started (gateway/server.py).
            tune_gc(GC_THRESHOLDS)
            host = ISSUER.removeprefix("http://").encode()

            async def one(token: str, proof: str) -> None:
                # The app called as uvicorn would call it, without an HTTP client
                # in between: what is counted is the gateway's work.
                scope = {
                    "type": "http",
                    "asgi": {"version": "3.0"},
                    "http_version": "1.1",
                    "method": "GET",
                    "scheme": "http",
                    "path": scenario.DATA_PATH,
                    "raw_path": scenario.DATA_PATH.encode(),
                    "query_string": b"",
                    "root_path": "",
                    "headers": [
                        (b"host", host),
                        (b"authorization", b"DPoP " + token.encode()),
                        (b"dpop", proof.encode()),
                    ],
                    "client": ("127.0.0.1", 40000),
                    "server": ("127.0.0.1", 18999),
                }
                messages = iter([{"type": "http.request", "body": b"", "more_body": False}])
                answered: list[int] = []

                async def receive() -> dict[str, object]:
                    return next(messages, {"type": "http.disconnect"})

                async def send(message: Any) -> None:
                    if message["type"] == "http.response.start":
                        answered.append(message["status"])

                await app(scope, receive, send)
                status = answered[0] if answered else 0
                statuses[status] = statuses.get(status, 0) + 1

            async def batch(items: list[list[str]]) -> None:
                queue = list(reversed(items))

                async def lane() -> None:
                    while queue:
                        token, proof = queue.pop()
                        await one(token, proof)

                await asyncio.gather(*(lane() for _ in range(args.concurrency)))

            await batch(pairs[: args.warmup])
            statements: collections.Counter[str] = collections.Counter()
            if args.statements:
                from sqlalchemy import event

                def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
                    statements[" ".join(statement.split())[:110]] += 1

                sync_engine = app.state.runtime.engine.sync_engine
                event.listen(sync_engine, "before_cursor_execute", count)
                # The writer's lean statements bypass SQLAlchemy's events.
                from gateway.storage.sql import Sql

                def counted(name: str) -> None:
                    original = getattr(Sql, name)

                    def wrapper(self, sql, *args, **kwargs):  # type: ignore[no-untyped-def]
                        shown = sql if isinstance(sql, str) else f"{name} {sql}"
                        statements[" ".join(shown.split())[:110]] += 1
                        return original(self, sql, *args, **kwargs)

                    setattr(Sql, name, wrapper)

                for name in ("run", "command", "commands", "one", "all", "many", "insert_rows"):
                    counted(name)
            profiler = cProfile.Profile() if args.cprofile else None
            ticks = _thread_ticks()
            cpu, wall = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            await batch(pairs[args.warmup :])
            if profiler:
                profiler.disable()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            after = _thread_ticks()
    finally:
        sys.stderr = real_stderr
        devnull.close()
    n = args.count
    print(
        f"{n} transfers, concurrency {args.concurrency}: {n / wall:,.0f}/s, "
        f"{cpu / n * 1000:.2f} ms CPU and {wall / n * 1000:.2f} ms wall per transfer "
        f"(statuses {statuses})"
    )
    if statements:
        total = sum(statements.values())
        print(f"  {total / n:.1f} SQL statements per transfer (BEGIN and SAVEPOINT included):")
        for text, k in statements.most_common():
            print(f"    {k / n:5.2f}  {text}")
    hz, main = os.sysconf("SC_CLK_TCK"), os.getpid()
    spent = {
        tid: (u - ticks.get(tid, (0, 0))[0], s - ticks.get(tid, (0, 0))[1])
        for tid, (u, s) in after.items()
    }
    for label, tids in (
        ("event loop thread", [main]),
        ("other threads (aiosqlite, executors)", [t for t in spent if t != main]),
    ):
        user = sum(spent[t][0] for t in tids if t in spent) / hz / n * 1000
        system = sum(spent[t][1] for t in tids if t in spent) / hz / n * 1000
        print(f"  {label}: {user:.2f} ms user + {system:.2f} ms system per transfer")
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())
    return 0 if set(statuses) == {200} else 1


def _thread_ticks() -> dict[int, tuple[int, int]]:
    """(utime, stime) ticks of each thread of this process."""
    out = {}
    for entry in os.scandir("/proc/self/task"):
        try:
            raw = Path(entry.path, "stat").read_text()
        except FileNotFoundError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(entry.name)] = (int(fields[11]), int(fields[12]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--database-url", help="default: a temporary SQLite file")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument(
        "--statements", action="store_true", help="count SQL statements per transfer"
    )
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--uvloop", action="store_true", help="run on uvloop (if importable) instead of asyncio"
    )
    parser.add_argument(
        "--prepare-only",
        metavar="DIR",
        type=Path,
        help="write policies, keys, database and pairs (--count + --warmup) to DIR, and stop",
    )
    parser.add_argument(
        "--prepared",
        metavar="DIR",
        type=Path,
        help="run on what --prepare-only wrote to DIR (SQLite; DIR is used up: copy it)",
    )
    args = parser.parse_args()
    kept = args.prepare_only or args.prepared
    if args.prepare_only:
        args.prepare_only.mkdir(parents=True)
    tmp = kept or Path(tempfile.mkdtemp(prefix="gw-path-"))
    if args.uvloop:
        import uvloop  # not a dependency: install it where you want to compare

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        return asyncio.run(run(args, tmp))
    finally:
        if not kept:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
