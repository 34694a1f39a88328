"""The benchmark harness of issue 5: the gateway against what users would run instead.

One command, loopback only, bounded duration::

    python bench/run.py [--quick] [--json out.json] [--profile] [--skip-pg]

Runs, each driven by ``wrk`` at 32 connections for the same duration:

- a provider stub (nginx ``return 200`` with a 500-byte JSON body; a bare ASGI
  app under uvicorn when nginx is missing);
- baselines: (a) the stub called directly, (b) nginx as a plain reverse proxy
  with a keepalive upstream, (c) a naive Starlette + httpx relay (one shared
  ``AsyncClient``, uvicorn, 1 worker) that checks nothing;
- the gateway doing the full transfer path (``gateway serve``), 1 and 2
  workers, on SQLite and on PostgreSQL, with pre-minted per-transfer consents
  and a unique DPoP proof per request (``bench/mint.py``, ``wrk_gateway.lua``).

Prints one table (requests/s, p50, p99, errors, CPU per request) and the ratios
of the gateway to each baseline, and writes the same as JSON. See
``bench/README.md`` for what each number means and for the latest results.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import mint  # noqa: E402
import scenario  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/gw_bench"

# Issue 5 targets, all on this 2-core machine in one run.
TARGET_RELAY_RATIO = 1.5
TARGET_SQLITE_2W_RPS = 2000
TARGET_PG_SHARE = 0.8
TARGET_P99_MS = 50.0


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ /proc accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces; everything after ")" is fixed.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children[int(fields[1])].append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat_fields(pid) is not None:
            out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime of each live pid, in clock ticks."""
    out = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return out


def thread_ticks(pids: list[int]) -> dict[tuple[int, int], int]:
    """utime + stime per (pid, thread id): the main thread's tid is the pid."""
    out = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for entry in os.scandir(f"/proc/{pid}/task"):
                try:
                    raw = Path(entry.path, "stat").read_text()
                except (FileNotFoundError, ProcessLookupError):
                    continue
                fields = raw[raw.rindex(")") + 2 :].split()
                out[(pid, int(entry.name))] = int(fields[11]) + int(fields[12])
    return out


def system_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return total - idle, total


def busy_share(interval: float = 1.0) -> float:
    """Share of all CPUs busy over ``interval`` seconds."""
    b0, t0 = system_ticks()
    time.sleep(interval)
    b1, t1 = system_ticks()
    return (b1 - b0) / max(1, t1 - t0)


def wait_idle(limit: float, below: float = 0.25) -> float:
    """Wait (at most ``limit`` s) until other processes leave the CPUs; returns the wait."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if busy_share() < below:
            break
    return time.monotonic() - started


def delta_seconds(before: dict[int, int], after: dict[int, int]) -> dict[int, float]:
    return {pid: (t - before.get(pid, 0)) / HZ for pid, t in after.items()}


# ------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A process we started (and only we stop), with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        tree = self.pids()
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        for pid in tree:  # only processes of our own tree, by id
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def start(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Server:
    handle = log.open("wb")
    proc = subprocess.Popen(  # noqa: S603 (fixed argv built here)
        argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
    )
    handle.close()
    return Server(name, proc, log)


def wait_http(url: str, server: Server, *, expect_processes: int = 1, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited; see {server.log}:\n{_tail(server.log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (loopback)
                if r.status == 200 and len(server.pids()) >= expect_processes:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {timeout} s; see {server.log}")


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


NGINX_STUB = """worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{body}'; }}
  }}
}}
"""

NGINX_PROXY = """worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  upstream provider {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://provider{path};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def start_nginx(name: str, conf: str, directory: Path) -> Server:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "nginx.conf").write_text(conf)
    return start(
        name,
        [
            "nginx",
            "-p",
            str(directory),
            "-c",
            str(directory / "nginx.conf"),
            "-e",
            str(directory / "error.log"),
            "-g",
            "daemon off;",
        ],
        directory / "stdout.log",
    )


# ------------------------------------------------------------------ wrk


@dataclass
class Run:
    """One measured run: what wrk saw and what the processes spent."""

    name: str
    kind: str  # "baseline" | "gateway"
    workers: int = 1
    database: str = "-"
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: int = 0
    error_detail: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    server_cpu_ms_per_req: float = 0.0
    server_cpu_share: list[float] = field(default_factory=list)  # per process, of the total
    # Of the server's CPU: its processes' main threads (event loops) vs other threads
    # (aiosqlite runs one thread per SQLite connection).
    server_main_thread_share: float = 0.0
    stub_cpu_ms_per_req: float = 0.0
    db_cpu_ms_per_req: float = 0.0
    wrk_cpu_ms_per_req: float = 0.0
    other_load_pct: float = 0.0  # CPU used by processes not in this run, % of all cores
    load_avg_1m: float = 0.0
    pool: int = 0  # pre-minted requests available
    pool_exhausted: int = 0
    consent_exhausted: int = 0
    # From the gateway's /metrics over the measured seconds (all workers summed):
    trail_batches: int = 0
    trail_units_per_batch: float = 0.0
    trail_batches_retried: int = 0
    notes: list[str] = field(default_factory=list)


def run_wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int,
    script: Path,
    script_args: list[str] | None = None,
) -> tuple[dict[str, Any], float]:
    """Run wrk; return its JSON report and its own CPU seconds."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    if script_args:
        argv += ["--", *script_args]
    proc = subprocess.Popen(  # noqa: S603
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=BENCH
    )
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON ") :]), usage.ru_utime + usage.ru_stime
    raise RuntimeError(f"wrk gave no report (exit {proc.returncode}):\n{out}\n{err}")


def trail_counts(base_url: str) -> dict[str, float]:
    """The trail writer's counters from ``/metrics`` (summed over the workers)."""
    wanted = {
        "gateway_trail_batches_total": "batches",
        "gateway_trail_batches_retried_total": "retried",
        'gateway_trail_units_total{result="committed"}': "units",
    }
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as answer:  # noqa: S310 (loopback)
        text = answer.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


def measure(
    run: Run,
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int,
    server: Server,
    stub: Server | None,
    db_pids: Callable[[], list[int]] = list,
    script: Path = BENCH / "wrk_report.lua",
    script_args: list[str] | None = None,
) -> Run:
    """Drive ``url`` with wrk and account every process's CPU over the run."""
    server_pids = server.pids()
    stub_pids = stub.pids() if stub else []
    db_before = db_pids()
    before = cpu_ticks(server_pids + stub_pids + db_before)
    threads_before = thread_ticks(server_pids)
    sys_before = system_ticks()
    started = time.monotonic()
    report, wrk_cpu = run_wrk(
        url,
        seconds=seconds,
        connections=connections,
        threads=threads,
        script=script,
        script_args=script_args,
    )
    elapsed = time.monotonic() - started
    server_after = server.pids()
    db_after = sorted(set(db_before) | set(db_pids()))
    after = cpu_ticks(server_after + stub_pids + db_after)
    threads_after = thread_ticks(server_after)
    sys_after = system_ticks()
    spent = delta_seconds(before, after)

    requests = int(report["requests"])
    run.requests = requests
    run.seconds = report["duration_us"] / 1e6
    run.rps = requests / run.seconds if run.seconds else 0.0
    lat = report["latency_us"]
    run.p50_ms, run.p90_ms = lat["p50"] / 1000, lat["p90"] / 1000
    run.p99_ms, run.max_ms = lat["p99"] / 1000, lat["max"] / 1000
    socket_errors = {k: int(v) for k, v in report["errors"].items() if k != "status" and v}
    run.statuses = {str(k): int(v) for k, v in report.get("statuses", {}).items()}
    if run.statuses:  # the gateway script counts every status itself
        non_2xx = sum(v for k, v in run.statuses.items() if not k.startswith("2"))
    else:
        non_2xx = int(report["errors"]["status"])
    run.errors = non_2xx + sum(socket_errors.values())
    run.error_detail = {"non_2xx": non_2xx, **socket_errors}
    run.pool_exhausted = int(report.get("pool_exhausted", 0))
    run.consent_exhausted = int(report.get("consent_exhausted", 0))

    per_req = 1000 / requests if requests else 0.0
    server_cpu = {p: spent.get(p, 0.0) for p in server_after}
    total_server = sum(server_cpu.values())
    run.server_cpu_ms_per_req = total_server * per_req
    busy = sorted((v for v in server_cpu.values() if v > 0.05), reverse=True)
    run.server_cpu_share = [round(v / total_server, 3) for v in busy] if total_server else []
    thread_spent = {k: v - threads_before.get(k, 0) for k, v in threads_after.items()}
    main_threads = sum(v for (pid, tid), v in thread_spent.items() if pid == tid)
    all_threads = sum(thread_spent.values())
    run.server_main_thread_share = round(main_threads / all_threads, 3) if all_threads else 0.0
    run.stub_cpu_ms_per_req = sum(spent.get(p, 0.0) for p in stub_pids) * per_req
    db_cpu = sum(spent.get(p, 0.0) for p in db_after)
    run.db_cpu_ms_per_req = db_cpu * per_req
    run.wrk_cpu_ms_per_req = wrk_cpu * per_req
    ours = sum(spent.values()) + wrk_cpu
    busy_all = (sys_after[0] - sys_before[0]) / HZ
    run.other_load_pct = max(0.0, (busy_all - ours) / (elapsed * NCPU) * 100)
    run.load_avg_1m = os.getloadavg()[0]
    return run


# ------------------------------------------------------------------ the harness


@dataclass
class Config:
    seconds: float
    warmup: float
    connections: int
    threads: int
    quick: bool
    pg_url: str | None
    mint_budget: float  # seconds of consent minting allowed per run
    wait_idle: float  # seconds a run may wait for a quiet machine
    tmp: Path
    sqlite_dir: Path


class Harness:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.servers: list[Server] = []
        self.runs: list[Run] = []
        self.notes: list[str] = []
        self.stub: Server | None = None
        self.stub_url = ""
        self.rate_guess: dict[str, float] = {}
        self.signer: mint.PairSigner | None = None
        self.profile: dict[str, Any] | None = None

    # -- lifecycle

    def launch(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        if self.signer is not None:
            self.signer.close()

    # -- provider stub and baselines

    def start_stub(self) -> None:
        port = free_port()
        if shutil.which("nginx"):
            body = scenario.STUB_BODY.replace("'", "\\'")
            conf = NGINX_STUB.format(dir=self.cfg.tmp / "stub", port=port, body=body)
            self.stub = self.launch(start_nginx("stub (nginx)", conf, self.cfg.tmp / "stub"))
            self.stub_kind = "nginx"
        else:
            self.notes.append("nginx not found: the provider stub is bench/stub_app.py on uvicorn")
            self.stub = self.launch(
                start(
                    "stub (asgi)",
                    [*uvicorn_argv("stub_app:app", port, workers=1)],
                    self.cfg.tmp / "stub.log",
                )
            )
            self.stub_kind = "asgi"
        self.stub_url = f"http://127.0.0.1:{port}"
        wait_http(self.stub_url + scenario.RESOURCE_PATH, self.stub)
        say(f"provider stub ({self.stub_kind}) on {self.stub_url}")

    def baseline_direct(self) -> None:
        assert self.stub is not None
        run = Run("provider direct", "baseline")
        self._warm(self.stub_url + scenario.RESOURCE_PATH)
        self._measure(run, self.stub_url + scenario.RESOURCE_PATH, self.stub, stub=None)

    def baseline_nginx_proxy(self) -> None:
        if not shutil.which("nginx"):
            self.notes.append("nginx not found: no nginx reverse-proxy baseline")
            return
        port = free_port()
        conf = NGINX_PROXY.format(
            dir=self.cfg.tmp / "proxy",
            port=port,
            upstream=self.stub_url.rsplit(":", 1)[1],
            path=scenario.RESOURCE_PATH,
        )
        proxy = self.launch(start_nginx("nginx proxy", conf, self.cfg.tmp / "proxy"))
        url = f"http://127.0.0.1:{port}/"
        wait_http(url, proxy)
        self._warm(url)
        self._measure(Run("nginx reverse proxy", "baseline"), url, proxy, stub=self.stub)
        proxy.stop()

    def baseline_relay(self) -> None:
        port = free_port()
        env = {**clean_env(), "BENCH_UPSTREAM": self.stub_url + scenario.RESOURCE_PATH}
        relay = self.launch(
            start(
                "naive relay",
                uvicorn_argv("relay_app:app", port, workers=1),
                self.cfg.tmp / "relay.log",
                env,
            )
        )
        url = f"http://127.0.0.1:{port}/"
        wait_http(url, relay)
        self._warm(url)
        self._measure(Run("naive Starlette+httpx relay", "baseline"), url, relay, stub=self.stub)
        relay.stop()

    def _warm(self, url: str) -> None:
        run_wrk(
            url,
            seconds=max(1.0, self.cfg.warmup / 2),
            connections=self.cfg.connections,
            threads=self.cfg.threads,
            script=BENCH / "wrk_report.lua",
        )

    def _quiet(self) -> None:
        if self.cfg.wait_idle > 0:
            waited = wait_idle(self.cfg.wait_idle)
            if waited > 1.5:
                say(f"  waited {waited:.0f} s for a quieter machine")

    def _measure(self, run: Run, url: str, server: Server, *, stub: Server | None) -> None:
        self._quiet()
        say(f"measuring {run.name} for {self.cfg.seconds:g} s")
        measure(
            run,
            url,
            seconds=self.cfg.seconds,
            connections=self.cfg.connections,
            threads=self.cfg.threads,
            server=server,
            stub=stub,
        )
        self.runs.append(run)
        say(f"  {run.rps:,.0f} req/s, p99 {run.p99_ms:.1f} ms, errors {run.errors}")

    # -- the gateway

    def prepare_gateway(self) -> None:
        from gateway.jose import SigningKey
        from gateway.keys import load_keys

        self.data_dir = self.cfg.tmp / "gateway-data"  # keys (shared by every gateway run)
        self.data_dir.mkdir()
        # Created up front, as the gateway would (demo keys too): the signer pool reads them.
        load_keys(self.data_dir / "keys", create=True, demo=True)
        client_key = SigningKey.generate_es256()
        self.dpop_pem = SigningKey.generate_es256().to_pem()
        jwk = client_key.public_jwk()
        self.policies = self.cfg.tmp / "policies"
        scenario.write_policies(
            self.policies,
            stub_url=self.stub_url,
            client_jwk={k: jwk[k] for k in ("kty", "crv", "x", "y", "kid")},
        )
        self.new_port()

    def new_port(self) -> None:
        # A fresh port per gateway run: a port just closed may hold TIME_WAIT sockets.
        self.gateway_port = free_port()
        self.issuer = f"http://127.0.0.1:{self.gateway_port}"

    def gateway_env(self, database_url: str) -> dict[str, str]:
        return {
            **clean_env(),
            "GATEWAY_DEMO": "1",  # http:// loopback provider allowed
            "GATEWAY_DATA_DIR": str(self.data_dir),
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_POLICIES": str(self.policies),
            "GATEWAY_ISSUER": self.issuer,
            # Production format and level: logging is part of the cost.
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_LOG_LEVEL": "info",
        }

    def fresh_database(self, database: str, tag: str) -> tuple[str, Callable[[], list[int]]]:
        """A new, migrated database for one gateway run; returns its URL and a pid probe."""
        if database == "sqlite":
            directory = self.cfg.sqlite_dir / f"db-{tag}"
            directory.mkdir(parents=True)
            url = f"sqlite:///{directory / 'gateway.db'}"
            probe: Callable[[], list[int]] = list
        else:
            assert self.cfg.pg_url is not None
            url = self.cfg.pg_url
            asyncio.run(pg_recreate(url))
            probe = pg_backend_probe(url)
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "db", "upgrade"],
            env=self.gateway_env(url),
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return url, probe

    def mint_pairs(self, env: dict[str, str], count: int, out: Path) -> mint.MintTiming:
        """Create ``count`` consents in the database of ``env`` and sign their pairs."""
        if self.signer is None:
            self.signer = mint.PairSigner(self.data_dir / "keys", self.dpop_pem)
            say(f"  signer pool of {self.signer.processes} started in {self.signer.warm():.1f} s")
        return asyncio.run(mint.mint_pairs(count, env, self.signer, self.issuer, out))

    def gateway(self, database: str, workers: int, *, profile: bool = False) -> Run | None:
        name = f"gateway {database} {workers}w" + (" (profiled)" if profile else "")
        tag = f"{database}-{workers}w" + ("-profile" if profile else "")
        say(f"preparing {name}")
        self.new_port()
        url, db_probe = self.fresh_database(database, tag)
        env = self.gateway_env(url)
        work = self.cfg.tmp / tag
        work.mkdir()
        path = scenario.DATA_PATH

        # A first pool sized on a guess; the warm-up measures the real rate.
        guess = self.rate_guess.get(f"{database}-{workers}") or (
            workers * self.rate_guess.get(f"{database}-1", self.rate_guess.get("any", 150.0))
        )
        warm_pool = max(200, math.ceil(guess * self.cfg.warmup * 1.5))
        minted = self.mint_pairs(env, warm_pool, work / "warm.tsv")
        say(f"  warm-up pool: {minted.describe()}")
        server = self.launch(
            start(
                name,
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "serve",
                    "--port",
                    str(self.gateway_port),
                    "--workers",
                    str(workers),
                ],
                work / "gateway.log",
                env,
            )
        )
        try:
            wait_http(
                self.issuer + "/healthz",
                server,
                expect_processes=1 if workers == 1 else workers + 1,
            )
            warm, _ = run_wrk(
                self.issuer,
                seconds=self.cfg.warmup,
                connections=self.cfg.connections,
                threads=self.cfg.threads,
                script=BENCH / "wrk_gateway.lua",
                script_args=[str(work / "warm.tsv"), str(self.cfg.threads), path],
            )
            ok = sum(v for k, v in warm["statuses"].items() if k.startswith("2"))
            rate = ok / (warm["duration_us"] / 1e6)
            if warm["pool_exhausted"]:
                rate = max(rate, warm_pool / self.cfg.warmup) * 2  # a lower bound only
            say(f"  warm-up: {rate:,.0f} transfers/s ({dict(warm['statuses'])})")
            if ok == 0:
                raise RuntimeError(
                    f"{name}: no transfer succeeded in the warm-up "
                    f"(statuses {warm['statuses']}); see {work / 'gateway.log'}:\n"
                    + _tail(work / "gateway.log")
                )
            mint_rate = minted.rate  # consents per second we can mint, start-up excluded
            run = Run(name, "gateway", workers=workers, database=database)
            profiler = None
            for attempt in (1, 2):
                # Enough for the whole run with a margin, plus what is in flight at
                # the end; bounded by what can be minted within the budget.
                seconds = self.cfg.seconds
                margin = self.cfg.connections * 8
                count = math.ceil(rate * seconds * 1.5 * attempt) + margin
                budget = max(500, int(mint_rate * self.cfg.mint_budget))
                if count > budget:
                    count = budget
                    seconds = max(3.0, (budget - margin) / (rate * 1.5 * attempt))
                    run.notes.append(
                        f"measured {seconds:.1f} s instead of {self.cfg.seconds:g} s: minting "
                        f"{budget} consents is all the {self.cfg.mint_budget:g} s budget allows"
                    )
                minted = self.mint_pairs(env, count, work / "pairs.tsv")
                say(f"  {minted.describe()}; measuring for {seconds:.3g} s")
                run.pool = count
                self._quiet()
                if profile:
                    profiler = start_profiler(server, work, seconds)
                counts_before = trail_counts(self.issuer)
                measure(
                    run,
                    self.issuer,
                    seconds=seconds,
                    connections=self.cfg.connections,
                    threads=self.cfg.threads,
                    server=server,
                    stub=self.stub,
                    db_pids=db_probe,
                    script=BENCH / "wrk_gateway.lua",
                    script_args=[str(work / "pairs.tsv"), str(self.cfg.threads), path],
                )
                counts = trail_counts(self.issuer)
                run.trail_batches = int(counts["batches"] - counts_before["batches"])
                run.trail_batches_retried = int(counts["retried"] - counts_before["retried"])
                if run.trail_batches:
                    units = counts["units"] - counts_before["units"]
                    run.trail_units_per_batch = round(units / run.trail_batches, 1)
                if not run.pool_exhausted or attempt == 2 or profile:
                    break
                say(f"  the pool of {count} ran out at {run.rps:,.0f}/s: again with a larger one")
                rate = max(rate, run.rps)
                if profiler is not None:
                    finish_profiler(profiler, work)
                    profiler = None
            if profiler is not None:
                self.profile = finish_profiler(profiler, work)
            self.rate_guess[f"{database}-{workers}"] = max(run.rps, 1.0)
            self.rate_guess["any"] = max(self.rate_guess.get("any", 0.0), run.rps / workers)
            if run.pool_exhausted:
                # wrk stopped sending: the throughput is understated. Never silent.
                run.errors += 1
                run.error_detail["pool_exhausted"] = 1
                run.notes.append(
                    f"the pre-minted pool of {run.pool} ran out before the end: throughput "
                    "understated, counted as an error"
                )
            if run.consent_exhausted:
                run.notes.append(f"{run.consent_exhausted} consent_exhausted (a reused consent)")
            say(
                f"  {run.rps:,.0f} req/s, p99 {run.p99_ms:.1f} ms, errors {run.errors} "
                f"{run.statuses}; trail: {run.trail_batches} batches of "
                f"{run.trail_units_per_batch:g} units, {run.trail_batches_retried} retried"
            )
            if not profile:
                self.runs.append(run)
            return run
        finally:
            server.stop()


def uvicorn_argv(app: str, port: int, *, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(BENCH),
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def clean_env() -> dict[str, str]:
    """The environment without any GATEWAY_* variable of the caller's shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


def _pg_parts(url: str) -> tuple[str, str]:
    base, _, name = url.rpartition("/")
    return base, name


async def pg_recreate(url: str) -> None:
    import asyncpg

    base, name = _pg_parts(url)
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unexpected database name {name!r}")
    conn = await asyncpg.connect(base + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def pg_backend_probe(url: str) -> Callable[[], list[int]]:
    """Pids of the PostgreSQL backends serving the bench database (their CPU is the DB's)."""
    base, name = _pg_parts(url)

    def probe() -> list[int]:
        import asyncpg

        async def query() -> list[int]:
            conn = await asyncpg.connect(base + "/postgres")
            try:
                rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", name)
                return [int(r["pid"]) for r in rows]
            finally:
                await conn.close()

        return asyncio.run(query())

    return probe


async def pg_reachable(url: str) -> str | None:
    import asyncpg

    base, _ = _pg_parts(url)
    try:
        conn = await asyncio.wait_for(asyncpg.connect(base + "/postgres"), 5)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


# ------------------------------------------------------------------ profiling


def start_profiler(server: Server, work: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        say("  py-spy not found: no profile (pip install py-spy)")
        return None
    return subprocess.Popen(  # noqa: S603
        [
            spy,
            "record",
            "--pid",
            str(server.proc.pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "250",
            "--nonblocking",
            "--gil",  # samples holding the GIL: where Python time goes (waits excluded)
            "--threads",
            "--format",
            "raw",
            "--output",
            str(work / "profile.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "py-spy.log").open("wb"),
    )


# Where a sample's innermost Python frame lives decides its bucket.
BUCKETS = [
    ("gateway code", ("gateway/",)),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("SQLite driver (aiosqlite thread, sqlite3)", ("aiosqlite/", "sqlite3/")),
    ("asyncpg", ("asyncpg/",)),
    ("httpx / httpcore (relay client)", ("httpx/", "httpcore/", "h11/", "anyio/", "sniffio/")),
    ("uvicorn (HTTP server)", ("uvicorn/",)),
    ("Starlette", ("starlette/",)),
    ("PyJWT + cryptography (JWS)", ("jwt/", "cryptography/")),
    ("structlog / logging", ("structlog/", "logging/")),
    ("rfc8785 (canonical JSON)", ("rfc8785/",)),
    ("json", ("json/",)),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
]


def _frame_file(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"
    inside = frame[frame.rfind("(") + 1 : frame.rfind(")")] if "(" in frame else frame
    return inside.rsplit(":", 1)[0]


def bucket_of(frame: str) -> str:
    path = _frame_file(frame)
    for name, needles in BUCKETS:
        if any(n in path for n in needles):
            return name
    return "other (stdlib, uuid, dataclasses, ...)"


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` -> ``name (path/file.py)``: lines of one function merged."""
    head, sep, tail = frame.rpartition(":")
    return f"{head})" if sep and tail.rstrip(")").isdigit() else frame


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Shares of GIL-holding samples from py-spy's collapsed stacks (``--threads``)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        parts = stack.split(";")
        thread = next((f for f in parts if f.startswith("thread (")), "")
        frames = [_function(f) for f in parts if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        if "MainThread" in thread:
            threads["event loop (main thread)"] += n
        elif "_connection_worker_thread" in thread:
            threads["aiosqlite connection threads"] += n
        elif "trail-writer" in thread:
            threads["trail writer thread"] += n
        else:
            threads["other threads"] += n
        own[frames[-1]] += n
        buckets[bucket_of(frames[-1])] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {"samples": 0}

    def share(counter: collections.Counter[str], k: int) -> list[tuple[str, float]]:
        return [(f, round(n / total, 4)) for f, n in counter.most_common(k)]

    gateway_inclusive = collections.Counter(
        {f: n for f, n in inclusive.items() if "gateway/" in _frame_file(f)}
    )
    return {
        "samples": total,
        "threads": share(threads, 4),
        "buckets": share(buckets, len(buckets) + 1),
        "self": share(own, top),
        "gateway_inclusive": share(gateway_inclusive, top),
    }


def finish_profiler(proc: subprocess.Popen[bytes], work: Path) -> dict[str, Any] | None:
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None
    raw = work / "profile.txt"
    if not raw.exists():
        say(f"  py-spy wrote nothing; see {work / 'py-spy.log'}")
        return None
    summary = summarise_profile(raw)
    summary["raw"] = str(raw)
    return summary


# ------------------------------------------------------------------ report


def ratios(runs: list[Run]) -> list[dict[str, Any]]:
    baselines = [r for r in runs if r.kind == "baseline"]
    out = []
    for g in (r for r in runs if r.kind == "gateway"):
        for b in baselines:
            out.append(
                {
                    "gateway": g.name,
                    "baseline": b.name,
                    "throughput_ratio": round(g.rps / b.rps, 3) if b.rps else None,
                    "cpu_per_request_ratio": (
                        round(g.server_cpu_ms_per_req / b.server_cpu_ms_per_req, 2)
                        if b.server_cpu_ms_per_req
                        else None
                    ),
                }
            )
    return out


def targets(runs: list[Run]) -> list[dict[str, Any]]:
    by = {(r.database, r.workers): r for r in runs if r.kind == "gateway"}
    relay = next((r for r in runs if r.name.startswith("naive")), None)
    out: list[dict[str, Any]] = []

    def add(what: str, measured: str, met: bool | None) -> None:
        out.append({"target": what, "measured": measured, "met": met})

    g1 = by.get(("sqlite", 1))
    if g1 and relay:
        ratio = g1.rps / relay.rps
        add(
            f"gateway (1 worker, SQLite) >= {TARGET_RELAY_RATIO} x naive relay (1 worker)",
            f"{ratio:.2f} x ({g1.rps:,.0f} vs {relay.rps:,.0f} req/s)",
            ratio >= TARGET_RELAY_RATIO,
        )
    g2 = by.get(("sqlite", 2))
    if g2:
        add(
            f">= {TARGET_SQLITE_2W_RPS} transfers/s, 2 workers, SQLite",
            f"{g2.rps:,.0f} /s",
            g2.rps >= TARGET_SQLITE_2W_RPS,
        )
    p2 = by.get(("postgresql", 2))
    if p2:
        floor = TARGET_PG_SHARE * TARGET_SQLITE_2W_RPS
        vs = f", {p2.rps / g2.rps:.0%} of SQLite 2w" if g2 and g2.rps else ""
        add(
            f"PostgreSQL 2 workers >= {TARGET_PG_SHARE:.0%} of {TARGET_SQLITE_2W_RPS} "
            f"(>= {floor:,.0f} /s)",
            f"{p2.rps:,.0f} /s{vs}",
            p2.rps >= floor,
        )
    gateways = [r for r in runs if r.kind == "gateway"]
    if gateways:
        worst = max(gateways, key=lambda r: r.p99_ms)
        add(
            f"p99 <= {TARGET_P99_MS:g} ms at 32 connections (every gateway run)",
            f"worst {worst.p99_ms:,.1f} ms ({worst.name})",
            worst.p99_ms <= TARGET_P99_MS,
        )
        errors = sum(r.errors for r in gateways)
        add("zero errors (every gateway run)", f"{errors} errors", errors == 0)
    return out


def table(runs: list[Run]) -> str:
    head = (
        f"{'run':<32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'CPU ms/req':>10} {'DB ms/req':>9} {'others %':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        db = f"{r.db_cpu_ms_per_req:9.3f}" if r.database == "postgresql" else f"{'-':>9}"
        lines.append(
            f"{r.name:<32} {r.rps:9,.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.errors:7d} "
            f"{r.server_cpu_ms_per_req:10.3f} {db} {r.other_load_pct:8.0f}"
        )
    return "\n".join(lines)


def report(
    h: Harness, cfg: Config, started: datetime, code_at_start: dict[str, Any]
) -> dict[str, Any]:
    code_at_end = code_version()
    return {
        "started": started.isoformat(timespec="seconds"),
        "code": {**code_at_start, "changed_during_run": code_at_end != code_at_start},
        "machine": {
            "cpus": NCPU,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_at_end": os.getloadavg(),
        },
        "settings": {
            "seconds": cfg.seconds,
            "warmup": cfg.warmup,
            "connections": cfg.connections,
            "wrk_threads": cfg.threads,
            "quick": cfg.quick,
            "sqlite_dir": str(cfg.sqlite_dir),
            "stub": getattr(h, "stub_kind", None),
            "stub_body_bytes": len(scenario.STUB_BODY.encode()),
            "packages": package_versions(),
        },
        "runs": [r.__dict__ for r in h.runs],
        "ratios": ratios(h.runs),
        "targets": targets(h.runs),
        "profile": h.profile,
        "notes": h.notes,
    }


def code_version() -> dict[str, Any]:
    """The commit measured and whether gateway/ had uncommitted changes (read-only git)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(  # noqa: S603
                ["git", *args],  # noqa: S607
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "gateway_dirty": bool(git("status", "--porcelain", "--", "gateway")),
    }


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("uvicorn", "starlette", "httpx", "httpcore", "sqlalchemy", "aiosqlite",
                 "asyncpg", "pyjwt", "cryptography", "structlog", "anyio", "sniffio",
                 "uvloop", "httptools", "aiohttp"):  # fmt: skip
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def print_report(data: dict[str, Any], h: Harness) -> None:
    print()
    print(table(h.runs))
    print()
    print("CPU ms/req: CPU of the measured server's processes / requests (not the stub, not wrk);")
    print("DB ms/req: PostgreSQL backends; others %: CPU used by unrelated processes meanwhile.")
    gateways = [r for r in h.runs if r.kind == "gateway"]
    baselines = [r for r in h.runs if r.kind == "baseline"]
    if gateways and baselines:
        print()
        print("gateway / baseline, throughput (CPU per request):")
        width = max(len(b.name) for b in baselines)
        print(f"{'':<24}" + "".join(f"  {b.name:>{width}}" for b in baselines))
        for g in gateways:
            cells = []
            for b in baselines:
                t = g.rps / b.rps if b.rps else float("nan")
                c = (
                    g.server_cpu_ms_per_req / b.server_cpu_ms_per_req
                    if b.server_cpu_ms_per_req
                    else float("nan")
                )
                cells.append(f"  {f'{t:.3f} x ({c:.1f} x)':>{width}}")
            print(f"{g.name:<24}" + "".join(cells))
    for r in h.runs:
        if r.kind == "gateway" and len(r.server_cpu_share) > 1:
            print(f"{r.name}: CPU split between processes {r.server_cpu_share}")
        if r.kind == "gateway":
            print(
                f"{r.name}: {r.server_main_thread_share:.0%} of its CPU in event-loop threads, "
                f"the rest in other threads (aiosqlite, executors)"
            )
        for note in r.notes:
            print(f"{r.name}: {note}")
    if data["targets"]:
        print()
        print("issue 5 targets:")
        for t in data["targets"]:
            mark = "met" if t["met"] else "NOT met"
            print(f"  [{mark:>7}] {t['target']}: {t['measured']}")
    if h.profile and h.profile.get("samples"):
        print()
        print(
            f"profile of one gateway worker under load ({h.profile['samples']} samples "
            "holding the GIL):"
        )
        for name, share in h.profile["threads"]:
            print(f"  {share:6.1%}  {name}")
        print("  by package (innermost Python frame):")
        for name, share in h.profile["buckets"]:
            print(f"  {share:6.1%}  {name}")
        print("  top functions by own time:")
        for frame, share in h.profile["self"][:15]:
            print(f"  {share:6.1%}  {frame}")
        print("  gateway functions, inclusive:")
        for frame, share in h.profile["gateway_inclusive"][:20]:
            print(f"  {share:6.1%}  {frame}")
    code = data["code"]
    dirty = " + uncommitted changes in gateway/" if code["gateway_dirty"] else ""
    print(f"code measured: {code['commit']}{dirty}")
    if code["changed_during_run"]:
        print("WARNING: the commit or gateway/ changed during the run (other work in this tree)")
    for note in h.notes:
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the gateway against baselines.")
    parser.add_argument("--quick", action="store_true", help="short runs (about 2 minutes)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--seconds", type=float, help="measured seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="dropped and recreated!")
    parser.add_argument("--skip-pg", action="store_true", help="no PostgreSQL runs")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument(
        "--only",
        choices=["sqlite-1", "sqlite-2", "postgresql-1", "postgresql-2"],
        action="append",
        help="gateway runs to do (repeatable; default all)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile one SQLite worker with py-spy"
    )
    parser.add_argument(
        "--sqlite-dir",
        type=Path,
        help="where SQLite files go (default: the temp dir, on disk; /dev/shm shows the "
        "ceiling without fsync)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measured run, wait up to SECONDS for the CPUs to be < 25%% busy "
        "(a shared machine); the 'others %%' column shows what remained",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, profile)")
    args = parser.parse_args(argv)

    if not shutil.which("wrk"):
        print("wrk is required (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    seconds = args.seconds or (5.0 if args.quick else 15.0)
    warmup = 2.0 if args.quick else 3.0
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    sqlite_dir = args.sqlite_dir or tmp
    if args.sqlite_dir:
        sqlite_dir = Path(tempfile.mkdtemp(prefix="gw-bench-sqlite-", dir=args.sqlite_dir))
    cfg = Config(
        seconds=seconds,
        warmup=warmup,
        connections=args.connections,
        threads=args.threads,
        quick=args.quick,
        pg_url=None if args.skip_pg else args.pg_url,
        mint_budget=20.0 if args.quick else 60.0,
        wait_idle=args.wait_idle,
        tmp=tmp,
        sqlite_dir=sqlite_dir,
    )
    if cfg.pg_url is not None:
        problem = asyncio.run(pg_reachable(cfg.pg_url))
        if problem:
            say(f"PostgreSQL unreachable ({problem}): PostgreSQL runs skipped")
            cfg.pg_url = None
    started = datetime.now(UTC)
    code_at_start = code_version()
    h = Harness(cfg)
    if cfg.pg_url is None:
        h.notes.append("no PostgreSQL runs")
    say(f"work dir {tmp}; {seconds:g} s per run, {cfg.connections} connections")
    try:
        h.start_stub()
        if not args.skip_baselines:
            h.baseline_direct()
            h.baseline_nginx_proxy()
            h.baseline_relay()
        h.prepare_gateway()
        plan = args.only or ["sqlite-1", "sqlite-2", "postgresql-1", "postgresql-2"]
        for item in plan:
            database, workers = item.split("-")
            if database == "postgresql" and cfg.pg_url is None:
                continue
            try:
                h.gateway(database, int(workers))
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                say(f"  {item} failed: {exc}")
                h.notes.append(f"gateway {item} failed: {exc}")
        if args.profile:
            try:
                h.gateway("sqlite", 1, profile=True)
            except RuntimeError as exc:
                h.notes.append(f"profile run failed: {str(exc).splitlines()[0]}")
    finally:
        h.close()
    data = report(h, cfg, started, code_at_start)
    print_report(data, h)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        say(f"wrote {args.json}")
    if args.keep:
        say(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.sqlite_dir:
            shutil.rmtree(sqlite_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
