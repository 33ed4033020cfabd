"""The watchdog's decisions, against a journal and a dispatcher that say what the test wants (unit tests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

import pytest

from twilio_connector.engine.watchdog import REPORT_FOR, STUCK_AFTER, Watchdog
from twilio_connector.ops.metrics import Metrics


class Journal:
    def __init__(self) -> None:
        self.writable = True
        self.requests_waiting = 0
        self.sending: list[int] = []
        self.due_long_ago = 0
        self.doubted: list[int] = []

    async def abandoned(self, before: float, busy: Collection[int]) -> list[int]:
        return [seq for seq in self.sending if seq not in busy]

    async def doubt_abandoned(self, seqs: Collection[int], grace: float) -> int:
        self.doubted += seqs
        return len(seqs)

    async def overdue(self, before: float, busy: Collection[int]) -> int:
        return self.due_long_ago


class Dispatcher:
    def __init__(self) -> None:
        self.active: dict[int, asyncio.Task[None]] = {}
        self.started: dict[int, float] = {}
        self.free = 4
        self.rescans = 0

    def free_slots(self) -> int:
        return self.free

    def rescan(self) -> None:
        self.rescans += 1


def watchdog(journal: Journal, dispatcher: Dispatcher, now: list[float]) -> Watchdog:
    return Watchdog(
        journal,  # type: ignore[arg-type]
        dispatcher,
        Metrics(),
        attempt_lasts=15,
        lookup_after=2,
        clock=lambda: now[0],
    )


async def test_an_abandoned_attempt_is_doubted_but_one_at_work_is_not() -> None:
    journal, dispatcher, now = Journal(), Dispatcher(), [1000.0]
    journal.sending = [1, 2]
    dispatcher.active = {2: asyncio.ensure_future(asyncio.sleep(0))}
    dog = watchdog(journal, dispatcher, now)
    await dog.check()
    assert journal.doubted == [1] and dispatcher.rescans == 1
    assert dog.problem is not None and "1 request(s) being sent" in dog.problem
    now[0] += REPORT_FOR
    assert dog.problem is None  # said for a minute, then no more
    await asyncio.gather(*dispatcher.active.values())


async def test_overdue_only_at_two_checks_in_a_row_and_with_slots_free() -> None:
    journal, dispatcher, now = Journal(), Dispatcher(), [1000.0]
    dog = watchdog(journal, dispatcher, now)
    journal.due_long_ago = 3
    await dog.check()
    assert dog.problem is None  # once may be the dispatcher about to take them
    await dog.check()
    assert dog.problem is not None and "3 request(s) due" in dog.problem and dispatcher.rescans == 1
    dog2 = watchdog(journal, dispatcher, now)
    dispatcher.free = 0  # a backlog waiting for slots is not a stall
    await dog2.check()
    await dog2.check()
    assert dog2.problem is None
    journal.writable, dispatcher.free = False, 4  # nor one waiting for the journal
    await dog2.check()
    await dog2.check()
    assert dog2.problem is None


async def test_a_task_at_work_too_long_is_reported_once_with_where_it_waits(caplog: pytest.LogCaptureFixture) -> None:
    journal, dispatcher, now = Journal(), Dispatcher(), [1000.0]

    async def waits_forever() -> None:
        await asyncio.Event().wait()

    task = asyncio.ensure_future(waits_forever())
    await asyncio.sleep(0)
    dispatcher.active, dispatcher.started = {7: task}, {7: now[0]}
    dog = watchdog(journal, dispatcher, now)
    await dog.check()
    assert dog.problem is None
    now[0] += STUCK_AFTER + 1
    caplog.set_level(logging.ERROR)
    await dog.check()
    await dog.check()
    lines = [r.getMessage() for r in caplog.records if "seq=7" in r.getMessage()]
    assert len(lines) == 1 and "waits_forever" in lines[0]
    assert dog.problem is not None and "at work for over" in dog.problem and dispatcher.rescans == 0
    task.cancel()
