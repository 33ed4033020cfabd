"""Throughput benchmark: N SMS requests through Mosquitto, the connector and the simulator, each its own process.

    .venv/bin/python bench/throughput.py --requests 1000 --latency-ms 0

Reports notifications/s, publish-to-status latency percentiles, connector CPU per notification and peak RSS.
Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gmqtt
import orjson

CLI = [sys.executable, "-m", "twilio_connector"]
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mb(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nuser root\n")
    process = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config)], stderr=subprocess.DEVNULL
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("mosquitto did not start")


async def drive(port: int, count: int) -> tuple[float, list[float]]:
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def on_message(client: object, topic: str, payload: bytes, qos: int, properties: object) -> int:
        status = orjson.loads(payload)
        latencies.append(time.perf_counter() - sent[status["id"]])
        if len(latencies) >= count:
            done.set()
        return 0

    client = gmqtt.Client("bench-probe")
    client.on_message = on_message
    await client.connect("127.0.0.1", port)
    client.subscribe("twilio/message/status", qos=1)
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    for n in range(count):
        request_id = f"bench-{n}"
        payload = orjson.dumps(
            {
                "request": {"recipient": {"name": "Darla", "phone_number": "+12345000000", "message": f"alert {n}"}},
                "id": request_id,
            }
        )
        while True:
            try:
                sent[request_id] = time.perf_counter()
                client.publish("twilio/txt", payload, qos=1)
                break
            except OverflowError:  # past the broker's Receive Maximum: let acknowledgements in
                await asyncio.sleep(0.001)
        if n % 50 == 0:
            await asyncio.sleep(0)
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - started
    await client.disconnect()
    return elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--max-in-flight", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        broker, mqtt_port = start_broker(Path(tmp))
        sim_port = free_port()
        simulator = subprocess.Popen(
            [*CLI, "simulator", "--port", str(sim_port), "--latency-ms", str(args.latency_ms)], stdout=subprocess.PIPE
        )
        assert simulator.stdout is not None
        simulator.stdout.readline()
        env = {**os.environ, "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "simulator-token"}
        connector = subprocess.Popen(
            [
                *CLI,
                "run",
                "--broker",
                f"mqtt://127.0.0.1:{mqtt_port}",
                "--twilio-api-url",
                f"http://127.0.0.1:{sim_port}",
                "--default-from",
                "+15005550006",
                "--log-level",
                "WARNING",
                "--max-in-flight",
                str(args.max_in_flight),
            ],
            env=env,
        )
        time.sleep(1.5)
        idle_rss = peak_rss_mb(connector.pid)
        cpu_before, sim_cpu_before = cpu_seconds(connector.pid), cpu_seconds(simulator.pid)
        try:
            elapsed, latencies = asyncio.run(drive(mqtt_port, args.requests))
            cpu = cpu_seconds(connector.pid) - cpu_before
            sim_cpu = cpu_seconds(simulator.pid) - sim_cpu_before
            rss = peak_rss_mb(connector.pid)
        finally:
            for process in (connector, simulator, broker):
                process.send_signal(signal.SIGTERM)
                process.wait(30)
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    print(
        "| requests | Twilio latency | notifications/s | p50 ms | p95 ms | p99 ms | connector CPU ms/notification "
        "| simulator CPU s | RSS idle MB | RSS peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.requests} | {args.latency_ms:g} ms | {args.requests / elapsed:.0f} | {pct(0.5):.1f} | {pct(0.95):.1f} "
        f"| {pct(0.99):.1f} | {cpu / args.requests * 1000:.2f} | {sim_cpu:.2f} | {idle_rss:.1f} | {rss:.1f} |"
    )


if __name__ == "__main__":
    main()
