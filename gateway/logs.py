"""Structured logs (structlog): JSON by default, a request id bound per request.

Logs carry event names, ids and codes: never tokens, names, birth dates or
payloads. The request id comes from a valid ``X-Request-ID`` header or is
generated, is bound with a pure ASGI middleware (context variables survive,
unlike with ``BaseHTTPMiddleware``) and is echoed in the response.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.ids import random_id

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def configure(log_format: str, level: str = "info") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_StderrLogger,
        cache_logger_on_first_use=False,
    )


class _StderrLogger:
    """Writes each line to the *current* ``sys.stderr`` (test runners swap it)."""

    def __init__(self, *args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def valid_request_id(value: str | None) -> str | None:
    return value if value and _REQUEST_ID.fullmatch(value) else None


class RequestContextMiddleware:
    """Bind a request id to the log context, echo it, and log one line per request.

    ``observe`` is then called with the scope (after routing: its ``endpoint``
    says which route answered), the status and the seconds taken: the
    request metrics, without a middleware layer of their own.
    """

    def __init__(
        self, app: ASGIApp, observe: Callable[[Scope, int, float], None] | None = None
    ) -> None:
        self.app = app
        self.log = structlog.get_logger("gateway.http")
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                sent = valid_request_id(value.decode("latin-1"))
        request_id = sent or random_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                self._log_request(scope, status, elapsed)
                if self.observe is not None:
                    self.observe(scope, status, elapsed)

    def _log_request(self, scope: Scope, status: int, elapsed: float) -> None:
        # The path only: query strings can carry codes and states.
        self.log.info(
            "http.request",
            method=scope.get("method"),
            path=scope.get("path"),
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )
