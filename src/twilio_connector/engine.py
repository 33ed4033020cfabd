"""The delivery engine: one request in, one status out, with bounded concurrency, honest retries and dedupe."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .config import Settings
from .contract import (
    ErrorCode,
    InvalidRequest,
    Kind,
    Notification,
    SendResult,
    encode_status,
    failure_status,
    parse_request,
    success_status,
)
from .retry import RetryPolicy, error_code_for
from .twilio import TwilioFailure

__all__ = ["Engine", "Sender"]

log = logging.getLogger(__name__)


class Sender(Protocol):
    async def create(self, notification: Notification) -> SendResult | TwilioFailure: ...


class RecentOutcomes:
    """Statuses of requests finished within `window` seconds, so a broker redelivery is answered, not resent.

    Bounded in count as well as age; a restart forgets it (the journal of a later release will not).
    """

    def __init__(self, window: float, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._window, self._limit, self._clock = window, limit, clock
        self._entries: OrderedDict[Notification, tuple[float, bytes]] = OrderedDict()

    def get(self, key: Notification) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry[0] > self._window:
            return None
        return entry[1]

    def put(self, key: Notification, status: bytes) -> None:
        self._entries[key] = (self._clock(), status)
        self._entries.move_to_end(key)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)


class Engine:
    """Turns MQTT payloads into Twilio calls and statuses. `handle` returns once the status is published."""

    def __init__(
        self,
        settings: Settings,
        sender: Sender,
        publish: Callable[[bytes], Awaitable[None]],
        *,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        dedupe_window: float = 600.0,
    ) -> None:
        self._settings = settings
        self._sender = sender
        self._publish = publish
        self._rand = rand
        self._sleep = sleep
        self._policy = RetryPolicy(settings.backoff_base, settings.backoff_max)
        self._kinds = {settings.txt_topic: Kind.SMS, settings.call_topic: Kind.CALL}
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._recent = RecentOutcomes(dedupe_window, limit=10_000)
        self._running: dict[Notification, asyncio.Future[bytes]] = {}
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return self._active

    async def handle(self, topic: str, payload: bytes, duplicate: bool = False) -> None:
        kind = self._kinds.get(topic)
        if kind is None:
            log.warning("ignoring a message on unexpected topic %r", topic)
            return
        await self._park_if_closing()
        async with self._slots:
            await self._park_if_closing()
            self._active += 1
            self._idle.clear()
            try:
                await self._publish(await self._process(kind, payload))
            finally:
                self._active -= 1
                if not self._active:
                    self._idle.set()

    async def _park_if_closing(self) -> None:
        # A request taken in after shutdown began is never acknowledged: the broker keeps it for next time.
        if self._closing.is_set():
            await asyncio.Future()

    async def drain(self, grace: float) -> bool:
        """Stop taking requests and wait up to `grace` seconds for those in flight. True if all finished."""
        self._closing.set()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True

    async def _process(self, kind: Kind, payload: bytes) -> bytes:
        started = time.monotonic()
        parsed = parse_request(
            payload,
            kind,
            default_from=self._settings.default_from,
            max_retries=self._settings.max_retries,
            max_payload_bytes=self._settings.max_payload_bytes,
        )
        if isinstance(parsed, InvalidRequest):
            log.info("request id=%s kind=%s result=invalid reason=%r", parsed.id, kind.value, parsed.message)
            return encode_status(failure_status(parsed.id, ErrorCode.INVALID_PARAMETER, parsed.message))
        try:
            return await self._deliver_once(parsed, started)
        except Exception:
            log.exception("request id=%s failed with an internal error", parsed.id)
            return encode_status(failure_status(parsed.id, ErrorCode.INTERNAL_ERROR, "internal error"))

    async def _deliver_once(self, notification: Notification, started: float) -> bytes:
        """Deliver, unless the same request finished recently or is running now: then reuse that status."""
        recorded = self._recent.get(notification)
        if recorded is not None:
            log.info("request id=%s result=duplicate (status republished, nothing sent)", notification.id)
            return recorded
        running = self._running.get(notification)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._running[notification] = future
        try:
            status = encode_status(await self._deliver(notification, started))
            future.set_result(status)
            self._recent.put(notification, status)
            return status
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody else may be waiting
            raise
        finally:
            del self._running[notification]

    async def _deliver(self, notification: Notification, started: float) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._sender.create(notification)
            if isinstance(outcome, SendResult):
                self._log_outcome(notification, "success", attempt, started, sid=outcome.sid)
                return success_status(notification, outcome, attempt)
            if attempt > notification.retries or not self._policy.should_retry(outcome):
                error = error_code_for(outcome)
                self._log_outcome(notification, error.value, attempt, started, code=outcome.code)
                return failure_status(
                    notification.id,
                    error,
                    outcome.message,
                    twilio_error_code=outcome.code,
                    http_status=outcome.http_status,
                    attempts=attempt,
                )
            wait = self._policy.delay(attempt, outcome, self._rand)
            log.info(
                "request id=%s attempt=%d failed (%s, HTTP %s); retrying in %.2fs",
                notification.id,
                attempt,
                outcome.message,
                outcome.http_status,
                wait,
            )
            await self._sleep(wait)

    @staticmethod
    def _log_outcome(notification: Notification, result: str, attempts: int, started: float, **extra: Any) -> None:
        details = " ".join(f"{key}={value}" for key, value in extra.items() if value is not None)
        log.info(
            "request id=%s kind=%s result=%s attempts=%d duration_ms=%.1f %s",
            notification.id,
            notification.kind.value,
            result,
            attempts,
            (time.monotonic() - started) * 1000,
            details,
        )
