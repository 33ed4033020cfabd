"""What one wake-up of an idle event loop costs on this machine: a thread sends one byte every 20 ms (a steady
50/s) over a socketpair, the loop reads it; CPU of the whole process per byte, on asyncio and on uvloop.

    .venv/bin/python bench/wakeups.py

The floor under any design's CPU per notification at a steady rate (docs/performance.md). Not part of the tests.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import uvloop

COUNT = 500


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def measure() -> float:
    """CPU microseconds per wake-up (the sender thread's included)."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    seen = 0

    def readable() -> None:
        nonlocal seen
        ours.recv(64)
        seen += 1
        if seen >= COUNT:
            done.set()

    def send() -> None:
        for _ in range(COUNT):
            time.sleep(0.02)
            theirs.send(b"x")

    loop.add_reader(ours.fileno(), readable)
    threading.Thread(target=send, daemon=True).start()
    before = cpu_seconds()
    await done.wait()
    loop.remove_reader(ours.fileno())
    ours.close()
    theirs.close()
    return (cpu_seconds() - before) / COUNT * 1e6


def main() -> None:
    print(f"asyncio: {asyncio.run(measure()):.0f} us of CPU per wake-up (sender included)")
    print(f"uvloop:  {uvloop.run(measure()):.0f} us of CPU per wake-up (sender included)")


if __name__ == "__main__":
    main()
