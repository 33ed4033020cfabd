"""Broker restarts, MQTT 3.1.1, Retry-After, graceful shutdown, TLS to the broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import Broker, MqttProbe, RunningConnector, SimulatorHandle, free_port, make_settings, sms
from twilio_connector.journal import opening as journal
from twilio_connector.journal import sqlite as store
from twilio_connector.twilio.simulator import Fault


async def test_mqtt_311(broker: Broker, simulator: SimulatorHandle, probe: MqttProbe) -> None:
    running = await RunningConnector(make_settings(broker, simulator, mqtt_version="3.1.1")).wait_ready()
    await probe.publish("twilio/txt", sms("v3"))
    assert (await probe.status_of("v3"))["response"]["status"] == "success"
    await running.stop()


async def test_custom_topics(broker: Broker, simulator: SimulatorHandle) -> None:
    probe = MqttProbe(broker.url, status_topic="site-7/twilio/message/status")
    await probe.start()
    settings = make_settings(
        broker,
        simulator,
        txt_topic="site-7/twilio/txt",
        call_topic="site-7/twilio/call",
        status_topic="site-7/twilio/message/status",
    )
    running = await RunningConnector(settings).wait_ready()
    await probe.publish("twilio/txt", sms("ignored"))  # not our topic any more
    await probe.publish("site-7/twilio/txt", sms("t1"))
    assert (await probe.status_of("t1"))["response"]["status"] == "success"
    assert [s["id"] for s in probe.statuses] == ["t1"]
    await running.stop()
    await probe.stop()


async def test_retry_after_is_honoured(broker: Broker, simulator: SimulatorHandle, probe: MqttProbe) -> None:
    running = await RunningConnector(make_settings(broker, simulator, backoff_max=5.0)).wait_ready()
    simulator.sim.faults.append(Fault(status=429, code=20429, message="Too Many Requests", retry_after=0.4))
    await probe.publish("twilio/txt", sms("ra", retries=2))
    assert (await probe.status_of("ra"))["response"]["attempts"] == 2
    first, second = (entry["time"] for entry in simulator.created())
    assert second - first >= 0.4
    await running.stop()


async def test_sigterm_finishes_in_flight_work(broker: Broker, simulator: SimulatorHandle, probe: MqttProbe) -> None:
    simulator.sim.latency = 0.5
    running = await RunningConnector(make_settings(broker, simulator)).wait_ready()
    for n in range(10):
        await probe.publish("twilio/txt", sms(f"s{n}"))
    while len(simulator.created()) < 10:
        await asyncio.sleep(0.01)
    await running.stop()  # while all ten wait on Twilio's answer
    statuses = await probe.wait_for(10)
    assert sorted(s["id"] for s in statuses) == sorted(f"s{n}" for n in range(10))
    assert all(s["response"]["status"] == "success" for s in statuses)


async def test_requests_queued_while_the_connector_is_down_are_delivered(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    settings = make_settings(broker, simulator)
    running = await RunningConnector(settings).wait_ready()
    await running.stop()
    for n in range(20):
        await probe.publish("twilio/txt", sms(f"q{n}"))
    await asyncio.sleep(0.2)  # let the broker queue them for the absent session
    assert probe.statuses == []
    running = await RunningConnector(settings).wait_ready()
    statuses = await probe.wait_for(20)
    assert sorted(s["id"] for s in statuses) == sorted(f"q{n}" for n in range(20))
    await running.stop()


async def test_broker_restart_while_requests_flow(broker: Broker, simulator: SimulatorHandle) -> None:
    simulator.sim.latency = 0.02
    probe = MqttProbe(broker.url)
    probe.client = type(probe.client)("restart-probe", clean_session=False, session_expiry_interval=3600)
    probe.client.on_message = probe._on_message
    probe.client.reconnect_delay = 0.2
    await probe.start()
    running = await RunningConnector(make_settings(broker, simulator)).wait_ready()
    for n in range(100):
        await probe.publish("twilio/txt", sms(f"b{n}", message=f"text b{n}"))
    await probe.wait_for(10)
    broker.stop()
    await asyncio.sleep(0.5)
    broker.start()
    for n in range(100, 150):
        await probe.publish("twilio/txt", sms(f"b{n}", message=f"text b{n}"))
    expected = {f"b{n}" for n in range(150)}
    statuses = await probe.wait_for_ids(expected, timeout=60)
    ids = {s["id"] for s in statuses}
    # Requests the broker had not persisted before it stopped were never accepted: the publisher's own QoS 1
    # session resends them. Every request gets a status, and none is texted twice.
    assert ids == expected
    bodies = sorted(entry["params"]["Body"] for entry in simulator.created())
    assert bodies == sorted(f"text {request_id}" for request_id in expected)
    await running.stop()
    await probe.stop()


async def test_answer_after_the_client_timeout_is_reconciled(broker: Broker, simulator: SimulatorHandle) -> None:
    probe = MqttProbe(broker.url)
    await probe.start()
    running = await RunningConnector(make_settings(broker, simulator, http_timeout=0.3)).wait_ready()
    simulator.sim.faults.append(Fault(status=201, store=True, delay=1.0))  # stored, answered too late
    await probe.publish("twilio/txt", sms("t1", retries=3))
    response = (await probe.status_of("t1"))["response"]
    [created] = simulator.created()
    assert response["status"] == "success" and response["payload"]["messages"]["sid"] == created["stored"]
    await running.stop()
    await probe.stop()


async def test_backpressure_bounds_the_backlog(broker: Broker, simulator: SimulatorHandle) -> None:
    probe = MqttProbe(broker.url)
    await probe.start()
    simulator.sim.latency = 0.01
    running = await RunningConnector(make_settings(broker, simulator, max_backlog=3, max_in_flight=2)).wait_ready()
    for n in range(40):
        await probe.publish("twilio/txt", sms(f"p{n}", message=f"bp {n}"))
    statuses = await probe.wait_for_ids({f"p{n}" for n in range(40)})
    assert len(statuses) == 40 and all(s["response"]["status"] == "success" for s in statuses)
    await running.stop()
    await probe.stop()


async def test_stop_while_the_broker_is_unreachable(broker: Broker, simulator: SimulatorHandle) -> None:
    settings = make_settings(broker, simulator, broker_url=f"mqtt://127.0.0.1:{free_port()}")
    running = RunningConnector(settings)
    await asyncio.sleep(0.3)  # it is retrying the connection now
    assert not running.ready.is_set()
    await asyncio.wait_for(running.stop(), 5)


async def test_work_past_the_hand_over_limit_waits_in_the_journal(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for 3 in memory, most requests and statuses overflow to the journal's queries, and retries
    come from them too: still one Twilio create per success and exactly one status per request."""
    monkeypatch.setattr(journal, "HAND_OVER_LIMIT", 3)
    found = {"due": 0, "unpublished": 0}  # what the queries found: the overflow paths ran
    for name in found:
        original = getattr(store.SqliteCore, name)

        def counting(self: store.SqliteCore, *args: Any, _name: str = name, _original: Any = original) -> Any:
            result = _original(self, *args)
            found[_name] += len(result[0] if _name == "due" else result)
            return result

        monkeypatch.setattr(store.SqliteCore, name, counting)
    simulator.sim.latency = 0.01
    simulator.sim.faults.append(Fault(status=503, code=20503, message="Unavailable", count=20))
    running = await RunningConnector(make_settings(broker, simulator, max_in_flight=4)).wait_ready()
    ids = {f"o{n}" for n in range(150)}
    for n in range(150):
        await probe.publish("twilio/txt", sms(f"o{n}", message=f"overflow {n}", retries=5))
        if n % 10 == 0:
            await probe.publish("twilio/txt", {"id": f"bad{n}", "request": {}})
            ids.add(f"bad{n}")
    await probe.wait_for_ids(ids)
    await running.stop()
    statuses = await probe.settle()
    assert sorted(s["id"] for s in statuses) == sorted(ids)
    bodies = sorted(item["body"] for item in simulator.sim._resources["Messages"].items.values())
    assert bodies == sorted(f"overflow {n}" for n in range(150))
    assert len(simulator.created()) == 170  # 150 successes and 20 retried 503s
    assert found["due"] >= 20 and found["unpublished"] > 0, found
