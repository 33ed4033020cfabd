"""Nothing lost, nothing doubled: kill -9 the connector mid-burst, restart it, count what Twilio received."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import Broker, ConnectorProcess, MqttProbe, SimulatorHandle, sms, wait_until

BURST = int(os.environ.get("CRASH_BURST", "300"))


@pytest.mark.parametrize("kill_after", [0.1, 0.5, 0.9])
async def test_kill_9_mid_burst_loses_and_doubles_nothing(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path, kill_after: float, spawned: list[ConnectorProcess]
) -> None:
    simulator.sim.latency = 0.2  # the burst takes seconds, so the kill lands with requests at Twilio
    journal, log = tmp_path / "journal.db", tmp_path / "connector.log"
    log.write_text("run:\n")
    probe = MqttProbe(broker.url)
    await probe.start()
    first = ConnectorProcess(broker, simulator, journal, log, "--client-id", "crash-test", "--max-in-flight", "32")
    spawned.append(first)
    await first.ready()
    ids = {f"k{n}" for n in range(BURST)}
    for n in range(BURST):
        await probe.publish("twilio/txt", sms(f"k{n}", message=f"text k{n}"))
    await wait_until(lambda: len(simulator.created()) >= BURST * kill_after)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    created_before_restart = len(simulator.created())

    log.write_text(log.read_text() + "run:\n")
    second = ConnectorProcess(broker, simulator, journal, log, "--client-id", "crash-test", "--max-in-flight", "32")
    spawned.append(second)
    await second.ready()
    await probe.wait_for_ids(ids, timeout=60)
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(20) == 0

    stored = Counter(item["body"] for item in simulator.sim._resources["Messages"].items.values())
    assert set(stored) == {f"text {i}" for i in ids}, "every request was sent"
    assert max(stored.values()) == 1, f"doubled: {[body for body, n in stored.items() if n > 1]}"
    assert all(s["response"]["status"] == "success" for s in probe.statuses)
    assert 0 < created_before_restart < BURST + 32
    second_run = log.read_text().rsplit("run:", 1)[-1]
    assert "were being sent when the connector stopped" in second_run  # the in-doubt path was exercised
    await probe.stop()


async def test_kill_9_mid_burst_on_a_postgresql_journal(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path, pg_url: str, spawned: list[ConnectorProcess]
) -> None:
    """The same guarantee with the journal in PostgreSQL (`journal_url`)."""
    simulator.sim.latency = 0.2
    log = tmp_path / "connector.log"
    log.write_text("run:\n")
    probe = MqttProbe(broker.url)
    await probe.start()
    options = ("--client-id", "crash-pg", "--max-in-flight", "32", "--journal-url", pg_url)
    first = ConnectorProcess(broker, simulator, tmp_path / "unused.db", log, *options)
    spawned.append(first)
    await first.ready()
    assert f"journal {pg_url}" in log.read_text()
    ids = {f"p{n}" for n in range(BURST)}
    for n in range(BURST):
        await probe.publish("twilio/txt", sms(f"p{n}", message=f"text p{n}"))
    await wait_until(lambda: len(simulator.created()) >= BURST // 2)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    log.write_text(log.read_text() + "run:\n")
    second = ConnectorProcess(broker, simulator, tmp_path / "unused.db", log, *options)
    spawned.append(second)
    await second.ready()
    await probe.wait_for_ids(ids, timeout=60)
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(20) == 0
    stored = Counter(item["body"] for item in simulator.sim._resources["Messages"].items.values())
    assert set(stored) == {f"text {i}" for i in ids} and max(stored.values()) == 1
    assert "were being sent when the connector stopped" in log.read_text().rsplit("run:", 1)[-1]
    assert not (tmp_path / "unused.db").exists()  # the SQLite file was not used
    counts = subprocess.run(
        [sys.executable, "-m", "twilio_connector", "journal", "--journal-url", pg_url, "counts"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert f"sent: {BURST}\n" in counts.stdout and "unpublished: 0" in counts.stdout
    await probe.stop()
