"""One schema and one list of migrations for both journals: journals written before open and migrate, a new
SQLite journal and a new PostgreSQL one hold the same tables, and PostgreSQL's placeholders are numbered without
touching the SQL around them."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psycopg
import pytest

from conftest import accept
from twilio_connector.domain.contract import Kind, Notification
from twilio_connector.domain.records import Duplicate
from twilio_connector.journal.postgres import PostgresCore, _numbered
from twilio_connector.journal.schema import MIGRATIONS, sqlite_steps_taken
from twilio_connector.journal.sqlite import SqliteCore

DATA = Path(__file__).parent / "data"
#: What tests/data/journal-main-1f02576.db holds, written by main at 1f02576 (before these migrations).
BEFORE = {"accepted": 1, "doubt": 1, "failed": 1, "invalid": 1, "sending": 1, "sent": 1, "unpublished": 3}


def note(request_id: str, to: str = "+12345000001") -> Notification:
    return Notification(request_id, Kind.SMS, to, "+15005550006", "Darla", "hot", 2)


def test_placeholders_are_numbered_outside_literals_and_names() -> None:
    sql = "SELECT '?', \"a?b\" FROM t WHERE a = ? AND b LIKE '50%' AND c IN (?, ?) AND d = 'it''s ?'"
    assert _numbered(sql) == (
        "SELECT '?', \"a?b\" FROM t WHERE a = $1 AND b LIKE '50%' AND c IN ($2, $3) AND d = 'it''s ?'"
    )


def test_sqlite_versions_from_before_the_list_are_read() -> None:
    assert sqlite_steps_taken(0) == 0
    assert sqlite_steps_taken(1) == 4  # the NUL re-keying was then the last step
    assert len(MIGRATIONS) == 6  # then the list lags, then pages
    assert sqlite_steps_taken(len(MIGRATIONS)) == len(MIGRATIONS)


def test_a_sqlite_journal_written_by_main_before_opens_migrated(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    shutil.copy(DATA / "journal-main-1f02576.db", path)
    core = SqliteCore(str(path))
    try:
        assert core.counts() == BEFORE  # nothing lost, nothing changed
        assert core.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert core.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # Its requests keep their keys (a duplicate is found), new ones are recorded, its SIDs stay claimed.
        now = time.time()
        assert isinstance(accept(core, note("r1"), 1_796_500_000.0, 1e12), Duplicate)
        assert isinstance(accept(core, note("new"), now, 600), int)
        assert core.sid_known("SM" + "2" * 32)
        entries, _ = core.due(now, 10, set())
        assert sorted(entry.notification.id for entry in entries) == ["new", "r1", "r4"]
    finally:
        core.close()
    again = SqliteCore(str(path))  # opened a second time: no step is taken again
    assert again.counts()["accepted"] == 2
    again.close()


def test_sqlite_and_postgres_journals_hold_the_same_tables(tmp_path: Path, pg_url: str) -> None:
    sqlite = SqliteCore(str(tmp_path / "j.db"))
    postgres = PostgresCore(pg_url)
    try:
        ours = {
            table: {row[1] for row in sqlite.db.execute(f"PRAGMA table_info({table})")}
            for table in ("requests", "tracking", "followups", "windows", "counters")
        }
        theirs = {
            table: {
                row[0]
                for row in postgres.db.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,)
                )
            }
            for table in ours
        }
        claims = {"owner", "lease_until", "publisher", "publish_lease"}  # PostgreSQL's alone: several connectors
        assert theirs == {**ours, "requests": ours["requests"] | claims}
    finally:
        sqlite.close()
        postgres.close()


def test_a_postgres_journal_written_by_main_before_opens_migrated(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute((DATA / "postgres-schema-1f02576.sql").read_text())  # type: ignore[arg-type]
    core = PostgresCore(pg_url)
    try:
        assert core.db.execute("SELECT version FROM journal_schema").fetchone()[0] == len(MIGRATIONS)
        seq = accept(core, note("r1"), time.time(), 600)
        assert isinstance(seq, int) and isinstance(accept(core, note("r1"), time.time(), 600), Duplicate)
    finally:
        core.close()


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_a_new_journal_takes_every_step_once(tmp_path: Path, request: pytest.FixtureRequest, where: str) -> None:
    path = str(tmp_path / "j.db") if where == "sqlite" else request.getfixturevalue("pg_url")
    make = SqliteCore if where == "sqlite" else PostgresCore
    for _ in range(2):
        core = make(path)
        version = "PRAGMA user_version" if where == "sqlite" else "SELECT version FROM journal_schema"
        assert core.db.execute(version).fetchone()[0] == len(MIGRATIONS)
        core.close()
