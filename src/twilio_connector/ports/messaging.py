"""The seam between the engine and whoever carries requests in and statuses out: an MQTT broker today
(mqtt.session), Greengrass's local pub/sub next.

A source hands each request to a `RequestHandler` and acknowledges it to its sender only once the handler
returns (the request is durably recorded then); a sink's `publish` resolves once the other side holds the status
(MQTT: its PUBACK). A `Messaging` is both, with a connection the service watches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["Messaging", "Publish", "RequestHandler"]

#: Takes one request (topic, payload, `redelivered`: its sender sent it before, perhaps to a process that died).
RequestHandler = Callable[[str, bytes, bool], Awaitable[None]]
#: Publishes one status on a topic; resolves once the other side holds it, raises if it refused it.
Publish = Callable[[str, bytes], Awaitable[None]]


class Messaging(Protocol):
    connected: asyncio.Event
    """Set while connected and subscribed."""
    refused: list[str]
    """Subscriptions refused, each with its reason: not ready while any is."""
    problem: str | None
    """Why it is not connected, in words (None while connected)."""

    async def connect(self) -> None:
        """Connect and subscribe; returns once the first subscription is in place, keeps reconnecting after."""
        ...

    def publish(self, topic: str, payload: bytes) -> Awaitable[None]: ...

    async def disconnect(self, grace: float = 5.0) -> None:
        """Stop taking requests, wait up to `grace` s for statuses in flight, then close."""
        ...
