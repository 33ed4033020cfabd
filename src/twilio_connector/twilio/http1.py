"""A small HTTP/1.1 client for one origin: kept-alive connections, llhttp's parser (httptools), asyncio's TLS.

Why not aiohttp's client, which the connector used before: on the connector's own request it spends about three
times the CPU (bench/http_clients.py: 171 us per request against 58 us for this one on the same machine;
pyreqwest 92 us but 15 MB more memory; httpr 186 us, curl-cffi 367 us). What is hard in HTTP stays in
libraries: httptools parses the answers (lengths, chunked bodies, keep-alive), `ssl` verifies the server. What is
left here is what Twilio's API needs: one origin, requests written whole, one at a time per connection.

Failures are split by what they prove, because the retry decision depends on it: `ConnectFailed` means nothing
left this machine; `NoAnswer` means the request may have reached the server.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools

from ..ports.http import Answer, ConnectFailed, HttpError, NoAnswer

__all__ = ["Http1Pool"]

#: An answer larger than this is refused (a misbehaving gateway must not fill our memory).
MAX_BODY = 8 * 2**20


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one exchange at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[Answer] | None = None
        self._body = bytearray()
        self._retry_after: str | None = None
        self.reusable = True
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(NoAnswer(f"unreadable HTTP answer ({exc.__class__.__name__})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(NoAnswer("the server closed the connection before answering"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1").strip()

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > MAX_BODY:
            self._fail(NoAnswer(f"an answer larger than {MAX_BODY} bytes"))

    def on_message_complete(self) -> None:
        answer = Answer(self._parser.get_status_code(), bytes(self._body), self._retry_after)
        self.reusable = self.reusable and self._parser.should_keep_alive()
        self._body.clear()
        self._retry_after = None
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(answer)
        else:  # an answer nobody asked for: the stream is out of step
            self._fail(NoAnswer("an unexpected answer"))

    # ours

    def _fail(self, error: HttpError) -> None:
        self.reusable = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)
        self.close()

    @property
    def open(self) -> bool:
        return self.reusable and self._transport is not None and not self._transport.is_closing()

    async def exchange(self, request: bytes) -> Answer:
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        try:
            return await self._answer
        finally:
            self._answer = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Http1Pool:
    """Requests to one origin (`http://host:port` or `https://...`) over at most `max_connections` kept-alive
    connections. `timeout` bounds a whole request, `connect_timeout` the opening of a connection within it."""

    def __init__(
        self,
        origin: str,
        *,
        headers: dict[str, str] | None = None,
        max_connections: int = 64,
        timeout: float = 15.0,
        connect_timeout: float = 5.0,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self._headers = {"Host": parts.netloc.rpartition("@")[2], **(headers or {})}
        self._head = b""
        self.set_headers()
        self._timeout, self._connect_timeout, self._idle_timeout = timeout, connect_timeout, idle_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()
        self._closed = False

    def set_headers(self, **headers: str) -> None:
        """Send these headers (replacing any of the same names) with every request from now on."""
        self._headers.update(headers)
        self._head = "".join(f"{name}: {value}\r\n" for name, value in self._headers.items()).encode("latin-1")

    async def request(self, method: str, target: str, body: bytes = b"", content_type: str | None = None) -> Answer:
        """Send one request (`target`: path and query) and read its answer; raises `ConnectFailed` or
        `NoAnswer`."""
        head = f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self._head
        if content_type:
            head += f"Content-Type: {content_type}\r\n".encode("latin-1")
        if body or method == "POST":
            head += b"Content-Length: %d\r\n" % len(body)
        loop = asyncio.get_running_loop()
        async with self._slots:
            now = loop.time()
            deadline = now + self._timeout
            connection = self._reuse(now) or await self._connect(min(self._connect_timeout, self._timeout))
            try:
                async with asyncio.timeout_at(deadline):
                    answer = await connection.exchange(head + b"\r\n" + body)
            except TimeoutError:
                connection.close()  # a late answer must not be read as the next request's
                raise NoAnswer(f"no answer within {self._timeout:g} s") from None
            except BaseException:
                connection.close()
                raise
            if connection.open and not self._closed:
                connection.idle_since = loop.time()
                self._idle.append(connection)
            else:
                connection.close()
            return answer

    def _reuse(self, now: float) -> _Connection | None:
        """The most recently used idle connection still open; older ones past the idle timeout are closed."""
        while self._idle:
            connection = self._idle.pop()
            if connection.open and now - connection.idle_since < self._idle_timeout:
                return connection
            connection.close()
        return None

    async def _connect(self, limit: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                _, connection = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise ConnectFailed(f"no connection within {limit:g} s") from None
        except ssl.SSLError as exc:  # the certificate (verification is never turned off) or the handshake
            raise ConnectFailed(f"TLS failed: {exc.reason or exc.__class__.__name__}") from None
        except OSError as exc:  # refused, unreachable, DNS (socket.gaierror)
            raise ConnectFailed(exc.__class__.__name__) from None
        return connection

    async def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
