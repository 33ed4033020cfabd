"""Exactly once against Twilio as it really behaves: answers lost after Twilio acted, lists that lag, trial
prefixes, pages, identical alerts, lookups refused. Each test failed on the connector before reconciliation
was scheduled over a window (0.1.0's development builds)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import (
    Broker,
    ConnectorProcess,
    MqttProbe,
    RunningConnector,
    SimulatorHandle,
    make_settings,
    sms,
    wait_until,
)
from twilio_connector.domain.admission import Accepted, Admission
from twilio_connector.domain.contract import Kind, Notification, SendResult
from twilio_connector.domain.lifecycle import lookup_offsets, next_lookup
from twilio_connector.domain.policy import Limits
from twilio_connector.domain.records import Duplicate
from twilio_connector.domain.storms import StormRule
from twilio_connector.journal.sqlite import SqliteCore
from twilio_connector.settings.secrets import Secret
from twilio_connector.twilio.client import TRIAL_PREFIX, TwilioClient, same_body
from twilio_connector.twilio.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Fault


def stored_bodies(simulator: SimulatorHandle) -> Counter[str]:
    return Counter(item["body"] for item in simulator.sim._resources["Messages"].items.values())


async def connect(broker: Broker, simulator: SimulatorHandle, window: float = 1.0) -> RunningConnector:
    return await RunningConnector(make_settings(broker, simulator, reconcile_window=window)).wait_ready()


async def test_a_502_after_twilio_acted_is_found_not_resent(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    running = await connect(broker, simulator)
    simulator.sim.faults.append(Fault(status=502, message="Bad Gateway", store=True))
    await probe.publish("twilio/txt", sms("gw", message="boiler 2 tripped", retries=3))
    response = (await probe.status_of("gw"))["response"]
    await running.stop()
    assert response["status"] == "success"
    assert response["payload"]["messages"]["sid"] == simulator.created()[0]["stored"]
    assert stored_bodies(simulator) == {"boiler 2 tripped": 1}


async def test_a_dropped_answer_is_found_although_the_list_lags(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    simulator.sim.list_lag = 2.5  # the first lookup (2 s after the attempt) sees nothing yet
    running = await connect(broker, simulator, window=6.0)
    simulator.sim.faults.append(Fault(status=0, store=True, drop=True))
    await probe.publish("twilio/txt", sms("lag", message="pump 4 dry", retries=3))
    response = (await probe.status_of("lag", timeout=15))["response"]
    await running.stop()
    assert response["status"] == "success" and response["attempts"] == 1
    assert stored_bodies(simulator) == {"pump 4 dry": 1}


async def test_a_trial_accounts_prefixed_body_still_matches(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    simulator.sim.trial = True
    running = await connect(broker, simulator)
    simulator.sim.faults.append(Fault(status=500, code=20500, message="Internal Server Error", store=True))
    await probe.publish("twilio/txt", sms("trial", message="door 7 open", retries=3))
    response = (await probe.status_of("trial"))["response"]
    await running.stop()
    assert response["status"] == "success"
    assert stored_bodies(simulator) == {f"{TRIAL_PREFIX}door 7 open": 1}


async def test_the_lookup_walks_every_page(broker: Broker, simulator: SimulatorHandle, probe: MqttProbe) -> None:
    """120 newer messages to the same number by the time of the lookup: the lost one is on the third page."""
    running = await connect(broker, simulator, window=2.0)
    simulator.sim.faults.append(Fault(status=0, store=True, drop=True))
    await probe.publish("twilio/txt", sms("first", message="the first alarm", retries=3))
    await wait_until(lambda: len(simulator.created()) == 1)
    for n in range(120):
        await probe.publish("twilio/txt", sms(f"later{n}", message=f"later alarm {n}"))
    response = (await probe.status_of("first", timeout=15))["response"]
    await probe.wait_for_ids({f"later{n}" for n in range(120)})
    await running.stop()
    assert response["status"] == "success"
    assert stored_bodies(simulator)["the first alarm"] == 1


async def test_a_lookup_reads_past_the_first_page(simulator: SimulatorHandle) -> None:
    """120 newer messages to the same number: the one looked for is on the third page of 50."""
    client = TwilioClient(simulator.url, DEFAULT_ACCOUNT_SID, DEFAULT_ACCOUNT_SID, Secret(DEFAULT_AUTH_TOKEN))
    first = Notification("first", Kind.SMS, "+12345000000", "+15005550006", "D", "the first alarm", 0)
    async with client:
        since = time.time() - 1
        created = await client.create(first)
        for n in range(120):
            await client.create(replace(first, id=f"later{n}", content=f"later alarm {n}"))
        found = await client.find(first, since)
    assert isinstance(created, SendResult) and [result.sid for result in found] == [created.sid]


async def test_identical_alerts_never_share_one_message(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    """Two alerts with the same To, From and Body at Twilio at once, both answered 500, only one of them
    created: one claims the message; the other finds none left for it, and is sent."""
    running = await connect(broker, simulator)
    simulator.sim.latency = 0.2  # both creates are at Twilio at once
    simulator.sim.faults.extend([Fault(status=500, message="Internal Server Error", store=True), Fault(status=500)])
    for request_id in ("twin1", "twin2"):
        await probe.publish("twilio/txt", sms(request_id, message="freezer 3 above -5 C", retries=1))
    statuses = {s["id"]: s["response"] for s in await probe.wait_for_ids({"twin1", "twin2"}, timeout=15)}
    await running.stop()
    assert [response["status"] for response in statuses.values()] == ["success", "success"]
    sids = {response["payload"]["messages"]["sid"] for response in statuses.values()}
    assert len(sids) == 2, "each alert has a message of its own"
    assert stored_bodies(simulator) == {"freezer 3 above -5 C": 2}


async def test_an_unreadable_list_ends_in_outcome_unknown_and_never_stalls_a_stop(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path, spawned: list[ConnectorProcess]
) -> None:
    """Killed while a text was at Twilio, restarted with an API key that may not read the list: the request
    ends as OutcomeUnknown once the window is over (never a blind resend), and SIGTERM stops the connector at
    once (nothing holds a slot while it waits to look again)."""
    journal, log = tmp_path / "journal.db", tmp_path / "connector.log"
    log.write_text("run:\n")
    probe = MqttProbe(broker.url)
    await probe.start()
    simulator.sim.latency = 3.0  # the create is under way when the process dies
    first = ConnectorProcess(broker, simulator, journal, log, "--client-id", "doubt-test")
    spawned.append(first)
    await first.ready()
    await probe.publish("twilio/txt", sms("cut", message="gas alarm"))
    await wait_until(lambda: len(simulator.created()) == 1)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)

    simulator.sim.latency = 0.0
    simulator.sim.faults.append(Fault(status=403, code=20003, message="Permission denied", count=1000, list=True))
    log.write_text(log.read_text() + "run:\n")
    env = {"TWILIO_CONNECTOR_RECONCILE_WINDOW": "3"}
    second = ConnectorProcess(broker, simulator, journal, log, "--client-id", "doubt-test", **env)
    spawned.append(second)
    await second.ready()
    response = (await probe.status_of("cut", timeout=15))["response"]
    assert (response["status"], response["error"]) == ("fail", "OutcomeUnknown")
    assert "could not be read" in response["error_message"] and "Permission denied" in response["error_message"]
    assert len(simulator.created()) == 1, "never resent blindly"
    second.process.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await loop.run_in_executor(None, second.process.wait, 20) == 0
    assert loop.time() - started < 5
    await probe.stop()


def test_the_lookup_schedule() -> None:
    assert lookup_offsets(120.0) == (2.0, 10.0, 30.0, 120.0)
    assert lookup_offsets(600.0) == (2.0, 10.0, 30.0, 120.0, 600.0)
    assert lookup_offsets(1.0) == (1.0,)
    assert [next_lookup(done, 30.0) for done in range(4)] == [2.0, 10.0, 30.0, None]


@pytest.mark.parametrize(
    ("stored", "sent", "same"),
    [
        ("Door 7 open", "Door 7 open", True),
        (f"{TRIAL_PREFIX}Door 7 open", "Door 7 open", True),
        ('"Freezer" - 3... it\'s cold', "\u201cFreezer\u201d \u2014 3\u2026 it\u2019s cold", True),  # Smart Encoding
        ("Door\u00a07 open", "Door 7 open", True),
        ("Door 7 open", "Door 8 open", False),
        ("Door 7 open!", "Door 7 open", False),
    ],
)
def test_bodies_match_as_twilio_rewrites_them(stored: str, sent: str, same: bool) -> None:
    assert same_body(stored, sent) is same


def test_a_redelivery_is_a_duplicate_as_long_as_the_session_lasts(tmp_path: Path) -> None:
    """A broker may redeliver (DUP) a request days later, to a process that recorded it and died before its
    PUBACK; a fresh publish of the same request after the short window is a new alert (devices reuse ids).
    And a duplicate is never refused by a guard, even once the caps are used up."""
    now = [0.0]
    core = SqliteCore(str(tmp_path / "j.db"))
    admission = Admission(Limits(per_minute=1), StormRule(0, 60.0), (600.0, 7 * 86400.0), 5, clock=lambda: now[0])
    alert = Notification("a1", Kind.SMS, "+12345000000", "+15005550006", "D", "gas alarm", 0)
    first = admission.admit(core, alert)
    assert isinstance(first, Accepted)
    now[0] = 30.0
    assert admission.admit(core, alert, redelivered=True) == Duplicate(first.seq, None)  # not Rejected by the cap
    now[0] = 3 * 86400.0
    assert admission.admit(core, alert, redelivered=True) == Duplicate(first.seq, None)
    assert isinstance(admission.admit(core, alert), Accepted)  # fresh, long after: sent again, as the original did
    core.close()
