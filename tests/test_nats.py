"""A second broker implementation: NATS server's MQTT support (MQTT 3.1.1, QoS 0 and 1, sessions kept in
JetStream), as Debian packages it. The end-to-end paths and a kill -9 mid-burst, as on Mosquitto."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gmqtt.mqtt.constants import MQTTv311

from conftest import (
    ConnectorProcess,
    MqttProbe,
    RunningConnector,
    SimulatorHandle,
    call,
    free_port,
    make_settings,
    sms,
    wait_for_port,
    wait_until,
)

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


@dataclass
class NatsBroker:
    url: str


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsBroker]:
    mqtt_port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(
        f"server_name: connector-test\nlisten: 127.0.0.1:{free_port()}\n"
        f"jetstream {{ store_dir: {tmp_path / 'jetstream'} }}\nmqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n"
    )
    process = subprocess.Popen([NATS_SERVER, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(mqtt_port)
        yield NatsBroker(f"mqtt://127.0.0.1:{mqtt_port}")
    finally:
        process.terminate()
        process.wait(10)


async def subscribed_probe(url: str) -> MqttProbe:
    probe = MqttProbe(url, version=MQTTv311)
    await probe.start()
    await asyncio.sleep(0.5)  # NATS creates the subscription's JetStream consumer before statuses can reach it
    return probe


async def test_requests_and_statuses_over_nats(nats: NatsBroker, simulator: SimulatorHandle) -> None:
    settings = make_settings(nats, simulator, mqtt_version="3.1.1")  # type: ignore[arg-type]
    running = await RunningConnector(settings).wait_ready()
    probe = await subscribed_probe(nats.url)
    await probe.publish("twilio/txt", sms("n1"))
    await probe.publish("twilio/call", call("n2"))
    await probe.publish("twilio/txt", b"{not json")
    await probe.status_of("n1")
    await probe.publish("twilio/txt", sms("n1"))  # a duplicate: its status again, nothing sent
    for n in range(100):
        await probe.publish("twilio/txt", sms(f"b{n}", message=f"burst {n}"))
    statuses = await probe.wait_for(104, timeout=30)
    await running.stop()
    await probe.stop()
    by_id = Counter(s["id"] for s in statuses)
    assert by_id["n1"] == 2 and by_id["n2"] == 1 and by_id[None] == 1
    assert all(by_id[f"b{n}"] == 1 for n in range(100))
    assert len(simulator.created()) == 102


async def test_kill_9_mid_burst_over_nats(
    nats: NatsBroker, simulator: SimulatorHandle, tmp_path: Path, spawned: list[ConnectorProcess]
) -> None:
    simulator.sim.latency = 0.1
    journal, log = tmp_path / "journal.db", tmp_path / "connector.log"
    log.write_text("run:\n")
    options = ("--client-id", "nats-crash", "--mqtt-version", "3.1.1", "--max-in-flight", "16")
    first = ConnectorProcess(nats, simulator, journal, log, *options)  # type: ignore[arg-type]
    spawned.append(first)
    await first.ready()
    probe = await subscribed_probe(nats.url)
    ids = {f"k{n}" for n in range(150)}
    for n in range(150):
        await probe.publish("twilio/txt", sms(f"k{n}", message=f"text k{n}"))
    await wait_until(lambda: len(simulator.created()) >= 40)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    log.write_text(log.read_text() + "run:\n")
    second = ConnectorProcess(nats, simulator, journal, log, *options)  # type: ignore[arg-type]
    spawned.append(second)
    await second.ready()
    await probe.wait_for_ids(ids, timeout=60)
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(20) == 0
    await probe.stop()
    stored = Counter(item["body"] for item in simulator.sim._resources["Messages"].items.values())
    assert set(stored) == {f"text {i}" for i in ids}, "every request was sent"
    assert max(stored.values()) == 1, "none twice"
