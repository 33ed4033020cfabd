"""Credentials Twilio refuses: read them again once per burst of refusals, and say so until Twilio takes them.

An auth token revoked or rotated makes Twilio answer 401 (error 20003) to every request. Where the token comes
from a place that can change (a file, Secrets Manager), the new one is read before any request is failed for it;
a 401 proves nothing was created, so the request is then tried once more with it. A burst of refusals reads
the source once, not once per request, and at most once per `REREAD_EVERY` seconds while the token stays bad.
Meanwhile `rejected` says why, for readiness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from ..domain.contract import Notification, SendResult
from ..domain.records import Reply
from ..settings.config import ConfigError, Credentials
from ..settings.secrets import Secret
from .client import TwilioFailure

__all__ = ["Reauthenticating"]

log = logging.getLogger(__name__)
T = TypeVar("T")
HTTP_UNAUTHORIZED = 401
#: Seconds between two readings of a credential source that gave the credentials Twilio refuses.
REREAD_EVERY = 5.0


class Client(Protocol):
    async def create(self, notification: Notification) -> SendResult | TwilioFailure: ...

    async def find(self, notification: Notification, since: float) -> list[SendResult] | TwilioFailure: ...

    async def inbound(self, number: str, since: float) -> list[Reply] | TwilioFailure: ...

    async def media_urls(self, sid: str) -> list[str] | TwilioFailure: ...

    def authenticate(self, username: str, password: Secret) -> None: ...


def _refused(outcome: object) -> bool:
    return isinstance(outcome, TwilioFailure) and outcome.http_status == HTTP_UNAUTHORIZED


class Reauthenticating:
    """A `delivery.Sender` over `client` that reads the credentials again (`load`, blocking: it runs on a
    thread) when Twilio refuses them."""

    def __init__(
        self,
        client: Client,
        credentials: Credentials,
        load: Callable[[], Credentials],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._current = credentials
        self._load = load
        self._clock = clock
        self._generation = 0  # bumped each time new credentials are in use
        self._read_at = -REREAD_EVERY
        self._lock = asyncio.Lock()
        self.rejected: str | None = None  # why Twilio refuses the credentials, while it does

    async def create(self, notification: Notification) -> SendResult | TwilioFailure:
        return await self._call(lambda: self._client.create(notification))

    async def find(self, notification: Notification, since: float) -> list[SendResult] | TwilioFailure:
        return await self._call(lambda: self._client.find(notification, since))

    async def inbound(self, number: str, since: float) -> list[Reply] | TwilioFailure:
        return await self._call(lambda: self._client.inbound(number, since))

    async def media_urls(self, sid: str) -> list[str] | TwilioFailure:
        return await self._call(lambda: self._client.media_urls(sid))

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        generation = self._generation
        outcome = await call()
        if _refused(outcome) and await self._renewed(generation):
            outcome = await call()  # a 401 created nothing: safe to make the request again
        if _refused(outcome):
            assert isinstance(outcome, TwilioFailure)
            self.rejected = (
                f"Twilio refuses the credentials of account {self._current.account_sid} (user "
                f"{self._current.username}): HTTP 401, error {outcome.code} ({outcome.message}); revoked or rotated?"
            )
        elif not (isinstance(outcome, TwilioFailure) and outcome.http_status is None):
            self.rejected = None  # Twilio answered, having taken the credentials
        return outcome

    async def _renewed(self, generation: int) -> bool:
        """Whether credentials other than those of `generation` are now in use: read again here, or by another
        request meanwhile."""
        async with self._lock:
            if self._generation != generation:
                return True
            if self._clock() - self._read_at < REREAD_EVERY:
                return False
            self._read_at = self._clock()
            try:
                fresh = await asyncio.to_thread(self._load)
            except ConfigError as exc:
                log.warning("Twilio refuses the credentials, and they cannot be read again: %s", exc)
                return False
            if fresh == self._current:
                log.warning("Twilio refuses the credentials, and reading them again gave the same ones")
                return False
            self._client.authenticate(fresh.username, fresh.password)
            self._current, self._generation = fresh, self._generation + 1
            log.warning("Twilio refused the credentials: read them again, and they changed; using the new ones")
            return True
