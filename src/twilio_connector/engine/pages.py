"""Pages until acknowledged: take each open page's next step when it falls due (domain/paging.py decides it).

Everything a page is waiting for lives in the journal (`pages`), not in a task: a step is recorded in the
transaction that admits what it sends, guarded by the page's count of sends, so a crash, a restart or a second
connector on a shared journal never sends a step twice, and an acknowledgement recorded first stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

from ..domain.admission import Accepted, Admission, Folded, Refused
from ..domain.contract import Notification
from ..domain.paging import OpenPage, next_step
from ..ports.journal import JournalPort, until_written

__all__ = ["Pager"]

log = logging.getLogger(__name__)

BATCH = 64
#: Seconds between looks at the journal when no page is open (another connector may open one).
IDLE_WAIT = 60.0

Admitted = Callable[[Notification, Accepted | Folded | Refused], Awaitable[None]]


class Pager:
    def __init__(
        self,
        journal: JournalPort,
        admission: Admission,
        admitted: Admitted,
        ended: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`admitted`: what a step sends was admitted (the engine dispatches it); `ended`: a page ended with a
        status to publish."""
        self._journal = journal
        self._admission = admission
        self._admitted = admitted
        self._ended = ended
        self._clock = clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A page was opened: its first step may fall due sooner than the one waited for."""
        self._wake.set()

    async def _step(self, page: OpenPage) -> None:
        step = next_step(page, self._clock())
        notification = page.notification
        taken, admitted = await until_written(
            self._journal,
            partial(self._journal.page_step, self._admission, page, step),
            f"the page of request id={notification.id}",
        )
        if not taken:
            return  # acknowledged meanwhile, or stepped by another connector
        if step.send is not None and admitted is not None:
            what = "calling" if step.ended else f"send {step.sends}"
            log.info("request id=%s to=%s: not acknowledged; %s", notification.id, notification.to, what)
            await self._admitted(step.send, admitted)
        else:
            log.info("request id=%s to=%s: page ended unacknowledged", notification.id, notification.to)
            self._ended()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            due = await self._journal.pages_due(self._clock(), BATCH)
            for page in due:
                await self._step(page)
            if len(due) == BATCH:
                continue
            next_at = await self._journal.next_page_at()
            wait = IDLE_WAIT if next_at is None else min(IDLE_WAIT, max(0.0, next_at - self._clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
