"""The HTTP/1.1 client against raw servers over real sockets: reuse, framing, and what each failure proves."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme
import uvloop

from twilio_connector.ports.http import Answer, ConnectFailed, NoAnswer
from twilio_connector.twilio.http1 import AddressInfo, Http1Pool

JSON = b'{"sid": "SM1", "status": "queued"}'
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (requests carry a Content-Length, or no body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    return head, await reader.readexactly(length)


def answer(body: bytes = JSON, status: str = "201 Created", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status.encode(), len(body), extra, body)


@asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A server on a free port; yields the port and the heads of every request it read, in order, and counts
    connections by appending b"connection" first."""
    seen: list[bytes] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(b"connection")
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0, ssl=tls)
    async with server:
        yield server.sockets[0].getsockname()[1], seen


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(answer())
        await writer.drain()


async def test_requests_share_kept_alive_connections_within_the_limit() -> None:
    async with serving(keep_alive) as (port, seen):
        pool = Http1Pool(f"http://127.0.0.1:{port}", max_connections=3)
        for _ in range(5):
            assert await pool.request("POST", "/a", b"x=1", "application/x-www-form-urlencoded") == Answer(201, JSON)
        assert seen.count(b"connection") == 1
        answers = await asyncio.gather(*(pool.request("GET", "/b") for _ in range(30)))
        assert {a.status for a in answers} == {201}
        assert seen.count(b"connection") <= 3
        await pool.close()


async def test_the_request_carries_host_headers_and_body() -> None:
    received: list[tuple[bytes, bytes]] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader))
        writer.write(answer())
        await writer.drain()

    async with serving(record) as (port, _):
        pool = Http1Pool(f"http://127.0.0.1:{port}", headers={"Authorization": "Basic abc"})
        await pool.request("POST", "/2010-04-01/x.json?To=%2B1", b"Body=hi", "application/x-www-form-urlencoded")
        await pool.close()
    head, body = received[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /2010-04-01/x.json?To=%2B1 HTTP/1.1"
    assert {f"Host: 127.0.0.1:{port}", "Authorization: Basic abc", "Content-Length: 7"} <= set(lines)
    assert "Content-Type: application/x-www-form-urlencoded" in lines and body == b"Body=hi"


async def test_chunked_answers_and_retry_after_are_read() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n")
        writer.write(b"5\r\n" + JSON[:5] + b"\r\n")
        await writer.drain()
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(JSON) - 5, JSON[5:]))
        await writer.drain()

    async with serving(chunked) as (port, _):
        pool = Http1Pool(f"http://127.0.0.1:{port}")
        assert await pool.request("GET", "/") == Answer(429, JSON, "3")
        await pool.close()


async def test_an_answer_that_closes_its_connection_is_not_reused() -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(extra=b"Connection: close\r\n"))
        await writer.drain()

    async with serving(closing) as (port, seen):
        pool = Http1Pool(f"http://127.0.0.1:{port}")
        for _ in range(3):
            assert (await pool.request("GET", "/")).status == 201
        assert seen.count(b"connection") == 3
        await pool.close()


async def test_no_answer_after_the_request_left_is_no_answer() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # and close without answering: the request may have been acted on

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()
        await reader.read()

    for handler in (hang_up, garbage):
        async with serving(handler) as (port, _):
            pool = Http1Pool(f"http://127.0.0.1:{port}")
            with pytest.raises(NoAnswer):
                await pool.request("POST", "/", b"x")
            await pool.close()


async def test_a_late_answer_is_no_answer_and_never_read_as_the_next_one() -> None:
    release = asyncio.Event()

    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not release.is_set():  # the first connection: answers late, then serves on
            await read_request(reader)
            await release.wait()
            writer.write(answer(b'{"late": true}'))
            await writer.drain()
        await keep_alive(reader, writer)

    async with serving(slow_first) as (port, seen):
        pool = Http1Pool(f"http://127.0.0.1:{port}", timeout=0.2)
        with pytest.raises(NoAnswer, match=r"within 0\.2 s"):
            await pool.request("POST", "/", b"x")
        release.set()
        assert await pool.request("GET", "/") == Answer(201, JSON)
        assert seen.count(b"connection") == 2
        await pool.close()


async def test_a_refused_connection_is_connect_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        pool = Http1Pool(f"http://127.0.0.1:{port}")
        with pytest.raises(ConnectFailed, match="ConnectionRefusedError"):
            await pool.request("POST", "/", b"x")


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_dead_first_address_costs_a_quarter_second_not_the_connect_timeout(run: Callable[..., float]) -> None:
    """Happy eyeballs on either loop (uvloop, the default, has none of its own): a name whose first address
    swallows the SYN (a listener whose queue is full, as a dead IPv6 route behaves) is reached at its second
    address 250 ms later, well within the connect timeout."""

    async def attempt(hole: tuple[str, int]) -> float:
        async with serving(keep_alive) as (port, _):
            infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", address) for address in (hole, ("127.0.0.1", port))]

            async def resolve(host: str, port: int) -> list[AddressInfo]:
                assert host == "twilio.test"
                return infos

            pool = Http1Pool("http://twilio.test:80", connect_timeout=2.0, resolve=resolve)
            started = asyncio.get_running_loop().time()
            assert (await pool.request("POST", "/", b"x")).status == 201
            took = asyncio.get_running_loop().time() - started
            await pool.close()
            return took

    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:  # the first fills the accept queue; Linux drops every SYN after it
            filler.setblocking(False)
            filler.connect_ex(hole.getsockname())
        try:
            took = run(attempt(hole.getsockname()))
        finally:
            for filler in fillers:
                filler.close()
    assert 0.2 < took < 1.5


async def test_a_tls_handshake_that_never_ends_is_a_connect_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts TCP, never answers the ClientHello

    async with serving(silent) as (port, _):
        pool = Http1Pool(f"https://127.0.0.1:{port}", connect_timeout=0.2)
        with pytest.raises(ConnectFailed, match=r"no connection within 0\.2 s"):
            await pool.request("POST", "/", b"x")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_tls_verifies_the_server_and_works_with_a_trusted_one(ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    async with serving(keep_alive, tls=server_context) as (port, _):
        untrusting = Http1Pool(f"https://localhost:{port}")
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.request("GET", "/")
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        trusting = Http1Pool(f"https://localhost:{port}", ssl_context=client_context)
        assert await trusting.request("GET", "/") == Answer(201, JSON)
        await trusting.close()
        wrong_name = Http1Pool(f"https://127.0.0.1:{port}", ssl_context=client_context)
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await wrong_name.request("GET", "/")
