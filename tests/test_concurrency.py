"""The adaptive concurrency window on its own, and against a simulator that refuses past N concurrent requests."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from conftest import Broker, MqttProbe, RunningConnector, SimulatorHandle, make_settings, sms
from twilio_connector.domain.concurrency import ConcurrencyWindow


def test_slow_start_doubles_each_round_then_stops_at_the_ceiling() -> None:
    window = ConcurrencyWindow(ceiling=64, start=8)
    sizes = []
    for _ in range(4):
        for _ in range(window.size):  # one round: an answer for each request in flight
            window.answered(throttled=False)
        sizes.append(window.size)
    assert sizes == [16, 32, 64, 64]


def test_a_429_halves_the_window_then_it_grows_by_one_a_round() -> None:
    window = ConcurrencyWindow(ceiling=200, start=8)
    while window.size < 40:
        window.answered(throttled=False)
    window.answered(throttled=True)
    assert window.size == 20
    for _ in range(20):  # the requests sent under the old window may still come back 429: no second cut
        window.answered(throttled=True)
    assert window.size == 20 and window.throttles == 21
    for _ in range(20):
        window.answered(throttled=False)
    assert window.size == 21  # then one more per round
    window.answered(throttled=True)
    assert window.size == 10  # a new 429, after the recovery: cut again


@given(st.lists(st.booleans(), max_size=500), st.integers(1, 300), st.integers(1, 300))
def test_the_window_stays_within_its_bounds(answers: list[bool], ceiling: int, start: int) -> None:
    window = ConcurrencyWindow(ceiling=ceiling, start=start)
    for throttled in answers:
        window.answered(throttled)
        assert 1 <= window.size <= ceiling


async def test_against_an_account_limit_the_window_settles_near_it(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    """The simulator refuses (429, 20429) past 10 concurrent requests, as Twilio does past an account's limit:
    every request still goes out once, and few are refused."""
    simulator.sim.latency = 0.05
    simulator.sim.concurrency_limit = 10
    settings = make_settings(broker, simulator, max_in_flight=64)
    running = await RunningConnector(settings).wait_ready()
    try:
        ids = {f"c{n}" for n in range(400)}
        for n in range(400):
            await probe.publish("twilio/txt", sms(f"c{n}", to=f"+1234503{n:04d}", message=f"text c{n}"))
        statuses = await probe.wait_for_ids(ids, timeout=60)
        assert all(s["response"]["status"] == "success" for s in statuses)
    finally:
        await running.stop()
    throttled = sum(1 for entry in simulator.created() if entry.get("outcome") == 20429)
    sent = [entry for entry in simulator.created() if entry.get("outcome") != 20429]
    assert len(sent) == 400
    print(f"\n429s: {throttled} for 400 requests; most concurrent: {simulator.sim.most_concurrent}")
    assert throttled < 100  # without the window: 54 of every 64 at once would be refused, round after round
    assert simulator.sim.most_concurrent <= 64
