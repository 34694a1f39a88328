"""``gateway serve``: uvicorn, one process per worker, each with its own listening socket.

With ``--workers N`` every worker binds the same address with ``SO_REUSEPORT``,
so the kernel spreads new connections across workers. (A single socket shared
by forked workers, as ``uvicorn --workers`` does, can land every connection on
one worker under load: measured on this project's benchmark machine.) The
parent only supervises: it forwards SIGINT/SIGTERM and exits when the workers
have, with the first non-zero exit status.

Garbage collection: once a worker has started (runtime built, policies
loaded, modules imported), :func:`tune_gc` moves everything alive to the
permanent generation (``gc.freeze``), so later collections stop re-scanning
what lives as long as the process, and raises the thresholds so that the
young generation is collected every 20,000 allocations rather than 700. A
transfer allocates a few thousand containers; with Python's defaults the
collector ran several times per transfer. Measured (bench/README.md): about
−17 % CPU per transfer and half the p99. ``GATEWAY_GC_THRESHOLDS`` overrides
the three thresholds (``Settings.gc_thresholds``; ``700,10,10`` are Python's
own).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import socket
import sys
from types import FrameType

import uvicorn

from gateway import metrics
from gateway.settings import GC_THRESHOLDS


def _socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    # No listen() here: asyncio's create_server listens once the app has started,
    # so the kernel never queues a connection on a worker that cannot serve yet.
    sock.setblocking(False)
    return sock


def tune_gc(thresholds: tuple[int, int, int]) -> None:
    """Freeze what start-up made and set the collector's thresholds (module docstring)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


class _Server(uvicorn.Server):
    """uvicorn's server, tuning the collector once the app's start-up is done."""

    def __init__(self, config: uvicorn.Config, thresholds: tuple[int, int, int]) -> None:
        super().__init__(config)
        self._thresholds = thresholds

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            tune_gc(self._thresholds)


def _config() -> uvicorn.Config:
    return uvicorn.Config(
        "gateway.app:create_app",
        factory=True,
        access_log=False,  # our middleware logs requests without their query strings
        proxy_headers=False,
        server_header=False,
        log_level="warning",
        lifespan="on",
    )


def _worker(host: str, port: int, thresholds: tuple[int, int, int], shared: metrics.Shared) -> None:
    metrics.use_shared(shared)
    sock = _socket(host, port, reuse_port=True)
    _Server(_config(), thresholds).run(sockets=[sock])


def serve(
    host: str, port: int, workers: int, *, gc_thresholds: tuple[int, int, int] = GC_THRESHOLDS
) -> int:
    thresholds = gc_thresholds
    if workers <= 1:
        sock = _socket(host, port, reuse_port=False)
        _Server(_config(), thresholds).run(sockets=[sock])
        return 0
    # Fail early, in the parent, if the address is taken by someone else; the
    # probe never listens, so no connection can be queued on it.
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    probe.bind((host, port))
    # One row per worker in a shared map: /metrics on any worker sums them all.
    shared_file = metrics.create_shared_file(workers)
    try:
        return _supervise(host, port, thresholds, workers, shared_file, probe)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(shared_file)


def _supervise(
    host: str,
    port: int,
    thresholds: tuple[int, int, int],
    workers: int,
    shared_file: str,
    probe: socket.socket,
) -> int:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker,
            args=(host, port, thresholds, metrics.Shared(shared_file, i, workers)),
            name=f"gateway-worker-{i}",
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    probe.close()

    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    status = 0
    for process in processes:
        process.join()
        if process.exitcode and not status and not stopping:
            status = process.exitcode
            print(f"gateway: {process.name} exited with {process.exitcode}", file=sys.stderr)
            forward(signal.SIGTERM, None)
    return status
