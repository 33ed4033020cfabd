"""The reconcile window follows the evidence of Twilio's list lag (domain/lag.py, engine/lag.py): the rule, the
evidence kept and probed, and a connector that resends an alert Twilio did not create within seconds once it
has seen the list keep up, while never sending twice one that Twilio did create."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from conftest import Broker, MqttProbe, RunningConnector, SimulatorHandle, free_port, make_settings, sms
from twilio_connector.domain.contract import Kind, Notification, SendResult
from twilio_connector.domain.lag import EVIDENCE_AGE, FLOOR, evidence_window
from twilio_connector.domain.outcomes import FailureKind, TwilioFailure
from twilio_connector.engine.lag import LagProbe, ListLag
from twilio_connector.ops.metrics import Metrics
from twilio_connector.twilio.simulator import Fault

SMS = Notification("n1", Kind.SMS, "+12345000000", "+15005550006", "Darla", "freezer 3 warm", 0)


@pytest.mark.parametrize(
    ("samples", "window"),
    [
        ([], 120.0),  # no evidence: the ceiling, as before any measurement
        ([0.4] * 4, 120.0),  # too little evidence
        ([0.4] * 5, FLOOR),  # a healthy list: the floor
        ([0.4, 0.5, 3.0, 0.3, 0.2], 11.0),  # three times the worst, plus a margin
        ([0.4, 0.5, 60.0, 0.3, 0.2], 120.0),  # one long lag: as long as the ceiling allows
    ],
)
def test_the_window_is_three_times_the_worst_recent_lag_within_floor_and_ceiling(
    samples: list[float], window: float
) -> None:
    assert evidence_window(samples, 120.0) == window


def test_a_ceiling_under_the_floor_is_kept() -> None:
    assert evidence_window([0.1] * 10, 1.0) == 1.0


class Journal:
    """The two journal methods the evidence uses, in memory."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float]] = []

    async def record_lag(self, seen_at: float, seconds: float, keep_since: float) -> None:
        self.rows = [row for row in self.rows if row[0] >= keep_since] + [(seen_at, seconds)]

    async def lags(self, since: float) -> list[tuple[float, float]]:
        return [row for row in self.rows if row[0] >= since]


class Twilio:
    """A list that shows a message `lag` seconds after its create."""

    def __init__(self, lag: float) -> None:
        self.lag = lag
        self.created_at: dict[str, float] = {}
        self.lookups = 0

    async def find(self, notification: Notification, since: float) -> list[SendResult] | TwilioFailure:
        self.lookups += 1
        now = time.time()
        return [SendResult(sid, "queued", notification.to, notification.from_ or "") for sid, at in
                self.created_at.items() if at + self.lag <= now]  # fmt: skip


def probed(journal: Journal, twilio: Twilio, metrics: Metrics, ceiling: float) -> ListLag:
    lag = ListLag(journal, metrics, ceiling=ceiling)  # type: ignore[arg-type]
    lag.probe = LagProbe(lag, twilio, interval=0.01)
    return lag


async def test_probes_measure_the_lag_and_the_evidence_outlives_a_restart() -> None:
    journal, twilio, metrics = Journal(), Twilio(lag=0.3), Metrics()
    lag = probed(journal, twilio, metrics, ceiling=120.0)
    await lag.load()
    assert lag.window() == 120.0
    for n in range(5):
        began = time.time()
        twilio.created_at[f"SM{n}"] = began
        lag.created(SMS, SendResult(f"SM{n}", "queued", SMS.to, SMS.from_ or ""), began)
        lag.created(SMS, SendResult("SMx", "queued", SMS.to, SMS.from_ or ""), began)  # one probe at a time
        await asyncio.wait_for(until(lambda n=n: len(journal.rows) > n), 10)
    assert all(0.3 <= seconds < 1.5 for _, seconds in journal.rows)  # found at its 0.5 s or 1 s lookup
    assert lag.window() == FLOOR
    assert metrics.registry.get_sample_value("twilio_connector_reconcile_window_seconds") == FLOOR
    restarted = ListLag(journal, Metrics(), ceiling=120.0)  # type: ignore[arg-type]
    await restarted.load()
    assert restarted.window() == FLOOR
    fixed = ListLag(journal, Metrics(), ceiling=120.0, adaptive=False)  # type: ignore[arg-type]
    await fixed.load()
    assert fixed.window() == 120.0  # probes off: the window as configured, whatever the evidence
    journal.rows = [(seen - EVIDENCE_AGE - 1, seconds) for seen, seconds in journal.rows]  # an hour old
    stale = ListLag(journal, Metrics(), ceiling=120.0)  # type: ignore[arg-type]
    await stale.load()
    assert stale.window() == 120.0


async def test_a_message_never_listed_counts_as_the_ceiling_and_an_unreadable_list_as_nothing() -> None:
    journal = Journal()
    never = probed(journal, Twilio(lag=99.0), Metrics(), ceiling=1.0)
    never.created(SMS, SendResult("SM1", "queued", SMS.to, ""), time.time())
    await asyncio.wait_for(until(lambda: bool(journal.rows)), 10)
    assert journal.rows[0][1] == 1.0

    class Refusing(Twilio):
        async def find(self, notification: Notification, since: float) -> list[SendResult] | TwilioFailure:
            return TwilioFailure(FailureKind.REJECTED, "Forbidden", 403, 20003)

    quiet = Journal()
    lag = probed(quiet, Refusing(0), Metrics(), ceiling=1.0)
    lag.created(SMS, SendResult("SM1", "queued", SMS.to, ""), time.time())
    await asyncio.sleep(0)
    assert lag.probe is not None
    await lag.probe.close()
    assert quiet.rows == []


async def until(condition: object) -> None:
    while not condition():  # type: ignore[operator]
        await asyncio.sleep(0.01)


async def lag_samples(port: int) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    line = next(line for line in text.splitlines() if line.startswith("twilio_connector_list_lag_seconds_count"))
    return float(line.split()[-1])


async def test_with_evidence_an_alert_twilio_did_not_create_goes_out_in_seconds_and_one_it_did_is_not_doubled(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    """reconcile_window 120 s as shipped; the list shows new messages 0.3 s late. Once five probes have seen
    that, a 500 that created nothing is sent again after ~6 s (the floor), not 120 s; a 500 after Twilio acted
    is found by the 2 s lookup and not sent again."""
    port = free_port()
    settings = make_settings(
        broker, simulator, reconcile_window=120.0, lag_probe_interval=0.05, metrics_listen=f"127.0.0.1:{port}"
    )
    simulator.sim.list_lag = 0.3
    running = await RunningConnector(settings).wait_ready()
    try:
        for n in range(5):
            await probe.publish("twilio/txt", sms(f"warm-{n}", message=f"warm-up {n}"))
            await probe.status_of(f"warm-{n}")
            deadline = time.monotonic() + 20
            while await lag_samples(port) < n + 1:
                assert time.monotonic() < deadline, "no probe sample"
                await asyncio.sleep(0.05)
        simulator.sim.faults.append(Fault(status=500, code=20500, message="Internal Server Error"))
        sent = time.monotonic()
        await probe.publish("twilio/txt", sms("lost", message="freezer 3 warm", retries=1))
        assert (await probe.status_of("lost", timeout=60))["response"]["status"] == "success"
        took = time.monotonic() - sent
        simulator.sim.faults.append(Fault(status=500, code=20500, message="Internal Server Error", store=True))
        await probe.publish("twilio/txt", sms("kept", message="freezer 4 warm", retries=1))
        assert (await probe.status_of("kept", timeout=60))["response"]["status"] == "success"
    finally:
        await running.stop()
    assert FLOOR - 1 <= took < 15, took
    bodies = Counter(item["body"] for item in simulator.sim._resources["Messages"].items.values())
    assert bodies["freezer 3 warm"] == 1 and bodies["freezer 4 warm"] == 1


async def metric(port: int, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return float(next(line for line in text.splitlines() if line.startswith(name)).split()[-1])


async def test_a_message_listed_after_the_window_is_detected_as_a_double(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    """The residual risk, measured: the list shows messages 3 s late, the window is a fixed 2 s; Twilio created
    the first attempt and answered 500. The empty window sends it again (a double Twilio really holds); the audit
    two windows later finds both messages, counts the double and says it, with both SIDs, on the delivery topic."""
    port = free_port()
    settings = make_settings(
        broker,
        simulator,
        reconcile_window=2.0,
        lag_probe_interval=0,
        metrics_listen=f"127.0.0.1:{port}",
        delivery_tracking="poll",
    )
    simulator.sim.list_lag = 3.0
    followups = MqttProbe(broker.url, status_topic=settings.delivery_topic)
    await followups.start()
    running = await RunningConnector(settings).wait_ready()
    try:
        simulator.sim.faults.append(Fault(status=500, code=20500, message="Internal Server Error", store=True))
        await probe.publish("twilio/txt", sms("twice", message="boiler 9 tripped", retries=1))
        status = (await probe.status_of("twice", timeout=30))["response"]
        assert status["status"] == "success"
        double = next(s for s in await followups.wait_for(1, timeout=30) if s.get("update") == "double")
        assert await metric(port, "twilio_connector_doubles_detected_total") == 1
    finally:
        await running.stop()
        await followups.stop()
    stored = [
        sid for sid, item in simulator.sim._resources["Messages"].items.items() if item["body"] == "boiler 9 tripped"
    ]
    assert sorted(double["response"]["payload"]["sids"]) == sorted(stored) and len(stored) == 2
    assert double["id"] == "twice" and status["payload"]["messages"]["sid"] in stored
