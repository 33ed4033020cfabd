"""The sending policy: lists, countries, length and rate caps; a violation is a Rejected status, nothing sent."""

from __future__ import annotations

import pytest

from conftest import Broker, MqttProbe, RunningConnector, SimulatorHandle, make_settings, sms
from twilio_connector.config import ConfigError, load_settings
from twilio_connector.contract import Kind, Notification
from twilio_connector.policy import Limits, Pacer, Policy, country_of, segments

US_SENDER = "+15005550006"


def note(to: str = "+12345000000", body: str = "hi", sender: str = US_SENDER) -> Notification:
    return Notification("r", Kind.SMS, to, sender, "D", body, 0)


def test_countries() -> None:
    assert country_of("+12345000000") == "US"
    assert country_of("+442079460958") == "GB"
    assert country_of("whatsapp:+33612345678") == "FR"
    assert country_of("+882000000000") is None  # international networks belong to no country


def test_default_allows_only_the_senders_country() -> None:
    policy = Policy(Limits())
    assert policy.check(note(), 0.0) is None
    assert policy.check(note("+442079460958"), 0.0) == ("+442079460958 is in GB, not in the allowed countries (US)")
    assert policy.check(note("+882000000000"), 0.0) is not None  # satellite / premium networks
    assert Policy(Limits(countries=("*",))).check(note("+442079460958"), 0.0) is None
    assert Policy(Limits(countries=("GB", "sender"))).check(note("+442079460958"), 0.0) is None
    service = Notification("r", Kind.SMS, "+442079460958", "", "D", "hi", 0, messaging_service_sid="MG" + "a" * 32)
    assert Policy(Limits()).check(service, 0.0) is None  # no sender number to go by


def test_allow_and_deny_lists() -> None:
    assert Policy(Limits(deny=("+1234",))).check(note(), 0.0) == "+12345000000 is on the deny list"
    assert Policy(Limits(allow=("+1555",))).check(note(), 0.0) == "+12345000000 is not on the allow list"
    assert Policy(Limits(allow=("+1234",))).check(note(), 0.0) is None


def test_segments() -> None:
    assert [segments("x" * n) for n in (1, 160, 161, 306, 307)] == [1, 1, 2, 2, 3]
    assert [segments("é" * n) for n in (70, 71, 134, 135)] == [1, 2, 2, 3]
    assert Policy(Limits(max_segments=2)).check(note(body="x" * 307), 0.0) == (
        "the message needs 3 segments; the limit is 2"
    )


def test_rate_caps_per_recipient_and_overall_slide_with_time() -> None:
    policy = Policy(Limits(per_recipient_per_minute=2, per_minute=3))
    assert [policy.check(note(), 0.0) for _ in range(2)] == [None, None]
    assert policy.check(note(), 1.0) == "+12345000000 already got 2 in the last minute (limit 2)"
    assert policy.check(note("+12345000001"), 1.0) is None
    assert policy.check(note("+12345000002"), 2.0) == "3 notifications were sent in the last minute (limit 3)"
    assert policy.check(note(), 61.0) is None  # the window slid past the first two
    assert policy.rejected == 2


def test_recipients_idle_for_a_day_are_forgotten() -> None:
    policy = Policy(Limits(per_minute=10**6, per_day=10**6))
    for n in range(1025):
        assert policy.check(note(f"+1234500{n:04d}"), 0.0) is None
    assert len(policy._per_recipient) == 1025  # the day is not over: every recipient still counts
    assert policy.check(note("+12345009999"), 86_401.0) is None
    assert len(policy._per_recipient) == 1  # the idle ones were dropped; the caps still hold for the new one
    assert policy.check(note("+12345009999"), 86_402.0) is None


def test_policy_settings() -> None:
    settings = load_settings(
        env={
            "TWILIO_CONNECTOR_ALLOW_NUMBERS": "+1555, +1444",
            "TWILIO_CONNECTOR_ALLOWED_COUNTRIES": "us,gb,sender",
            "TWILIO_CONNECTOR_PER_MINUTE": "9",
        }
    )
    assert settings.limits.allow == ("+1555", "+1444")
    assert settings.limits.countries == ("US", "GB", "sender")
    assert settings.limits.per_minute == 9
    with pytest.raises(ConfigError, match="not a number or prefix"):
        load_settings(env={"TWILIO_CONNECTOR_DENY_NUMBERS": "1900"})
    with pytest.raises(ConfigError, match="not an ISO country code"):
        load_settings(env={"TWILIO_CONNECTOR_ALLOWED_COUNTRIES": "USA"})


async def test_rejections_reach_the_status_topic_and_nothing_is_sent(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    settings = make_settings(broker, simulator, per_recipient_per_minute=2, deny_numbers=("+1900",))
    running = await RunningConnector(settings).wait_ready()
    for n in range(3):
        await probe.publish("twilio/txt", sms(f"rl{n}", message=f"alert {n}"))
    await probe.publish("twilio/txt", sms("uk", to="+442079460958"))
    await probe.publish("twilio/txt", sms("premium", to="+19005550100"))
    statuses = {s["id"]: s["response"] for s in await probe.wait_for_ids({"rl0", "rl1", "rl2", "uk", "premium"})}
    assert [statuses[f"rl{n}"]["status"] for n in range(3)] == ["success", "success", "fail"]
    for request_id in ("rl2", "uk", "premium"):
        assert statuses[request_id]["error"] == "Rejected" and statuses[request_id]["payload"] is None
    assert statuses["uk"]["error_message"] == "+442079460958 is in GB, not in the allowed countries (US)"
    assert len(simulator.created()) == 2
    await running.stop()


def test_pacer_spaces_each_senders_messages() -> None:
    pacer = Pacer(rate=2.0)  # one every 0.5 s
    assert [pacer.reserve("+15005550006", 10.0) for _ in range(3)] == [0.0, 0.5, 1.0]
    assert pacer.reserve("+15005550007", 10.0) == 0.0  # another sender has its own pace
    assert pacer.reserve("+15005550006", 12.0) == 0.0  # caught up
    assert Pacer(rate=0).reserve("+15005550006", 10.0) == 0.0  # off by default
    assert Pacer(rate=2.0).reserve("", 10.0) == 0.0  # a Messaging Service paces itself


async def test_sender_rate_queues_rather_than_fails(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    running = await RunningConnector(make_settings(broker, simulator, sender_rate=10.0)).wait_ready()
    for n in range(5):
        await probe.publish("twilio/txt", sms(f"pace{n}", message=f"paced {n}"))
    statuses = await probe.wait_for_ids({f"pace{n}" for n in range(5)})
    assert all(s["response"]["status"] == "success" for s in statuses)
    times = sorted(entry["time"] for entry in simulator.created())
    assert times[-1] - times[0] >= 0.35  # five sends at most ten a second
    await running.stop()
