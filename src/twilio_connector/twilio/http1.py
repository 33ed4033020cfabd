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
import base64
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import aiohappyeyeballs
import httptools

from ..ports.http import Answer, ConnectFailed, HttpError, NoAnswer

__all__ = ["Http1Pool", "Proxy", "proxy_for"]

#: Seconds before trying the next address of a host (RFC 8305): an address family without a route, or an address
#: that does not answer, must not use up the connect timeout.
HAPPY_EYEBALLS_DELAY = 0.25
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
        self._request_id: str | None = None
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
        lowered = name.lower()
        if lowered == b"retry-after":
            self._retry_after = value.decode("latin-1").strip()
        elif lowered == b"twilio-request-id":
            self._request_id = value.decode("latin-1").strip()

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > MAX_BODY:
            self._fail(NoAnswer(f"an answer larger than {MAX_BODY} bytes"))

    def on_message_complete(self) -> None:
        answer = Answer(self._parser.get_status_code(), bytes(self._body), self._retry_after, self._request_id)
        self.reusable = self.reusable and self._parser.should_keep_alive()
        self._body.clear()
        self._retry_after = self._request_id = None
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


class _Tunnel(asyncio.Protocol):
    """The proxy's answer to CONNECT: its status line, once its head has come (nothing follows it before ours)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._head += data
        if b"\r\n\r\n" in self._head and not self.answered.done():
            status_line = self._head.split(b"\r\n", 1)[0].split()
            ok = len(status_line) >= 2 and status_line[0].startswith(b"HTTP/") and status_line[1].isdigit()
            self.answered.set_result(int(status_line[1]) if ok else 0)
        elif len(self._head) > 16384 and not self.answered.done():
            self.answered.set_result(0)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_result(0)


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy (`http://[user:password@]host:port`): https is tunnelled through it with CONNECT, http sent
    to it in absolute form. Its credentials go in a header and nowhere else (not in an error, not in a log)."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, password: str | None = None) -> Proxy:
        """`password`: the user's password when it is kept out of the URL (read from a file)."""
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("must look like http://[user:password@]host:port (an HTTP proxy)")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{password if password is not None else unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(parts.hostname, parts.port or 8080, authorization)

    def __str__(self) -> str:
        return f"the proxy at {self.host}:{self.port}"


P = TypeVar("P", bound=asyncio.BaseProtocol)


#: A host's addresses as `getaddrinfo` gives them (DNS: the outside system behind this seam).
AddressInfo = tuple[int, int, int, str, tuple[Any, ...]]
Resolver = Callable[[str, int], Awaitable[Sequence[AddressInfo]]]


async def system_resolver(host: str, port: int) -> Sequence[AddressInfo]:
    """The event loop's resolver (uvloop's own, or the system's in a worker thread)."""
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


async def _open(
    factory: Callable[[], P], host: str, port: int, tls: ssl.SSLContext | None, resolve: Resolver
) -> tuple[asyncio.Transport, P]:
    """A connection to `host`:`port` (TLS with `tls`), its addresses tried with happy eyeballs (RFC 8305: the
    next one after 250 ms, IPv6 and IPv4 interleaved) by aiohappyeyeballs, as aiohttp does, on any event loop
    (uvloop's create_connection has no happy-eyeballs argument): a dead IPv6 route costs 250 ms, not the connect
    timeout."""
    loop = asyncio.get_running_loop()
    addresses = list(await resolve(host, port))
    sock = await aiohappyeyeballs.start_connection(addresses, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1)
    try:
        return await loop.create_connection(factory, sock=sock, ssl=tls, server_hostname=host if tls else None)
    except BaseException:
        sock.close()
        raise


def proxy_for(origin: str, environ: Mapping[str, str], password: str | None = None) -> Proxy | None:
    """The proxy the environment names for `origin` (HTTPS_PROXY or HTTP_PROXY by its scheme, lower case too),
    unless NO_PROXY lists its host (a name, a domain suffix, `*`), as curl and Python's urllib read them."""
    parts = urlsplit(origin)
    scheme = parts.scheme or "https"
    url = next((environ[name] for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY") if environ.get(name)), "")
    if not url:
        return None
    host = (parts.hostname or "").lower()
    for entry in (environ.get("no_proxy") or environ.get("NO_PROXY") or "").split(","):
        name = entry.strip().lower().split(":")[0].lstrip(".")
        if name == "*" or (name and (host == name or host.endswith("." + name))):
            return None
    return Proxy.parse(url, password)


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
        proxy: Proxy | None = None,
        resolve: Resolver = system_resolver,
    ) -> None:
        """`proxy`: reach the origin through this HTTP proxy (see `Proxy`); `resolve`: how a host name becomes
        addresses."""
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self._proxy = proxy
        self._resolve = resolve
        # Plain http through a proxy goes to it in absolute form (the request's target names the origin).
        self._prefix = f"http://{parts.netloc}".encode("latin-1") if proxy and parts.scheme == "http" else b""
        self._headers = {"Host": parts.netloc.rpartition("@")[2], **(headers or {})}
        if proxy and proxy.authorization and parts.scheme == "http":
            self._headers["Proxy-Authorization"] = proxy.authorization
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
        head = f"{method} ".encode("latin-1") + self._prefix + f"{target} HTTP/1.1\r\n".encode("latin-1") + self._head
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
        try:
            async with asyncio.timeout(limit):
                if self._proxy is not None:
                    return await self._through_proxy(self._proxy)
                _, connection = await _open(_Connection, self._host, self._port, self._ssl, self._resolve)
        except TimeoutError:
            raise ConnectFailed(f"no connection within {limit:g} s") from None
        except ssl.SSLError as exc:  # the certificate (verification is never turned off) or the handshake
            raise ConnectFailed(f"TLS failed: {exc.reason or exc.__class__.__name__}") from None
        except OSError as exc:  # refused, unreachable, DNS (socket.gaierror)
            where = f" ({self._proxy})" if self._proxy is not None else ""
            raise ConnectFailed(f"{exc.__class__.__name__}{where}") from None
        return connection

    async def _through_proxy(self, proxy: Proxy) -> _Connection:
        """A connection through `proxy`: for https, a CONNECT tunnel with TLS to the origin inside it."""
        loop = asyncio.get_running_loop()
        if self._ssl is None:
            _, plain = await _open(_Connection, proxy.host, proxy.port, None, self._resolve)
            return plain
        transport, tunnel = await _open(_Tunnel, proxy.host, proxy.port, None, self._resolve)
        authority = f"{self._host}:{self._port}"
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if proxy.authorization:
            head += f"Proxy-Authorization: {proxy.authorization}\r\n"
        transport.write((head + "\r\n").encode("latin-1"))
        status = await tunnel.answered
        if status != 200:
            transport.close()
            refused = "asks for credentials (or refused them)"  # 407; some proxies (tinyproxy) answer CONNECT 401
            why = {401: refused, 407: refused, 0: "gave no HTTP answer"}.get(status, f"answered {status}")
            raise ConnectFailed(f"{proxy} {why} to CONNECT {authority}")
        connection = _Connection()
        transport.set_protocol(connection)
        secured = await loop.start_tls(transport, connection, self._ssl, server_hostname=self._host)
        if secured is None:
            raise ConnectFailed(f"TLS through {proxy} did not start")
        connection.connection_made(secured)
        return connection

    async def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
