"""The watchdog: requests the engine has lost track of are found, counted, logged and taken up again.

Every guarantee rests on each request having something at work on it or waiting for it in the journal. Should a
defect break that (a hand-over lost, a task gone without recording its outcome), a request would wait forever
with the connector alive and silent. So every `CHECK_EVERY` seconds the watchdog asks the journal for
- *abandoned* requests: being sent for longer than an attempt can last (the HTTP timeout and a margin), with no
  task at work on them: put in doubt and looked up at Twilio, as after a restart;
- *overdue* requests: due for an attempt or a lookup for over `OVERDUE_AFTER` seconds at two checks in a row,
  while the dispatcher has slots free and nothing queued: the dispatcher is told to look again;
- *stuck* tasks: at work on one request for over `STUCK_AFTER` seconds (an attempt is bounded, and so are
  lookups; only a journal that cannot be written holds one that long, and that is not checked): logged once each
  with what the task is waiting on, so that the defect can be found. They are left to finish: cancelling one
  could lose what it is about to record.
Each is counted (`twilio_connector_stalled_total{kind}`), logged, and `/readyz` says so for `REPORT_FOR` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from ..ops.metrics import Metrics
from ..ports.journal import JournalPort

__all__ = ["Watchdog"]

log = logging.getLogger(__name__)

CHECK_EVERY = 5.0
#: Seconds past the HTTP timeout before an attempt with nothing at work on it counts as abandoned.
MARGIN = 10.0
OVERDUE_AFTER = 30.0
STUCK_AFTER = 600.0
KINDS = ("abandoned", "overdue", "stuck")
REPORT_FOR = 60.0


class Dispatch(Protocol):
    """What the watchdog reads of the dispatcher, and asks of it."""

    @property
    def active(self) -> dict[int, asyncio.Task[None]]: ...

    @property
    def started(self) -> dict[int, float]: ...

    def free_slots(self) -> int: ...

    def rescan(self) -> None: ...


class Watchdog:
    def __init__(
        self,
        journal: JournalPort,
        dispatcher: Dispatch,
        metrics: Metrics,
        *,
        attempt_lasts: float,
        lookup_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`attempt_lasts`: the longest an attempt can take (the HTTP timeout); `lookup_after`: seconds after an
        abandoned attempt began that it is looked up."""
        self._journal = journal
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._abandoned_after = attempt_lasts + MARGIN
        self._lookup_after = lookup_after
        self._clock = clock
        self._overdue_before = 0  # overdue requests at the previous check
        self._last: tuple[float, str] | None = None  # the latest stall found: when, and what
        self._stuck: set[int] = set()  # stuck tasks already reported
        for kind in KINDS:
            metrics.stalled.labels(kind)  # exported as 0 from the start: an alert on any increase sees the first

    @property
    def problem(self) -> str | None:
        """What the watchdog found within the last `REPORT_FOR` seconds, for readiness."""
        if self._last is None or self._clock() - self._last[0] >= REPORT_FOR:
            return None
        return self._last[1]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            await self.check()

    async def check(self) -> None:
        journal, dispatcher = self._journal, self._dispatcher
        if not journal.writable:
            return  # what waits then waits for the journal, not for a defect
        now, busy = self._clock(), set(dispatcher.active)
        abandoned = await journal.abandoned(now - self._abandoned_after, busy)
        if abandoned:
            count = await journal.doubt_abandoned(abandoned, self._lookup_after)
            self._found("abandoned", count, f"being sent for over {self._abandoned_after:g} s with nothing at work "
                        "on them: looking them up at Twilio")  # fmt: skip
        overdue = 0
        if dispatcher.free_slots() > 0 and not journal.requests_waiting:
            overdue = await journal.overdue(now - OVERDUE_AFTER, busy)
        if overdue and self._overdue_before:
            self._found("overdue", overdue, f"due for over {OVERDUE_AFTER:g} s and not started with slots free")
        self._overdue_before = overdue
        self._report_stuck(now)

    def _report_stuck(self, now: float) -> None:
        started, active = self._dispatcher.started, self._dispatcher.active
        self._stuck &= set(started)
        stuck = [seq for seq, at in started.items() if now - at > STUCK_AFTER and seq not in self._stuck]
        if not stuck:
            return
        for seq in stuck:
            frames = active[seq].get_stack(limit=8) if seq in active else []
            where = " <- ".join(f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:"
                                f"{frame.f_lineno})" for frame in frames)  # fmt: skip
            log.error("the watchdog: request seq=%d at work for over %g s, waiting in %s", seq, STUCK_AFTER, where)
        self._stuck.update(stuck)
        self._found("stuck", len(stuck), f"at work for over {STUCK_AFTER:g} s (left to finish)", rescan=False)

    def _found(self, kind: str, count: int, what: str, *, rescan: bool = True) -> None:
        message = f"the watchdog found {count} request(s) {what} (a defect: please report it with this log)"
        log.error("%s", message)
        self._metrics.stalled.labels(kind).inc(count)
        self._last = (self._clock(), message)
        if rescan:
            self._dispatcher.rescan()
