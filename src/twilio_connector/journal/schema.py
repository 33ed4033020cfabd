"""The journal's schema, once for both databases, and its migrations, one numbered list for both.

Tables and indexes are written once; what the two databases spell differently (a row id, bytes, real numbers,
SQLite's rowid-less tables) is a word of `Dialect`. A migration is a step both databases take at the same
number, each in its own words where they differ (`Migration.sqlite`, `Migration.postgres`; None: nothing to do
there). Each journal records the number it reached (SQLite: `PRAGMA user_version`; PostgreSQL: the
`journal_schema` table) and takes the steps after it, in order, at start-up.

SQLite journals written before this list existed counted on their own: version 0 (tables made as needed, some
columns added later) and version 1 (keys of requests holding a NUL rewritten): `sqlite_steps_taken` reads them.
PostgreSQL's journals counted 1 to 3 as this list does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..domain.records import key_of

__all__ = ["MIGRATIONS", "POSTGRES", "SQLITE", "Dialect", "Migration", "sqlite_steps_taken", "statements", "tables"]


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    row_id: str  # an auto-incremented primary key
    blob: str
    real: str
    big: str  # an integer that may pass 2**31
    rowless: str  # after a table whose primary key is its identity


SQLITE = Dialect("sqlite", "INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "REAL", "INTEGER", " WITHOUT ROWID")
POSTGRES = Dialect("postgres", "BIGSERIAL PRIMARY KEY", "BYTEA", "DOUBLE PRECISION", "BIGINT", "")

#: Pages until acknowledged (domain/paging.py): one per request that started one, with its sends so far, when it
#: next falls due while `paging`, and once ended (`acknowledged`, `unacknowledged`, `called`) its status to publish.
_PAGES = """
CREATE TABLE IF NOT EXISTS pages (
    seq {big} PRIMARY KEY,
    request_id TEXT NOT NULL,
    sends INTEGER NOT NULL,
    next_at {real} NOT NULL,
    state TEXT NOT NULL DEFAULT 'paging',
    ended_at {real},
    status {blob},
    published INTEGER NOT NULL DEFAULT 0
){rowless};
CREATE INDEX IF NOT EXISTS pages_due ON pages (next_at) WHERE state = 'paging';
CREATE INDEX IF NOT EXISTS pages_request ON pages (request_id) WHERE state = 'paging';
CREATE INDEX IF NOT EXISTS pages_unpublished ON pages (seq) WHERE status IS NOT NULL AND published = 0;
"""

_TABLES = (
    """
CREATE TABLE IF NOT EXISTS requests (
    seq {row_id},
    dedupe_key {blob} NOT NULL,
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    to_number TEXT NOT NULL,
    from_number TEXT NOT NULL,
    name TEXT NOT NULL,
    content TEXT NOT NULL,
    retries INTEGER NOT NULL,
    options TEXT NOT NULL DEFAULT '{{}}',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {real} NOT NULL,
    attempt_started_at {real},
    sid TEXT,
    last_error TEXT,
    status {blob},
    status_published INTEGER NOT NULL DEFAULT 0,
    accepted_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    digest_seq {big},
    members INTEGER NOT NULL DEFAULT 0,
    lookups INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tracking (
    seq {big} PRIMARY KEY,
    sid TEXT NOT NULL,
    next_check_at {real} NOT NULL,
    "interval" {real} NOT NULL,
    deadline {real} NOT NULL,
    last_status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS followups (
    id {row_id},
    payload {blob} NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    created_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS windows (
    key TEXT PRIMARY KEY,
    opens_at {real} NOT NULL,
    closes_at {real} NOT NULL,
    passed INTEGER NOT NULL,
    next_at {real} NOT NULL,
    digest_seq {big}
){rowless};
CREATE TABLE IF NOT EXISTS counters (
    span TEXT NOT NULL,
    scope TEXT NOT NULL,
    bucket {big} NOT NULL,
    n {big} NOT NULL,
    PRIMARY KEY (span, scope, bucket)
){rowless};
CREATE TABLE IF NOT EXISTS list_lags (
    seen_at {real} NOT NULL,
    seconds {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS audits (
    seq {big} PRIMARY KEY,
    since {real} NOT NULL,
    due_at {real} NOT NULL
){rowless};
CREATE TABLE IF NOT EXISTS reply_cursors (
    number TEXT PRIMARY KEY,
    since {real} NOT NULL
){rowless};
CREATE TABLE IF NOT EXISTS opt_outs (
    person TEXT NOT NULL,
    number TEXT NOT NULL,
    since {real} NOT NULL,
    PRIMARY KEY (person, number)
){rowless};
CREATE TABLE IF NOT EXISTS replies (
    sid TEXT PRIMARY KEY,
    number TEXT NOT NULL,
    received_at {real} NOT NULL,
    payload {blob} NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
){rowless};
CREATE INDEX IF NOT EXISTS requests_dedupe ON requests (dedupe_key, accepted_at);
CREATE INDEX IF NOT EXISTS requests_waiting ON requests (seq) WHERE state = 'accepted';
CREATE INDEX IF NOT EXISTS requests_due ON requests (next_attempt_at) WHERE state = 'accepted';
CREATE INDEX IF NOT EXISTS requests_sending ON requests (seq) WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS requests_doubt ON requests (next_attempt_at) WHERE state = 'doubt';
CREATE INDEX IF NOT EXISTS requests_folded ON requests (seq) WHERE state = 'folded';
CREATE INDEX IF NOT EXISTS requests_members ON requests (digest_seq) WHERE digest_seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS requests_unpublished ON requests (seq) WHERE status IS NOT NULL AND status_published = 0;
CREATE UNIQUE INDEX IF NOT EXISTS requests_sid_claim ON requests (sid) WHERE sid IS NOT NULL;
CREATE INDEX IF NOT EXISTS requests_finished ON requests (updated_at) WHERE status_published = 1;
CREATE INDEX IF NOT EXISTS tracking_sid ON tracking (sid);
CREATE INDEX IF NOT EXISTS tracking_due ON tracking (next_check_at);
CREATE INDEX IF NOT EXISTS followups_unpublished ON followups (id) WHERE published = 0;
CREATE INDEX IF NOT EXISTS windows_closing ON windows (closes_at);
CREATE INDEX IF NOT EXISTS audits_due ON audits (due_at);
CREATE INDEX IF NOT EXISTS replies_received ON replies (number, received_at);
CREATE INDEX IF NOT EXISTS replies_unpublished ON replies (received_at) WHERE published = 0;
"""
    + _PAGES
    + """
"""
)


_LAGS_AUDITS_REPLIES = """
CREATE TABLE IF NOT EXISTS list_lags (seen_at {real} NOT NULL, seconds {real} NOT NULL);
CREATE TABLE IF NOT EXISTS audits (seq {big} PRIMARY KEY, since {real} NOT NULL, due_at {real} NOT NULL){rowless};
CREATE INDEX IF NOT EXISTS audits_due ON audits (due_at);
CREATE TABLE IF NOT EXISTS replies (sid TEXT PRIMARY KEY, number TEXT NOT NULL, received_at {real} NOT NULL,
    payload {blob} NOT NULL, published INTEGER NOT NULL DEFAULT 0){rowless};
CREATE TABLE IF NOT EXISTS opt_outs (person TEXT NOT NULL, number TEXT NOT NULL, since {real} NOT NULL,
    PRIMARY KEY (person, number)){rowless};
CREATE TABLE IF NOT EXISTS reply_cursors (number TEXT PRIMARY KEY, since {real} NOT NULL){rowless};
CREATE INDEX IF NOT EXISTS replies_received ON replies (number, received_at);
CREATE INDEX IF NOT EXISTS replies_unpublished ON replies (received_at) WHERE published = 0;
"""


def vars_of(dialect: Dialect) -> dict[str, str]:
    return {name: getattr(dialect, name) for name in ("row_id", "blob", "real", "big", "rowless")}


def tables(dialect: Dialect) -> str:
    """The tables and their indexes, in `dialect`'s words."""
    return _TABLES.format(**vars_of(dialect))


#: A step is SQL (a script), or a function given the connection, for what SQL alone cannot do.
MigrationStep = str | Callable[[Any], None] | None


@dataclass(frozen=True, slots=True)
class Migration:
    why: str
    sqlite: MigrationStep
    postgres: MigrationStep

    def step(self, dialect: Dialect) -> MigrationStep:
        return self.sqlite if dialect is SQLITE else self.postgres


def statements(script: str) -> list[str]:
    """A script's statements, to run one by one inside a transaction (no statement here holds a semicolon)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]


#: Columns added to `requests` before SQLite journals were versioned: a journal made then may lack them.
_ADDED_COLUMNS = (
    ("digest_seq", "INTEGER"),
    ("members", "INTEGER NOT NULL DEFAULT 0"),
    ("lookups", "INTEGER NOT NULL DEFAULT 0"),
)


def _sqlite_tables(db: Any) -> None:
    script = statements(tables(SQLITE))
    for statement in script:
        if statement.startswith("CREATE TABLE"):
            db.execute(statement)
    _add_missing_columns(db)  # before the indexes, which name some of them
    for statement in script:
        if not statement.startswith("CREATE TABLE"):
            db.execute(statement)


def _add_missing_columns(db: Any) -> None:
    present = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    for column, declaration in _ADDED_COLUMNS:
        if column not in present:
            db.execute(f"ALTER TABLE requests ADD COLUMN {column} {declaration}")


def _sqlite_rekey(db: Any) -> None:
    """Key again the requests holding a NUL (`key_of`): their old keys were ambiguous."""
    nul = " OR ".join(f"instr({column}, char(0)) > 0" for column in ("request_id", "name", "content"))
    rows = db.execute(
        "SELECT seq, kind, request_id, to_number, from_number, name, content, options FROM requests "
        f"WHERE state != 'invalid' AND members = 0 AND ({nul})"
    ).fetchall()
    db.executemany(
        "UPDATE requests SET dedupe_key = ? WHERE seq = ?", [(key_of(tuple(row[1:])), row[0]) for row in rows]
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration("the tables", _sqlite_tables, tables(POSTGRES)),
    # A connector holds the requests it works on (`owner`, until `lease_until`, renewed while it lives) and the
    # statuses it publishes (`publisher`, until `publish_lease`); what a dead one held is taken over once its
    # lease lapses. An SQLite journal has one connector: nothing to claim.
    Migration(
        "claims",
        None,
        """
        ALTER TABLE requests ADD COLUMN owner TEXT, ADD COLUMN lease_until DOUBLE PRECISION,
            ADD COLUMN publisher TEXT, ADD COLUMN publish_lease DOUBLE PRECISION;
        CREATE INDEX requests_leased ON requests (owner) WHERE state IN ('accepted', 'sending', 'doubt');
        CREATE INDEX requests_publishing ON requests (publisher) WHERE status IS NOT NULL AND status_published = 0;
        """,
    ),
    # Retries an operator asked for wait in `retry` for a connector to admit them again.
    Migration(
        "retries asked for",
        "CREATE INDEX IF NOT EXISTS requests_retry ON requests (seq) WHERE state = 'retry';",
        "CREATE INDEX IF NOT EXISTS requests_retry ON requests (seq) WHERE state = 'retry';",
    ),
    # Keys of requests holding a NUL were ambiguous (`records.key_of`). PostgreSQL's TEXT cannot hold a NUL.
    Migration("unambiguous keys", _sqlite_rekey, None),
    # How long new messages took to show in Twilio's list (domain/lag.py): the evidence the reconcile window
    # follows, kept across restarts; and the requests sent again after an empty window, looked for twice later.
    Migration(
        "list lags and audits",
        _LAGS_AUDITS_REPLIES.format(**vars_of(SQLITE)),
        _LAGS_AUDITS_REPLIES.format(**vars_of(POSTGRES)),
    ),
    Migration("pages until acknowledged", _PAGES.format(**vars_of(SQLITE)), _PAGES.format(**vars_of(POSTGRES))),
)


def sqlite_steps_taken(user_version: int) -> int:
    """How many steps an SQLite journal took, from its `user_version`. Before this list, journals wrote 1 once
    their keys were unambiguous, which was then the last step (a journal of this list never stops at 1: it takes
    every step in one transaction)."""
    return 4 if user_version == 1 else user_version
