"""Dispatch: start due requests, at most `max_in_flight` at Twilio at once.

Requests come from the journal's in-memory hand-over (new ones, once committed) and from its queries (after a
restart, retries, lookups falling due, overflow). A slot bounds the requests waiting on Twilio; a request that
has its answer and is only recording it gives its slot back (`answered`), and one waiting for a retry or its
next lookup waits in the journal, holding none.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..domain.concurrency import ConcurrencyWindow
from ..domain.records import Entry
from ..ports.journal import WAIT_CAP, WAIT_FIRST, JournalPort

__all__ = ["Dispatcher"]

Work = Callable[[Entry, bool], Coroutine[Any, Any, None]]


class Dispatcher:
    def __init__(self, journal: JournalPort, max_in_flight: int, work: Work, closing: asyncio.Event) -> None:
        """`work(entry, begun)` takes a request to its next wait or its end; `begun`: its attempt is recorded.
        `max_in_flight`: the most requests at Twilio at once; within it, the window adapts to Twilio's 429s."""
        self._journal = journal
        self._max_in_flight = max_in_flight
        self.window = ConcurrencyWindow(max_in_flight)
        self._work = work
        self._closing = closing
        self.active: dict[int, asyncio.Task[None]] = {}
        self.started: dict[int, float] = {}  # when each active request's task began (the watchdog reads it)
        self._answered: set[int] = set()  # active, done with Twilio, only recording the outcome: no slot held
        self.starting = 0  # requests being accepted with their first attempt (each holds a slot)
        self._query_at = 0.0  # when the journal must next be asked for due requests
        self._wake = asyncio.Event()  # new or finished work

    @property
    def in_flight(self) -> int:
        """Requests holding a slot."""
        return len(self.active) - len(self._answered)

    def free_slots(self) -> int:
        return self.window.size - len(self.active) + len(self._answered) - self.starting

    def spawn(self, entry: Entry, *, begun: bool = False) -> None:
        task = asyncio.create_task(self._work(entry, begun))
        self.active[entry.seq] = task
        self.started[entry.seq] = time.time()
        task.add_done_callback(lambda _: self._done(entry.seq))

    def answered(self, seq: int, throttled: bool = False) -> None:
        """`seq` has Twilio's answer (`throttled`: a 429, too many concurrent requests): its slot is free while
        the outcome is recorded, and the window learns from it."""
        self._answered.add(seq)
        self.window.answered(throttled)
        self._wake.set()

    def due_at(self, when: float) -> None:
        """Something falls due at `when` (a retry, a lookup, a digest): ask the journal then."""
        self._query_at = min(self._query_at, when)
        self._wake.set()

    def rescan(self) -> None:
        """The journal may have changed behind our back (an operator's `journal retry`): ask it now."""
        self.due_at(0.0)

    def wake(self) -> None:
        self._wake.set()

    def _done(self, seq: int) -> None:
        self.active.pop(seq, None)
        self.started.pop(seq, None)
        self._answered.discard(seq)
        self._wake.set()

    async def run(self) -> None:
        journal = self._journal
        # What waits in the journal is handed over a batch at a time, up to two rounds of slots ahead, so a slot
        # that frees is filled from memory at once.
        ahead = 2 * self._max_in_flight
        away = WAIT_FIRST
        while not self._closing.is_set():
            if journal.writable:
                away = WAIT_FIRST
            else:
                # An attempt cannot even be recorded as begun (a full disk): starting one would fail at once and
                # find the request due again, in a loop. Try again after a pause, doubling like intake's, or as
                # soon as another write succeeds.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(journal.resumed(), away)
                away = min(WAIT_CAP, away * 2)
            self._wake.clear()
            free = self.free_slots()
            for entry in journal.take_requests(free):
                self.spawn(entry)
            now = time.time()
            if journal.requests_waiting < ahead // 2 and (not journal.handing_requests or now >= self._query_at):
                again = await journal.refill(now, ahead - journal.requests_waiting, set(self.active))
                self._query_at = math.inf if again is None else again
                if self._closing.is_set():
                    return  # `drain` is already waiting on what is in flight: leave the rest for next time
            if journal.requests_waiting and self.free_slots() > 0:
                continue
            # Woken by new work or a finished attempt; the timeout is for a retry falling due (or a missed wake).
            wait = self._query_at - time.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait if 0 < wait < 1.0 else 1.0)

    async def drain(self, grace: float) -> bool:
        """Give what is in flight `grace` seconds; True if all of it finished."""
        if not self.active:
            return True
        _, pending = await asyncio.wait(list(self.active.values()), timeout=grace)
        return not pending

    async def cancel(self) -> None:
        tasks = list(self.active.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
