"""How the SQLite journal makes its commits durable: COMMIT on the loop at `synchronous = NORMAL`, then a sync of
the WAL the journal awaits itself (Linux AIO here), checkpoints of its own off the loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
from pathlib import Path

import pytest

from conftest import journal_accept
from twilio_connector.domain.contract import Kind, Notification
from twilio_connector.journal import sqlite
from twilio_connector.journal.sqlite import SqliteCore, SqliteJournal
from twilio_connector.journal.wal import fast_syncer
from twilio_connector.ports.journal import JournalDamaged


def note(request_id: str) -> Notification:
    return Notification(request_id, Kind.SMS, "+12345000000", "+15005550006", "Darla", "hi", 2)


def rows_seen_by_another_connection(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as other:
        return int(other.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


class Gate:
    """A syncer that holds each sync until it is let through, and remembers what it synced."""

    def __init__(self) -> None:
        self.synced: list[int] = []
        self.called = asyncio.Event()
        self.open = asyncio.Event()

    async def __call__(self, fd: int) -> None:
        self.synced.append(fd)
        self.called.set()
        await self.open.wait()


async def test_a_write_is_answered_only_once_its_commit_is_synced(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    gate = Gate()
    journal = SqliteJournal(SqliteCore(str(path)), syncer=gate)
    try:
        await journal_accept(journal, note("first"), window=600)  # a new WAL: committed and synced off the loop
        assert gate.synced == []
        second = asyncio.create_task(journal_accept(journal, note("second"), window=600))
        await asyncio.wait_for(gate.called.wait(), 10)
        # Committed (another connection reads it) and being synced, but not answered yet.
        assert rows_seen_by_another_connection(path) == 2
        assert not second.done()
        (fd,) = gate.synced
        assert os.fstat(fd).st_ino == os.stat(f"{path}-wal").st_ino
        gate.open.set()
        assert isinstance(await asyncio.wait_for(second, 10), int)
        assert journal.core.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: the journal syncs
    finally:
        gate.open.set()
        await journal.close()
    # What the `twilio-connector journal` command writes with is synced by SQLite itself.
    operator = SqliteCore(str(path), create=False)
    assert operator.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    operator.close()


async def test_a_failed_sync_stops_the_journal_for_good(tmp_path: Path) -> None:
    async def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    journal = SqliteJournal(SqliteCore(str(tmp_path / "j.db")), where="j.db", syncer=failing)
    try:
        await journal_accept(journal, note("first"), window=600)
        with pytest.raises(JournalDamaged, match="could not be synced to the disk"):
            await journal_accept(journal, note("second"), window=600)
        assert journal.damaged is not None and not journal.writable
    finally:
        await journal.close()


@pytest.mark.parametrize("sync", ["normal", "off"])
async def test_without_full_sync_the_journal_syncs_nothing_itself(tmp_path: Path, sync: str) -> None:
    gate = Gate()
    gate.open.set()
    journal = SqliteJournal(SqliteCore(str(tmp_path / "j.db"), sync), syncer=gate)
    try:
        for n in range(3):
            await journal_accept(journal, note(f"r{n}"), window=600)
        assert gate.synced == []
    finally:
        await journal.close()


async def test_the_wal_is_checkpointed_by_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's own checkpoints are off (they would run, and sync, inside a COMMIT on the loop): the journal's
    keep the WAL from growing without end."""

    async def wal_size_after(commits: int, every: int) -> int:
        monkeypatch.setattr(sqlite, "CHECKPOINT_COMMITS", every)
        path = tmp_path / f"every-{every}.db"
        journal = SqliteJournal(SqliteCore(str(path)))
        try:
            for n in range(commits):
                await journal_accept(journal, note(f"r{n}"), window=600)
            return os.stat(f"{path}-wal").st_size
        finally:
            await journal.close()

    unchecked = await wal_size_after(300, every=10**9)
    checked = await wal_size_after(300, every=20)
    assert checked * 4 < unchecked, (checked, unchecked)


async def test_linux_aio_syncs_a_file_here(tmp_path: Path) -> None:
    """The fast path is taken on this kind of machine (else every commit pays a worker thread again)."""
    try:
        import caio.linux_aio  # noqa: F401, PLC0415  (it tries io_setup as it loads)
    except ImportError as exc:
        pytest.skip(f"this kernel or sandbox refuses Linux AIO: {exc}")
    with (tmp_path / "f").open("wb") as handle:
        handle.write(b"x" * 4096)
        found = await fast_syncer(handle.fileno())
        assert found is not None, "Linux AIO refused an fdatasync here (see the log)"
        sync, close = found
        try:
            await sync(handle.fileno())
        finally:
            close()


async def test_where_linux_aio_refuses_a_worker_thread_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refused(fd: int) -> None:
        return None

    synced: list[int] = []
    fdatasync = os.fdatasync

    def counting(fd: int) -> None:
        synced.append(fd)
        fdatasync(fd)

    monkeypatch.setattr(sqlite, "fast_syncer", refused)
    monkeypatch.setattr(os, "fdatasync", counting)
    path = tmp_path / "j.db"
    journal = SqliteJournal(SqliteCore(str(path)))
    try:
        for n in range(3):
            await journal_accept(journal, note(f"r{n}"), window=600)
    finally:
        await journal.close()
    assert len(synced) == 3  # the first commit's on the worker thread with it, then one per commit
    assert rows_seen_by_another_connection(path) == 3


async def test_a_failed_sync_on_the_worker_thread_stops_the_journal_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit that starts a WAL runs, and syncs, on the worker thread: its sync failing is damage as well,
    not a failed write (the commit stands: its callers must not act as if it had not)."""

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    path = tmp_path / "j.db"
    journal = SqliteJournal(SqliteCore(str(path)), where="j.db")
    try:
        with pytest.raises(JournalDamaged, match="could not be synced to the disk"):
            await journal_accept(journal, note("first"), window=600)
        assert journal.damaged is not None
    finally:
        await journal.close()
    assert rows_seen_by_another_connection(path) == 1
