"""Several connectors on one PostgreSQL journal: throughput of 1, 2 and 3 connectors, CPU per notification
against the SQLite journal, and how long a dead connector's work waits before another takes it over.

    .venv/bin/python bench/ha.py --requests 2000

Each scenario has its own Mosquitto, simulator and database (a PostgreSQL server of its own for the run). Every
connector subscribes to the request topics (the journal admits each request once); requests go to distinct
numbers. Counts only what reached the simulator. Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from pg_drivers import start_postgres
from throughput import CLI, Probe, connector_command, cpu_seconds, free_port, start_broker


def fresh_database(url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return url.rsplit("/", 1)[0] + f"/{name}"


def run(requests: int, latency_ms: float, nodes: int, journal: str, kill: bool = False) -> dict[str, float]:
    """`journal`: "sqlite", or a PostgreSQL server URL. `kill`: kill -9 one connector halfway, never restart it,
    and time how long the last status waited after the kill."""
    with tempfile.TemporaryDirectory() as tmp:
        broker, mqtt_port = start_broker(Path(tmp))
        sim_port = free_port()
        simulator = subprocess.Popen(
            [*CLI, "simulator", "--port", str(sim_port), "--latency-ms", str(latency_ms)], stdout=subprocess.PIPE
        )
        assert simulator.stdout is not None
        simulator.stdout.readline()
        env = {**os.environ, "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "simulator-token"}
        url = fresh_database(journal) if journal != "sqlite" else None
        connectors = []
        for n in range(nodes):
            where = ["--journal-url", url] if url else []
            sqlite = str(Path(tmp) / f"j{n}.db")
            connectors.append(
                subprocess.Popen(
                    connector_command(mqtt_port, sim_port, sqlite, "--client-id", f"n{n}", *where), env=env
                )
            )
        try:
            return asyncio.run(_measure(requests, mqtt_port, connectors, kill))
        finally:
            for process in (*connectors, simulator, broker):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(60)


async def _measure(
    requests: int, mqtt_port: int, connectors: list[subprocess.Popen[bytes]], kill: bool
) -> dict[str, float]:
    probe = Probe(requests, distinct=True)
    await probe.connect(mqtt_port)
    await asyncio.sleep(3.0)  # every connector connected and subscribed
    cpu_before = sum(cpu_seconds(c.pid) for c in connectors)
    started = time.perf_counter()
    await probe.publish_all()
    killed_at = None
    if kill:
        while len(probe.latencies) < requests // 2:  # noqa: ASYNC110  (the probe counts statuses, it signals none)
            await asyncio.sleep(0.01)
        connectors[0].send_signal(signal.SIGKILL)
        killed_at = time.perf_counter()
    await asyncio.wait_for(probe.done.wait(), 600)
    elapsed = time.perf_counter() - started
    cpu = sum(cpu_seconds(c.pid) for c in connectors if c.poll() is None) - cpu_before
    await probe.client.disconnect()
    result = {"rate": requests / elapsed, "cpu_ms": cpu / requests * 1000}
    if killed_at is not None:
        result["waited_s"] = started + elapsed - killed_at
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    server, url, directory = start_postgres()
    try:
        print("| scenario | connectors | Twilio latency | journal | notifications/s | connector CPU ms/notification |")
        print("|---|---|---|---|---|---|")
        for nodes in (1, 2, 3):
            result = run(args.requests, 100, nodes, url)
            print(f"| burst | {nodes} | 100 ms | PostgreSQL | {result['rate']:.0f} | {result['cpu_ms']:.2f} |")
        for journal, name in ((url, "PostgreSQL"), ("sqlite", "SQLite")):
            result = run(args.requests, 0, 1, journal)
            print(f"| burst | 1 | 0 ms | {name} | {result['rate']:.0f} | {result['cpu_ms']:.2f} |")
        result = run(args.requests, 100, 2, url, kill=True)
        print(
            f"\none of 2 connectors killed halfway through {args.requests} requests: the last status came "
            f"{result['waited_s']:.1f} s after the kill (journal_lease 30 s)"
        )
    finally:
        server.terminate()
        server.wait(30)
        subprocess.run(["rm", "-rf", str(directory)], check=False)


if __name__ == "__main__":
    main()
