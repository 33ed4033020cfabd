"""The journal on its own: states, dedupe window, ordering, pruning, group commit, file permissions."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import pytest

from conftest import accept, journal_accept
from twilio_connector.domain.contract import Kind, Notification
from twilio_connector.domain.records import Duplicate
from twilio_connector.journal import front
from twilio_connector.journal.front import Journal
from twilio_connector.journal.opening import open_journal
from twilio_connector.journal.rows import COLUMNS, entry_of
from twilio_connector.journal.sqlite import SqliteCore
from twilio_connector.ports.journal import SidClaimed


def note(request_id: str = "r1", content: str = "hi") -> Notification:
    return Notification(request_id, Kind.SMS, "+12345000000", "+15005550006", "Darla", content, 2)


@pytest.fixture(params=["sqlite", "postgres"])
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    """The same tests on both journals: an SQLite file, and a PostgreSQL database of its own."""
    where = str(tmp_path / "j.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = await open_journal(where)
    yield opened  # type: ignore[misc]
    await opened.close()


def test_file_is_private_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    core = SqliteCore(str(path))
    seq = accept(core, note(), time.time(), 600)
    core.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = SqliteCore(str(path))
    assert [entry.seq for entry in again.due(time.time(), 10, set())[0]] == [seq]
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


async def test_same_request_within_the_window_is_a_duplicate(journal: Journal) -> None:
    seq = await journal_accept(journal, note(), window=600)
    assert isinstance(seq, int)
    assert await journal_accept(journal, note(), window=600) == Duplicate(seq, None)
    assert isinstance(await journal_accept(journal, note(content="other"), window=600), int)  # reused id, new content
    assert isinstance(await journal_accept(journal, note(), window=0), int)  # outside the window
    await journal.finish(seq, "sent", b"status", "SM1", None)
    dup = await journal_accept(journal, note(content="other"), window=600)
    assert isinstance(dup, Duplicate) and dup.status is None


async def test_life_of_a_request(journal: Journal) -> None:
    core = journal.core
    seq = await journal_accept(journal, note(), window=600)
    assert isinstance(seq, int)
    assert core.unfinished() == 1
    await journal.begin_attempt(seq)
    [doubt] = [entry_of(row) for row in core.db.execute(f"SELECT {COLUMNS} FROM requests WHERE state = 'sending'")]
    assert (doubt.seq, doubt.attempts, doubt.notification) == (seq, 1, note())
    assert doubt.attempt_started_at is not None and doubt.attempt_started_at <= time.time()
    await journal.retry_later(seq, time.time() + 60, "HTTP 503")
    entries, next_due = core.due(time.time(), 10, set())
    assert entries == [] and next_due is not None and next_due > time.time() + 50
    await journal.finish(seq, "failed", b'{"s":1}', None, "HTTP 503")
    assert core.unfinished() == 0 and core.unpublished(10) == [(seq, b'{"s":1}')]
    assert core.counts() == {"failed": 1, "unpublished": 1}
    assert core.request_retry(seq, force=True) and core.unpublished(10) == [] and core.unfinished() == 1
    await journal.finish(seq, "sent", b"ok", "SM9", None)
    assert core.sid_known("SM9") and not core.sid_known("SM0")
    journal.mark_published([seq])
    await journal.flush()
    assert core.unpublished(10) == []
    await journal.republish(seq, b"ok")
    assert core.outbox[-1] == (seq, b"ok")  # handed to the publisher (the query above found all there was)
    journal.mark_published([seq])
    await journal.flush()
    assert await journal.prune(time.time() - 3600) == 0
    assert await journal.prune(time.time() + 1) == 1


async def test_new_work_is_handed_over_once_the_queries_found_the_rest(journal: Journal) -> None:
    core = journal.core
    old = await journal_accept(journal, note("old"), window=600)
    assert not core.ready  # hand-over starts off: what a restart left is found by a query
    assert [entry.seq for entry in core.due(time.time(), 10, set())[0]] == [old]
    new = await journal_accept(journal, note("new"), window=600)
    assert [entry.seq for entry in core.ready] == [new]
    assert core.ready[0].notification == note("new")
    assert core.due(time.time(), 10, {old}) == ([], None)  # handed over: a query does not find it again
    await journal.begin_attempt(new)
    await journal.finish(new, "sent", b"first", "SM1", None)
    assert not core.outbox and core.unpublished(10) == [(new, b"first")]
    await journal.finish(old, "sent", b"second", "SM2", None)
    assert list(core.outbox) == [(old, b"second")]
    assert core.unpublished(10) == [(new, b"first")]
    journal.mark_published([new, old])
    await journal.flush()
    assert core.unpublished(10) == []


async def test_hand_over_stops_at_its_limit_and_the_rest_waits_for_a_query(journal: Journal) -> None:
    core = journal.core
    core.hand_over_limit = 2
    core.due(time.time(), 10, set())
    seqs = [await journal_accept(journal, note(f"r{n}"), window=600) for n in range(5)]
    assert [entry.seq for entry in core.ready] == seqs[:2] and not core.hand_requests
    assert [entry.seq for entry in core.due(time.time(), 2, set())[0]] == seqs[2:4]
    assert not core.hand_requests  # there may be more
    entries, again = core.due(time.time(), 2, {seqs[2], seqs[3]})
    assert [entry.seq for entry in entries] == [seqs[4]] and again is None and core.hand_requests


def test_a_rolled_back_hand_over_is_withdrawn(tmp_path: Path) -> None:
    core = SqliteCore(str(tmp_path / "j.db"), hand_over_limit=10)
    core.hand_requests = True
    seq = accept(core, note(), time.time(), 600)
    core.rolled_back()
    core.committed()
    assert not core.ready and not core._handed_requests
    assert [entry.seq for entry in core.due(time.time(), 10, set())[0]] == [seq]
    core.close()


async def test_published_marks_ride_on_the_next_commit(journal: Journal) -> None:
    core = journal.core
    first = await journal.reject(Kind.SMS, "a", b"status a", "bad")
    journal.mark_published([first])
    assert core.counts()["unpublished"] == 1  # not recorded yet: no commit of its own at once
    second = await journal.reject(Kind.SMS, "b", b"status b", "bad")  # this commit records it
    assert core.counts()["unpublished"] == 1
    journal.mark_published([second])
    started = time.monotonic()
    while core.counts()["unpublished"]:  # with no other write, its own commit comes within MARK_DELAY
        await asyncio.sleep(0.01)
    assert time.monotonic() - started < front.MARK_DELAY + 1.0


async def test_due_requests_come_in_order_and_skip_busy_ones(journal: Journal) -> None:
    seqs = [await journal_accept(journal, note(f"r{n}"), window=600) for n in range(5)]
    due, _ = journal.core.due(time.time(), 3, {seqs[0]})
    assert [entry.seq for entry in due] == seqs[1:4]


async def test_concurrent_writes_share_commits(journal: Journal) -> None:
    commits = 0
    core = journal.core
    remote = hasattr(core, "run_batch")  # PostgreSQL's: each write a transaction of its own
    original = core.run_batch if remote else journal._commit

    def counting(*args: object) -> object:
        nonlocal commits
        commits += 1
        return original(*args)  # type: ignore[arg-type]

    if remote:
        core.run_batch = counting  # type: ignore[method-assign,assignment]
    else:
        journal._commit = counting  # type: ignore[method-assign,assignment]
    results = await asyncio.gather(*(journal_accept(journal, note(f"g{n}"), window=600) for n in range(200)))
    assert len(set(results)) == 200 and all(isinstance(r, int) for r in results)
    assert commits < 20, commits


async def test_a_write_whose_commit_fails_gets_that_failure(pg_url: str) -> None:
    """A PostgreSQL write can fail at COMMIT, after its statements ran (here a deferred constraint; in production
    a server shutting down): its caller gets the error, the writes around it their results, and the journal
    keeps working. (Counted as succeeded and failed at once, the batch once lost its callers for good.)"""
    journal = await open_journal(pg_url)
    try:
        journal.core.db.execute(
            "CREATE TABLE once (n INTEGER, CONSTRAINT unique_n UNIQUE (n) DEFERRABLE INITIALLY DEFERRED)"
        )

        def fails_at_commit() -> str:
            journal.core.db.execute("INSERT INTO once VALUES (1), (1)")  # checked only at COMMIT
            return "ran"

        before, failed, after = await asyncio.wait_for(
            asyncio.gather(
                journal_accept(journal, note("a"), window=600),
                journal.write(fails_at_commit),
                journal_accept(journal, note("b"), window=600),
                return_exceptions=True,
            ),
            timeout=10,
        )
        assert isinstance(before, int) and isinstance(after, int)
        assert isinstance(failed, journal.core.IntegrityError)
        assert isinstance(await journal_accept(journal, note("c"), window=600), int)
        assert journal.core.unfinished() == 3
    finally:
        await journal.close()


async def test_a_failing_operation_does_not_sink_its_batch(journal: Journal) -> None:
    def broken() -> None:
        journal.core.db.execute("INSERT INTO no_such_table VALUES (1)")

    good, bad = await asyncio.gather(
        journal_accept(journal, note(), window=600), journal.write(broken), return_exceptions=True
    )
    assert isinstance(good, int) and isinstance(bad, journal.core.Error)
    assert journal.core.unfinished() == 1


async def test_a_sid_is_claimed_by_one_request_only(journal: Journal) -> None:
    """Two identical alerts that both found the same message at Twilio: the journal lets one claim it."""
    first = await journal_accept(journal, note("twin1"), window=600)
    second = await journal_accept(journal, note("twin2"), window=600)
    assert isinstance(first, int) and isinstance(second, int)
    await journal.finish(first, "sent", b"status 1", "SM1", None)
    with pytest.raises(SidClaimed):
        await journal.finish(second, "sent", b"status 2", "SM1", None)
    rows = journal.core.db.execute("SELECT seq, state, sid FROM requests ORDER BY seq").fetchall()
    assert rows == [(first, "sent", "SM1"), (second, "accepted", None)]  # the refused claim changed nothing
    assert journal.writable  # and sank nothing else
