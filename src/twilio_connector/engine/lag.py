"""The list-lag evidence at work (domain/lag.py): `ListLag` keeps the samples, in memory and in the journal, and
gives the reconcile window they allow; `LagProbe` watches a new message appear in Twilio's list.

A probe follows a message that was just created (one at a time, at most one every `interval` seconds): it looks
the message up 0.5, 1, 2, 4 ... seconds after its create until Twilio lists it, and the seconds it took are a
sample; one never listed within the ceiling counts as the ceiling. Lookups that find the message of an unknown
outcome are samples too (`ListLag.seen`). Probes cost list requests only while messages are sent: a few a minute
at most with the default interval (every 5 s until five samples are in, so that a new install's first minute of
traffic is evidence enough).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ..domain.contract import Notification, SendResult
from ..domain.lag import EVIDENCE_AGE, MIN_SAMPLES, evidence_window
from ..domain.outcomes import TwilioFailure
from ..ops.metrics import Metrics
from ..ports.journal import JournalPort

__all__ = ["Finder", "LagProbe", "ListLag"]

log = logging.getLogger(__name__)

#: Seconds after a create when a probe looks for it.
PROBE_AFTER = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
#: Seconds between probes while the evidence is too thin to shorten the window (a new install, a quiet hour):
#: the first minute of traffic is enough to stop waiting out the ceiling.
EAGER_INTERVAL = 5.0


class Finder(Protocol):
    async def find(self, notification: Notification, since: float) -> list[SendResult] | TwilioFailure: ...


class ListLag:
    """The evidence and the window. `adaptive` False: the window stays at the ceiling (`reconcile_window`)."""

    def __init__(
        self,
        journal: JournalPort,
        metrics: Metrics,
        *,
        ceiling: float,
        adaptive: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self._metrics = metrics
        self.ceiling = ceiling
        self._adaptive = adaptive
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque()  # (seen_at, seconds), oldest first
        self._shown = ceiling
        #: Follows new messages in the list, when probes are on.
        self.probe: LagProbe | None = None
        metrics.reconcile_window.set_function(self.window)

    async def load(self) -> None:
        """The samples of the last hour from the journal: a restart keeps its evidence."""
        self._samples.extend(await self._journal.lags(self._clock() - EVIDENCE_AGE))
        self._tell()

    def window(self) -> float:
        """The reconcile window now."""
        if not self._adaptive:
            return self.ceiling
        return evidence_window(self._recent(), self.ceiling)

    def thin(self) -> bool:
        """Too few recent samples to shorten the window."""
        return len(self._recent()) < MIN_SAMPLES

    def _recent(self) -> list[float]:
        horizon = self._clock() - EVIDENCE_AGE
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        return [seconds for _, seconds in self._samples]

    async def seen(self, seconds: float) -> None:
        """A message showed in the list `seconds` after its create."""
        now = self._clock()
        seconds = min(max(0.0, seconds), self.ceiling)
        self._samples.append((now, seconds))
        self._metrics.list_lag.observe(seconds)
        with contextlib.suppress(Exception):  # evidence is not worth failing a request for
            await self._journal.record_lag(now, seconds, now - EVIDENCE_AGE)
        self._tell()

    def created(self, notification: Notification, result: SendResult, began: float) -> None:
        """A create succeeded: the probe may follow it."""
        if self.probe is not None:
            self.probe.created(notification, result, began)

    def _tell(self) -> None:
        """Log the window when the evidence moves it (by a second or more)."""
        window = self.window()
        if abs(window - self._shown) >= 1.0:
            largest = max((seconds for _, seconds in self._samples), default=0.0)
            log.info(
                "reconcile window now %.0f s (largest list lag of the last hour %.1f s, %d samples)",
                *(window, largest, len(self._samples)),
            )
            self._shown = window


class LagProbe:
    """Follows one new message at a time, at most one every `interval` seconds (every EAGER_INTERVAL while the
    evidence is thin), until Twilio lists it."""

    def __init__(self, lag: ListLag, finder: Finder, interval: float, clock: Callable[[], float] = time.time) -> None:
        self._lag = lag
        self._finder = finder
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._last = float("-inf")

    def created(self, notification: Notification, result: SendResult, began: float) -> None:
        now = self._clock()
        interval = min(self._interval, EAGER_INTERVAL) if self._lag.thin() else self._interval
        if self._task is not None or now - self._last < interval:
            return
        self._last = now
        self._task = asyncio.get_running_loop().create_task(self._follow(notification, result.sid, began))
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("list lag probe failed: %s", task.exception())

    async def _follow(self, notification: Notification, sid: str, began: float) -> None:
        ceiling = self._lag.ceiling
        for offset in (*(after for after in PROBE_AFTER if after < ceiling), ceiling):
            await asyncio.sleep(max(0.0, began + offset - self._clock()))
            found = await self._finder.find(notification, began)
            if isinstance(found, TwilioFailure):
                return  # the list cannot be read now: no evidence either way
            if any(candidate.sid == sid for candidate in found):
                await self._lag.seen(self._clock() - began)
                return
        await self._lag.seen(ceiling)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
