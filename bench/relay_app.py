"""Baseline (c): a naive Starlette + httpx relay that checks nothing.

Every request is forwarded to ``BENCH_UPSTREAM`` (the provider stub's URL)
with one shared ``httpx.AsyncClient``, and the answer is returned as is. It is
what someone would write in ten minutes instead of the gateway, and the floor
of what the gateway's HTTP plumbing costs. Run by ``bench/run.py`` as::

    BENCH_UPSTREAM=http://127.0.0.1:PORT/v1/record uvicorn --app-dir bench relay_app:app
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:8081/v1/record")


async def relay(request: Request) -> Response:
    client: httpx.AsyncClient = request.app.state.client
    upstream = await client.get(UPSTREAM)
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type"),
    )


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        app.state.client = client
        yield


app = Starlette(routes=[Route("/{path:path}", relay)], lifespan=lifespan)
