"""What a durable append costs the process at a steady 50/s, by the way its fdatasync is waited for: a Python
thread (`run_in_executor`, as the journal's commit thread did before) or Linux AIO through caio (no Python thread:
its completion comes back on the event loop, as the journal's syncs do now). The evidence behind journal/wal.py.

    .venv/bin/python bench/fsync_paths.py [DIRECTORY]

Writes 4 KiB and syncs it 300 times, 20 ms apart, in a file under DIRECTORY (default: the current one: put it on
the disk the journal uses). Prints CPU microseconds per append. Not part of the tests.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable

import uvloop

COUNT = 300


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def per_append(fd: int, sync: Callable[[int], Awaitable[object]] | None) -> float:
    """CPU microseconds per append: a timer, a 4 KiB write and, if given, `sync`."""
    before = cpu_seconds()
    for _ in range(COUNT):
        await asyncio.sleep(0.02)
        os.write(fd, b"x" * 4096)
        if sync is not None:
            await sync(fd)
    return (cpu_seconds() - before) / COUNT * 1e6


async def main(directory: str) -> None:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        fd = os.open(os.path.join(tmp, "appends"), os.O_WRONLY | os.O_CREAT)
        print(f"timer and write, no sync:      {await per_append(fd, None):.0f} us")
        in_thread = await per_append(fd, lambda fd: loop.run_in_executor(None, os.fdatasync, fd))
        print(f"fdatasync on a Python thread:  {in_thread:.0f} us")
        try:
            from caio.linux_aio_asyncio import AsyncioContext  # noqa: PLC0415
        except ImportError:
            print("caio is not installed: pip install caio")
            return
        context = AsyncioContext(max_requests=8)
        try:
            print(f"fdatasync through Linux AIO:   {await per_append(fd, context.fdsync):.0f} us")
        finally:
            context.close()
        os.close(fd)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1] if len(sys.argv) > 1 else "."))
