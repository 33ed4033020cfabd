"""Several connectors as one: three connectors on one broker and one PostgreSQL journal.

Every connector subscribes to the request topics; the shared journal admits each request once (the others see
a duplicate), so a connector killed and never restarted loses nothing: whatever it had accepted is claimed by
another once its lease lapses, and an attempt it may have had on the wire is looked up at Twilio first.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from conftest import Broker, ConnectorProcess, MqttProbe, Postgres, SimulatorHandle, sms, wait_until

BURST = int(os.environ.get("HA_BURST", "3000"))
LEASE = "3"  # seconds: a dead connector's work is taken over this soon (30 by default)


def node(broker: Broker, simulator: SimulatorHandle, tmp_path: Path, url: str, name: str) -> ConnectorProcess:
    log = tmp_path / f"{name}.log"
    log.write_text("run:\n")
    return ConnectorProcess(
        broker,
        simulator,
        tmp_path / f"{name}-unused.db",
        log,
        *("--client-id", name, "--journal-url", url, "--max-in-flight", "32"),
        TWILIO_CONNECTOR_JOURNAL_LEASE=LEASE,
    )


def log_tail(path: Path, lines: int = 40) -> str:
    """The end of a connector's log, its routine lines left out, for a failure's message."""
    kept = [line for line in path.read_text().splitlines() if "result=success" not in line]
    return "\n".join(line[:300] for line in kept[-lines:])


def sent_counts(simulator: SimulatorHandle) -> Counter[str]:
    return Counter(item["body"] for item in simulator.sim._resources["Messages"].items.values())


async def test_three_connectors_one_killed_and_never_restarted(
    broker: Broker, simulator: SimulatorHandle, pg_url: str, tmp_path: Path, spawned: list[ConnectorProcess]
) -> None:
    simulator.sim.latency = 0.05
    nodes = [node(broker, simulator, tmp_path, pg_url, f"node{n}") for n in range(3)]
    spawned.extend(nodes)
    await asyncio.gather(*(each.ready() for each in nodes))
    probe = MqttProbe(broker.url)
    await probe.start()
    ids = {f"h{n}" for n in range(BURST)}
    for n in range(BURST):
        await probe.publish("twilio/txt", sms(f"h{n}", to=f"+1234500{n:04d}", message=f"text h{n}"))
    await wait_until(lambda: len(simulator.created()) >= BURST // 2, timeout=120)
    nodes[1].process.send_signal(signal.SIGKILL)
    nodes[1].process.wait(10)
    await probe.wait_for_ids(ids, timeout=180)
    statuses = Counter(s["id"] for s in await probe.settle())
    for survivor in (nodes[0], nodes[2]):
        survivor.process.send_signal(signal.SIGTERM)
        assert survivor.process.wait(30) == 0
    await probe.stop()
    sent = sent_counts(simulator)
    assert set(sent) == {f"text {i}" for i in ids}, "every request was sent"
    assert max(sent.values()) == 1, f"doubled: {[body for body, n in sent.items() if n > 1]}"
    assert set(statuses) == ids
    doubled_statuses = sum(n - 1 for n in statuses.values())
    print(f"\nsent {len(sent)}, lost 0, doubled 0, statuses {sum(statuses.values())} ({doubled_statuses} twice)")
    # A status goes out twice only if the killed connector had published it and died before recording so: at
    # most its publish window (Mosquitto's Receive Maximum, 20) and the marks not yet committed.
    assert doubled_statuses <= 100
    # Every request was answered though node1 never came back: what it had accepted and not finished (its
    # claims lapsed) was finished by the others, and what it was sending was looked up, not sent again.


async def test_the_same_request_on_two_connectors_is_sent_once(
    broker: Broker, simulator: SimulatorHandle, pg_url: str, tmp_path: Path, spawned: list[ConnectorProcess]
) -> None:
    """Both connectors receive every request (and a broker may redeliver one to another connector): the journal
    admits it once; the other sees a duplicate and answers nothing."""
    nodes = [node(broker, simulator, tmp_path, pg_url, f"twin{n}") for n in range(2)]
    spawned.extend(nodes)
    await asyncio.gather(*(each.ready() for each in nodes))
    probe = MqttProbe(broker.url)
    await probe.start()
    ids = {f"t{n}" for n in range(200)}
    for n in range(200):
        await probe.publish("twilio/txt", sms(f"t{n}", to=f"+1234501{n:04d}", message=f"text t{n}"))
    await probe.wait_for_ids(ids)
    statuses = Counter(s["id"] for s in await probe.settle())
    await probe.stop()
    for each in nodes:
        each.process.send_signal(signal.SIGTERM)
        assert each.process.wait(30) == 0
    assert sent_counts(simulator) == Counter({f"text {i}": 1 for i in ids})
    assert statuses == Counter({i: 1 for i in ids})
    logs = [(tmp_path / f"twin{n}.log").read_text() for n in range(2)]
    assert sum(log.count("result=duplicate") for log in logs) >= 200  # each request reached both; one admitted it


@pytest.mark.timeout(180)
async def test_the_database_restarted_mid_burst(
    broker: Broker, simulator: SimulatorHandle, postgres: Postgres, tmp_path: Path, spawned: list[ConnectorProcess]
) -> None:
    """PostgreSQL stops and comes back while requests flow: requests wait at the broker (not acknowledged)
    meanwhile, nothing is lost or sent twice."""
    simulator.sim.latency = 0.02
    connector = node(broker, simulator, tmp_path, postgres.url, "solo")
    spawned.append(connector)
    await connector.ready()
    probe = MqttProbe(broker.url)
    await probe.start()
    ids = {f"d{n}" for n in range(600)}
    for n in range(300):
        await probe.publish("twilio/txt", sms(f"d{n}", to=f"+1234502{n:04d}", message=f"text d{n}"))
    await wait_until(lambda: len(simulator.created()) >= 100, timeout=60)
    postgres.stop()
    for n in range(300, 600):
        await probe.publish("twilio/txt", sms(f"d{n}", to=f"+1234502{n:04d}", message=f"text d{n}"))
    await asyncio.sleep(1.0)  # the database stays away a while (a restart, a failover)
    postgres.start()
    try:
        await probe.wait_for_ids(ids, timeout=100)
    except TimeoutError:
        missing = sorted(ids - {s["id"] for s in probe.statuses})
        raise AssertionError(f"no status for {missing[:10]}...; log tail:\n{log_tail(tmp_path / 'solo.log')}") from None
    await probe.stop()
    connector.process.send_signal(signal.SIGTERM)
    assert connector.process.wait(30) == 0
    sent = sent_counts(simulator)
    assert set(sent) == {f"text {i}" for i in ids} and max(sent.values()) == 1
