"""A PostgreSQL of the benchmark's own, from Debian's binaries, in a temporary directory (as the `postgres` user
when run as root: PostgreSQL refuses to run as root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_postgres() -> tuple[subprocess.Popen[bytes], str, Path]:
    directory = Path(tempfile.mkdtemp(prefix="pgbench-"))
    owner: dict[str, Any] = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
    if owner:
        shutil.chown(directory, "postgres", "postgres")
    subprocess.run(
        [BIN / "initdb", "-D", directory / "data", "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        **owner,
    )
    port = free_port()
    server = subprocess.Popen(
        [
            BIN / "postgres",
            "-D",
            directory / "data",
            "-p",
            str(port),
            "-k",
            directory,
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        stderr=subprocess.DEVNULL,
        **owner,
    )
    while subprocess.run([BIN / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)], check=False).returncode:
        time.sleep(0.05)
    return server, f"postgresql://postgres@127.0.0.1:{port}/postgres", directory
