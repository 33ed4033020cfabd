"""The journal in PostgreSQL (`journal_url`), on psycopg 3: the tables of schema.py and the statements of core.py,
which the SQLite journal shares, and here what PostgreSQL does its own way.

Statements reach the server through psycopg's raw cursor, with PostgreSQL's own `$1` placeholders (so `%` means
nothing special). Those shared with SQLite, and those written here in the same style, mark their parameters
with `?`; each is numbered once, as it is first sent (`_numbered`). What differs
from SQLite: the schema's migration under an advisory lock (several connectors may start at once), and
transactions: each write is a transaction of its own (SQLite's journal groups them), so that a failed statement
(a SID claim refused), which aborts a whole PostgreSQL transaction, sinks only its own write.

Several connectors may share one database. What keeps them from doing the same work twice is the database's:
- a connector claims the requests it works on (`owner`, `lease_until`) and the statuses it publishes
  (`publisher`, `publish_lease`) with FOR UPDATE SKIP LOCKED, and renews its claims while it lives (`tend`);
  what a dead connector held is claimed by another once its lease lapses, and an attempt it may have had on
  the wire (`sending`) is first looked up at Twilio (`doubt`), never resent blindly;
- admission takes transaction-scoped advisory locks, always in the same order (the request's dedupe key, its
  storm window, each rate scope), so two connectors given the same request, or texts to the same number, are
  admitted one after the other and see each other's records, windows and counts;
- a SID is claimed once (the unique index), and pruning is done by whoever holds the prune lock.
One transaction per write also keeps two connectors' admissions, which take advisory locks, from deadlocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar

import psycopg

from ..domain.contract import Notification
from ..domain.records import Duplicate, Entry, Identity, dedupe_key, stored_options
from ..domain.storms import Window
from .core import Marks, SqlCore
from .front import Journal
from .rows import PREFIXED, entry_of
from .schema import MIGRATIONS, POSTGRES, statements

__all__ = ["PostgresCore", "PostgresJournal", "migrate"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: pg_advisory_lock key held while the schema is created or migrated ("twilio-c" in ASCII); and the one held
#: by the connector that prunes ("twilio-p").
_SCHEMA_LOCK = 0x7477696C696F2D63
_PRUNE_LOCK = 0x7477696C696F2D70
#: Seconds a claim lasts unless renewed (the living renew theirs every third of it): longer than an attempt at
#: Twilio (http_timeout, 15 s by default), so that a slow answer does not let another connector take over.
LEASE = 30.0


def _numbered(sql: str) -> str:
    """`sql` with each `?` placeholder numbered for PostgreSQL (`$1`, `$2`, ...). A `?` inside a string literal or
    a quoted name is left as it is, and so is everything else: this is no rewriting of the SQL, only of SQLite's
    placeholders, the one word core.py's statements spell SQLite's way."""
    out, number, quote = [], 0, ""
    for character in sql:
        if quote:
            quote = "" if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character == "?":
            number += 1
            out.append(f"${number}")
            continue
        out.append(character)
    return "".join(out)


class _Connection:
    """A psycopg connection taking core.py's statements (see `_numbered`). A connection the server dropped (a
    restart, a failover) is replaced before the next read or group of writes (`revive`)."""

    def __init__(self, url: str, sync: str) -> None:
        self._url, self._sync = url, sync
        self.connection = self._connect()
        self._numbered: dict[str, str] = {}

    def _connect(self) -> psycopg.Connection[Any]:
        connection = psycopg.connect(self._url, autocommit=True, connect_timeout=5, cursor_factory=psycopg.RawCursor)
        if self._sync != "full":
            # Commits wait for the WAL on disk unless told otherwise (a crash may then lose the last ones).
            connection.execute("SET synchronous_commit = off")
        return connection

    def revive(self) -> None:
        if self.connection.broken or self.connection.closed:
            self.connection = self._connect()

    def _sql(self, sql: str) -> str:
        numbered = self._numbered.get(sql)
        if numbered is None:
            numbered = self._numbered[sql] = _numbered(sql)
        return numbered

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.connection.execute(self._sql(sql), parameters, prepare=True)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self.connection.cursor()
        cursor.executemany(self._sql(sql), parameters)
        return cursor

    def close(self) -> None:
        self.connection.close()


class PostgresCore(SqlCore):
    """Synchronous journal operations on one PostgreSQL connection, shared with other connectors."""

    Error = psycopg.Error
    IntegrityError = psycopg.IntegrityError
    shared = True
    _skip_locked = " FOR UPDATE SKIP LOCKED"  # one connector admits a retry, the others skip it

    def __init__(
        self,
        path: str,
        sync: str = "full",
        *,
        hand_over_limit: int = 0,
        node: str | None = None,
        lease: float = LEASE,
    ) -> None:
        """`node`: this connector among those sharing the database, its claims' name: its MQTT client id, so
        that, restarted, it takes its own unfinished work back at once instead of waiting for its lease.
        `lease`: seconds a claim lasts unless renewed."""
        self.node = node or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = lease
        self._mine, self._me = " AND (owner = ? OR owner IS NULL)", (self.node,)
        self._grace = 0.0  # seconds after an attempt began that its first lookup is due (doubt_interrupted)
        self._renewed = 0.0
        db = _Connection(path, sync)
        migrate(db.connection)
        super().__init__(db, hand_over_limit)

    def revive(self) -> None:
        self.db.revive()

    def run_batch(self, operations: list[Callable[[], Any]], marks: Marks) -> list[Any]:
        """Run each write in a transaction of its own: the outcome of each, as (True, result) or (False,
        exception); then record the published marks. Those that ran before the connection was lost stand."""
        self.revive()
        connection = self.db.connection
        # Published marks first: until one is recorded, another connector would publish that status again
        # should this one die. Left unmarked if this fails, they are published again: better than failing.
        with contextlib.suppress(psycopg.Error), connection.transaction():
            self.record_marks(marks)
        outcomes: list[tuple[bool, Any]] = []
        for operation in operations:
            mark = self.staged()
            try:
                with connection.transaction():
                    result = operation()
            except psycopg.Error as exc:  # from a statement, or from the COMMIT (a server shutting down)
                self.rolled_back(mark)  # what it staged for hand-over was not committed
                outcomes.append((False, exc))
            else:
                outcomes.append((True, result))
        return outcomes

    def healthy(self) -> bool:
        return not (self.db.connection.broken or self.db.connection.closed)

    def _lock(self, *parts: object) -> None:
        """A transaction-scoped advisory lock named by `parts`: writers of the same thing take turns."""
        digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
        self.db.execute("SELECT pg_advisory_xact_lock(?)", (int.from_bytes(digest, "big", signed=True),))

    # -- admission: the same request, window or count is admitted by one connector at a time -------------------

    def duplicate(self, notification: Notification, now: float, window: float) -> tuple[Identity, Duplicate | None]:
        self._lock("dedupe", dedupe_key(notification, stored_options(notification)))
        return super().duplicate(notification, now, window)

    def window(self, key: str) -> Window | None:
        self._lock("window", key)
        return super().window(key)

    def count(self, span: str, scope: str, oldest: int) -> int:
        self._lock("count", span, scope)
        return super().count(span, scope, oldest)

    def record(self, notification: Notification, identity: Identity, now: float, **how: Any) -> int:
        seq = super().record(notification, identity, now, **how)
        if how.get("begin") or seq in self._handed_requests:  # this connector works on it from here
            self.db.execute(
                "UPDATE requests SET owner = ?, lease_until = ? WHERE seq = ?", (self.node, now + self.lease, seq)
            )
        return seq

    # -- claims -------------------------------------------------------------------------------------------------

    def doubt_interrupted(self, grace: float) -> int:
        """At start-up: attempts cut short (rows left in `sending` by this connector's previous life, or by any
        connector whose claim lapsed) are in doubt: looked up `grace` seconds after they began. Later, `tend`
        takes over those of the others only."""
        self._grace = grace
        return self._take_over(mine=True)

    def _take_over(self, *, mine: bool) -> int:
        mine_too = "owner = ? OR " if mine else ""
        return self._doubt_sending(
            self._grace,
            also=", owner = NULL",
            where=f" AND ({mine_too}owner IS NULL OR lease_until < ?)",
            parameters=(*((self.node,) if mine else ()), time.time()),
        )

    def due(self, now: float, limit: int, busy: Collection[int]) -> tuple[list[Entry], float | None]:
        """Claim up to `limit` due requests: unclaimed, ours and not in hand, or claimed by a connector whose
        lease lapsed; lookups of attempts in doubt first."""
        # Never what is at work here (`busy`); what was handed over here only if its claim lapsed (dropped).
        rows = self.db.execute(
            "WITH picked AS (SELECT seq FROM requests WHERE state IN ('doubt', 'accepted') "
            "AND next_attempt_at <= ? AND seq <> ALL(?) "
            "AND ((owner IS NULL OR owner = ?) AND seq <> ALL(?) OR lease_until < ?) "
            "ORDER BY state = 'accepted', next_attempt_at, seq LIMIT ? FOR UPDATE SKIP LOCKED) "
            f"UPDATE requests r SET owner = ?, lease_until = ? FROM picked WHERE r.seq = picked.seq RETURNING {PREFIXED}",
            (now, sorted(busy), self.node, sorted(self._handed_requests), now, limit, self.node, now + self.lease),
        ).fetchall()
        entries = sorted((entry_of(row) for row in rows), key=lambda entry: (entry.state != "doubt", entry.seq))
        if len(entries) == limit:
            return entries, now
        self.hand_requests = self.hand_over_limit > 0
        row = self.db.execute(
            "SELECT MIN(next_attempt_at) FROM requests WHERE state IN ('accepted', 'doubt') AND next_attempt_at > ?",
            (now,),
        ).fetchone()
        return entries, None if row[0] is None else float(row[0])

    def unpublished(self, limit: int, skip: Collection[int] = ()) -> list[tuple[int, bytes]]:
        """Claim up to `limit` statuses to publish: unclaimed, ours and not in hand, or claimed by a connector
        whose lease lapsed."""
        now, left_out = time.time(), sorted({*skip, *self._handed_statuses})
        rows = self.db.execute(
            "WITH picked AS (SELECT seq FROM requests WHERE status IS NOT NULL AND status_published = 0 "
            "AND (publisher IS NULL OR publisher = ? OR publish_lease < ?) AND seq <> ALL(?) "
            "ORDER BY seq LIMIT ? FOR UPDATE SKIP LOCKED) "
            "UPDATE requests r SET publisher = ?, publish_lease = ? FROM picked WHERE r.seq = picked.seq "
            "RETURNING r.seq, r.status",
            (self.node, now, left_out, limit, self.node, now + self.lease),
        ).fetchall()
        if len(rows) < limit:
            self.hand_statuses = self.hand_over_limit > 0
        return sorted((int(seq), bytes(status)) for seq, status in rows)

    def _stage_status(self, seq: int, status: bytes) -> None:
        super()._stage_status(seq, status)
        if seq in self._handed_statuses:  # this connector publishes it
            self.db.execute(
                "UPDATE requests SET publisher = ?, publish_lease = ? WHERE seq = ?",
                (self.node, time.time() + self.lease, seq),
            )

    def tend(self, held: Collection[int] = ()) -> bool:
        """Renew the claims on what this connector holds (`held`: at work or waiting for a slot); take over the
        attempts of connectors whose claims lapsed. A claim on work it no longer holds (dropped when a write was
        lost with the connection) is left to lapse, and the work is then claimed again, by any connector, this
        one included. Returns True: other connectors change the journal all the time, so it is always worth a
        look."""
        now = time.time()
        if now - self._renewed >= self.lease / 3:
            holding = sorted(set(held))
            self.db.execute(
                "UPDATE requests SET lease_until = ? WHERE owner = ? AND seq = ANY(?) "
                "AND state IN ('accepted', 'sending', 'doubt')",
                (now + self.lease, self.node, holding),
            )
            # Every status this connector claimed and has not published yet is in its publisher's hands.
            self.db.execute(
                "UPDATE requests SET publish_lease = ? WHERE publisher = ? AND status IS NOT NULL "
                "AND status_published = 0",
                (now + self.lease, self.node),
            )
            taken = self._take_over(mine=False)
            if taken:
                log.info("took over %d request(s) a stopped connector was sending: looking them up at Twilio", taken)
            self._renewed = now
        return True

    def prune(self, before: float) -> int:
        """Prune, if no other connector is pruning (within the write's transaction)."""
        if not self.db.execute("SELECT pg_try_advisory_xact_lock(?)", (_PRUNE_LOCK,)).fetchone()[0]:
            return 0
        return super().prune(before)


def migrate(connection: psycopg.Connection[Any]) -> int:
    """Take the schema's steps this database has not taken (under a lock: several connectors may start at once);
    returns how many it had taken."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock($1)", (_SCHEMA_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS journal_schema (version INTEGER NOT NULL)")
        row = connection.execute("SELECT version FROM journal_schema").fetchone()
        taken = 0 if row is None else int(row[0])
        for migration in MIGRATIONS[taken:]:
            step = migration.step(POSTGRES)
            if isinstance(step, str):
                for statement in statements(step):
                    connection.execute(statement)
            elif step is not None:
                step(connection)
        if row is None:
            connection.execute("INSERT INTO journal_schema VALUES ($1)", (len(MIGRATIONS),))
        else:
            connection.execute("UPDATE journal_schema SET version = $1", (len(MIGRATIONS),))
    return taken


class PostgresJournal(Journal):
    """`PostgresCore` for the connector: reads and groups of writes on the journal's thread (they wait on the
    network), each write a transaction of its own."""

    core: PostgresCore
    GROUP = 16  # a short group lets published marks (recorded first in each) wait behind less

    async def read(self, operation: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._revived, operation)

    def _revived(self, operation: Callable[[], T]) -> T:
        self.core.revive()
        return operation()

    async def _group(self, batch: list[Callable[[], Any]], marks: Marks) -> list[tuple[bool, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.core.run_batch, batch, marks)

    def _healthy(self) -> bool:
        return self.core.healthy()
