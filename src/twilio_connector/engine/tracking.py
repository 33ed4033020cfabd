"""Delivery tracking: learn how each sent message or call ended, and publish it as a follow-up status.

Two ways, by `delivery_tracking`:
- `poll`: fetch the message or call from Twilio with growing intervals until it reaches a final state. Works
  behind NAT, needs no inbound port.
- `callback`: Twilio calls our HTTP endpoint (its public URL is sent as `StatusCallback`; ops/callbacks.py
  serves it and hands each valid report to `DeliveryTracker.reported`).
Either way the tracked set lives in the journal, so tracking survives restarts, and gives up after
`tracking_give_up` seconds with a non-final follow-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..domain.contract import FINAL_STATES, Kind, delivery_status, encode_status
from ..domain.outcomes import TwilioFailure
from ..domain.paging import answered
from ..domain.records import Track, Tracked
from ..ports.journal import JournalPort

__all__ = ["DeliveryTracker"]

log = logging.getLogger(__name__)

POLL_BATCH = 32


class Fetcher(Protocol):
    async def fetch(self, kind: Kind, sid: str) -> dict[str, Any] | TwilioFailure: ...


@dataclass(frozen=True, slots=True)
class TrackingOptions:
    """`polling`: fetch from Twilio (else wait for callbacks); intervals and the give-up time in seconds."""

    polling: bool
    poll_interval: float
    poll_interval_max: float
    give_up: float


class DeliveryTracker:
    def __init__(self, options: TrackingOptions, journal: JournalPort, fetcher: Fetcher) -> None:
        self._options = options
        self._journal = journal
        self._fetcher = fetcher
        self.notify: Callable[[], None] = lambda: None  # a follow-up is waiting (the engine sets this)
        self._wake = asyncio.Event()
        self._polling = options.polling

    def track(self, status: str) -> Track:
        """How to follow a request that Twilio just accepted with `status`."""
        first = self._options.poll_interval if self._polling else self._options.give_up
        return Track(first, self._options.give_up, status)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Poll what is due (in `poll` mode) and give up on what ran out of time (in both modes)."""
        while True:
            self._wake.clear()
            due = await self._journal.tracked_due(time.time(), POLL_BATCH)
            await asyncio.gather(*(self._check(item) for item in due))
            if len(due) == POLL_BATCH:
                continue
            next_check = await self._journal.next_check()
            wait = 60.0 if next_check is None else max(0.0, min(60.0, next_check - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _check(self, item: Tracked) -> None:
        now = time.time()
        if not self._polling or now >= item.deadline:
            if now >= item.deadline:
                await self._conclude(item, item.last_status, final=False)
            return
        answer = await self._fetcher.fetch(item.notification.kind, item.sid)
        state = item.last_status
        if not isinstance(answer, TwilioFailure):
            state = str(answer.get("status") or state)
            if state in FINAL_STATES[item.notification.kind]:
                code = answer.get("error_code")
                await self._conclude(
                    item,
                    state,
                    final=True,
                    error_code=int(code) if code else None,
                    error_message=answer.get("error_message"),
                    duration=answer.get("duration"),
                )
                return
        interval = min(self._options.poll_interval_max, item.interval * 2)
        await self._journal.check_later(item.seq, min(now + interval, item.deadline), interval, state)

    async def _conclude(
        self,
        item: Tracked,
        state: str,
        *,
        final: bool,
        error_code: int | None = None,
        error_message: Any = None,
        duration: Any = None,
    ) -> None:
        """`duration`: a call's seconds, as Twilio says them: a page's call answered acknowledges the page."""
        notification = item.notification
        message = error_message if isinstance(error_message, str) else None
        payload = encode_status(
            delivery_status(notification, item.sid, state, final=final, error_code=error_code, error_message=message)
        )
        acknowledges = (notification.id, notification.to) if answered(notification, state, duration) else None
        if await self._journal.delivered(item.seq, payload, acknowledges):
            log.info("request id=%s sid=%s delivery=%s final=%s", notification.id, item.sid, state, final)
            self.notify()

    async def reported(self, sid: str, state: str, error_code: int | None = None, duration: str | None = None) -> None:
        """Twilio reported `state` for `sid` (a status callback): a final state ends its tracking."""
        item = await self._journal.tracked_by_sid(sid)
        if item is not None and state in FINAL_STATES[item.notification.kind]:
            await self._conclude(item, state, final=True, error_code=error_code, duration=duration)
