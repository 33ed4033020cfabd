"""The journal in an SQLite file (WAL): one connector's, on the machine it runs on.

`SqliteCore` runs the statements (those both databases share are in core.py) synchronously on one connection;
the `twilio-connector journal` command uses it directly. `SqliteJournal` is its async front for the connector:
statements take microseconds (the pages are in memory), so they run on the event loop, COMMIT included; what waits
for the disk, the WAL's `fdatasync`, is awaited without blocking the loop (wal.py says how). Writes are
group-committed: while one commit is under way, the writes that arrive queue up and share the next commit, so
durability costs one sync per batch rather than one per request. The connection is never used by two at once:
reads asked for during a commit run after it, and a checkpoint runs between commits. (Running every statement on
a worker thread cost more: each one handed the GIL back and forth with the busy event loop, and a commit of a few
writes took 3 ms at the median, 18 ms at p99.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from ..domain.records import Entry
from ..ports.journal import JournalClosed
from ..settings.parsers import JOURNAL_SYNC
from .core import Marks, SqlCore
from .front import Journal, attempt
from .rows import COLUMNS, entry_of
from .schema import MIGRATIONS, SQLITE, sqlite_steps_taken, statements
from .wal import Syncer, WalFile, fast_syncer, preload, thread_syncer

__all__ = ["SYNC_MODES", "NotAJournal", "SqliteCore", "SqliteJournal", "damage_advice", "is_damage"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: journal_sync setting -> SQLite `synchronous` pragma. In WAL mode, NORMAL survives a killed process but may
#: lose the last commits on power loss; FULL fsyncs every commit (one per group) and survives both.
SYNC_MODES: dict[str, str] = {mode: mode.upper() for mode in JOURNAL_SYNC}
_IS_JOURNAL = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'"
#: SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB.
_DAMAGE_CODES = frozenset({11, 26})
#: The connector checkpoints the WAL itself (SQLite's own checkpoints would run, and sync, inside a COMMIT on the
#: loop) after this many commits or changed rows, whichever comes first: near SQLite's default of 1,000 pages.
CHECKPOINT_COMMITS = 250
CHECKPOINT_CHANGES = 2000


class NotAJournal(Exception):
    """The file is an SQLite database, but not a journal: left as it is."""


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


def _open(path: str, sync: str, create: bool) -> sqlite3.Connection:
    if path != ":memory:" and create:
        # 0600: the journal holds phone numbers and message texts.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if not create and db.execute(_IS_JOURNAL).fetchone() is None:
        db.close()
        raise NotAJournal(f"{path} is not a connector journal (an SQLite database without its tables)")
    db.execute("PRAGMA busy_timeout=5000")  # `twilio-connector journal` may write while we run
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={SYNC_MODES[sync]}")
    _migrate(db)
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Take the schema's steps this journal has not taken, all in one transaction."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version == len(MIGRATIONS):
        return
    taken = sqlite_steps_taken(version)
    db.execute("BEGIN IMMEDIATE")
    try:
        for migration in MIGRATIONS[taken:]:
            step = migration.step(SQLITE)
            if isinstance(step, str):
                for statement in statements(step):
                    db.execute(statement)
            elif step is not None:
                step(db)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqliteCore(SqlCore):
    """Synchronous journal operations on one SQLite connection."""

    Error = sqlite3.Error
    IntegrityError = sqlite3.IntegrityError
    shared = False
    _sending_index = " INDEXED BY requests_sending"

    def __init__(self, path: str, sync: str = "full", *, hand_over_limit: int = 0, create: bool = True) -> None:
        """`create`: make the journal if `path` holds none; else (the `journal` command) raise `NotAJournal`
        rather than write into a file that is not one."""
        super().__init__(_open(path, sync, create), hand_over_limit)
        self.path = path
        self.sync = sync
        self._data_version = self._version()

    def _version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def tend(self, held: Collection[int] = ()) -> bool:
        """Whether another connection (an operator's `twilio-connector journal retry`) committed since the last
        call: SQLite bumps `data_version` for exactly that, so asking costs no read of the tables. (Nothing to
        keep alive: one process uses an SQLite journal.)"""
        version = self._version()
        changed, self._data_version = version != self._data_version, version
        return changed

    def due(self, now: float, limit: int, busy: Collection[int]) -> tuple[list[Entry], float | None]:
        handed = self._handed_requests
        # Lookups of attempts in doubt first: they are never handed over, and each settles a request.
        rows = self.db.execute(
            f"SELECT {COLUMNS} FROM requests INDEXED BY requests_doubt "
            "WHERE state = 'doubt' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
            (now, limit + len(busy)),
        ).fetchall()
        rows += self.db.execute(
            f"SELECT {COLUMNS} FROM requests INDEXED BY requests_waiting "
            "WHERE state = 'accepted' AND next_attempt_at <= ? ORDER BY seq LIMIT ?",
            (now, limit + len(busy) + len(handed)),
        ).fetchall()
        entries = [entry_of(row) for row in rows if row[0] not in busy and row[0] not in handed][:limit]
        if len(entries) == limit:
            return entries, now
        self.hand_requests = self.hand_over_limit > 0
        row = self.db.execute(
            "SELECT MIN(at) FROM (SELECT MIN(next_attempt_at) AS at FROM requests WHERE state = 'accepted' "
            "AND next_attempt_at > ? UNION ALL SELECT MIN(next_attempt_at) FROM requests WHERE state = 'doubt' "
            "AND next_attempt_at > ?) AS waiting",
            (now, now),
        ).fetchone()
        return entries, None if row[0] is None else float(row[0])

    def unpublished(self, limit: int, skip: Collection[int] = ()) -> list[tuple[int, bytes]]:
        handed = self._handed_statuses
        rows = self.db.execute(
            "SELECT seq, status FROM requests WHERE status IS NOT NULL AND status_published = 0 ORDER BY seq LIMIT ?",
            (limit + len(handed) + len(skip),),
        ).fetchall()
        found: list[tuple[int, bytes]] = [row for row in rows if row[0] not in handed and row[0] not in skip][:limit]
        if len(found) < limit:
            self.hand_statuses = self.hand_over_limit > 0
        return found


class SqliteJournal(Journal):
    """`SqliteCore` for the connector: statements and COMMIT on the event loop, group commits synced by the
    journal itself (wal.py), checkpoints on a worker thread."""

    core: SqliteCore

    def __init__(
        self,
        core: SqliteCore,
        clock: Callable[[], float] = time.time,
        where: str = "",
        *,
        syncer: Syncer | None = None,
    ) -> None:
        """`syncer`: what syncs the WAL after a commit (default: Linux AIO where the kernel takes it, else a
        worker thread; found at the first commit)."""
        super().__init__(core, clock, where)
        # journal_sync = full: COMMIT leaves the WAL's frames in the page cache and `_group` syncs them; NORMAL
        # still has SQLite sync its checkpoints, a new WAL's header and its directory entry.
        self._durable = core.sync == "full"
        if self._durable:
            core.db.execute("PRAGMA synchronous=NORMAL")
        core.db.execute("PRAGMA wal_autocheckpoint=0")  # `_checkpoint_if_due` instead, off the loop
        self._wal = None if core.path == ":memory:" else WalFile(core.path)
        self._syncer = syncer
        self._preloaded: asyncio.Future[None] | None = None
        if syncer is None and self._durable and self._wal is not None:
            self._preloaded = asyncio.get_running_loop().run_in_executor(None, preload)
        self._close_syncer: Callable[[], None] | None = None
        self._restart = True  # the next COMMIT may make SQLite sync (a new or restarted WAL): off the loop
        self._commits = 0
        self._changes = core.db.total_changes

    async def close(self) -> None:
        await super().close()
        if self._wal is not None:
            self._wal.close()
        if self._close_syncer is not None:
            self._close_syncer()

    async def read(self, operation: Callable[[], T]) -> T:
        if self.closing:
            raise JournalClosed(f"the journal at {self.where} is closing")
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
        if is_damage(exc):
            return self._found_damaged(f"{damage_advice(self.where)} ({exc})")
        return exc

    async def _group(self, batch: list[Callable[[], Any]], marks: Marks) -> list[tuple[bool, Any]]:
        """Begin a transaction, run the batch's statements in it and COMMIT (on the event loop: microseconds
        each), then wait for the WAL's sync."""
        self.core.db.execute("BEGIN IMMEDIATE")
        # No savepoint per operation (they cost two statements each): a failing statement changes nothing by
        # itself, and one failed operation must not sink the batch.
        outcomes = [attempt(operation, sqlite3.Error, self._checked) for operation in batch]
        # Left unmarked if this fails, they are published again after a restart: better than sinking the batch.
        with contextlib.suppress(sqlite3.Error):
            self.core.record_marks(marks)
        wal = self._wal
        if wal is None:  # in memory: nothing waits for a disk
            self._commit()
        elif self._restart or not wal.current():
            failed = await asyncio.get_running_loop().run_in_executor(self._executor, self._commit_and_sync, wal)
            if failed is not None:
                raise self._unsynced(failed)
            self._restart = wal.fd < 0
        else:
            self._commit()
            if self._durable:
                await self._sync(wal.fd)
        if wal is not None:
            await self._checkpoint_if_due()
        return outcomes

    def _commit(self) -> None:
        self.core.db.execute("COMMIT")

    def _commit_and_sync(self, wal: WalFile) -> OSError | None:
        """COMMIT and sync, both on the worker thread (blocking). COMMIT's failure is raised (nothing was
        committed); the sync's is returned: the commit stands, and only its durability is in question."""
        self._commit()
        try:
            fd = wal.ensure_open()
            if self._durable:
                os.fdatasync(fd)
        except FileNotFoundError:
            return None  # nothing written yet, so nothing to sync: the next commit comes here again
        except OSError as exc:
            return exc
        return None

    async def _sync(self, fd: int) -> None:
        """Wait for the WAL's data to reach the disk."""
        if self._syncer is None:  # the first time: Linux AIO if this machine syncs that way, else the thread
            if self._preloaded is not None:
                await self._preloaded
            found = await fast_syncer(fd)
            self._syncer, self._close_syncer = found or (thread_syncer(self._executor), None)
        try:
            await self._syncer(fd)
        except (OSError, SystemError) as exc:  # caio reports a failed operation as SystemError
            raise self._unsynced(exc) from None

    def _unsynced(self, exc: BaseException) -> BaseException:
        """A sync that failed leaves the last commits on the disk or not, nobody knows (and Linux may forget the
        pages it could not write): the connector must stop and start again from what the disk holds, as for
        damage. Not a failed write: the commit stands, and its callers must not act as if it had not."""
        return self._found_damaged(
            f"the journal at {self.where} could not be synced to the disk ({exc}): its last commits may not be on "
            "it, so the connector stops; started again, it goes on from what the disk holds"
        )

    async def _checkpoint_if_due(self) -> None:
        self._commits += 1
        changes = self.core.db.total_changes
        if self._commits < CHECKPOINT_COMMITS and changes - self._changes < CHECKPOINT_CHANGES:
            return
        self._commits, self._changes = 0, changes
        await asyncio.get_running_loop().run_in_executor(self._executor, self._checkpoint)
        self._restart = True

    def _checkpoint(self) -> None:
        try:
            self.core.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("the journal at %s could not checkpoint its WAL (%s): tried again later", self.where, exc)

    def _rolled_back(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.core.db.execute("ROLLBACK")
