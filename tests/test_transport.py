"""The HTTP/1.1 transport against real servers on 127.0.0.1: pooling, framing, failures, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.errors import ProviderBadResponse
from gateway.policy.model import Field, Label, Provider, Resource
from gateway.relay import Relay
from gateway.transport import HTTP1Transport

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[[Reader, Writer], Awaitable[None]]
BODY = b'{"annee": 2024, "revenu": 23450}'


def answer(
    body: bytes = BODY, *, status: str = "200 OK", version: str = "HTTP/1.1", extra: str = ""
) -> bytes:
    """A whole response with Content-Length; ``extra`` holds more header lines."""
    return (
        f"{version} {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def chunked(*chunks: bytes) -> bytes:
    """A response whose body is sent with the chunked coding (RFC 9112 §7.1)."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


async def read_request(reader: Reader) -> bytes:
    """One request head, and its body when it has a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)\r$", head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    return head + body


def serving(*responses: bytes) -> Handler:
    """Answer the n-th request on each connection with ``responses[n]``, the last one after."""

    async def handle(reader: Reader, writer: Writer) -> None:
        for n in range(1_000):
            await read_request(reader)
            writer.write(responses[min(n, len(responses) - 1)])
            await writer.drain()

    return handle


class Server:
    """A raw server on 127.0.0.1 that runs ``handle`` for each connection and counts them."""

    def __init__(self, handle: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self._handle = handle
        self._tls = tls
        self.connections = 0
        self.open = 0  # connections whose handler is still running
        self._closing = asyncio.Event()  # set whenever a connection ends
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self._tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open += 1
        try:
            await self._handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client went away: what several tests are about
        except asyncio.CancelledError:
            pass  # the test is over
        finally:
            self.open -= 1
            self._closing.set()
            writer.close()

    async def until_closed(self, open_left: int = 0) -> None:
        """Wait until no more than ``open_left`` connections are still open on the server side."""
        async with asyncio.timeout(2):
            while self.open > open_left:
                self._closing.clear()
                await self._closing.wait()


@contextlib.asynccontextmanager
async def client(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An AsyncClient as the relay makes it, on a new transport."""
    transport = HTTP1Transport(**options)
    async with httpx.AsyncClient(
        transport=transport, follow_redirects=False, trust_env=False, timeout=2.0
    ) as http:
        yield http


# --- keep-alive --------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection() -> None:
    async with Server(serving(answer())) as server, client() as http:
        for _ in range(3):
            response = await http.get(server.url + "/a")
            assert response.status_code == 200
            assert response.content == BODY
            assert response.http_version == "HTTP/1.1"
    assert server.connections == 1


@pytest.mark.parametrize(
    ("response", "connections"),
    [
        (answer(extra="Connection: close\r\n"), 3),
        (answer(version="HTTP/1.0"), 3),  # HTTP/1.0 closes unless it says keep-alive
        (answer(version="HTTP/1.0", extra="Connection: keep-alive\r\n"), 1),
    ],
    ids=["close", "http-1.0", "http-1.0-keep-alive"],
)
async def test_connection_close_is_honoured(response: bytes, connections: int) -> None:
    # The server keeps its side open: only the client's own rule stops the reuse.
    async with Server(serving(response)) as server, client() as http:
        for _ in range(3):
            assert (await http.get(server.url)).content == BODY
    assert server.connections == connections


async def test_request_asking_to_close_does_not_reuse() -> None:
    async with Server(serving(answer())) as server, client() as http:
        for _ in range(2):
            await http.get(server.url, headers={"Connection": "close"})
    assert server.connections == 2


async def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    async def once(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(answer())  # no Connection: close, yet the server closes
        await writer.drain()

    async with Server(once) as server, client() as http:
        assert (await http.get(server.url)).content == BODY
        await server.until_closed()
        await asyncio.sleep(0.01)  # let the client see the close
        assert (await http.get(server.url)).content == BODY
    assert server.connections == 2


async def hang_up_on_second_request(reader: Reader, writer: Writer) -> None:
    """Answer one request, then close on the next one without a byte: a keep-alive race."""
    await read_request(reader)
    writer.write(answer())
    await writer.drain()
    await read_request(reader)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_idempotent_request_on_a_stale_connection_is_retried_once(method: str) -> None:
    async with Server(hang_up_on_second_request) as server, client() as http:
        assert (await http.get(server.url)).status_code == 200
        response = await http.request(method, server.url)
        assert response.status_code == 200
        assert response.content == (BODY if method == "GET" else b"")
    assert server.connections == 2


async def test_post_on_a_stale_connection_is_not_retried() -> None:
    async with Server(hang_up_on_second_request) as server, client() as http:
        assert (await http.get(server.url)).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError, match="without answering"):
            await http.post(server.url, content=b"{}")
    assert server.connections == 1


async def test_close_without_answer_on_a_new_connection_is_not_retried() -> None:
    async def hang_up(reader: Reader, writer: Writer) -> None:
        await read_request(reader)

    async with Server(hang_up) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.url)
    assert server.connections == 1


async def test_unread_body_closes_the_connection() -> None:
    big = b"x" * 2_000_000
    async with Server(serving(answer(big))) as server, client() as http:
        async with http.stream("GET", server.url) as response:
            async for _ in response.aiter_raw():
                break  # stop early, as the relay's bound does
        await server.until_closed()
        assert (await http.get(server.url)).content == big
    assert server.connections == 2


async def test_unread_body_that_had_arrived_leaves_the_connection_clean() -> None:
    error = answer(status="500 Internal Server Error")
    async with Server(serving(error)) as server, client() as http:
        for _ in range(2):
            async with http.stream("GET", server.url) as response:
                assert response.status_code == 500
                await asyncio.sleep(0.01)  # the small body arrives, unread
    assert server.connections == 1


# --- framing -----------------------------------------------------------------------------


async def test_chunked_body_is_read_and_the_connection_reused() -> None:
    async def in_pieces(reader: Reader, writer: Writer) -> None:
        for _ in range(2):
            await read_request(reader)
            message = chunked(b'{"annee": ', b"2024", b', "revenu": 23450}')
            for i in range(0, len(message), 7):  # split anywhere, chunk headers included
                writer.write(message[i : i + 7])
                await writer.drain()
                await asyncio.sleep(0)

    async with Server(in_pieces) as server, client() as http:
        for _ in range(2):
            response = await http.get(server.url)
            assert response.content == BODY
            assert "content-length" not in response.headers
    assert server.connections == 1


async def test_body_without_length_ends_with_the_close() -> None:
    async def until_close(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY)
        await writer.drain()

    async with Server(until_close) as server, client() as http:
        assert (await http.get(server.url)).content == BODY
        assert (await http.get(server.url)).content == BODY
    assert server.connections == 2  # RFC 9112 §6.3 ¶8: such a connection cannot be reused


async def test_head_answer_has_no_body_whatever_its_content_length() -> None:
    head_only = answer()[: -len(BODY)]  # Content-Length of the body a GET would get
    async with Server(serving(head_only, answer())) as server, client() as http:
        head = await http.head(server.url)
        assert head.content == b""
        assert head.headers["content-length"] == str(len(BODY))
        assert (await http.get(server.url)).content == BODY
    assert server.connections == 1


async def test_slow_reader_holds_the_server_back() -> None:
    total = 32 * 1024 * 1024
    sent = 0

    async def flood(reader: Reader, writer: Writer) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        piece = b"x" * 65536
        while sent < total:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)

    async with (
        Server(flood) as server,
        client() as http,
        http.stream("GET", server.url) as response,
    ):
        chunks = response.aiter_raw()
        received = len(await anext(chunks))
        await asyncio.sleep(0.3)
        # Reading paused: the socket buffers filled and the server's writes blocked.
        assert sent < total // 2
        async for chunk in chunks:
            received += len(chunk)
    assert received == total


async def test_interim_answers_are_skipped() -> None:
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    async with Server(serving(early_hints + answer())) as server, client() as http:
        response = await http.get(server.url)
    assert response.status_code == 200
    assert "link" not in response.headers


async def test_request_carries_exactly_the_headers_of_the_request() -> None:
    seen: list[bytes] = []

    async def record(reader: Reader, writer: Writer) -> None:
        seen.append(await read_request(reader))
        writer.write(answer())
        await writer.drain()

    async with Server(record) as server, client() as http:
        port = server.url.rsplit(":", 1)[1]
        request = httpx.Request(
            "GET",
            server.url + "/impots/v1/revenu?annee=2024",
            headers={"Authorization": "Bearer a.b.c", "X-Transfer-Id": "tr_1"},
        )
        await http.send(request)
    assert seen == [
        (
            "GET /impots/v1/revenu?annee=2024 HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer a.b.c\r\nX-Transfer-Id: tr_1\r\n\r\n"
        ).encode()
    ]


async def test_request_body_is_sent_with_its_length() -> None:
    async def echo(reader: Reader, writer: Writer) -> None:
        while True:
            request = await read_request(reader)
            body = request.split(b"\r\n\r\n", 1)[1]
            writer.write(answer(body))
            await writer.drain()

    async with Server(echo) as server, client() as http:
        assert (await http.post(server.url, content=b'{"a": 1}')).content == b'{"a": 1}'
        assert (await http.put(server.url, content=b"x" * 300_000)).content == b"x" * 300_000


@pytest.mark.parametrize(
    "headers", [{"X-Evil": "a\r\nCookie: stolen"}, {"X-Evil": "a\nb"}, {"Bad Name": "v"}]
)
async def test_header_injection_is_refused_before_sending(headers: dict[str, str]) -> None:
    async with Server(serving(answer())) as server, client() as http:
        with pytest.raises(httpx.LocalProtocolError):
            await http.get(server.url, headers=headers)
    assert server.connections == 0


async def test_streamed_request_body_is_refused() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"x"

    async with client() as http:
        with pytest.raises(httpx.LocalProtocolError, match="streamed"):
            await http.post("http://127.0.0.1:9/", content=body())


# --- failures ----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_refused_connection_is_a_connect_error() -> None:
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{free_port()}/")


async def test_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async with Server(silent) as server, client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(server.url, timeout=httpx.Timeout(2.0, read=0.1))


async def test_stalled_body_is_a_read_timeout() -> None:
    async def stall(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(answer()[:-5])
        await writer.drain()
        await asyncio.sleep(10)

    async with Server(stall) as server, client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(server.url, timeout=httpx.Timeout(2.0, read=0.1))


@pytest.mark.parametrize(
    "garbage",
    [
        b"SPAM SPAM SPAM\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=["not-http", "two-lengths", "length-and-chunked", "bad-chunk", "huge-head", "upgrade"],
)
async def test_garbage_is_a_protocol_error(garbage: bytes) -> None:
    async def babble(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(garbage)
        await writer.drain()
        await asyncio.sleep(10)

    async with Server(babble) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.url)


async def test_close_in_the_middle_of_a_body_is_a_protocol_error() -> None:
    async def cut(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(answer()[:-5])
        await writer.drain()

    async with Server(cut) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="mid-answer"):
            await http.get(server.url)


async def test_unsupported_scheme_is_refused() -> None:
    async with client() as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")


# --- the relay's bound -------------------------------------------------------------------


def relay_provider(base_url: str, max_bytes: int) -> tuple[Provider, Resource]:
    resource = Resource(
        id="r",
        provider="p",
        label=Label(fr="r", en="r"),
        method="GET",
        path="/r",
        query={},
        fields=(Field("/a", Label("a", "a")),),
    )
    provider = Provider(
        id="p",
        name="P",
        base_url=base_url,
        identity_claims=(),
        min_acr="eidas1",
        timeout_seconds=5.0,
        max_response_bytes=max_bytes,
        resources={"r": resource},
    )
    return provider, resource


async def test_large_body_is_cut_off_by_the_relay_bound_without_being_downloaded() -> None:
    total = 64 * 1024 * 1024
    sent = 0

    async def flood(reader: Reader, writer: Writer) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        while sent < total:
            writer.write(piece)
            await writer.drain()
            sent += 65536

    async with Server(flood) as server:
        provider, resource = relay_provider(server.url, max_bytes=10_000)
        relay = Relay({"p": provider})  # its default transport
        try:
            with pytest.raises(ProviderBadResponse) as caught:
                await relay.fetch(provider, resource, query={}, assertion="a", transfer_id="t")
            assert caught.value.code == "provider_response_too_large"
            await server.until_closed()
        finally:
            await relay.aclose()
    assert sent < total // 4  # the server was stopped, not read to the end


# --- TLS ---------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, bytes]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and its PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return server, pem


async def test_https_verifies_against_the_injected_context(tmp_path: Path) -> None:
    server_context, pem = self_signed(tmp_path)
    trusting = ssl.create_default_context(cadata=pem.decode())
    async with Server(serving(answer()), tls=server_context) as server:
        async with client(ssl_context=trusting) as http:
            for _ in range(2):
                assert (await http.get(server.url)).content == BODY
        assert server.connections == 1
        async with client() as http:  # the default context does not know this certificate
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(server.url)


async def test_https_checks_the_host_name(tmp_path: Path) -> None:
    server_context, pem = self_signed(tmp_path)
    trusting = ssl.create_default_context(cadata=pem.decode())
    async with (
        Server(serving(answer()), tls=server_context) as server,
        client(ssl_context=trusting) as http,
    ):
        with pytest.raises(httpx.ConnectError):
            await http.get(server.url.replace("127.0.0.1", "localhost"))


# --- the pool's bounds -------------------------------------------------------------------


async def slow_answer(reader: Reader, writer: Writer) -> None:
    while True:
        await read_request(reader)
        await asyncio.sleep(0.02)
        writer.write(answer())
        await writer.drain()


async def test_pool_bound_is_respected_under_concurrency() -> None:
    async with Server(slow_answer) as server, client(max_connections=3) as http:
        responses = await asyncio.gather(*(http.get(server.url) for _ in range(20)))
    assert [r.content for r in responses] == [BODY] * 20
    assert server.connections == 3


async def test_waiting_for_a_connection_times_out() -> None:
    async with Server(slow_answer) as server, client(max_connections=1) as http:
        first = asyncio.create_task(http.get(server.url))
        await asyncio.sleep(0.005)
        with pytest.raises(httpx.PoolTimeout):
            await http.get(server.url, timeout=httpx.Timeout(2.0, pool=0.001))
        assert (await first).content == BODY
        assert (await http.get(server.url)).content == BODY  # the place was not lost
    assert server.connections == 1


async def test_idle_connections_beyond_the_bound_are_closed() -> None:
    async with Server(slow_answer) as server, client(max_idle_connections=1) as http:
        await asyncio.gather(*(http.get(server.url) for _ in range(4)))
        await server.until_closed(open_left=1)
        assert server.open == 1


async def test_failed_connect_gives_its_place_back() -> None:
    async with client(max_connections=1) as http:
        url = f"http://127.0.0.1:{free_port()}/"
        for _ in range(3):  # the place of each failed attempt is free again
            with pytest.raises(httpx.ConnectError):
                await http.get(url, timeout=httpx.Timeout(2.0, pool=0.05))


async def test_aclose_closes_every_pooled_connection() -> None:
    transport = HTTP1Transport()
    async with Server(slow_answer) as server:
        async with httpx.AsyncClient(transport=transport) as http:
            await asyncio.gather(*(http.get(server.url) for _ in range(3)))
            assert server.open == 3
        await server.until_closed()  # AsyncClient.aclose closed the transport
        with pytest.raises(RuntimeError):
            await transport.handle_async_request(httpx.Request("GET", server.url))


# --- the production event loop -----------------------------------------------------------


def test_the_same_on_uvloop(tmp_path: Path) -> None:
    """uvicorn runs the gateway on uvloop, whose transports differ from asyncio's."""

    async def scenario() -> None:
        await test_sequential_requests_reuse_one_connection()
        await test_idempotent_request_on_a_stale_connection_is_retried_once("GET")
        await test_chunked_body_is_read_and_the_connection_reused()
        await test_unread_body_closes_the_connection()
        await test_silent_server_is_a_read_timeout()
        await test_https_verifies_against_the_injected_context(tmp_path)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
