"""Nothing lost, nothing doubled: kill -9 the connector mid-burst, restart it, count what Twilio received."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Broker, ConnectorProcess, MqttProbe, SimulatorHandle, sms, wait_until

BURST = int(os.environ.get("CRASH_BURST", "300"))


@dataclass
class Crash:
    """What a burst killed with -9 partway through, then finished by a restarted connector, came to."""

    ids: set[str]
    created_before_restart: int
    statuses: list[dict[str, Any]]
    sent: Counter[str]  # message body -> times Twilio stored it
    second_run: str  # the restarted connector's log


async def crash_mid_burst(
    broker: Broker,
    simulator: SimulatorHandle,
    journal: Path,
    log: Path,
    spawned: list[ConnectorProcess],
    options: tuple[str, ...],
    prefix: str,
    kill_after: float,
) -> Crash:
    """Publish a burst, kill -9 the connector once `kill_after` of it reached Twilio, start it again with the
    same options, and wait for every status."""
    simulator.sim.latency = 0.2  # the burst takes seconds, so the kill lands with requests at Twilio
    log.write_text("run:\n")
    probe = MqttProbe(broker.url)
    await probe.start()
    first = ConnectorProcess(broker, simulator, journal, log, *options)
    spawned.append(first)
    await first.ready()
    ids = {f"{prefix}{n}" for n in range(BURST)}
    for n in range(BURST):
        await probe.publish("twilio/txt", sms(f"{prefix}{n}", message=f"text {prefix}{n}"))
    await wait_until(lambda: len(simulator.created()) >= BURST * kill_after)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    created_before_restart = len(simulator.created())

    log.write_text(log.read_text() + "run:\n")
    second = ConnectorProcess(broker, simulator, journal, log, *options)
    spawned.append(second)
    await second.ready()
    await probe.wait_for_ids(ids, timeout=60)
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(20) == 0
    await probe.stop()
    sent = Counter(item["body"] for item in simulator.sim._resources["Messages"].items.values())
    return Crash(ids, created_before_restart, probe.statuses, sent, log.read_text().rsplit("run:", 1)[-1])


@pytest.mark.parametrize("kill_after", [0.1, 0.5, 0.9])
async def test_kill_9_mid_burst_loses_and_doubles_nothing(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path, kill_after: float, spawned: list[ConnectorProcess]
) -> None:
    options = ("--client-id", "crash-test", "--max-in-flight", "32")
    crash = await crash_mid_burst(
        broker, simulator, tmp_path / "journal.db", tmp_path / "connector.log", spawned, options, "k", kill_after
    )
    assert set(crash.sent) == {f"text {i}" for i in crash.ids}, "every request was sent"
    assert max(crash.sent.values()) == 1, f"doubled: {[body for body, n in crash.sent.items() if n > 1]}"
    assert all(s["response"]["status"] == "success" for s in crash.statuses)
    assert 0 < crash.created_before_restart < BURST + 32
    assert "were being sent when the connector stopped" in crash.second_run  # the in-doubt path was exercised


async def test_kill_9_mid_burst_on_a_postgresql_journal(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path, pg_url: str, spawned: list[ConnectorProcess]
) -> None:
    """The same guarantee with the journal in PostgreSQL (`journal_url`)."""
    log = tmp_path / "connector.log"
    options = ("--client-id", "crash-pg", "--max-in-flight", "32", "--journal-url", pg_url)
    crash = await crash_mid_burst(broker, simulator, tmp_path / "unused.db", log, spawned, options, "p", 0.5)
    assert f"journal {pg_url}" in log.read_text()
    assert set(crash.sent) == {f"text {i}" for i in crash.ids} and max(crash.sent.values()) == 1
    assert "were being sent when the connector stopped" in crash.second_run
    assert not (tmp_path / "unused.db").exists()  # the SQLite file was not used
    counts = subprocess.run(
        [sys.executable, "-m", "twilio_connector", "journal", "--journal-url", pg_url, "counts"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert f"sent: {BURST}\n" in counts.stdout and "unpublished: 0" in counts.stdout
