"""Throughput benchmark: SMS requests through Mosquitto, the connector and the simulator, each its own process.

    .venv/bin/python bench/throughput.py --requests 1000 --latency-ms 0            # a burst, durable journal
    .venv/bin/python bench/throughput.py --requests 1000 --journal memory          # without durability
    .venv/bin/python bench/throughput.py --requests 100000 --backlog               # queued while stopped, drained
    .venv/bin/python bench/throughput.py --requests 1000 --reference               # built like the original

Reports notifications/s, publish-to-status latency percentiles, connector CPU per notification, RSS and the
journal's size. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from typing import Any

import aiohttp
import gmqtt
import orjson
from pgserver import start_postgres

CLI = [sys.executable, "-m", "twilio_connector"]
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the main thread (the event loop) and of each other thread (the journal's, ...)."""
    seconds: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = "main" if task.name == str(pid) else f"{(task / 'comm').read_text().strip()}-{task.name}"
            seconds[name] = cpu_seconds_of(task / "stat")
    return seconds


def cpu_seconds_of(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    match = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def start_broker(directory: Path, stock: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto with a large queue; tuned (`set_tcp_nodelay true`) unless `stock` (as Debian ships it); more
    settings from $BENCH_MOSQUITTO_EXTRA."""
    port = free_port()
    config = directory / "mosquitto.conf"
    tuning = ("" if stock else "set_tcp_nodelay true\n") + os.environ.get("BENCH_MOSQUITTO_EXTRA", "")
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nuser root\n{tuning}"
    )
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([mosquitto, "-c", str(config)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("mosquitto did not start")


def start_simulator(latency_ms: float = 0.0) -> tuple[subprocess.Popen[bytes], int]:
    """`twilio-connector simulator` on a free port, answering after `latency_ms`; returns once it listens."""
    port = free_port()
    command = [*CLI, "simulator", "--port", str(port), "--latency-ms", str(latency_ms)]
    simulator = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert simulator.stdout is not None
    simulator.stdout.readline()
    return simulator, port


class Probe:
    """Publishes requests and times their statuses."""

    def __init__(self, count: int, distinct: bool = False) -> None:
        self.count = count
        self.distinct = distinct
        self.sent: dict[str, float] = {}
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.client = gmqtt.Client("bench-probe")
        self.client.on_message = self._on_message

    async def _on_message(self, client: object, topic: str, payload: bytes, qos: int, properties: object) -> int:
        self.latencies.append(time.perf_counter() - self.sent[orjson.loads(payload)["id"]])
        if len(self.latencies) >= self.count:
            self.done.set()
        return 0

    async def connect(self, port: int) -> None:
        await self.client.connect("127.0.0.1", port)
        self.client.subscribe("twilio/message/status", qos=1)
        await asyncio.sleep(0.2)

    async def publish_all(self, rate: float = 0.0) -> None:
        """Publish every request: as fast as possible, or `rate` per second (paced, to measure added latency)."""
        started = time.perf_counter()
        for n in range(self.count):
            if rate:
                await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
            request_id = f"bench-{n}"
            number = f"+1212{2_000_000 + n:07d}" if self.distinct else "+12345000000"
            recipient = {"name": "Darla", "phone_number": number, "message": f"alert {n}"}
            payload = orjson.dumps({"request": {"recipient": recipient}, "id": request_id})
            while True:
                try:
                    self.sent[request_id] = time.perf_counter()
                    self.client.publish("twilio/txt", payload, qos=1)
                    break
                except OverflowError:  # past the broker's Receive Maximum: let acknowledgements in
                    await asyncio.sleep(0.001)
            if n % 50 == 0 and not rate:
                await asyncio.sleep(0)


async def time_to_ready(launched: float, port: int) -> float:
    """Seconds from launching the connector to its /readyz answering 200 (connected, subscribed, journal open)."""
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return time.perf_counter() - launched
            await asyncio.sleep(0.01)


async def scenario(
    args: argparse.Namespace, mqtt_port: int, command: list[str], env: dict[str, str], metrics_port: int | None
) -> dict[str, Any]:
    probe = Probe(args.requests, args.distinct)
    await probe.connect(mqtt_port)
    if args.backlog:
        await probe.publish_all()
        await asyncio.sleep(2.0)  # the broker now holds the whole backlog for the stopped connector
    launched = time.perf_counter()
    connector = await asyncio.create_subprocess_exec(*command, env=env)
    ready_s = await time_to_ready(launched, metrics_port) if metrics_port else float("nan")
    await asyncio.sleep(max(0.0, launched + 1.5 - time.perf_counter()))
    idle_rss = rss_mb(connector.pid) if not args.backlog else float("nan")
    cpu_before = cpu_seconds(connector.pid)
    started = time.perf_counter()
    if args.backlog:
        probe.sent = dict.fromkeys(probe.sent, started - 1.5)
    else:
        await probe.publish_all(args.rate)
    published = time.perf_counter() - started
    peak = 0.0
    while not probe.done.is_set():
        peak = max(peak, rss_mb(connector.pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(probe.done.wait(), 0.5)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(connector.pid) - cpu_before
    threads = thread_cpu(connector.pid)
    peak = max(peak, rss_mb(connector.pid, "VmHWM"))
    for pid in child_pids(connector.pid) or [connector.pid]:  # under py-spy, stop its child: py-spy then writes
        os.kill(pid, signal.SIGTERM)
    await connector.wait()
    await probe.client.disconnect()
    probe.latencies.sort()
    n = len(probe.latencies)
    return {
        "rate": args.requests / elapsed,
        "p50": probe.latencies[n // 2] * 1000,
        "p95": probe.latencies[int(n * 0.95)] * 1000,
        "p99": probe.latencies[min(n - 1, int(n * 0.99))] * 1000,
        "cpu_ms": cpu / args.requests * 1000,
        "idle_rss": idle_rss,
        "peak_rss": peak,
        "threads": threads,
        "ready_s": ready_s,
        "published_s": published if not args.backlog else float("nan"),
        "elapsed_s": elapsed,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--max-in-flight", type=int, help="default: the connector's own")
    parser.add_argument(
        "--journal",
        choices=["file", "memory", "postgres"],
        default="file",
        help="durable journal (SQLite), none, or a PostgreSQL of its own",
    )
    parser.add_argument("--sync", choices=["full", "normal", "off"], default="full", help="journal fsync policy")
    parser.add_argument("--backlog", action="store_true", help="queue every request while the connector is stopped")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="publish this many requests a second (default: a burst)"
    )
    parser.add_argument(
        "--distinct",
        action="store_true",
        help="a new recipient for every request, with the default guards (storm folding on); default: one recipient, "
        "folding off (so that every request is really sent)",
    )
    parser.add_argument(
        "--reference", action="store_true", help="measure bench/reference.py (built like the original) instead"
    )
    parser.add_argument(
        "--stock-broker", action="store_true", help="Mosquitto as shipped (no set_tcp_nodelay), not tuned"
    )
    parser.add_argument(
        "--profile",
        metavar="SVG",
        help="record the connector with py-spy: a flame graph (.svg) or collapsed stacks (.txt)",
    )
    parser.add_argument("--cprofile", metavar="FILE", help="run the connector under cProfile (its event loop thread)")
    return parser.parse_args(argv)


def connector_command(mqtt_port: int, sim_port: int, journal: str, *options: str) -> list[str]:
    """`twilio-connector run` against the bench's broker and simulator, logging warnings only."""
    return [
        *CLI,
        "run",
        *("--broker", f"mqtt://127.0.0.1:{mqtt_port}", "--twilio-api-url", f"http://127.0.0.1:{sim_port}"),
        *("--default-from", "+15005550006", "--log-level", "WARNING", "--journal-path", journal),
        *options,
    ]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run one scenario with its own broker and simulator; the figures `scenario` reports, and the simulator's
    CPU seconds and the journal's size."""
    with tempfile.TemporaryDirectory() as tmp:
        broker, mqtt_port = start_broker(Path(tmp), args.stock_broker)
        simulator, sim_port = start_simulator(args.latency_ms)
        env = {**os.environ, "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "simulator-token"}
        if not args.distinct:
            env["TWILIO_CONNECTOR_FOLD_THRESHOLD"] = "0"  # one recipient, many requests: every one really sent
        journal = Path(tmp) / "journal.db"
        metrics_port: int | None = free_port()
        postgres = start_postgres() if args.journal == "postgres" else None
        command = connector_command(
            mqtt_port,
            sim_port,
            str(journal) if args.journal == "file" else ":memory:",
            *(("--max-in-flight", str(args.max_in_flight)) if args.max_in_flight else ()),
            *("--journal-sync", args.sync),
            *("--metrics-listen", f"127.0.0.1:{metrics_port}"),
            *(("--journal-url", postgres[1]) if postgres else ()),
        )
        if args.reference:
            reference = str(Path(__file__).with_name("reference.py"))
            command = [
                sys.executable,
                reference,
                "--broker-port",
                str(mqtt_port),
                "--api-url",
                f"http://127.0.0.1:{sim_port}",
            ]
            metrics_port = None
        if args.cprofile:
            command = [sys.executable, "-m", "cProfile", "-o", args.cprofile, *command[1:]]
        if args.profile:
            form = "raw" if args.profile.endswith(".txt") else "flamegraph"  # raw: collapsed stacks, for scripts
            command = ["py-spy", "record", "--threads", "-r", "400", "-f", form, "-o", args.profile, "--", *command]
        try:
            if args.backlog:  # register the connector's persistent session first
                subprocess.run(["timeout", "-s", "TERM", "2", *command], env=env, check=False)
            sim_cpu, broker_cpu = cpu_seconds(simulator.pid), cpu_seconds(broker.pid)
            result = asyncio.run(scenario(args, mqtt_port, command, env, metrics_port))
            result["sim_cpu"] = cpu_seconds(simulator.pid) - sim_cpu
            result["broker_cpu"] = cpu_seconds(broker.pid) - broker_cpu
            result["journal_mb"] = sum(p.stat().st_size for p in Path(tmp).glob("journal.db*")) / 2**20
        finally:
            for process in (simulator, broker, *([postgres[0]] if postgres else [])):
                process.send_signal(signal.SIGTERM)
                process.wait(30)
            if postgres:
                shutil.rmtree(postgres[2], ignore_errors=True)
    return result


def footprint(reference: bool) -> tuple[float, float]:
    """(seconds from launch to ready, RSS MB 1.5 s after launch) of the connector with its defaults (no metrics
    listener: none is on by default), or of the reference design; ready is its own "ready" line."""
    with tempfile.TemporaryDirectory() as tmp:
        broker, mqtt_port = start_broker(Path(tmp))
        simulator, sim_port = start_simulator()
        env = {**os.environ, "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "simulator-token"}
        if reference:
            command = [sys.executable, str(Path(__file__).with_name("reference.py"))]
            command += ["--broker-port", str(mqtt_port), "--api-url", f"http://127.0.0.1:{sim_port}"]
        else:
            command = connector_command(mqtt_port, sim_port, str(Path(tmp) / "journal.db"))
            command[command.index("WARNING")] = "INFO"
        launched = time.perf_counter()
        connector = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert connector.stdout is not None
            marker = b"ready" if reference else b"ready:"
            for line in connector.stdout:
                if marker in line:
                    break
            ready = time.perf_counter() - launched
            time.sleep(max(0.0, launched + 1.5 - time.perf_counter()))
            return ready, rss_mb(connector.pid)
        finally:
            for process in (connector, simulator, broker):
                process.send_signal(signal.SIGTERM)
                process.wait(30)


HEADER = (
    "| scenario | requests | Twilio latency | journal | notifications/s | p50 ms | p95 ms | p99 ms "
    "| connector CPU ms/notification | simulator CPU s | RSS idle MB | RSS peak MB | journal MB |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(args: argparse.Namespace, result: dict[str, Any]) -> str:
    mode = {"file": f"file/{args.sync}", "postgres": "postgres"}.get(args.journal, "none")
    if args.reference:
        mode = "reference design"
    shape = "backlog" if args.backlog else f"{args.rate:g}/s" if args.rate else "burst"
    if args.distinct:
        shape += ", distinct numbers"
    return (
        f"| {shape} | {args.requests} | {args.latency_ms:g} ms | {mode} "
        f"| {result['rate']:.0f} | {result['p50']:.1f} | {result['p95']:.1f} | {result['p99']:.1f} "
        f"| {result['cpu_ms']:.2f} | {result['sim_cpu']:.2f} | {result['idle_rss']:.1f} | {result['peak_rss']:.1f} "
        f"| {result['journal_mb']:.1f} |"
    )


def main() -> None:
    args = parse()
    result = measure(args)
    print(HEADER)
    print(row(args, result))
    threads = ", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(result["threads"].items()))
    print(f"\nconnector CPU seconds by thread, whole run: {threads}; ready {result['ready_s']:.2f} s after launch")
    print(
        f"the load generator published in {result['published_s']:.2f} s, the last status came after "
        f"{result['elapsed_s']:.2f} s; CPU seconds: simulator {result['sim_cpu']:.2f}, broker {result['broker_cpu']:.2f}"
    )


if __name__ == "__main__":
    main()
