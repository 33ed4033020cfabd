"""The HTTP seam under the Twilio client: one origin, requests written whole, answers read whole.

`twilio.http1.Http1Pool` is the real transport; `MockTransport` answers in memory, for tests (httpx's habit), and
a proxy-capable transport plugs in here too. Failures are split by what they prove, because the retry decision
depends on it: `ConnectFailed` means nothing left this machine; `NoAnswer` means the request may have reached
the server.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Answer", "ConnectFailed", "HttpError", "HttpTransport", "MockTransport", "NoAnswer", "Request"]


class HttpError(Exception):
    """A request that got no HTTP answer."""


class ConnectFailed(HttpError):
    """No connection could be opened (DNS, refused, TLS handshake, connect timeout): nothing was sent."""


class NoAnswer(HttpError):
    """The request was written, or may have been, but no complete answer came back."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    retry_after: str | None = None
    request_id: str | None = None  # Twilio-Request-Id: what Twilio's support asks for


class HttpTransport(Protocol):
    def set_headers(self, **headers: str) -> None:
        """Send these headers with every request from now on (credentials read again replace the old ones)."""
        ...

    async def request(self, method: str, target: str, body: bytes = b"", content_type: str | None = None) -> Answer:
        """One exchange; `target` is the path and query. Raises `ConnectFailed` or `NoAnswer`, never for a status."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Request:
    """A request as `MockTransport` saw it, with the headers it carried."""

    method: str
    target: str
    body: bytes
    content_type: str | None
    headers: dict[str, str]


@dataclass
class MockTransport:
    """Answers each request with `handler(request)` (an `Answer`, or raises `ConnectFailed`/`NoAnswer`), in memory;
    `requests` keeps every request seen."""

    handler: Callable[[Request], Answer | Awaitable[Answer]]
    requests: list[Request] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    closed: bool = False

    def set_headers(self, **headers: str) -> None:
        self.headers.update(headers)

    async def request(self, method: str, target: str, body: bytes = b"", content_type: str | None = None) -> Answer:
        request = Request(method, target, body, content_type, dict(self.headers))
        self.requests.append(request)
        answer = self.handler(request)
        return await answer if inspect.isawaitable(answer) else answer

    async def close(self) -> None:
        self.closed = True
