"""Opening a journal: an SQLite file, or a PostgreSQL database for a postgresql:// URL (psycopg is imported then
only, so that a connector with an SQLite journal neither needs it nor pays for it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .core import HAND_OVER_LIMIT, SqlCore
from .front import Journal
from .sqlite import SqliteCore, SqliteJournal

__all__ = ["MissingExtra", "open_core", "open_journal"]


class MissingExtra(Exception):
    """An optional dependency the configuration needs is not installed."""


def _is_postgres(path: str) -> bool:
    return path.startswith(("postgresql://", "postgres://"))


def open_core(
    path: str,
    sync: str = "full",
    *,
    hand_over_limit: int = 0,
    node: str | None = None,
    lease: float = 30.0,
    create: bool = True,
) -> SqlCore:
    """The journal's statements at `path` (blocking). `create`: make an SQLite journal where there is none (else
    `sqlite.NotAJournal`)."""
    if _is_postgres(path):
        try:
            from .postgres import PostgresCore  # noqa: PLC0415
        except ImportError as exc:
            raise MissingExtra(
                f"a PostgreSQL journal ({path}) needs psycopg, which is not installed: install the connector "
                f"with its postgres extra (pip install 'twilio-connector[postgres]') ({exc})"
            ) from None
        return PostgresCore(path, sync, hand_over_limit=hand_over_limit, node=node, lease=lease)
    return SqliteCore(path, sync, hand_over_limit=hand_over_limit, create=create)


async def open_journal(
    path: str,
    sync: str = "full",
    *,
    hand_over_limit: int | None = None,
    clock: Callable[[], float] = time.time,
    node: str | None = None,
    lease: float = 30.0,
) -> Journal:
    """The connector's journal at `path`: an SQLite file, or a postgresql:// URL. `hand_over_limit`: requests and
    statuses handed to the engine in memory at most (default HAND_OVER_LIMIT; 0: none, every one found by a
    query). `node`: this connector's name among those sharing a PostgreSQL journal (its MQTT client id), and
    `lease` how long its claims last unless renewed."""
    limit = HAND_OVER_LIMIT if hand_over_limit is None else hand_over_limit
    with ThreadPoolExecutor(max_workers=1) as opener:
        core = await asyncio.get_running_loop().run_in_executor(
            opener, lambda: open_core(path, sync, hand_over_limit=limit, node=node, lease=lease)
        )
    if isinstance(core, SqliteCore):
        return SqliteJournal(core, clock, path)
    from .postgres import PostgresJournal  # noqa: PLC0415

    return PostgresJournal(core, clock, path)
