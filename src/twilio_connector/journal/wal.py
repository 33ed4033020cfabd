"""How the connector's SQLite journal makes a commit durable without a thread hop per commit.

SQLite at `synchronous = FULL` syncs the WAL inside COMMIT, so COMMIT had to run on a worker thread: waking it,
handing the GIL back and forth with the loop and waking the loop again cost 350-400 us of CPU per commit on a
small machine, two commits per request (bench/fsync_paths.py). Instead the connector's connection runs at
`synchronous = NORMAL`, where COMMIT only hands the WAL's frames to the page cache (microseconds, on the loop) and
checkpoints still sync, and the journal syncs the WAL itself before anyone learns of the commit: one
`fdatasync` submitted through Linux AIO (`IOCB_CMD_FDSYNC`, by caio), whose completion arrives on an eventfd the
loop already watches (100-130 us). Where the kernel refuses AIO syncs, a worker thread runs `os.fdatasync`.

What SQLite syncs by itself at NORMAL (a new or restarted WAL's header, the directory of a new WAL, checkpoints)
happens on the worker thread: the journal runs its own checkpoints there, and the commit after one. (Only a
checkpoint by another process, `twilio-connector journal` writing a great deal, could have the next commit on the
loop sync a restarted WAL's header: SQLite does it then, correctly, for a millisecond of the loop's time.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

__all__ = ["Syncer", "WalFile", "fast_syncer", "preload", "thread_syncer"]

log = logging.getLogger(__name__)

#: Syncs a file descriptor's data to the disk.
Syncer = Callable[[int], Awaitable[None]]


class WalFile:
    """The journal's WAL, opened for syncing (Linux syncs a file's pages through any descriptor of it)."""

    def __init__(self, database: str) -> None:
        self.path = database + "-wal"
        self.fd = -1

    def current(self) -> bool:
        """Whether the descriptor is open on the WAL SQLite writes (one `fstat`)."""
        return self.fd >= 0 and os.fstat(self.fd).st_nlink > 0

    def ensure_open(self) -> int:
        """The WAL's descriptor, opened (or opened again, should the file have been replaced) and its directory
        entry made durable (blocking: call it off the loop)."""
        if self.current():
            return self.fd
        self.close()
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        directory = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # a file system that cannot sync a directory says EINVAL: as SQLite, go on
                raise
        finally:
            os.close(directory)
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def preload() -> None:
    """Import caio's Linux AIO (blocking: 30-40 ms, mostly waiting, as it tries io_setup and io_destroy once): on
    a thread while the connector starts, rather than on the loop at the first commit, or before it is ready."""
    if sys.platform == "linux":
        # ImportError also says the kernel refused io_setup (caio tries it as it loads): `fast_syncer` tells.
        with contextlib.suppress(ImportError):
            import caio.linux_aio_asyncio  # noqa: F401, PLC0415


def thread_syncer(executor: Executor) -> Syncer:
    async def sync(fd: int) -> None:
        await asyncio.get_running_loop().run_in_executor(executor, os.fdatasync, fd)

    return sync


async def fast_syncer(fd: int) -> tuple[Syncer, Callable[[], None]] | None:
    """A syncer through Linux AIO and what closes it, if this kernel syncs `fd` that way (tried once); else None."""
    if sys.platform != "linux":
        return None
    try:
        from caio.linux_aio_asyncio import AsyncioContext  # noqa: PLC0415  (only where it is used)

        context = AsyncioContext(max_requests=4)
    except (ImportError, OSError, SystemError) as exc:
        # Not installed, its pure-Python wheel, or io_setup refused (a kernel before 4.18, a seccomp profile,
        # aio-max-nr reached): caio says so as it loads or as the context opens.
        log.info("Linux AIO is not available (%s): the journal syncs on a worker thread", exc)
        return None
    try:
        await context.fdsync(fd)
    except (OSError, SystemError, ValueError) as exc:  # a kernel before 4.18, or a file system without AIO syncs
        context.close()
        log.info("Linux AIO cannot sync the journal here (%s): it syncs on a worker thread", exc)
        return None

    async def sync(descriptor: int) -> None:
        await context.fdsync(descriptor)

    def close() -> None:
        with contextlib.suppress(Exception):
            context.close()

    return sync, close
