"""The journal's async front: SQLite statements on the event loop, group commits on one worker thread.

Statements take microseconds (the pages are in memory), so they run on the event loop; only COMMIT, which waits
for the disk (fsync), runs on a worker thread. Writes are group-committed: while one commit is under way, the
writes that arrive queue up and share the next commit, so durability costs one fsync per batch rather than one
per request. The connection is never used by both at once: reads asked for during a commit run after it.
(Running every statement on the worker thread cost more: each one handed the GIL back and forth with the busy
event loop, and a commit of a few writes took 3 ms at the median, 18 ms at p99.)

`Journal` implements `ports.JournalPort`, what the engine's parts need of a journal; `store.JournalCore` holds
the SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..domain.admission import Accepted, Admission, Folded, Refused
from ..domain.contract import Kind, Notification
from ..domain.records import Duplicate, Entry, Track, Tracked
from ..domain.states import State
from ..ports.journal import JournalDamaged, SidClaimed
from .sqlite import HAND_OVER_LIMIT, MARK_DELAY, JournalCore

__all__ = ["Journal", "JournalDamaged", "MissingExtra", "damage_advice", "is_damage", "open_core"]

T = TypeVar("T")
log = logging.getLogger(__name__)
#: Writes run per group on a remote database (each is its own transaction there).
REMOTE_GROUP = 16


def _attempt(
    operation: Callable[[], Any], error: type[Exception], checked: Callable[[BaseException], BaseException]
) -> tuple[bool, Any]:
    try:
        return True, operation()
    except error as exc:
        return False, checked(exc)


#: SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB.
_DAMAGE_CODES = frozenset({11, 26})


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` says the journal's file is damaged (not busy, not full: nothing waiting mends it)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in _DAMAGE_CODES


def damage_advice(where: str) -> str:
    return (
        f"the journal at {where} is damaged: stop the connector, move the file aside with its -wal and -shm files, "
        f"and start again with a new one; `twilio-connector journal --journal-path {where} check` tells what can "
        "still be read (docs/operations.md: a damaged journal)"
    )


def _settle(outcomes: Iterable[tuple[asyncio.Future[Any], tuple[bool, Any]]]) -> None:
    for future, (ok, value) in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def open_core(
    path: str,
    sync: str = "full",
    *,
    hand_over_limit: int = 0,
    node: str | None = None,
    lease: float = 30.0,
    create: bool = True,
) -> JournalCore:
    """The journal's storage at `path`: a postgresql:// URL (PostgreSQL), else an SQLite file (blocking).
    `create`: make an SQLite journal where there is none (else `store.NotAJournal`)."""
    if path.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PgCore  # noqa: PLC0415  (psycopg is needed only then)
        except ImportError as exc:
            raise MissingExtra(
                f"a PostgreSQL journal ({path}) needs psycopg, which is not installed: install the connector "
                f"with its postgres extra (pip install 'twilio-connector[postgres]') ({exc})"
            ) from None
        return PgCore(path, sync, hand_over_limit=hand_over_limit, node=node, lease=lease)
    return JournalCore(path, sync, hand_over_limit=hand_over_limit, create=create)


class MissingExtra(Exception):
    """An optional dependency the configuration needs is not installed."""


class Journal:
    """Async front of `JournalCore`: statements on the event loop, group commits on one worker thread."""

    def __init__(self, core: JournalCore, clock: Callable[[], float] = time.time, where: str = "") -> None:
        """`clock`: what the journal's timestamps (acceptance, attempt start) are read from; `where`: its path
        or URL, for the log."""
        self.core = core
        self.clock = clock
        self.where = where
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._reads: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []  # asked for during a commit
        # Statuses and follow-ups published, to record with the next commit; and all not recorded yet, which the
        # queries for what to publish must skip.
        self._marks: tuple[list[int], list[int]] = ([], [])
        self._marking: tuple[set[int], set[int]] = (set(), set())
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

    @classmethod
    async def open(
        cls,
        path: str,
        sync: str = "full",
        *,
        hand_over_limit: int | None = None,
        clock: Callable[[], float] = time.time,
        node: str | None = None,
        lease: float = 30.0,
    ) -> Journal:
        """`path`: an SQLite file, or a postgresql:// URL. `hand_over_limit`: requests and statuses handed to the
        engine in memory at most (default HAND_OVER_LIMIT; 0: none, every one found by a query). `node`: this
        connector's name among those sharing a PostgreSQL journal (its MQTT client id), and `lease` how long its
        claims last unless renewed."""
        limit = HAND_OVER_LIMIT if hand_over_limit is None else hand_over_limit
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1) as opener:
            core = await loop.run_in_executor(
                opener, lambda: open_core(path, sync, hand_over_limit=limit, node=node, lease=lease)
            )
        return cls(core, clock, path)

    async def close(self) -> None:
        if self.damaged is None:
            await self.flush()
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

    async def read(self, operation: Callable[[], T]) -> T:
        """Run `operation` (a query) now, or right after the commit under way; on a remote database, on the
        journal's thread (where the writes run too, one at a time)."""
        if self.core.remote:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._remote, operation)
        if not self._flushing:
            try:
                return operation()
            except sqlite3.Error as exc:
                raise self._checked(exc) from None
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._reads.append((operation, future))
        return await future

    def _checked(self, exc: BaseException) -> BaseException:
        """`exc`, or, if it says the file is damaged, `JournalDamaged` (and the damage is known for good: every
        later read or write would meet it, and nothing the connector does can mend it)."""
        if self._damaged is None and is_damage(exc):
            self._damaged = JournalDamaged(f"{damage_advice(self.where)} ({exc})")
            self._damage.set()
            self._writable = False
        return JournalDamaged(*self._damaged.args) if self._damaged is not None and is_damage(exc) else exc

    def _remote(self, operation: Callable[[], T]) -> T:
        self.core.revive()
        return operation()

    async def write(self, operation: Callable[[], T]) -> T:
        """Run `operation` in the next group commit; return once it is committed."""
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

    def _mark(self, which: int, keys: Iterable[int]) -> None:
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
                # A remote database runs each write as a transaction of its own: a short group lets published
                # marks (recorded first in each group) wait behind less.
                size = REMOTE_GROUP if self.core.remote else len(self._batch)
                batch, self._batch = self._batch[:size], self._batch[size:]
                marks, self._marks = self._marks, ([], [])
                try:
                    if self.core.remote:
                        operations = [operation for operation, _ in batch]
                        outcomes = await loop.run_in_executor(self._executor, self.core.run_batch, operations, marks)
                    else:
                        outcomes = self._execute(batch, marks)
                        await loop.run_in_executor(self._executor, self._commit)
                    self.core.committed()
                    self._writes(self.core.healthy())
                except Exception as exc:
                    outcomes = self._abandon(exc, len(batch))
                for marking, marked in zip(self._marking, marks, strict=True):
                    marking.difference_update(marked)
                reads, self._reads = self._reads, []
                try:
                    _settle(zip((future for _, future in batch), outcomes, strict=True))
                    _settle(
                        (future, _attempt(operation, self.core.Error, self._checked)) for operation, future in reads
                    )
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

    def _execute(
        self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]], marks: tuple[list[int], list[int]]
    ) -> list[tuple[bool, Any]]:
        """Begin a transaction and run the batch's statements in it (on the event loop: microseconds each)."""
        self.core.db.execute("BEGIN IMMEDIATE")
        # No savepoint per operation (they cost two statements each): a failing statement changes nothing by
        # itself, and one failed operation must not sink the batch.
        outcomes = [_attempt(operation, sqlite3.Error, self._checked) for operation, _ in batch]
        try:
            if marks[0]:
                self.core.mark_published(marks[0])
            if marks[1]:
                self.core.mark_followups_published(marks[1])
        except sqlite3.Error:
            pass  # left unmarked, they are published again after a restart: better than sinking the batch
        return outcomes

    def _commit(self) -> None:
        """COMMIT, on the worker thread: it waits for the disk."""
        self.core.db.execute("COMMIT")

    def _abandon(self, exc: Exception, size: int) -> list[tuple[bool, Any]]:
        if not self.core.remote:  # a remote transaction rolled itself back
            with contextlib.suppress(sqlite3.Error):
                self.core.db.execute("ROLLBACK")
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

    async def delivered(self, seq: int, payload: bytes) -> bool:
        return await self.write(lambda: self.core.delivered(seq, payload))

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
