"""Time to alert when something fails: from a request's publish to the create at Twilio that succeeded, per fault
case, for this checkout ("after") and an earlier commit ("before", run from a git worktree), side by side.

    .venv/bin/python bench/alert_latency.py --before 2d4f1c7 --alerts 10

Each case publishes `--alerts` alerts at once into a faulty Twilio (the simulator as a process, its faults
queued for exactly those creates), with Mosquitto and the connector as processes, then reports the median and
p99 time to alert and the doubles (an alert Twilio holds twice). Cases:

- `lost`: each first attempt answered 500 (20500) and not created: looked up, then sent again;
- `stored`: each first attempt answered 500 after Twilio created it: found, never sent again;
- `503x2`: Twilio's own 503 (20503) twice, then accepted (retries 2);
- `storm`: 30 s in which Twilio answers every create with its own 503 (retries 2): measured from the storm's end;
- `identical`: pairs of identical alerts, one of each lost in a 500 (the other's message must not be claimed);
- `kill`: the connector killed (SIGKILL) while its creates are at Twilio, half of which Twilio has not acted on yet
  (held 5 s, then dropped: not created), and started again: as those reach Twilio after the restart.

Both builds get the same settings: `reconcile_window` 120 s (the default) and, before the faults, 40 s of calm
traffic (one text a second) in which the "after" build measures the list's lag (the simulator lists new messages
300 ms late). Not part of the test run: "before" takes minutes (each unknown outcome waits out the window).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import gmqtt
import orjson
from throughput import free_port, start_broker

ROOT = Path(__file__).resolve().parent.parent
CASES = ("lost", "stored", "503x2", "storm", "identical", "kill")
STORM = 30.0  # seconds of Twilio's own 503s in the `storm` case


class Stack:
    """Mosquitto, the simulator and one build of the connector, each a process."""

    def __init__(self, directory: Path, source: Path) -> None:
        self.directory, self.source = directory, source
        self.broker, self.broker_port = start_broker(directory)
        self.sim_port = free_port()
        self.sim = subprocess.Popen(  # this checkout's simulator for both builds: the faults are the same
            [sys.executable, "-m", "twilio_connector", "simulator", "--port", str(self.sim_port)],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        self.connector: subprocess.Popen[bytes] | None = None
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.source / "src")}

    def start_connector(self) -> None:
        env = {
            **self._env(),
            "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "TWILIO_AUTH_TOKEN": "simulator-token",
            "TWILIO_CONNECTOR_FOLD_THRESHOLD": "0",  # the alerts go to one number, as in the tests
        }
        command = [
            sys.executable, "-m", "twilio_connector", "run", "--broker", f"mqtt://127.0.0.1:{self.broker_port}",
            "--twilio-api-url", self.sim_url, "--default-from", "+15005550006",
            "--journal-path", str(self.directory / "journal.db"),
        ]  # fmt: skip
        log = (self.directory / "connector.log").open("ab")
        self.connector = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill_connector(self) -> None:
        assert self.connector is not None
        self.connector.send_signal(signal.SIGKILL)
        self.connector.wait(10)

    def stop(self) -> None:
        for process in (self.connector, self.sim, self.broker):
            if process is not None and process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(15)


class Bench:
    def __init__(self, stack: Stack, alerts: int) -> None:
        self.stack, self.alerts = stack, alerts
        self.client = gmqtt.Client(f"bench-{os.getpid()}-{time.monotonic_ns()}")
        self.statuses: dict[str, dict[str, Any]] = {}
        self.client.on_message = self._on_message
        self.http = aiohttp.ClientSession(stack.sim_url)

    async def _on_message(self, client: object, topic: str, payload: bytes, qos: int, properties: object) -> int:
        document = orjson.loads(payload)
        self.statuses[document["id"]] = document
        return 0

    async def connect(self) -> None:
        await self.client.connect("127.0.0.1", self.stack.broker_port)
        self.client.subscribe("twilio/message/status", qos=1)
        await asyncio.sleep(0.2)

    async def sim(self, method: str, path: str, document: Any = None) -> Any:
        async with self.http.request(method, path, json=document) as response:
            return await response.json() if response.content_type == "application/json" else None

    async def publish(self, request_id: str, body: str, retries: int = 2) -> float:
        recipient = {"name": "Darla", "phone_number": "+12345000000", "message": body}
        request = {"request": {"recipient": recipient, "retries": retries}, "id": request_id}
        while True:
            try:
                self.client.publish("twilio/txt", orjson.dumps(request), qos=1)
                return time.time()
            except OverflowError:  # past the broker's Receive Maximum: let its acknowledgements in
                await asyncio.sleep(0.01)

    async def statuses_of(self, ids: set[str]) -> None:
        while True:
            missing = ids - set(self.statuses)
            if not missing:
                return
            await asyncio.sleep(0.05)

    async def calm(self, seconds: float) -> None:
        """One text a second: the traffic in which a build may measure the list's lag."""
        for n in range(int(seconds)):
            await self.publish(f"calm-{time.monotonic_ns()}-{n}", f"calm {n} {time.monotonic_ns()}")
            await asyncio.sleep(1.0)

    async def created_at(self) -> dict[str, list[float]]:
        """Each body's successful creates at the simulator (stored by a fault, or answered 201), by time."""
        received = await self.sim("GET", "/_sim/requests")
        created: dict[str, list[float]] = {}
        for entry in received:
            outcome = entry.get("outcome")
            if entry.get("stored") or (isinstance(outcome, str) and outcome.startswith("SM")):
                created.setdefault(entry["params"]["Body"], []).append(entry["time"])
        return created

    async def case(self, name: str) -> tuple[list[float], int]:
        await self.sim("POST", "/_sim/config", {"list_lag_ms": 300})
        tag = f"{name}-{time.monotonic_ns()}"
        bodies = [f"{tag} alert {n}" for n in range(self.alerts)]
        faults = {
            "lost": [{"status": 500, "code": 20500, "message": "Internal Server Error", "count": self.alerts}],
            "stored": [
                {"status": 500, "code": 20500, "message": "Internal Server Error", "count": self.alerts, "store": True}
            ],
            "503x2": [{"status": 503, "code": 20503, "message": "Service Unavailable", "count": 2 * self.alerts}],
            "storm": [{"status": 503, "code": 20503, "message": "Service Unavailable", "count": 1_000_000}],
            "identical": [{"status": 500, "code": 20500, "message": "Internal Server Error", "count": self.alerts}],
            "kill": [
                {
                    "status": 500,
                    "code": 20500,
                    "message": "Internal Server Error",
                    "delay": 5,
                    "count": self.alerts // 2,
                }
            ],
        }[name]
        for fault in faults:
            await self.sim("POST", "/_sim/faults", fault)
        if name == "identical":
            bodies = [body for body in bodies for _ in range(2)][: self.alerts * 2]
        sent = {f"{tag}-{n}": (body, await self.publish(f"{tag}-{n}", body)) for n, body in enumerate(bodies)}
        if name == "kill":
            await self._kill_while_sending(tag, len(bodies))
        if name == "storm":
            await asyncio.sleep(STORM)
            await self.sim("DELETE", "/_sim/faults")
            sent = {key: (body, at + STORM) for key, (body, at) in sent.items()}  # measured from the storm's end
        async with asyncio.timeout(900):
            await self.statuses_of(set(sent))
        created = await self.created_at()
        waits, doubles = [], 0
        for body, count in Counter(bodies).items():
            times = sorted(created.get(body, []))
            doubles += max(0, len(times) - count)
            starts = sorted(at for body_of, at in sent.values() if body_of == body)
            waits.extend(done - start for start, done in zip(starts, times, strict=False))
        return waits, doubles

    async def _kill_while_sending(self, tag: str, count: int) -> None:
        """SIGKILL once every create of the burst has reached Twilio (half of them held there), then start again."""
        while True:
            received = await self.sim("GET", "/_sim/requests")
            if sum(1 for entry in received if entry["params"].get("Body", "").startswith(tag)) >= count:
                break
            await asyncio.sleep(0.05)
        self.stack.kill_connector()
        self.stack.start_connector()

    async def close(self) -> None:
        await self.client.disconnect()
        await self.http.close()


async def run_build(
    label: str, source: Path, alerts: int, calm: float, cases: list[str]
) -> dict[str, tuple[list[float], int]]:
    with tempfile.TemporaryDirectory() as directory:
        stack = Stack(Path(directory), source)
        try:
            stack.start_connector()
            bench = Bench(stack, alerts)
            await asyncio.sleep(2.0)
            await bench.connect()
            await bench.calm(calm)
            results = {}
            for name in cases:
                results[name] = await bench.case(name)
                waits, doubles = results[name]
                print(
                    f"{label:6} {name:9} median {median(waits):6.1f} s  p99 {p99(waits):6.1f} s  doubles {doubles}",
                    flush=True,
                )
            await bench.close()
            return results
        finally:
            stack.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.99 * len(values)) - 1)] if values else float("nan")


def worktree(rev: str) -> Path:
    path = Path(tempfile.mkdtemp()) / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="a commit to compare with (run from a git worktree)")
    parser.add_argument("--alerts", type=int, default=10)
    parser.add_argument("--calm", type=float, default=40.0, help="seconds of calm traffic before the faults")
    parser.add_argument("--cases", default=",".join(CASES), help=f"which of {', '.join(CASES)}")
    args = parser.parse_args()
    builds = [("after", ROOT)]
    if args.before:
        builds.insert(0, ("before", worktree(args.before)))
    try:
        for label, source in builds:
            asyncio.run(run_build(label, source, args.alerts, args.calm, args.cases.split(",")))
    finally:
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(builds[0][1])], check=False)


if __name__ == "__main__":
    main()
