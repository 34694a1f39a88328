"""An HTTP/1.1 client transport for httpx, on asyncio, parsing with httptools.

Why: httpx's default transport (httpcore on anyio) costs most of the CPU the
relay spends per request; this one keeps httpx as the client API and does only
what the relay needs (figures in ``bench/transport_cost.py``):

- one keep-alive pool per origin (scheme, host, port), bounded in idle and in
  total connections; at the bound a request waits for a free connection;
- a connection is reused only after a complete response that allows it
  (RFC 9112 §9.3): never after ``Connection: close``, an HTTP/1.0 answer
  without keep-alive, a body delimited by the close, or once the server has
  closed it;
- a GET or HEAD that fails on a reused connection before any byte of the
  answer arrived — the server closed it while it sat in the pool — is retried
  once on a new connection (RFC 9112 §9.3.1, RFC 9110 §9.2.2);
- https through an ``ssl.SSLContext`` (verification on), http for loopback;
- timeouts from ``request.extensions["timeout"]``, failures raised as httpx's
  own exceptions, so callers map them as with the default transport;
- the response body streamed as it arrives (Content-Length, chunked, or until
  the close, RFC 9112 §6.3); a response closed before its end arrived closes
  its connection.

Not here, by design: cookies and redirects (the client's business; the relay
turns both off), proxies, HTTP/2, and anything read from the environment.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import httptools
import httpx

__all__ = ["HTTP1Transport", "default_ssl_context"]

DEFAULT_TIMEOUT = 5.0  # seconds, for a request without a "timeout" extension (httpx's default)
MAX_HEAD_BYTES = 64 * 1024  # llhttp sets no bound on a response head; a provider gets this much
READ_HIGH_WATER = 256 * 1024  # buffered body bytes at which the socket stops being read
IDEMPOTENT = frozenset({"GET", "HEAD"})  # the methods retried after a stale connection

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_NOT_IN_FIELD_VALUE = re.compile(rb"[\x00\r\n]")  # RFC 9110 §5.5: CR, LF and NUL are invalid
_TARGET = re.compile(rb"[\x21-\x7e]+")  # RFC 9112 §3.2: no whitespace or controls in the target


def default_ssl_context() -> ssl.SSLContext:
    """Verification on, against the system's CA store and nothing the environment names.

    ``ssl.create_default_context()`` would also honour ``SSL_CERT_FILE``,
    ``SSL_CERT_DIR`` and ``SSLKEYLOGFILE`` (the last one writes session keys to
    a file); the relay takes no certificate settings from the environment.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, hostname checked
    paths = ssl.get_default_verify_paths()  # openssl_* are the built-in paths, not the env's
    cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
    if cafile is not None or capath is not None:
        context.load_verify_locations(cafile=cafile, capath=capath)
    # Without a store, no certificate verifies: https fails closed.
    return context


@dataclass(frozen=True, slots=True)
class _Limits:
    """The bounds of one origin's pool."""

    max_connections: int  # open or opening
    max_idle: int  # kept open between requests
    keepalive_expiry: float  # seconds an idle connection is kept


@dataclass(frozen=True, slots=True)
class _Timeouts:
    """httpx's four timeouts, in seconds; None waits for ever."""

    connect: float | None
    read: float | None
    write: float | None
    pool: float | None

    @classmethod
    def of(cls, request: httpx.Request) -> _Timeouts:
        given = request.extensions.get("timeout")
        if not isinstance(given, dict):
            return cls(DEFAULT_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_TIMEOUT)
        return cls(given.get("connect"), given.get("read"), given.get("write"), given.get("pool"))


class _Disconnected(httpx.RemoteProtocolError):
    """The server closed the connection before sending any byte of the response."""


def _expire(waiter: asyncio.Future[Any], error: type[httpx.TimeoutException], message: str) -> None:
    if not waiter.done():
        waiter.set_exception(error(message))


def _request_head(request: httpx.Request) -> tuple[bytes, bool]:
    """The request line and header section (RFC 9112 §3, §5), and whether it asks to close.

    The headers are exactly those of ``request``, Host included: httpx sets it.
    httpx lets CR and LF through in header values; they are refused here, as
    they would let a value inject headers of its own.
    """
    method = request.method.encode("ascii", "replace")
    target = request.url.raw_path
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise httpx.LocalProtocolError("invalid request line", request=request)
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    close = False
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name) or _NOT_IN_FIELD_VALUE.search(value):
            # Not the value: it may be a credential.
            raise httpx.LocalProtocolError(f"invalid header field {name!r}", request=request)
        if name.lower() == b"connection" and b"close" in value.lower():
            close = True  # RFC 9112 §9.6: then no further request on this connection
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), close


def _request_body(request: httpx.Request) -> bytes:
    try:
        return request.content  # httpx has set Content-Length to match
    except httpx.RequestNotRead:
        raise httpx.LocalProtocolError(
            "streamed request bodies are not supported: give the content as bytes",
            request=request,
        ) from None


class _Connection(asyncio.Protocol):
    """One connection: writes a request, then parses its response as the bytes arrive.

    The protocol callbacks only record what happened and wake the one task
    waiting (``wait``); that task reads the state. A parser is made for each
    response, so that bytes arriving while no request is out mark the
    connection as out of step instead of starting a response nobody asked for.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self.lost = False  # closed by the server or by us: never used again
        self.reused = False  # served a request before this one
        self.idle_since = 0.0
        self._begin(close_after=False, head_request=False)

    def _begin(self, *, close_after: bool, head_request: bool) -> None:
        """Reset the state of one exchange."""
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.http_version = b"HTTP/1.1"
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.error: httpx.TransportError | None = None
        self._close_after = close_after
        self._head_request = head_request
        self._framed = False  # Content-Length or Transfer-Encoding seen
        self._interim = False  # inside a 1xx response
        self._head_received = 0  # bytes received before the end of the head
        self._header_bytes = 0  # size of the header fields parsed
        self._body: list[bytes] = []
        self._buffered = 0

    @property
    def reusable(self) -> bool:
        """True once a complete response left the connection clean and open (RFC 9112 §9.3)."""
        return (
            self.complete
            and self.keep_alive
            and not self._close_after
            and self.error is None
            and not self.lost
            and self._transport is not None
            and not self._transport.is_closing()
        )

    # --- used by the transport -------------------------------------------------------

    async def exchange(
        self,
        request: httpx.Request,
        head: bytes,
        body: bytes,
        timeouts: _Timeouts,
        *,
        close_after: bool,
    ) -> None:
        """Send the request and wait for the head of its response."""
        self._begin(close_after=close_after, head_request=request.method == "HEAD")
        transport = self._transport
        if self.lost or transport is None or transport.is_closing():
            raise _Disconnected("the server closed the connection", request=request)
        self._parser = httptools.HttpResponseParser(self)
        transport.write(head + body if body else head)
        while self._writing_paused and self.error is None:
            await self.wait(timeouts.write, httpx.WriteTimeout, "timed out sending the request")
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self.wait(timeouts.read, httpx.ReadTimeout, "timed out waiting for the answer")

    def take_body(self) -> bytes:
        """The body bytes received since the last call (may be empty)."""
        chunks = self._body
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._body = []
        self._buffered = 0
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        return data

    async def wait(
        self,
        timeout: float | None,  # noqa: ASYNC109 - one timer, raising httpx's own class
        error: type[httpx.TimeoutException],
        message: str,
    ) -> None:
        """Sleep until the connection has news (bytes, an end, an error), at most ``timeout``.

        A timer that fails the waiter costs less than ``asyncio.timeout``'s
        cancellation, and raises the timeout class httpx callers expect.
        """
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(timeout, _expire, waiter, error, message)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        """Close the connection; an exchange still running fails."""
        if self._parser is not None and not self.complete and self.error is None:
            self.error = httpx.ReadError("the connection was closed")
        self._parser = None
        self.lost = True
        if self._transport is not None:
            self._transport.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        if not self.complete:
            self.error = error
        self.keep_alive = False
        self._parser = None
        if self._transport is not None:
            self._transport.close()

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's do not subclass asyncio.Transport, hence no isinstance.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # Bytes while no request is out: the server is out of step.
            self.close()
            return
        self.got_bytes = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("unexpected protocol switch"))
        except httptools.HttpParserError as exc:
            ours = exc.__context__  # what a callback of ours raised, if one did
            if not isinstance(ours, httpx.RemoteProtocolError):
                ours = httpx.RemoteProtocolError(f"malformed response: {exc}")
            self._fail(ours)
        else:
            self._check_bounds(len(data))
        if self.complete:
            self._parser = None
        self._wake()

    def _check_bounds(self, received: int) -> None:
        if not self.headers_done:
            # All received so far is head (on_header counts a head that came whole).
            self._head_received += received
            if self._head_received > MAX_HEAD_BYTES:
                self._fail(httpx.RemoteProtocolError("response head too large"))
        elif self._buffered > READ_HIGH_WATER and not self._reading_paused and not self.complete:
            # The reader is slower than the network: stop reading until it catches up.
            # (Never once complete: the connection would go back to the pool paused.)
            assert self._transport is not None
            self._reading_paused = True
            self._transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._parser is not None and self.error is None and not self.complete:
            if self.headers_done and not self._framed:
                # RFC 9112 §6.3 ¶8: without Content-Length or chunking, the close ends the body.
                self.complete = True
            elif not self.got_bytes:
                self.error = _Disconnected("the server closed the connection without answering")
            else:
                # RFC 9112 §8: an incomplete message is not taken for a whole one.
                self.error = httpx.RemoteProtocolError(
                    "the server closed the connection mid-answer"
                )
        self._parser = None
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    # --- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second response nobody asked for
            self.keep_alive = False

    def on_status(self, status: bytes) -> None:
        self.reason += status  # may come in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError("response head too large")  # stops the parser
        self.headers.append((name, value))
        if not self._framed:
            lowered = name.lower()
            self._framed = lowered in (b"content-length", b"transfer-encoding")

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:
            # RFC 9110 §15.2: an interim answer; the final one follows on the same connection.
            self._interim = True
            self.headers, self.reason, self._framed = [], b"", False
            return
        self.status = status
        if parser.get_http_version() == "1.0":
            self.http_version = b"HTTP/1.0"
        self.keep_alive = parser.should_keep_alive()
        self.headers_done = True
        if self._head_request:
            # RFC 9112 §6.3 ¶1: no body after HEAD, whatever Content-Length says.
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.complete:  # bytes after the answer to a HEAD: the server is out of step
            self.keep_alive = False
            return
        self._body.append(body)
        self._buffered += len(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True


class _Pool:
    """The connections to one origin: at most ``max_connections``, ``max_idle`` of them idle."""

    def __init__(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None, limits: _Limits
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._max = limits.max_connections
        self._max_idle = limits.max_idle
        self._expiry = limits.keepalive_expiry
        self._count = 0  # connections open or opening: what max_connections bounds
        self._all: set[_Connection] = set()
        self._idle: list[_Connection] = []  # most recently used last
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    async def acquire(self, timeouts: _Timeouts) -> _Connection:
        """An idle connection, a new one if under the bound, else the next one given back."""
        while True:
            if self._closed:
                raise RuntimeError("the transport is closed")
            conn = self._take_idle()
            if conn is not None:
                return conn
            if self._count < self._max:
                return await self._open(timeouts)
            conn = await self._wait_for_turn(timeouts)
            if conn is not None:
                conn.reused = True
                return conn

    async def reopen(self, stale: _Connection, timeouts: _Timeouts) -> _Connection:
        """A new connection in the place of ``stale``, which the server closed.

        If connecting fails, ``stale`` still holds the place: the caller
        releases it as for any failure.
        """
        stale.close()
        conn = await self._connect(timeouts)
        self._all.discard(stale)
        self._all.add(conn)
        return conn

    def release(self, conn: _Connection, *, reuse: bool) -> None:
        """Take back ``conn``: hand it to a waiting request, keep it idle, or close it."""
        if reuse and not self._closed and conn.reusable:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            if len(self._idle) < self._max_idle:
                conn.idle_since = self._loop.time()
                self._idle.append(conn)
                return
        self._discard(conn)

    def close(self) -> None:
        """Close every connection, idle or not; requests still waiting fail."""
        self._closed = True
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        self._count = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RuntimeError("the transport is closed"))

    def _take_idle(self) -> _Connection | None:
        now = self._loop.time()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable and now - conn.idle_since < self._expiry:
                conn.reused = True
                return conn
            self._discard(conn)  # closed by the server while idle, or kept too long
        return None

    async def _open(self, timeouts: _Timeouts) -> _Connection:
        self._count += 1
        try:
            conn = await self._connect(timeouts)
        except BaseException:
            self._count -= 1
            self._signal_free_place()
            raise
        self._all.add(conn)
        return conn

    async def _connect(self, timeouts: _Timeouts) -> _Connection:
        where = f"{self._host}:{self._port}"
        try:
            async with asyncio.timeout(timeouts.connect):
                _, conn = await self._loop.create_connection(
                    lambda: _Connection(self._loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            raise httpx.ConnectTimeout(f"connecting to {where} timed out") from exc
        except OSError as exc:  # refused, unreachable, name unknown, TLS refused (SSLError)
            raise httpx.ConnectError(f"cannot connect to {where}: {exc}") from exc
        return conn

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        if conn in self._all:
            self._all.discard(conn)
            self._count -= 1
            self._signal_free_place()

    def _signal_free_place(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # no connection given: the waiter may open one
                return

    async def _wait_for_turn(self, timeouts: _Timeouts) -> _Connection | None:
        """Wait for a connection given back (returned) or a place freed (None)."""
        waiter: asyncio.Future[_Connection | None] = self._loop.create_future()
        self._waiters.append(waiter)
        timer = None
        if timeouts.pool is not None:
            message = f"no free connection to {self._host}:{self._port}"
            timer = self._loop.call_later(
                timeouts.pool, _expire, waiter, httpx.PoolTimeout, message
            )
        try:
            return await waiter
        except BaseException:
            self._pass_on(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _pass_on(self, waiter: asyncio.Future[_Connection | None]) -> None:
        """What a waiter that gave up had just been given goes to the next one."""
        if not waiter.done():
            waiter.cancel()
        if waiter.cancelled() or waiter.exception() is not None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            return
        conn = waiter.result()
        if conn is None:
            self._signal_free_place()
        else:
            self.release(conn, reuse=True)


class _ResponseStream(httpx.AsyncByteStream):
    """The body as it arrives; at its end the connection goes back to the pool.

    Closed before the end of the response arrived, it closes the connection:
    what remains of the body would otherwise be read as the next response.
    """

    def __init__(self, pool: _Pool, conn: _Connection, timeouts: _Timeouts) -> None:
        self._pool: _Pool | None = pool
        self._conn = conn
        self._read_timeout = timeouts.read

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        while self._pool is not None:
            data = conn.take_body()
            if data:
                return data
            if conn.complete:
                self._give_back()
                break
            if conn.error is not None:
                self._give_back()
                raise conn.error
            try:
                await conn.wait(self._read_timeout, httpx.ReadTimeout, "timed out reading the body")
            except BaseException:
                self._give_back()
                raise
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._give_back()

    def _give_back(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # The whole response arrived (read or not): the connection is clean.
            pool.release(self._conn, reuse=self._conn.complete)


class HTTP1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio for ``httpx.AsyncClient``; see the module docstring."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
        max_idle_connections: int = 20,
        keepalive_expiry: float = 5.0,
    ) -> None:
        """``ssl_context`` defaults to :func:`default_ssl_context`, made at the first https call.

        The bounds apply to each origin; ``keepalive_expiry`` (seconds) retires
        idle connections before the server is likely to (uvicorn: 5 s).
        """
        if max_connections < 1 or max_idle_connections < 0:
            raise ValueError("max_connections must be ≥ 1 and max_idle_connections ≥ 0")
        self._ssl_context = ssl_context
        self._limits = _Limits(
            max_connections, min(max_idle_connections, max_connections), keepalive_expiry
        )
        self._pools: dict[tuple[str, bytes, int], _Pool] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a pooled connection; return once the response head is in."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        pool = self._pool_for(request)
        timeouts = _Timeouts.of(request)
        head, close = _request_head(request)
        body = _request_body(request)
        conn = await pool.acquire(timeouts)
        try:
            try:
                await conn.exchange(request, head, body, timeouts, close_after=close)
            except _Disconnected:
                if not (conn.reused and request.method in IDEMPOTENT):
                    raise
                # The server closed the pooled connection in the meantime; the
                # request never reached it, so it is safe to send again, once.
                conn = await pool.reopen(conn, timeouts)
                await conn.exchange(request, head, body, timeouts, close_after=close)
        except BaseException:
            pool.release(conn, reuse=False)
            raise
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_ResponseStream(pool, conn, timeouts),
            extensions={"http_version": conn.http_version, "reason_phrase": conn.reason},
            request=request,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool_for(self, request: httpx.Request) -> _Pool:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}", request=request)
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, url.raw_host, port)
        pool = self._pools.get(key)
        if pool is None:
            context = None
            if scheme == "https":
                if self._ssl_context is None:
                    self._ssl_context = default_ssl_context()
                context = self._ssl_context
            pool = _Pool(url.raw_host.decode("ascii"), port, context, self._limits)
            self._pools[key] = pool
        return pool
