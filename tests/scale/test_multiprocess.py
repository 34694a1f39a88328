"""The rules across real OS processes: ``gateway serve --workers 2`` on one database.

The module starts, as subprocesses on loopback:

- a CNAF provider stub (Starlette under uvicorn) that answers valid JSON and
  remembers the ``X-Transfer-Id`` of every request it receives;
- ``gateway keys generate``, ``gateway db upgrade``, then ``gateway serve
  --workers 2`` (one ``SO_REUSEPORT`` socket per worker process) with
  ``GATEWAY_DEMO=1`` and a copy of ``policies/`` pointing at the stub.

The test process is a third process on the same database: it creates consents
through the gateway's own code (``build_runtime``, then ``ensure_subject``,
``create_pending`` and ``grant`` in a unit of work of its trail writer), mints
DPoP-bound consent tokens with the gateway's keys from the shared data dir,
signs DPoP proofs with a key of its own, and commits a revoke.

Requests go over raw keep-alive HTTP/1.1 connections. Each connection is
mapped to the worker process that accepted it through ``/proc`` (the server
side of the TCP connection is a socket inode held by exactly one worker), so
every race below is run with the same number of connections on each worker,
and the request ids name the worker (``X-Request-ID``), which the trail records.

Rules checked:

1. N concurrent uses of a single-use consent → one relay, the rest
   ``consent_exhausted``; one ``transfer.authorized``;
2. one DPoP proof sent concurrently → accepted once, the rest
   ``dpop_proof_replayed``;
3. a revoke committed by another process while transfers stream in → no
   ``transfer.authorized`` after ``consent.revoked`` in the trail, and every
   request sent after the revoke returned is refused;
4. one linear trail: indexes 0..n-1, the stored Merkle hashes give the root
   recomputed from the leaves, and the checkpoints the server processes signed
   are all consistent with each other.

PostgreSQL runs need ``GATEWAY_TEST_DATABASE_URL`` (its ``public`` schema is
dropped and rebuilt with ``gateway db upgrade``); the same tests run on one
SQLite file shared by both workers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text

import gateway.trail.merkle as merkle
from gateway.app import build_runtime, close_runtime
from gateway.consents import ConsentState, details_to_json, ensure_subject
from gateway.jose import SigningKey, b64url_encode, jwk_thumbprint
from gateway.policy.decision import AuthorizationDetail, Permit, decide_request
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.storage.engine import create_engine
from gateway.storage.models import checkpoints, consent_allowances, trail_entries
from gateway.subjects import pairwise_subject, subject_lookup
from gateway.tokens import mint_consent_token
from gateway.trail import tree as trail_tree
from gateway.trail.checkpoint import open_checkpoint
from gateway.trail.note import Verifier
from gateway.trail.verify import RootBuilder
from gateway.trail.writer import Tx
from tests.conftest import PG_URL, REPO
from tests.trail.test_writer import check_log

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="maps connections to worker processes through /proc (Linux only)",
)

CLIENT_ID = "mairie-demoville"
PROVIDER = "cnaf"
RESOURCE = "quotient_familial"
STUB_PATH = "/cnaf/v1/quotient-familial"
DATA_PATH = f"/data/{PROVIDER}/{RESOURCE}"
QUERY = "annee=2025&mois=01"
PURPOSE = "family-benefit-eligibility"  # at most 3 transfers per consent
MANY_PURPOSE = "scale-test"  # added to the copied policies: up to 1000 transfers
ACR = "eidas2"
IDENTITY = {"given_name": "Marianne", "family_name": "Exemple", "birthdate": "1980-05-04"}
WORKERS = 2
REPLY_TIMEOUT = 30.0

STUB = r'''
"""CNAF stub: valid JSON for every quotient request; remembers each X-Transfer-Id."""
import socket, sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

seen = {}


def note(request):
    seen.setdefault(request.url.path, []).append(request.headers.get("x-transfer-id", ""))


async def quotient(request):
    note(request)
    q = request.query_params
    return JSONResponse({
        "annee": q.get("annee"), "mois": q.get("mois"), "quotient_familial": 812,
        "allocataire": {"numero": "0123456"},  # not released: minimisation drops it
    })


async def events(request):  # revocation notices (RFC 8935 push)
    note(request)
    await request.body()
    return Response(status_code=202)


async def jwks(request):
    return JSONResponse({"keys": []})


async def stats(request):
    return JSONResponse(seen)


app = Starlette(routes=[
    Route("/cnaf/v1/quotient-familial", quotient),
    Route("/events", events, methods=["POST"]),
    Route("/jwks.json", jwks),
    Route("/__seen", stats),
])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
port_file = Path(sys.argv[1])
port_file.with_suffix(".tmp").write_text(str(sock.getsockname()[1]))
port_file.with_suffix(".tmp").rename(port_file)
uvicorn.Server(
    uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
).run(sockets=[sock])
'''

MANY_PURPOSE_TOML = f"""
[{MANY_PURPOSE}]
label = {{ fr = "Test de montée en charge", en = "Scale test" }}
description = {{ fr = "Plusieurs processus sur une base.", en = "Several processes." }}
legal_basis = "https://w3id.org/dpv#Consent"
dpv = "https://w3id.org/dpv#RequestedServiceProvision"
max_transfers = 1000
max_validity_minutes = 60
retention_days = 0
"""

MANY_GRANT_TOML = f"""
[[grants]]
purpose = "{MANY_PURPOSE}"
provider = "{PROVIDER}"
resources = ["{RESOURCE}"]
"""


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _ppid(int(entry.name)) == pid:
            found.append(int(entry.name))
    return found


def _tcp_sockets(port: int) -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of IPv4 TCP sockets whose local port is ``port``."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port != port:
            continue
        remote_port = int(fields[2].split(":")[1], 16)
        rows.append((local_port, remote_port, fields[3], int(fields[9])))
    return rows


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


LISTEN = "0A"


def listening_workers(parent: int, port: int) -> list[int]:
    """Children of ``parent`` that hold a listening socket on ``port`` (one each: SO_REUSEPORT)."""
    listening = {inode for _, _, state, inode in _tcp_sockets(port) if state == LISTEN}
    return sorted(pid for pid in _children(parent) if _socket_inodes(pid) & listening)


def run_cli(args: Sequence[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(  # noqa: S603 (our interpreter, our CLI)
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"gateway {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def stop_process(proc: subprocess.Popen[bytes], extra_pids: Sequence[int] = ()) -> None:
    """SIGTERM, then SIGKILL what is left: the process, the workers we found, its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for pid in extra_pids:
        if _ppid(pid) in (proc.pid, 1):  # still the worker we started, orphaned or not
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the session we started for it


@dataclass
class Server:
    backend: str
    port: int
    env: dict[str, str]
    workers: list[int]
    stub: str
    log: Path

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


async def reset_postgres(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


def write_policies(directory: Path, stub: str) -> None:
    shutil.copytree(REPO / "policies", directory)
    cnaf = directory / "providers" / "cnaf.toml"
    cnaf.write_text(
        re.sub(r'(?m)^base_url = ".*"$', f'base_url = "{stub}"', cnaf.read_text("utf-8")),
        "utf-8",
    )
    client = directory / "clients" / f"{CLIENT_ID}.toml"
    body = client.read_text("utf-8")
    body = re.sub(r'(?m)^jwks_uri = ".*"$', f'jwks_uri = "{stub}/jwks.json"', body)
    body = re.sub(
        r'(?m)^notification_endpoint = ".*"$', f'notification_endpoint = "{stub}/events"', body
    )
    client.write_text(body + MANY_GRANT_TOML, "utf-8")
    purposes = directory / "purposes.toml"
    purposes.write_text(purposes.read_text("utf-8") + MANY_PURPOSE_TOML, "utf-8")


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path | None) -> None:
    with httpx.Client(trust_env=False, timeout=2.0) as http:
        for _ in range(400):  # 20 s at most
            if proc.poll() is not None:
                detail = log.read_text(errors="replace") if log else ""
                pytest.fail(f"{what} exited with {proc.returncode}:\n{detail[-4000:]}")
            with contextlib.suppress(httpx.TransportError):
                if http.get(url).status_code == 200:
                    return
            time.sleep(0.05)
    pytest.fail(f"{what} never answered {url}")


BACKENDS = [
    pytest.param(
        "postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not PG_URL, reason="needs GATEWAY_TEST_DATABASE_URL (PostgreSQL)"),
        ],
    ),
    "sqlite",
]


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    backend: str = request.param
    work = tmp_path_factory.mktemp(f"scale-{backend}")
    base_env = dict(os.environ, PYTHONPATH=str(REPO))
    for name in list(base_env):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
            del base_env[name]

    (work / "stub.py").write_text(STUB, "utf-8")
    stub_log = (work / "stub.log").open("wb")
    stub_proc = subprocess.Popen(  # noqa: S603 (our interpreter, our script)
        [sys.executable, str(work / "stub.py"), str(work / "stub.port")],
        cwd=work,
        env=base_env,
        stdout=stub_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serve_proc: subprocess.Popen[bytes] | None = None
    serve_log = None
    workers: list[int] = []
    try:
        for _ in range(400):
            if (work / "stub.port").exists() or stub_proc.poll() is not None:
                break
            time.sleep(0.05)
        assert (work / "stub.port").exists(), (work / "stub.log").read_text(errors="replace")
        stub = f"http://127.0.0.1:{int((work / 'stub.port').read_text())}"
        wait_http(f"{stub}/__seen", stub_proc, "provider stub", work / "stub.log")

        write_policies(work / "policies", stub)
        port = free_port()
        env = dict(
            base_env,
            GATEWAY_DATA_DIR=str(work / "var"),
            GATEWAY_POLICIES=str(work / "policies"),
            GATEWAY_ISSUER=f"http://127.0.0.1:{port}",
            GATEWAY_DEMO="1",
            GATEWAY_LOG_FORMAT="json",
            GATEWAY_LOG_LEVEL="info",
        )
        if backend == "postgresql":
            assert PG_URL
            env["GATEWAY_DATABASE_URL"] = PG_URL
            asyncio.run(reset_postgres(PG_URL))
        run_cli(["keys", "generate"], env, work)
        run_cli(["db", "upgrade"], env, work)

        serve_log = (work / "serve.log").open("wb")
        serve_proc = subprocess.Popen(  # noqa: S603 (our interpreter, our CLI)
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(WORKERS),
            ],
            cwd=work,
            env=env,
            stdout=serve_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(
            f"http://127.0.0.1:{port}/healthz", serve_proc, "gateway serve", work / "serve.log"
        )
        for _ in range(400):  # both workers listening (each listens once its app started)
            workers = listening_workers(serve_proc.pid, port)
            if len(workers) == WORKERS or serve_proc.poll() is not None:
                break
            time.sleep(0.05)
        assert len(workers) == WORKERS, (
            f"expected {WORKERS} listening workers, found {workers}:\n"
            + (work / "serve.log").read_text(errors="replace")[-4000:]
        )
        yield Server(backend, port, env, workers, stub, work / "serve.log")
    finally:
        if serve_proc is not None:
            stop_process(serve_proc, workers)
        stop_process(stub_proc)
        stub_log.close()
        if serve_log is not None:
            serve_log.close()


@pytest.fixture
async def rt(server: Server) -> AsyncIterator[Runtime]:
    """A third process on the same database: the gateway's own runtime, no server."""
    runtime = await build_runtime(Settings.from_env(server.env))
    try:
        yield runtime
    finally:
        await close_runtime(runtime)


# --------------------------------------------------------------------------- raw HTTP/1.1


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: float = 0.0  # time.monotonic() when the request was written
    done: float = 0.0
    worker: int = 0
    request_id: str = ""

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        if self.status == 200:
            return None
        kind = str(self.json.get("type", ""))
        return kind.removeprefix("urn:gateway:error:")


class Conn:
    """One keep-alive TCP connection to the gateway, and the worker that accepted it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.local_port = int(writer.get_extra_info("sockname")[1])
        self.worker = 0

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, raw: bytes) -> float:
        self.writer.write(raw)
        return time.monotonic()

    async def reply(self) -> Reply:
        async with asyncio.timeout(REPLY_TIMEOUT):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            assert "content-length" in headers, f"no content-length: {head!r}"
            body = await self.reader.readexactly(int(headers["content-length"]))
        return Reply(status, headers, body, done=time.monotonic(), worker=self.worker)

    async def get(self, target: str, port: int, headers: dict[str, str] | None = None) -> Reply:
        sent = self.send(request_bytes(target, port, headers or {}))
        reply = await self.reply()
        reply.sent = sent
        return reply

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def request_bytes(target: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def owners(server: Server, conns: Sequence[Conn]) -> dict[int, int]:
    """Local port of each connection → pid of the worker holding its server side."""
    wanted = {c.local_port for c in conns}
    inode_of = {
        remote: inode
        for _, remote, state, inode in _tcp_sockets(server.port)
        if remote in wanted and state != LISTEN
    }
    holder = {inode: pid for pid in server.workers for inode in _socket_inodes(pid)}
    return {port: holder[inode] for port, inode in inode_of.items() if inode in holder}


async def spread(server: Server, per_worker: int) -> list[Conn]:
    """Exactly ``per_worker`` open connections accepted by each worker process."""
    kept: dict[int, list[Conn]] = {pid: [] for pid in server.workers}
    for _ in range(20):
        missing = sum(max(0, per_worker - len(c)) for c in kept.values())
        if not missing:
            break
        batch = await asyncio.gather(*(Conn.open(server.port) for _ in range(2 * missing)))
        # Answered once: the worker has accepted the connection, so it holds the socket.
        for warm in await asyncio.gather(*(c.get("/healthz", server.port) for c in batch)):
            assert warm.status == 200
        found = owners(server, batch)
        for conn in batch:
            pid = found.get(conn.local_port)
            if pid is not None and len(kept[pid]) < per_worker:
                conn.worker = pid
                kept[pid].append(conn)
            else:
                await conn.close()
    assert all(len(c) == per_worker for c in kept.values()), {
        pid: len(c) for pid, c in kept.items()
    }
    # Interleave the workers so that a burst written in order alternates between them.
    return [conn for group in zip(*kept.values(), strict=True) for conn in group]


async def close_all(conns: Sequence[Conn]) -> None:
    await asyncio.gather(*(c.close() for c in conns))


# --------------------------------------------------------------------------- consents, proofs


@dataclass
class ServiceProvider:
    """The service provider's side: its DPoP key, proofs and transfer requests."""

    server: Server
    key: SigningKey = field(default_factory=SigningKey.generate_es256)

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.key.public_jwk()
        return {k: public[k] for k in ("kty", "crv", "x", "y")}

    @property
    def jkt(self) -> str:
        return jwk_thumbprint(self.jwk)

    def proof(self, token: str) -> str:
        claims = {
            "jti": secrets.token_urlsafe(18),
            "htm": "GET",
            "htu": self.server.issuer + DATA_PATH,
            "iat": int(time.time()),
            "ath": b64url_encode(hashlib.sha256(token.encode("ascii")).digest()),
        }
        return jwt.encode(
            claims,
            self.key.private_key,
            algorithm=self.key.alg,
            headers={"typ": "dpop+jwt", "alg": self.key.alg, "jwk": self.jwk},
        )

    def transfer(self, token: str, proof: str, request_id: str) -> bytes:
        return request_bytes(
            f"{DATA_PATH}?{QUERY}",
            self.server.port,
            {"Authorization": f"DPoP {token}", "DPoP": proof, "X-Request-ID": request_id},
        )

    async def consent(
        self, rt: Runtime, *, max_transfers: int, purpose: str = PURPOSE
    ) -> tuple[str, str]:
        """An active consent made by the gateway's own code, and its consent token."""
        detail = AuthorizationDetail(PROVIDER, (RESOURCE,), purpose, max_transfers)
        assert isinstance(decide_request(rt.policy, CLIENT_ID, [detail]), Permit)
        person = f"person-{secrets.token_hex(4)}"
        lookup = subject_lookup(rt.keys.pseudonym_secret, rt.settings.idp_issuer, person)

        async def work(tx: Tx) -> str:
            subject_id = await ensure_subject(tx.conn, lookup, tx.now)
            consent_id = await rt.consents.create_pending(
                tx,
                client_id=CLIENT_ID,
                details=[detail],
                redirect_uri="http://127.0.0.1:8090/callback",
                client_state=None,
                code_challenge=secrets.token_urlsafe(32),
                browser_binding=secrets.token_hex(32),
                expires_at=tx.now + timedelta(minutes=10),
            )
            pending = await rt.consents.get(tx.conn, consent_id)
            assert pending is not None
            granted = await rt.consents.grant(
                tx,
                pending,
                subject_id=subject_id,
                acr=ACR,
                sealed_claims=rt.claims_box.seal(IDENTITY, consent_id),
                expires_at=tx.now + timedelta(minutes=30),
            )
            assert granted is not None
            return consent_id

        consent_id = await rt.writer.run(work)
        token, _ = mint_consent_token(
            rt.keys.active,
            issuer=rt.settings.issuer,
            audience=rt.token_audience,
            client_id=CLIENT_ID,
            sub=pairwise_subject(rt.keys.pseudonym_secret, "client", CLIENT_ID, lookup),
            consent_id=consent_id,
            jkt=self.jkt,
            authorization_details=details_to_json([detail]),
            acr=ACR,
            lifetime=300,
            now=time.time(),
        )
        return consent_id, token


async def burst(conns: Sequence[Conn], requests: Sequence[bytes]) -> list[Reply]:
    """Write every request first (one per connection), then read every answer."""
    sent = [conn.send(raw) for conn, raw in zip(conns, requests, strict=True)]
    replies = await asyncio.gather(*(conn.reply() for conn in conns))
    for reply, at in zip(replies, sent, strict=True):
        reply.sent = at
    return list(replies)


async def stub_seen(server: Server) -> dict[str, list[str]]:
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as http:
        answer = await http.get(f"{server.stub}/__seen")
    answer.raise_for_status()
    seen: dict[str, list[str]] = answer.json()
    return seen


@dataclass(frozen=True)
class Entry:
    index: int
    type: str
    transfer_id: str | None
    details: dict[str, Any]


async def consent_trail(rt: Runtime, consent_id: str) -> list[Entry]:
    async with rt.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(trail_entries.c.idx, trail_entries.c.entry)
                .where(trail_entries.c.consent_id == consent_id)
                .order_by(trail_entries.c.idx)
            )
        ).all()
    out = []
    for row in rows:
        event = json.loads(bytes(row.entry).split(b"\n", 1)[1])
        out.append(
            Entry(int(row.idx), event["type"], event.get("transfer_id"), event.get("details", {}))
        )
    return out


async def transfer_trail(rt: Runtime, transfer_ids: set[str]) -> list[Entry]:
    """Entries of these transfers (a refusal before step 3 names no consent)."""
    async with rt.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(trail_entries.c.idx, trail_entries.c.entry)
                .where(trail_entries.c.transfer_id.in_(sorted(transfer_ids)))
                .order_by(trail_entries.c.idx)
            )
        ).all()
    return [_entry(int(row.idx), bytes(row.entry)) for row in rows]


def _entry(index: int, raw: bytes) -> Entry:
    event = json.loads(raw.split(b"\n", 1)[1])
    return Entry(index, event["type"], event.get("transfer_id"), event.get("details", {}))


async def uses_left(rt: Runtime, consent_id: str) -> int:
    async with rt.engine.connect() as conn:
        value = await conn.scalar(
            select(consent_allowances.c.uses_left).where(
                consent_allowances.c.consent_id == consent_id
            )
        )
    return int(value)


def request_id(test: str, conn: Conn, n: int) -> str:
    return f"{test}-w{conn.worker}-{n}"


def worker_in(request_id: str) -> int | None:
    found = re.search(r"-w(\d+)-", request_id)
    return int(found.group(1)) if found else None


def tally(replies: Sequence[Reply]) -> dict[tuple[int, str | None], int]:
    counts: dict[tuple[int, str | None], int] = {}
    for reply in replies:
        counts[(reply.status, reply.code)] = counts.get((reply.status, reply.code), 0) + 1
    return counts


# --------------------------------------------------------------------------- the rules


async def test_single_use_consent_raced_by_both_workers(server: Server, rt: Runtime) -> None:
    sp = ServiceProvider(server)
    consent_id, token = await sp.consent(rt, max_transfers=1)
    conns = await spread(server, per_worker=20)
    try:
        requests = [
            sp.transfer(token, sp.proof(token), request_id("single", c, i))
            for i, c in enumerate(conns)
        ]
        before = await stub_seen(server)
        replies = await burst(conns, requests)
    finally:
        await close_all(conns)

    counts = tally(replies)
    assert counts == {(200, None): 1, (403, "consent_exhausted"): 39}, server.log_tail()
    [winner] = [r for r in replies if r.status == 200]
    assert winner.json == {"annee": "2025", "mois": "01", "quotient_familial": 812}
    # Both workers took part in the race, each refused some of the 39 losers.
    assert {r.worker for r in replies if r.status == 403} == set(server.workers)

    # The provider was called exactly once, for the winner's transfer.
    after = await stub_seen(server)
    relayed = after.get(STUB_PATH, [])[len(before.get(STUB_PATH, [])) :]
    assert relayed == [winner.headers["transfer-id"]]

    trail = await consent_trail(rt, consent_id)
    authorized = [e for e in trail if e.type == "transfer.authorized"]
    assert [e.transfer_id for e in authorized] == [winner.headers["transfer-id"]]
    denied = [e for e in trail if e.type == "transfer.denied"]
    assert len(denied) == 39
    assert {e.details["code"] for e in denied} == {"consent_exhausted"}
    assert {worker_in(e.details["request_id"]) for e in denied} == set(server.workers)
    assert [e.type for e in trail].count("consent.exhausted") == 1
    assert await uses_left(rt, consent_id) == 0


async def test_one_dpop_proof_sent_concurrently_is_accepted_once(
    server: Server, rt: Runtime
) -> None:
    sp = ServiceProvider(server)
    consent_id, token = await sp.consent(rt, max_transfers=3)
    proof = sp.proof(token)
    conns = await spread(server, per_worker=10)
    try:
        requests = [
            sp.transfer(token, proof, request_id("replay", c, i)) for i, c in enumerate(conns)
        ]
        before = await stub_seen(server)
        replies = await burst(conns, requests)
    finally:
        await close_all(conns)

    counts = tally(replies)
    assert counts == {(200, None): 1, (401, "dpop_proof_replayed"): 19}, server.log_tail()
    assert {r.worker for r in replies if r.status == 401} == set(server.workers)
    [winner] = [r for r in replies if r.status == 200]
    after = await stub_seen(server)
    relayed = after.get(STUB_PATH, [])[len(before.get(STUB_PATH, [])) :]
    assert relayed == [winner.headers["transfer-id"]]

    trail = await consent_trail(rt, consent_id)
    assert [e.transfer_id for e in trail if e.type == "transfer.authorized"] == [
        winner.headers["transfer-id"]
    ]
    refused = {r.headers["transfer-id"] for r in replies if r.status == 401}
    denied = await transfer_trail(rt, refused)
    assert len(refused) == len(denied) == 19
    assert {e.type for e in denied} == {"transfer.denied"}
    assert {(e.details["step"], e.details["code"]) for e in denied} == {(2, "dpop_proof_replayed")}
    assert await uses_left(rt, consent_id) == 2  # only the accepted proof used the consent


async def test_no_transfer_authorized_after_a_revoke_by_another_process(
    server: Server, rt: Runtime
) -> None:
    sp = ServiceProvider(server)
    consent_id, token = await sp.consent(rt, max_transfers=1000, purpose=MANY_PURPOSE)
    conns = await spread(server, per_worker=4)
    replies: list[Reply] = []
    revoked_at: float | None = None  # time.monotonic() once the revoke has committed
    after_revoke_each = 3
    deadline = time.monotonic() + 20

    async def stream(conn: Conn) -> None:
        sent_after = 0
        for n in range(300):  # bounded; the revoke comes long before
            reply = await conn.get(
                f"{DATA_PATH}?{QUERY}",
                server.port,
                {
                    "Authorization": f"DPoP {token}",
                    "DPoP": sp.proof(token),
                    "X-Request-ID": request_id("revoke", conn, n),
                },
            )
            reply.worker = conn.worker
            replies.append(reply)
            if revoked_at is not None and reply.sent > revoked_at:
                sent_after += 1
            if sent_after >= after_revoke_each or time.monotonic() > deadline:
                return

    try:
        streams = [asyncio.create_task(stream(c)) for c in conns]
        for _ in range(1000):  # until both workers have relayed a few (10 s at most)
            done = [r for r in replies if r.status == 200]
            if len(done) >= 10 and {r.worker for r in done} == set(server.workers):
                break
            if any(s.done() for s in streams):
                break
            await asyncio.sleep(0.01)

        async def revoke(tx: Tx) -> bool:
            consent = await rt.consents.get(tx.conn, consent_id)
            assert consent is not None
            return await rt.consents.end(
                tx, consent, to=ConsentState.REVOKED, reason="person_revoked"
            )

        notices_before = len((await stub_seen(server)).get("/events", []))
        revoke_started = time.monotonic()
        assert await rt.writer.run(revoke)
        revoked_at = time.monotonic()
        await asyncio.gather(*streams)
    finally:
        await close_all(conns)

    assert len(replies) < 8 * 300, "the streams never saw the revoke"
    ok = [r for r in replies if r.status == 200]
    assert ok and {r.worker for r in ok} == set(server.workers), tally(replies)
    in_flight = [r for r in replies if r.sent <= revoked_at and r.done >= revoke_started]
    after = [r for r in replies if r.sent > revoked_at]
    assert len(after) >= 8 * after_revoke_each
    # Every request sent once the revoke had returned was refused, by both workers.
    assert {(r.status, r.code) for r in after} == {(403, "consent_revoked")}, tally(after)
    assert {r.worker for r in after} == set(server.workers)
    assert all(r.status in (200, 403) for r in replies), tally(replies)
    assert {r.code for r in replies if r.status == 403} == {"consent_revoked"}, tally(replies)

    trail = await consent_trail(rt, consent_id)
    [revoked] = [e.index for e in trail if e.type == "consent.revoked"]
    authorized = [e for e in trail if e.type == "transfer.authorized"]
    # No process authorized a transfer after the revoke in the one trail.
    assert authorized and max(e.index for e in authorized) < revoked
    assert {e.transfer_id for e in authorized} == {r.headers["transfer-id"] for r in ok}
    assert len([e for e in trail if e.type == "transfer.completed"]) == len(ok)
    seen = await stub_seen(server)
    relayed = set(seen.get(STUB_PATH, []))
    assert {e.transfer_id for e in authorized} <= relayed
    assert not {r.headers["transfer-id"] for r in replies if r.status == 403} & relayed

    # Both workers poll the notice outbox: the revocation notice goes out exactly once.
    for _ in range(100):  # 10 s at most
        if any(e.type == "notice.delivered" for e in await consent_trail(rt, consent_id)):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # more than one polling interval of each worker
    notices = [e for e in await consent_trail(rt, consent_id) if e.type.startswith("notice.")]
    assert [e.type for e in notices] == ["notice.delivered"]
    assert len((await stub_seen(server)).get("/events", [])) == notices_before + 1
    print(
        f"[{server.backend}] revoke: {len(ok)} relayed, {len(replies) - len(ok)} refused, "
        f"{len(in_flight)} in flight while it committed"
    )


async def test_one_linear_trail_and_consistent_checkpoints(server: Server, rt: Runtime) -> None:
    # Some traffic of this test's own from both workers, so that it holds run alone too.
    sp = ServiceProvider(server)
    _, token = await sp.consent(rt, max_transfers=3)
    conns = await spread(server, per_worker=3)
    try:
        requests = [
            sp.transfer(token, sp.proof(token), request_id("linear", c, i))
            for i, c in enumerate(conns)
        ]
        replies = await burst(conns, requests)
    finally:
        await close_all(conns)
    assert tally(replies) == {(200, None): 3, (403, "consent_exhausted"): 3}

    # Wait until the workers have signed a checkpoint of the whole, settled, tree
    # (the revocation notice of the previous test may still add notice.delivered).
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as http:
        verifier = Verifier.from_key(
            (await http.get(f"{server.issuer}/trail/verifier-key")).text.strip()
        )
        size = -1
        for _ in range(200):  # 20 s at most
            async with rt.engine.connect() as conn:
                size = await trail_tree.tree_size(conn)
            answer = await http.get(f"{server.issuer}/trail/checkpoint")
            if answer.status_code == 200 and open_checkpoint(answer.text, verifier).size == size:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"no checkpoint at the tree size {size}")

        async with rt.engine.connect() as conn:
            # 0..n-1 without a gap, leaf hashes of the stored bytes, stored hashes exactly
            # those of n leaves, stored root = root recomputed from the leaves.
            entries = await check_log(conn)
            assert len(entries) == size
            builder = RootBuilder()
            for entry in entries:
                builder.add(merkle.leaf_hash(entry.entry))
            assert await trail_tree.root_at(conn, size) == builder.root()

            notes = [str(n) for n in (await conn.execute(select(checkpoints.c.note))).scalars()]
            signed = sorted((open_checkpoint(n, verifier) for n in notes), key=lambda cp: cp.size)
            assert signed and signed[-1].size == size
            for cp in signed:
                assert await trail_tree.root_at(conn, cp.size) == cp.root
            for i, old in enumerate(signed):
                for new in signed[i:]:
                    proof = await trail_tree.consistency(conn, old.size, new.size)
                    merkle.verify_consistency(proof, old.size, old.root, new.size, new.root)

        # The gateway's own proof between the oldest and the newest checkpoint.
        oldest, newest = signed[0], signed[-1]
        answer = await http.get(
            f"{server.issuer}/trail/proof/consistency",
            params={"old": oldest.size, "new": newest.size},
        )
        assert answer.status_code == 200, answer.text
        proof = [base64.b64decode(h) for h in answer.json()["hashes"]]
        merkle.verify_consistency(proof, oldest.size, oldest.root, newest.size, newest.root)

    # Both worker processes wrote into this one log.
    writers = set()
    for entry in entries:
        event = json.loads(entry.entry.split(b"\n", 1)[1])
        rid = event.get("details", {}).get("request_id")
        if event["type"].startswith("transfer.") and isinstance(rid, str):
            writers.add(worker_in(rid))
    assert writers == set(server.workers)
    # Nothing went wrong on the way in either worker (a failed batch, a lock timeout...).
    problems = [
        line
        for line in server.log.read_text(errors="replace").splitlines()
        if '"level": "error"' in line or line.startswith("Traceback")
    ]
    assert not problems, "\n".join(problems[:20])
    print(f"[{server.backend}] trail: {size} entries, {len(signed)} checkpoints, all consistent")


def _metric(reply: Reply, name: str, **labels: str) -> float:
    assert reply.status == 200, reply.body[:300]
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in the scrape")


async def test_metrics_on_either_worker_count_both_workers(server: Server, rt: Runtime) -> None:
    """/metrics answers for the process group, whichever worker the scrape lands on."""
    healthz = {"name": "gateway_http_requests_total", "handler": "/healthz", "code": "2xx"}
    conns = await spread(server, per_worker=1)  # conns[0] and conns[1]: one on each worker
    try:
        first = await conns[0].get("/metrics", server.port)
        start = _metric(first, **healthz)
        for conn in conns:
            for _ in range(10):
                assert (await conn.get("/healthz", server.port)).status == 200
        # A worker counts a request just after writing its answer; allow it a moment.
        for _ in range(50):
            scrapes = [await conn.get("/metrics", server.port) for conn in conns]
            if all(_metric(s, **healthz) == start + 20 for s in scrapes):
                break
            await asyncio.sleep(0.02)
        for scrape in scrapes:
            assert _metric(scrape, **healthz) == start + 20  # 10 went to each worker
            assert _metric(scrape, "gateway_metrics_workers") == 2
    finally:
        await close_all(conns)

    # Every completed transfer of this module, whichever worker relayed it, is counted once.
    async with rt.engine.connect() as conn:
        raw = (await conn.execute(select(trail_entries.c.entry))).scalars().all()
    completed = sum(1 for e in raw if _entry(0, bytes(e)).type == "transfer.completed")
    for scrape in scrapes:
        assert _metric(scrape, "gateway_transfers_total", outcome="completed") == completed
