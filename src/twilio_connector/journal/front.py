"""The journal's async front, what the engine's parts use (`ports.journal.JournalPort`): writes grouped into
commits, published marks recorded with the next commit, the journal's health (writable, damaged), and the
in-memory hand-over of new work. `sqlite.SqliteJournal` and `postgres.PostgresJournal` say how a group of writes
and a read reach their database; `open_journal` (opening.py) picks one for a path or URL.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..domain.admission import Accepted, Admission, Folded, Refused
from ..domain.contract import Kind, Notification
from ..domain.paging import OpenPage, PageStep
from ..domain.records import Duplicate, Entry, ReplyRecord, Track, Tracked
from ..domain.states import State
from ..ports.journal import JournalClosed, JournalDamaged, SidClaimed
from .core import Marks, SqlCore

__all__ = ["MARK_DELAY", "Journal", "attempt"]

T = TypeVar("T")
log = logging.getLogger(__name__)
#: Seconds a published status may wait for another commit to record it before it gets one of its own.
MARK_DELAY = 0.2


def attempt(
    operation: Callable[[], Any], error: type[Exception], checked: Callable[[BaseException], BaseException]
) -> tuple[bool, Any]:
    """Run `operation`: (True, its result), or (False, the error it raised, as `checked` says it)."""
    try:
        return True, operation()
    except error as exc:
        return False, checked(exc)


def _settle(outcomes: Iterable[tuple[asyncio.Future[Any], tuple[bool, Any]]]) -> None:
    for future, (ok, value) in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Journal(abc.ABC):
    """The async front of a `SqlCore`; its children say how a group of writes and a read reach the database."""

    #: Writes per group (per commit): all that waited, unless a database runs each write on its own.
    GROUP: int | None = None

    def __init__(self, core: SqlCore, clock: Callable[[], float] = time.time, where: str = "") -> None:
        """`clock`: what the journal's timestamps (acceptance, attempt start) are read from; `where`: its path
        or URL, for the log."""
        self.core = core
        self.clock = clock
        self.where = where
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._reads: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []  # asked for during a commit
        # What was published, to record with the next commit (`Marks`); and all not recorded yet, which the
        # queries for what to publish must skip (in the same order: statuses, follow-ups, replies, pages).
        self._marks = Marks.none()
        self._marking: tuple[set[Any], ...] = tuple(set() for _ in Marks._fields)
        self._mark_timer: asyncio.TimerHandle | None = None
        self._flushing = False
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._writable = True  # the last commit succeeded (readiness)
        self._away: tuple[float, int] | None = None  # since when commits fail, and how many did
        self._resumed = asyncio.Event()  # set while commits succeed
        self._resumed.set()
        self._damage = asyncio.Event()  # set, for good, once a statement found the file damaged
        self._damaged: JournalDamaged | None = None
        self.closing = False  # close() has begun: no statement may start any more

    async def close(self) -> None:
        if self.damaged is None:
            await self.flush()
        # A flush under way runs statements on the loop's thread (the reads it settles): closing the connection
        # under it from the executor's thread crashed the process (SIGSEGV) when damage stopped the connector.
        self.closing = True
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None
        while self._flushing:
            await self._flushed.wait()
        await asyncio.get_running_loop().run_in_executor(self._executor, self.core.close)
        self._executor.shutdown(wait=True)

    @property
    def shared(self) -> bool:
        return self.core.shared

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def damaged(self) -> JournalDamaged | None:
        return self._damaged

    async def resumed(self) -> None:
        await self._resumed.wait()

    async def damage_found(self) -> None:
        await self._damage.wait()

    @abc.abstractmethod
    async def read(self, operation: Callable[[], T]) -> T:
        """Run `operation` (a query): now, or once the database may be used (after the commit under way)."""

    def _checked(self, exc: BaseException) -> BaseException:
        """`exc` as the callers should see it (the SQLite journal tells a damaged file apart)."""
        return exc

    def _found_damaged(self, message: str) -> JournalDamaged:
        """The journal is damaged: known for good (every later read or write would meet it, and nothing the
        connector does can mend it)."""
        if self._damaged is None:
            self._damaged = JournalDamaged(message)
            self._damage.set()
            self._writable = False
        return JournalDamaged(*self._damaged.args)

    @abc.abstractmethod
    async def _group(self, batch: list[Callable[[], Any]], marks: Marks) -> list[tuple[bool, Any]]:
        """Run a group of writes and the published marks, durably: each write's outcome, as (True, result) or
        (False, exception). Raises if the group as a whole was not committed."""

    def _rolled_back(self) -> None:  # noqa: B027  (nothing to do where a failed transaction ends itself)
        """The group was not committed: end its transaction if the database left it open."""

    def _healthy(self) -> bool:
        """The connection still works after a group (a remote database's may be lost)."""
        return True

    async def write(self, operation: Callable[[], T]) -> T:
        """Run `operation` in the next group commit; return once it is committed."""
        if self.closing:
            raise JournalClosed(f"the journal at {self.where} is closing")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._batch.append((operation, future))
        self._start_flush()
        return await future

    def mark_published(self, seqs: Iterable[int]) -> None:
        """Record statuses as published with the next commit, or within MARK_DELAY: not worth a commit (and an
        fsync) of their own. Should the process die first, they are published again after the restart."""
        self._mark(0, seqs)

    def mark_followups_published(self, ids: Iterable[int]) -> None:
        self._mark(1, ids)

    def mark_replies_published(self, sids: Iterable[str]) -> None:
        self._mark(2, sids)

    def mark_page_statuses_published(self, seqs: Iterable[int]) -> None:
        self._mark(3, seqs)

    def _mark(self, which: int, keys: Iterable[Any]) -> None:
        keys = list(keys)  # read twice below: a generator would leave the second empty
        self._marks[which].extend(keys)
        self._marking[which].update(keys)
        if self.core.shared:
            # Another connector publishes again what is not recorded as published once our claim lapses: record
            # it at once, to shrink the window in which our death would have a status go out twice.
            self._start_flush()
        elif not self._flushing and self._mark_timer is None:
            self._mark_timer = asyncio.get_running_loop().call_later(MARK_DELAY, self._start_flush)

    async def flush(self) -> None:
        """Return once everything written so far, published marks included, is committed."""
        while self._flushing or any(self._marks):
            self._start_flush()
            await self._flushed.wait()

    def _start_flush(self) -> None:
        if self.closing:
            return
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None
        if not self._flushing:
            self._flushing = True
            self._flushed.clear()
            # Held so that the task is not collected while it runs (the loop keeps only a weak reference).
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                size = self.GROUP or len(self._batch)
                batch, self._batch = self._batch[:size], self._batch[size:]
                marks, self._marks = self._marks, Marks.none()
                try:
                    outcomes = await self._group([operation for operation, _ in batch], marks)
                    self.core.committed()
                    self._writes(self._healthy())
                except Exception as exc:
                    outcomes = self._abandon(exc, len(batch))
                for marking, marked in zip(self._marking, marks, strict=True):
                    marking.difference_update(marked)
                reads, self._reads = self._reads, []
                try:
                    _settle(zip((future for _, future in batch), outcomes, strict=True))
                    _settle((future, attempt(operation, self.core.Error, self._checked)) for operation, future in reads)
                except Exception as exc:
                    # A defect. A caller left waiting would hold its request forever, unacknowledged: each one
                    # still waiting gets the error instead, and the journal goes on.
                    log.exception("the journal could not hand out its outcomes")
                    _settle((future, (False, exc)) for _, future in (*batch, *reads))
                if not self._batch:
                    break
        finally:
            self._flushing = False
            self._flushed.set()
            if any(self._marks) and self._mark_timer is None:
                self._mark_timer = loop.call_later(MARK_DELAY, self._start_flush)

    def _abandon(self, exc: Exception, size: int) -> list[tuple[bool, Any]]:
        self._rolled_back()
        self.core.rolled_back()
        failure = self._checked(exc)
        if self.damaged is None:
            self._writes(False, exc)
        return [(False, failure)] * size

    def _writes(self, ok: bool, error: Exception | None = None) -> None:
        """Record whether commits succeed, and say so once per change (not once per request per try)."""
        if self.damaged is not None:
            return  # never writable again
        if ok and self._away is not None:
            since, refused = self._away
            log.warning(
                "the journal at %s takes writes again after %.1f s (%d commit(s) refused meanwhile)",
                *(self.where, time.monotonic() - since, refused),
            )
            self._away = None
            self._resumed.set()
        elif not ok:
            if self._away is None:
                log.error(
                    "the journal at %s cannot be written (%s): requests are held, neither acknowledged nor sent, "
                    "and tried again from 0.5 s up to every 10 s until it can",
                    *(self.where, error or "its connection is lost"),
                )
                self._away = (time.monotonic(), 0)
                self._resumed.clear()
            self._away = (self._away[0], self._away[1] + 1)
        self._writable = ok

    # -- the operations the engine uses -------------------------------------------------------------------

    async def reject(self, kind: Kind, request_id: str | None, status: bytes, reason: str) -> int:
        return await self.write(lambda: self.core.reject(kind, request_id, status, reason, self.clock()))

    async def begin_attempt(self, seq: int) -> bool:
        return await self.write(lambda: self.core.begin_attempt(seq, self.clock()))

    async def retry_later(self, seq: int, at: float, error: str) -> None:
        await self.write(lambda: self.core.retry_later(seq, at, error))

    async def doubt(self, seq: int, at: float, lookups: int, error: str | None = None) -> None:
        await self.write(lambda: self.core.doubt(seq, at, lookups, error))

    async def finish(
        self, seq: int, state: State, status: bytes, sid: str | None, error: str | None, *, track: Track | None = None
    ) -> None:
        await self._claiming(sid, lambda: self.core.finish(seq, state, status, sid, error, track=track))

    async def finish_digest(
        self, seq: int, state: State, sid: str | None, error: str | None, statuses: list[tuple[int, bytes]]
    ) -> None:
        await self._claiming(sid, lambda: self.core.finish_digest(seq, state, sid, error, statuses))

    async def _claiming(self, sid: str | None, operation: Callable[[], None]) -> None:
        try:
            await self.write(operation)
        except self.core.IntegrityError as exc:  # the unique index on SIDs: the statement changed nothing
            raise SidClaimed(sid) from exc

    async def admit(
        self, admission: Admission, notification: Notification, *, begin: bool = False, redelivered: bool = False
    ) -> Accepted | Folded | Refused | Duplicate:
        """Admit `notification` in one transaction: dedupe, guards, storms, rate counts and the record itself."""
        return await self.write(lambda: admission.admit(self.core, notification, begin=begin, redelivered=redelivered))

    async def readmit(self, admission: Admission, limit: int) -> list[tuple[Entry, Accepted | Folded | Refused]]:
        """Admit again up to `limit` failed requests an operator asked to send again, in one transaction."""

        def readmit() -> list[tuple[Entry, Accepted | Folded | Refused]]:
            return [(entry, admission.readmit(self.core, entry)) for entry in self.core.retries_requested(limit)]

        if not await self.read(lambda: self.core.retries_requested(1)):
            return []  # the common case, asked every second on a shared journal: no write for it
        return await self.write(readmit)

    async def doubt_interrupted(self, grace: float) -> int:
        return await self.write(lambda: self.core.doubt_interrupted(grace))

    async def abandoned(self, before: float, busy: Collection[int]) -> list[int]:
        held = frozenset(busy)
        return await self.read(lambda: self.core.abandoned(before, held))

    async def doubt_abandoned(self, seqs: Collection[int], grace: float) -> int:
        return await self.write(lambda: self.core.doubt_abandoned(seqs, grace))

    async def overdue(self, before: float, busy: Collection[int]) -> int:
        held = frozenset(busy)
        return await self.read(lambda: self.core.overdue(before, held))

    async def refill(self, now: float, limit: int, busy: Collection[int]) -> float | None:
        return await self.read(lambda: self.core.refill(now, limit, busy))

    async def sid_known(self, sid: str) -> bool:
        return await self.read(lambda: self.core.sid_known(sid))

    async def members(self, seq: int) -> list[Entry]:
        return await self.read(lambda: self.core.members(seq))

    async def digest_texts(self, seq: int, limit: int) -> list[str]:
        return await self.read(lambda: self.core.digest_texts(seq, limit))

    async def record_lag(self, seen_at: float, seconds: float, keep_since: float) -> None:
        await self.write(lambda: self.core.record_lag(seen_at, seconds, keep_since))

    async def lags(self, since: float) -> list[tuple[float, float]]:
        return await self.read(lambda: self.core.lags(since))

    async def audit_later(self, seq: int, since: float, due_at: float) -> None:
        await self.write(lambda: self.core.audit_later(seq, since, due_at))

    async def audits_due(self, now: float, limit: int) -> list[tuple[float, Entry]]:
        return await self.read(lambda: self.core.audits_due(now, limit))

    async def audit_done(self, seq: int, followup: bytes | None) -> None:
        await self.write(lambda: self.core.audit_done(seq, followup))

    async def reply_numbers(self, since: float) -> list[str]:
        return await self.read(lambda: self.core.reply_numbers(since))

    async def reply_horizon(self, number: str) -> float:
        found = await self.read(lambda: self.core.reply_horizon(number))
        if found is not None:
            return found
        now = self.clock()  # a commit only the first time a number is polled, not at every poll
        return await self.write(lambda: self.core.first_polled(number, now))

    async def known_replies(self, sids: Collection[str]) -> set[str]:
        return await self.read(lambda: self.core.known_replies(list(sids)))

    async def in_reply_to(self, person: str, number: str, since: float) -> str | None:
        return await self.read(lambda: self.core.in_reply_to(person, number, since))

    async def record_replies(self, rows: list[ReplyRecord]) -> None:
        """Keep each reply once, to publish, with what it changes (opt-outs, pages acknowledged)."""

        def record() -> None:
            for row in rows:
                self.core.record_reply(row)

        await self.write(record)

    async def open_pages(self, request_id: str) -> list[OpenPage]:
        return await self.read(lambda: self.core.open_pages(request_id))

    async def pages_due(self, now: float, limit: int) -> list[OpenPage]:
        return await self.read(lambda: self.core.pages_due(now, limit))

    async def next_page_at(self) -> float | None:
        return await self.read(self.core.next_page_at)

    async def page_step(
        self, admission: Admission, page: OpenPage, step: PageStep
    ) -> tuple[bool, Accepted | Folded | Refused | None]:
        """Record `step` of `page` and admit what it sends, in one transaction: (False, None) if the page moved
        meanwhile, and nothing was done."""

        def take() -> tuple[bool, Accepted | Folded | Refused | None]:
            if not self.core.page_step(page, step, self.clock()):
                return False, None
            return True, None if step.send is None else admission.follow_up(self.core, step.send)

        return await self.write(take)

    async def acknowledge(self, request_id: str, by: str, via: str) -> int:
        return await self.write(lambda: self.core.acknowledge(request_id, by, via, self.clock()))

    async def unpublished_page_statuses(self, limit: int) -> list[tuple[int, bytes]]:
        skip = frozenset(self._marking[3])
        return await self.read(lambda: self.core.unpublished_page_statuses(limit, skip))

    async def opted_out(self, person: str, number: str | None) -> bool:
        return await self.read(lambda: self.core.opted_out(person, number))

    async def unpublished_replies(self, limit: int) -> list[tuple[str, bytes]]:
        skip = frozenset(self._marking[2])
        return await self.read(lambda: self.core.unpublished_replies(limit, skip))

    async def unfinished(self) -> int:
        return await self.read(self.core.unfinished)

    async def tracked_due(self, now: float, limit: int) -> list[Tracked]:
        return await self.read(lambda: self.core.tracked_due(now, limit))

    async def tracked_by_sid(self, sid: str) -> Tracked | None:
        return await self.read(lambda: self.core.tracked_by_sid(sid))

    async def next_check(self) -> float | None:
        return await self.read(self.core.next_check)

    # The in-memory hand-over, kept by the core (it stages what a transaction hands over until it commits).

    @property
    def handing_requests(self) -> bool:
        return self.core.hand_requests

    @property
    def requests_waiting(self) -> int:
        return len(self.core.ready)

    def take_requests(self, limit: int) -> list[Entry]:
        ready = self.core.ready
        return [ready.popleft() for _ in range(min(limit, len(ready)))]

    def handed_over(self) -> list[int]:
        return [entry.seq for entry in self.core.ready]

    @property
    def handing_statuses(self) -> bool:
        return self.core.hand_statuses

    def take_statuses(self, limit: int) -> list[tuple[int, bytes]]:
        outbox = self.core.outbox
        return [outbox.popleft() for _ in range(min(limit, len(outbox)))]

    def give_back_statuses(self, rows: list[tuple[int, bytes]]) -> None:
        self.core.outbox.extendleft(reversed(rows))  # handed over: no query would find them again

    def query_statuses(self) -> None:
        self.core.hand_statuses = False

    async def unpublished(self, limit: int) -> list[tuple[int, bytes]]:
        skip = frozenset(self._marking[0])
        return await self.read(lambda: self.core.unpublished(limit, skip))

    async def unpublished_followups(self, limit: int) -> list[tuple[int, bytes]]:
        skip = frozenset(self._marking[1])
        return await self.read(lambda: self.core.unpublished_followups(limit, skip))

    async def delivered(self, seq: int, payload: bytes, acknowledges: tuple[str, str] | None = None) -> bool:
        return await self.write(lambda: self.core.delivered(seq, payload, acknowledges))

    async def check_later(self, seq: int, at: float, interval: float, last_status: str) -> None:
        await self.write(lambda: self.core.check_later(seq, at, interval, last_status))

    async def republish(self, seq: int, status: bytes) -> None:
        await self.write(lambda: self.core.republish(seq, status))

    async def tend(self, held: Collection[int] = ()) -> bool:
        held = list(held)
        return await self.read(lambda: self.core.tend(held))

    async def prune(self, before: float) -> int:
        def prune() -> int:
            self.core.prune_counts(self.clock())
            return self.core.prune(before)

        return await self.write(prune)
