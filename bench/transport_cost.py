"""CPU cost of one provider call through each HTTP client stack the relay could use.

    python bench/transport_cost.py [--requests 5000] [--concurrency 32] [--rounds 3]

On loopback, a provider stub in a child process (its CPU is not counted)
answers every request with the ~500-byte JSON body of ``scenario.py``; this
process sends ``--requests`` GETs, ``--concurrency`` at a time, on uvloop,
through:

(a) ``httpx.AsyncClient`` with httpx's default transport (httpcore + anyio),
    what the relay used before ``gateway/transport.py``;
(b) ``httpx.AsyncClient`` with ``gateway.transport.HTTP1Transport``;
(c) ``HTTP1Transport.handle_async_request`` called directly, without the
    client: what ``AsyncClient.send`` itself costs is (b) - (c);
(d) aiohttp directly, if it is installed (it is not a dependency).

Each call builds its ``httpx.Request`` as the relay does and reads the body
with ``aiter_raw`` then closes the response. Reported: process CPU time
(``time.process_time``) per request and requests per second, the median of
``--rounds`` rounds run in turn, with ratios to (a).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenario

from gateway.transport import HTTP1Transport

HEADERS = {
    "Authorization": "Bearer " + "a" * 600,  # about the size of the gateway's assertion
    "Accept": "application/json",
    "X-Transfer-Id": "tr_0123456789abcdef",
    "User-Agent": "gateway/0.1",
}
TIMEOUT = httpx.Timeout(10.0).as_dict()
WARM_UP = 300

Call = Callable[[], Awaitable[bytes]]


# --- the stub (child process) ----------------------------------------------------------


class _Stub(asyncio.Protocol):
    """Answers each request head (GETs, no body) with the same 200 response."""

    body = scenario.STUB_BODY.encode()
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        self.pending += data
        count = self.pending.count(b"\r\n\r\n")
        if count:
            self.pending = self.pending[self.pending.rindex(b"\r\n\r\n") + 4 :]
            self.transport.write(self.response * count)


async def _serve_stub() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Stub, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


@contextlib.contextmanager
def stub_process() -> Any:
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, __file__, "--stub"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"http://127.0.0.1:{port}{scenario.RESOURCE_PATH}"
    finally:
        child.terminate()
        child.wait(5)


# --- the variants ----------------------------------------------------------------------


async def _read(response: httpx.Response) -> bytes:
    try:
        return b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


@contextlib.asynccontextmanager
async def httpx_client(url: str, transport: httpx.AsyncBaseTransport | None) -> AsyncIterator[Call]:
    async with httpx.AsyncClient(
        transport=transport, follow_redirects=False, trust_env=False
    ) as client:

        async def call() -> bytes:
            request = httpx.Request("GET", url, headers=HEADERS, extensions={"timeout": TIMEOUT})
            return await _read(await client.send(request, stream=True))

        yield call


@contextlib.asynccontextmanager
async def transport_alone(url: str) -> AsyncIterator[Call]:
    transport = HTTP1Transport()
    try:

        async def call() -> bytes:
            request = httpx.Request("GET", url, headers=HEADERS, extensions={"timeout": TIMEOUT})
            return await _read(await transport.handle_async_request(request))

        yield call
    finally:
        await transport.aclose()


@contextlib.asynccontextmanager
async def aiohttp_session(url: str) -> AsyncIterator[Call]:
    import aiohttp

    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=10)
    ) as session:

        async def call() -> bytes:
            async with session.get(url, headers=HEADERS, allow_redirects=False) as response:
                return await response.read()

        yield call


VARIANTS: dict[str, Callable[[str], contextlib.AbstractAsyncContextManager[Call]]] = {
    "(a) AsyncClient + httpx default transport": lambda url: httpx_client(url, None),
    "(b) AsyncClient + HTTP1Transport": lambda url: httpx_client(url, HTTP1Transport()),
    "(c) HTTP1Transport alone": transport_alone,
    "(d) aiohttp": aiohttp_session,
}


# --- measuring -------------------------------------------------------------------------


async def _drive(call: Call, requests: int, concurrency: int) -> None:
    remaining = requests
    expected = len(scenario.STUB_BODY.encode())

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            body = await call()
            assert len(body) == expected

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(
    make: Callable[[str], contextlib.AbstractAsyncContextManager[Call]],
    url: str,
    requests: int,
    concurrency: int,
) -> tuple[float, float]:
    """(µs of CPU per request, requests per second), after a warm-up."""
    async with make(url) as call:
        await _drive(call, WARM_UP, concurrency)
        cpu, wall = time.process_time(), time.perf_counter()
        await _drive(call, requests, concurrency)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / requests * 1e6, requests / wall


async def main(args: argparse.Namespace) -> None:
    variants = dict(VARIANTS)
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        del variants["(d) aiohttp"]
        print("aiohttp not installed: (d) skipped")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    with stub_process() as url:
        for _ in range(args.rounds):
            for name, make in variants.items():
                results[name].append(await measure(make, url, args.requests, args.concurrency))
    print(
        f"{args.requests} requests, {args.concurrency} concurrent, uvloop, "
        f"median of {args.rounds} rounds"
    )
    print(f"{'variant':44} {'µs CPU/req':>10} {'req/s':>8} {'CPU vs (a)':>10} {'req/s vs (a)':>12}")
    base_cpu = base_rate = 0.0
    for name, rounds in results.items():
        cpu = statistics.median(r[0] for r in rounds)
        rate = statistics.median(r[1] for r in rounds)
        base_cpu, base_rate = (cpu, rate) if not base_cpu else (base_cpu, base_rate)
        print(f"{name:44} {cpu:10.0f} {rate:8.0f} {cpu / base_cpu:9.2f}× {rate / base_rate:11.2f}×")
        spread = ", ".join(f"{c:.0f}" for c, _ in rounds)
        print(f"{'':44} rounds: {spread} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stub", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    uvloop.run(_serve_stub() if arguments.stub else main(arguments))
