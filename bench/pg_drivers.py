"""asyncpg against psycopg 3 for the journal's own statements, on a PostgreSQL of its own.

    .venv/bin/python bench/pg_drivers.py --requests 5000

Each driver, in turn and then again in the other order, records `--requests` requests the way the journal
would (a transaction per request: insert the request, bump a rate counter), from 32 tasks over a pool of 8
connections, then claims them 64 at a time with FOR UPDATE SKIP LOCKED. Reports wall time and this process's
CPU per request (the connector's cost; the server's is the same for both). Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable

import asyncpg
import psycopg
import psycopg_pool
from pgserver import start_postgres

SCHEMA = """
DROP TABLE IF EXISTS requests, counters;
CREATE TABLE requests (seq BIGSERIAL PRIMARY KEY, request_id TEXT NOT NULL, to_number TEXT NOT NULL,
    body TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'accepted', claimed_by TEXT, lease_until DOUBLE PRECISION);
CREATE TABLE counters (scope TEXT PRIMARY KEY, count BIGINT NOT NULL);
"""
INSERT = "INSERT INTO requests (request_id, to_number, body) VALUES ($1, $2, $3) RETURNING seq"
BUMP = "INSERT INTO counters VALUES ($1, 1) ON CONFLICT (scope) DO UPDATE SET count = counters.count + 1"
CLAIM = (
    "UPDATE requests SET claimed_by = $1, lease_until = $2 WHERE seq IN (SELECT seq FROM requests "
    "WHERE state = 'accepted' AND claimed_by IS NULL ORDER BY seq LIMIT 64 FOR UPDATE SKIP LOCKED) RETURNING seq"
)


async def run_asyncpg(url: str, requests: int) -> None:
    async with asyncpg.create_pool(url, min_size=8, max_size=8) as pool:
        await pool.execute(SCHEMA)

        async def record(n: int) -> None:
            async with pool.acquire() as connection, connection.transaction():
                await connection.fetchval(INSERT, f"r{n}", "+12345000000", f"text {n}")
                await connection.execute(BUMP, "+12345000000")

        await _spread(record, requests)
        while await pool.fetch(CLAIM, "node", time.time() + 30):
            pass


async def run_psycopg(url: str, requests: int) -> None:
    async with psycopg_pool.AsyncConnectionPool(url, min_size=8, max_size=8, open=False) as pool:
        async with pool.connection() as connection:
            await connection.execute(SCHEMA)
        insert, bump, claim = (
            query.replace("$1", "%s").replace("$2", "%s").replace("$3", "%s") for query in (INSERT, BUMP, CLAIM)
        )

        async def record(n: int) -> None:
            async with pool.connection() as connection, connection.transaction():
                await connection.execute(insert, (f"r{n}", "+12345000000", f"text {n}"), prepare=True)
                await connection.execute(bump, ("+12345000000",), prepare=True)

        await _spread(record, requests)
        async with pool.connection() as connection:
            while await (await connection.execute(claim, ("node", time.time() + 30))).fetchall():
                pass


async def _spread(record: Callable[[int], Awaitable[None]], requests: int) -> None:
    queue = iter(range(requests))

    async def worker() -> None:
        for n in queue:
            await record(n)

    await asyncio.gather(*(worker() for _ in range(32)))


def measure(name: str, run: Callable[[str, int], Awaitable[None]], url: str, requests: int) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(run(url, requests))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"| {name} | {requests} | {requests / wall:.0f} | {cpu / requests * 1e6:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    server, url, directory = start_postgres()
    try:
        print("| driver | requests | requests/s | client CPU us/request |\n|---|---|---|---|")
        for name, run in [("asyncpg", run_asyncpg), ("psycopg", run_psycopg)] * 2:
            measure(
                f"{name} {asyncpg.__version__ if name == 'asyncpg' else psycopg.__version__}", run, url, args.requests
            )
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
