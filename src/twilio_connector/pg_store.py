"""The journal's storage in PostgreSQL (`journal_url`): the same tables, states and statements as the SQLite one
(store.py), on psycopg 3.

The statements are store.py's own, written in the SQL both engines share; `_Connection` only turns SQLite's `?`
placeholders into psycopg's `%s` and drops SQLite's index hints. What differs is said here: the schema's types,
its versioned creation (under an advisory lock, as several connectors may start at once), and transactions: a
group of writes runs in one transaction with a savepoint per operation, because PostgreSQL aborts a whole
transaction on a failed statement (a SID claim refused) where SQLite fails only that statement.

This first step serves one connector; several connectors on one database (claims with leases) come next.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg

from .store import JournalCore

__all__ = ["PgCore"]

#: Each version's statements, applied in order to a database that has the previous ones.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        seq BIGSERIAL PRIMARY KEY,
        dedupe_key BYTEA NOT NULL,
        request_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        to_number TEXT NOT NULL,
        from_number TEXT NOT NULL,
        name TEXT NOT NULL,
        content TEXT NOT NULL,
        retries INTEGER NOT NULL,
        options TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        attempt_started_at DOUBLE PRECISION,
        sid TEXT,
        last_error TEXT,
        status BYTEA,
        status_published INTEGER NOT NULL DEFAULT 0,
        accepted_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        digest_seq BIGINT,
        members INTEGER NOT NULL DEFAULT 0,
        lookups INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE tracking (
        seq BIGINT PRIMARY KEY,
        sid TEXT NOT NULL,
        next_check_at DOUBLE PRECISION NOT NULL,
        "interval" DOUBLE PRECISION NOT NULL,
        deadline DOUBLE PRECISION NOT NULL,
        last_status TEXT NOT NULL
    );
    CREATE TABLE followups (
        id BIGSERIAL PRIMARY KEY,
        payload BYTEA NOT NULL,
        published INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE windows (
        key TEXT PRIMARY KEY,
        opens_at DOUBLE PRECISION NOT NULL,
        closes_at DOUBLE PRECISION NOT NULL,
        passed INTEGER NOT NULL,
        next_at DOUBLE PRECISION NOT NULL,
        digest_seq BIGINT
    );
    CREATE TABLE counters (
        span TEXT NOT NULL,
        scope TEXT NOT NULL,
        bucket BIGINT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (span, scope, bucket)
    );
    CREATE INDEX requests_dedupe ON requests (dedupe_key, accepted_at);
    CREATE INDEX requests_waiting ON requests (seq) WHERE state = 'accepted';
    CREATE INDEX requests_due ON requests (next_attempt_at) WHERE state = 'accepted';
    CREATE INDEX requests_sending ON requests (seq) WHERE state = 'sending';
    CREATE INDEX requests_doubt ON requests (next_attempt_at) WHERE state = 'doubt';
    CREATE INDEX requests_folded ON requests (seq) WHERE state = 'folded';
    CREATE INDEX requests_members ON requests (digest_seq) WHERE digest_seq IS NOT NULL;
    CREATE INDEX requests_unpublished ON requests (seq) WHERE status IS NOT NULL AND status_published = 0;
    CREATE UNIQUE INDEX requests_sid_claim ON requests (sid) WHERE sid IS NOT NULL;
    CREATE INDEX requests_finished ON requests (updated_at) WHERE status_published = 1;
    CREATE INDEX tracking_sid ON tracking (sid);
    CREATE INDEX tracking_due ON tracking (next_check_at);
    CREATE INDEX followups_unpublished ON followups (id) WHERE published = 0;
    CREATE INDEX windows_closing ON windows (closes_at);
    """,
)
#: pg_advisory_lock key held while the schema is created or migrated ("twilio-c" in ASCII).
_SCHEMA_LOCK = 0x7477696C696F2D63
_INDEX_HINT = re.compile(r"\s+INDEXED BY \w+")


class _Connection:
    """store.py's statements on a psycopg connection: `?` placeholders become `%s`, index hints go."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection
        self._translated: dict[str, str] = {}

    def _sql(self, sql: str) -> str:
        translated = self._translated.get(sql)
        if translated is None:
            translated = self._translated[sql] = _INDEX_HINT.sub("", sql).replace("?", "%s")
        return translated

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.connection.execute(self._sql(sql), parameters, prepare=True)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self.connection.cursor()
        cursor.executemany(self._sql(sql), parameters)
        return cursor

    def close(self) -> None:
        self.connection.close()


class PgCore(JournalCore):
    Error = psycopg.Error
    IntegrityError = psycopg.IntegrityError
    remote = True

    def _open(self, path: str, sync: str) -> _Connection:
        connection = psycopg.connect(path, autocommit=True)
        if sync != "full":
            # Commits wait for the WAL on disk unless told otherwise (a crash may then lose the last ones).
            connection.execute("SET synchronous_commit = off")
        migrate(connection)
        return _Connection(connection)

    def _version(self) -> int:
        return 0

    def changed_elsewhere(self) -> bool:
        # Other processes (an operator's `journal retry`) write to the same database without telling us: look.
        return True

    def run_batch(self, operations: list[Callable[[], Any]], marks: tuple[list[int], list[int]]) -> list[Any]:
        """Run a group of writes in one transaction, each in a savepoint, and commit: the outcome of each, as
        (True, result) or (False, exception). Raises if the transaction as a whole fails (then nothing of it
        is committed)."""
        connection = self.db.connection
        outcomes: list[tuple[bool, Any]] = []
        with connection.transaction():
            for operation in operations:
                try:
                    with connection.transaction():  # a savepoint: a refused SID claim sinks only its operation
                        outcomes.append((True, operation()))
                except psycopg.Error as exc:
                    outcomes.append((False, exc))
            # Left unmarked if this fails, they are published again: better than sinking the batch.
            with contextlib.suppress(psycopg.Error), connection.transaction():
                if marks[0]:
                    self.mark_published(marks[0])
                if marks[1]:
                    self.mark_followups_published(marks[1])
        return outcomes


def migrate(connection: psycopg.Connection[Any]) -> int:
    """Bring the schema to the newest version; returns the version it was at."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS journal_schema (version INTEGER NOT NULL)")
        row = connection.execute("SELECT version FROM journal_schema").fetchone()
        found = 0 if row is None else int(row[0])
        for migration in MIGRATIONS[found:]:
            connection.execute(migration)
        if row is None:
            connection.execute("INSERT INTO journal_schema VALUES (%s)", (len(MIGRATIONS),))
        else:
            connection.execute("UPDATE journal_schema SET version = %s", (len(MIGRATIONS),))
    return found
