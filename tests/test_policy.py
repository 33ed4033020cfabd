"""The sending policy: by default only numbers no alert goes to are refused; every other guard is opt-in."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import phonenumbers
import pytest

from conftest import Broker, ConnectorProcess, MqttProbe, RunningConnector, SimulatorHandle, make_settings, sms
from twilio_connector.domain.contract import Kind, Notification
from twilio_connector.domain.policy import (
    NUMBER_TYPES,
    PRESETS,
    Caps,
    Limits,
    Pacer,
    country_of,
    describe_limits,
    number_class,
    refusal,
    segments,
)
from twilio_connector.settings.config import ConfigError, load_settings

US_SENDER = "+15005550006"


def note(to: str = "+12345000000", body: str = "hi", sender: str = US_SENDER) -> Notification:
    return Notification("r", Kind.SMS, to, sender, "D", body, 0)


def test_countries() -> None:
    assert country_of("+12345000000") == "US"
    assert country_of("+442079460958") == "GB"
    assert country_of("whatsapp:+33612345678") == "FR"
    assert country_of("+447911123456") == "GG"  # a +44 mobile range that phonenumbers puts in Guernsey
    assert country_of("+882000000000") is None  # international networks belong to no country


def refused(limits: Limits, n: Notification) -> str | None:
    return refusal(limits, n)


def test_by_default_only_premium_shared_cost_and_international_networks_are_refused() -> None:
    limits = Limits()
    for ordinary in ("+12345000000", "+442079460958", "+447911123456", "+33612345678", "+15555550100", "+15005550006"):
        assert refused(limits, note(ordinary)) is None, ordinary  # any country; unclassifiable test ranges too
    assert refused(limits, note("+19002345678")) == "+19002345678 is a premium-rate number (refused_number_types)"
    assert refused(limits, note("+449012345678")) is not None  # GB premium rate
    assert refused(limits, note("+4918012345")) == "+4918012345 is a shared-cost number (refused_number_types)"
    assert refused(limits, note("+882000000000")) == (
        "+882000000000 is a international-network number (refused_number_types)"
    )
    assert refused(limits, note("+80012345678")) is not None  # international freephone, region 001 too
    assert refused(limits, note(body="x" * 1600)) is None  # no length cap by default
    assert number_class("+12345000000") is None
    assert refused(Limits(refused_types=()), note("+19002345678")) is None


def test_country_guard_is_opt_in() -> None:
    strict = Limits(countries=("sender",))
    assert refused(strict, note()) is None
    assert refused(strict, note("+442079460958")) == "+442079460958 is in GB, not in the allowed countries (US)"
    assert refused(Limits(countries=("GB", "sender")), note("+442079460958")) is None
    assert refused(Limits(countries=("GB",)), note("+447911123456")) is not None  # GG: a list must name it
    service = Notification("r", Kind.SMS, "+442079460958", "", "D", "hi", 0, messaging_service_sid="MG" + "a" * 32)
    assert refused(strict, service) is None  # no sender number to go by


def test_allow_and_deny_lists() -> None:
    assert refused(Limits(deny=("+1234",)), note()) == "+12345000000 is on the deny list"
    assert refused(Limits(allow=("+1555",)), note()) == "+12345000000 is not on the allow list"
    assert refused(Limits(allow=("+1234",)), note()) is None


def test_segments() -> None:
    assert [segments("x" * n) for n in (1, 160, 161, 306, 307)] == [1, 1, 2, 2, 3]
    assert [segments("é" * n) for n in (70, 71, 134, 135)] == [1, 2, 2, 3]
    assert refused(Limits(max_segments=2), note(body="x" * 307)) == "the message needs 3 segments; the limit is 2"


def test_caps_are_bucketed() -> None:
    caps = Caps(per_recipient_per_minute=2, per_day=5)
    assert [(span, scope, cap) for span, scope, cap, _ in caps.scopes("+1")] == [("m", "+1", 2), ("d", "", 5)]
    assert Caps().scopes("+1") == []  # all off: nothing to count
    assert Caps.bucket("m", 125.0) == (12, 7)  # 10-second buckets, six of them make the minute
    assert Caps.bucket("d", 7200.0) == (2, -21)


def test_presets_and_settings() -> None:
    assert load_settings(env={}).limits == Limits()
    strict = load_settings(env={"TWILIO_CONNECTOR_POLICY": "strict"}).limits
    assert strict == PRESETS["strict"] and strict.countries == ("sender",) and strict.per_minute == 300
    assert strict.limits_volume and not Limits().limits_volume
    # A guard set on its own wins over the preset; 0 turns a preset's cap off.
    mixed = load_settings(
        env={"TWILIO_CONNECTOR_POLICY": "strict", "TWILIO_CONNECTOR_PER_MINUTE": "0"},
        flags={"allowed_countries": "US,GB,GG,JE,IM"},
    ).limits
    assert (mixed.per_minute, mixed.per_day, mixed.countries) == (0, 10_000, ("US", "GB", "GG", "JE", "IM"))
    settings = load_settings(
        env={
            "TWILIO_CONNECTOR_ALLOW_NUMBERS": "+1555, +1444",
            "TWILIO_CONNECTOR_ALLOWED_COUNTRIES": "us,gb,sender",
            "TWILIO_CONNECTOR_PER_MINUTE": "9",
            "TWILIO_CONNECTOR_REFUSED_NUMBER_TYPES": "premium_rate",
        }
    )
    assert settings.limits.allow == ("+1555", "+1444")
    assert settings.limits.countries == ("US", "GB", "sender")
    assert settings.limits.per_minute == 9
    assert settings.limits.refused_types == ("premium_rate",)
    with pytest.raises(ConfigError, match="not a number or prefix"):
        load_settings(env={"TWILIO_CONNECTOR_DENY_NUMBERS": "1900"})
    with pytest.raises(ConfigError, match="not an ISO country code"):
        load_settings(env={"TWILIO_CONNECTOR_ALLOWED_COUNTRIES": "USA"})
    with pytest.raises(ConfigError, match="must be one of default, strict"):
        load_settings(env={"TWILIO_CONNECTOR_POLICY": "paranoid"})
    with pytest.raises(ConfigError, match="'mobile' is not one of"):
        load_settings(env={"TWILIO_CONNECTOR_REFUSED_NUMBER_TYPES": "mobile"})


def test_described_guards() -> None:
    default = describe_limits(Limits(), 30, 60.0)
    assert "refused number types: premium_rate, shared_cost, international_network" in default
    assert "countries: any" in default
    assert "rate caps: per recipient off/minute, off/day; overall off/minute, off/day" in default
    assert any(line.startswith("storm folding: texts to one number past 30 within 60 s") for line in default)
    strict = describe_limits(replace(PRESETS["strict"], countries=("GB",)), 0, 60.0)
    assert "storm folding: off" in strict
    assert any("+44 7911 is GG" in line for line in strict)


async def test_rejections_reach_the_status_topic_and_nothing_is_sent(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    settings = make_settings(
        broker, simulator, policy="strict", per_recipient_per_minute=2, deny_numbers=("+1234500009",)
    )
    running = await RunningConnector(settings).wait_ready()
    for n in range(3):
        await probe.publish("twilio/txt", sms(f"rl{n}", message=f"alert {n}"))
    await probe.publish("twilio/txt", sms("uk", to="+442079460958"))
    await probe.publish("twilio/txt", sms("premium", to="+19002345678"))
    await probe.publish("twilio/txt", sms("denied", to="+12345000091"))
    ids = {"rl0", "rl1", "rl2", "uk", "premium", "denied"}
    statuses = {s["id"]: s["response"] for s in await probe.wait_for_ids(ids)}
    assert [statuses[f"rl{n}"]["status"] for n in range(3)] == ["success", "success", "fail"]
    for request_id in ("rl2", "uk", "premium", "denied"):
        assert statuses[request_id]["error"] == "Rejected" and statuses[request_id]["payload"] is None
    assert statuses["rl2"]["error_message"] == "+12345000000 already got 2 in the last minute (limit 2)"
    assert statuses["uk"]["error_message"] == "+442079460958 is in GB, not in the allowed countries (US)"
    assert len(simulator.created()) == 2
    # A redelivered refused request is answered from the journal, counted against nothing, refused the same way.
    await probe.publish("twilio/txt", sms("rl2", message="alert 2"))
    await probe.wait_for(len(probe.statuses) + 1)
    assert [s["response"] for s in probe.statuses if s["id"] == "rl2"] == [statuses["rl2"]] * 2
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


async def test_defaults_send_whatever_the_original_would_have_sent(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, tmp_path: Path
) -> None:
    """The original's traffic, default settings: a plant-wide burst, an on-call engineer's busy minute, a UK
    engineer texted from a US number, a long text. All reach Twilio; only the premium-rate number is refused."""
    log = tmp_path / "connector.log"
    log.write_text("run:\n")
    connector = ConnectorProcess(broker, simulator, tmp_path / "journal.db", log, defaults=True)
    try:
        await connector.ready()
        burst = {f"plant{n}": f"+1234{n:07d}" for n in range(1000)}
        for request_id, number in burst.items():
            await probe.publish("twilio/txt", sms(request_id, to=number, message="Line 2 down"))
        busy = {f"oncall{n}" for n in range(20)}
        for request_id in sorted(busy):
            await probe.publish("twilio/txt", sms(request_id, to="+12345000000", message=f"alarm {request_id}"))
        await probe.publish("twilio/txt", sms("uk", to="+447700900123", message="UK engineer"))
        await probe.publish("twilio/txt", sms("long", message="x" * 1600))
        await probe.publish("twilio/txt", sms("premium", to="+19002345678"))
        statuses = {s["id"]: s["response"] for s in await probe.wait_for_ids({*burst, *busy, "uk", "long", "premium"})}
    finally:
        connector.process.terminate()
        connector.process.wait(20)
    assert statuses.pop("premium")["error"] == "Rejected"
    assert all(response["status"] == "success" and "folded" not in response for response in statuses.values())
    sent = simulator.created("Messages")
    assert len(sent) == 1000 + 20 + 2  # each on its own
    recipients = Counter(entry["params"]["To"] for entry in sent)
    assert recipients == Counter({**dict.fromkeys(burst.values(), 1), "+12345000000": 21, "+447700900123": 1})
    assert "rate caps: per recipient off/minute" in log.read_text()  # the start-up log states the guards


def test_number_classes_agree_with_phonenumbers_for_every_regions_examples() -> None:
    """`number_class` matches patterns without parsing (30x cheaper): it must say what phonenumbers says."""
    kinds = {getattr(phonenumbers.PhoneNumberType, name.upper()): name for name in NUMBER_TYPES[:-1]}
    checked = 0
    for region in phonenumbers.SUPPORTED_REGIONS:
        for kind in [*kinds, phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE]:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
                assert number_class(e164) == kinds.get(phonenumbers.number_type(example)), e164
                checked += 1
    assert checked > 1000
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        assert number_class(f"+{code}12345678") == "international_network"
    assert number_class("+999123") is None and number_class("not a number") is None
