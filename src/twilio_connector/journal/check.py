"""`twilio-connector journal check`: what can be read of an SQLite journal, and whether it is intact. Read only.

SQLite's integrity check finds damaged pages. What it cannot find is a write-ahead log cut short (a copy of the
`.db` taken with half its `-wal`): SQLite replays the frames up to the last whole commit and silently drops the
rest. A log whose size is not a whole number of frames was cut mid-frame, and that much the check can tell.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from urllib.request import pathname2url

__all__ = ["check", "wal_report"]

#: The write-ahead log's layout (sqlite.org/fileformat.html#the_write_ahead_log): a 32-byte header whose bytes
#: 8-11 give the page size, then frames of a 24-byte header and one page each.
WAL_HEADER, FRAME_HEADER = 32, 24
WAL_MAGIC = (0x377F0682, 0x377F0683)
PROBLEMS_SHOWN = 20


def check(path: str) -> int:
    """Print what the journal at `path` holds and whether it is intact. Returns 0 if it is, 1 if not."""
    problems: list[str] = []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{pathname2url(os.path.abspath(path))}?mode=ro", uri=True)) as db:
            try:
                problems = [row[0] for row in db.execute(f"PRAGMA integrity_check({PROBLEMS_SHOWN})")]
            except sqlite3.DatabaseError as exc:
                problems = [str(exc)]
            intact = problems == ["ok"]
            print(f"journal at {path}: {'intact' if intact else 'DAMAGED'} (SQLite integrity check)")
            for problem in [] if intact else problems:
                print(f"  {problem}")
            print(_contents(db))
    except sqlite3.Error as exc:
        print(f"journal at {path}: cannot be opened ({exc})")
        intact = False
    wal = wal_report(path)
    if wal:
        print(wal)
    if not intact or (wal and "cut short" in wal):
        print(
            f"what to do: stop the connector, move {path} and its -wal and -shm files aside, and start with a new "
            f"journal; `sqlite3 {path} .recover | sqlite3 recovered.db` copies what can be read (Debian's "
            "sqlite3 package). docs/operations.md, 'A damaged journal', says more."
        )
        return 1
    return 0


def _contents(db: sqlite3.Connection) -> str:
    try:
        rows = db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state ORDER BY state").fetchall()
        unpublished = db.execute(
            "SELECT COUNT(*) FROM requests WHERE status IS NOT NULL AND status_published = 0"
        ).fetchone()[0]
    except sqlite3.Error as exc:
        return f"requests: cannot be read ({exc})"
    counts = ", ".join(f"{state} {count}" for state, count in rows) or "none"
    return f"requests: {counts}; statuses not yet published: {unpublished}"


def wal_report(path: str) -> str | None:
    """What the write-ahead log next to `path` holds, or None if there is none (or it is empty)."""
    wal = Path(f"{path}-wal")
    try:
        size = wal.stat().st_size
        with wal.open("rb") as handle:
            header = handle.read(WAL_HEADER)
    except OSError:
        return None
    if size == 0:
        return None
    if len(header) < WAL_HEADER or int.from_bytes(header[:4], "big") not in WAL_MAGIC:
        return f"write-ahead log {wal}: {size} bytes, cut short or not a log (no valid header)"
    page_size = int.from_bytes(header[8:12], "big")
    frames, rest = divmod(size - WAL_HEADER, FRAME_HEADER + page_size)
    if rest:
        return (
            f"write-ahead log {wal}: cut short in frame {frames + 1} ({size} bytes): the commits in what is missing "
            "are lost, and SQLite cannot tell which"
        )
    return (
        f"write-ahead log {wal}: {frames} frame(s) not yet copied into the journal's file: a copy of the journal "
        "must take this file too (or use `sqlite3 PATH .backup COPY`)"
    )
