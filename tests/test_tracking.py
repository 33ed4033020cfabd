"""Delivery tracking: polling Twilio's fetch API, or signed status callbacks; follow-ups on their own topic."""

from __future__ import annotations

import aiohttp
import pytest

from conftest import Broker, MqttProbe, RunningConnector, SimulatorHandle, free_port, make_settings, sms
from twilio_connector.domain.contract import Kind, Notification, delivery_status
from twilio_connector.domain.signature import signature
from twilio_connector.settings.config import ConfigError, load_settings
from twilio_connector.twilio.simulator import DEFAULT_AUTH_TOKEN

DELIVERY_TOPIC = "twilio/message/delivery"


async def watch_both(broker: Broker) -> tuple[MqttProbe, MqttProbe]:
    first, follow_ups = MqttProbe(broker.url), MqttProbe(broker.url, status_topic=DELIVERY_TOPIC)
    await first.start()
    await follow_ups.start()
    return first, follow_ups


def test_delivery_status_shape() -> None:
    note = Notification("r1", Kind.SMS, "+12345000000", "+15005550006", "Darla", "hi", 0)
    assert delivery_status(note, "SM1", "undelivered", final=True, error_code=30003, error_message="Unreachable") == {
        "response": {
            "status": "fail",
            "payload": {
                "from_number": "+15005550006",
                "messages": {
                    "message_status": "undelivered",
                    "to_number": "+12345000000",
                    "name": "Darla",
                    "sid": "SM1",
                },
            },
            "final": True,
            "twilio_error_code": 30003,
            "error_message": "Unreachable",
        },
        "id": "r1",
        "update": "delivery",
    }
    assert delivery_status(note, "SM1", "delivered", final=True)["response"]["status"] == "success"


async def test_polling_follows_a_message_to_delivered(broker: Broker, simulator: SimulatorHandle) -> None:
    first, follow_ups = await watch_both(broker)
    simulator.sim.delivery = {"Messages": "delivered", "Calls": "no-answer", "after_ms": 100}
    settings = make_settings(broker, simulator, delivery_tracking="poll", poll_interval=0.05, poll_interval_max=0.2)
    running = await RunningConnector(settings).wait_ready()
    await first.publish("twilio/txt", sms("d1"))
    await first.publish(
        "twilio/call",
        {
            "request": {
                "recipient": {
                    "name": "D",
                    "phone_number": "+12345000009",
                    "voice_message_location": "https://e.example/t",
                }
            },
            "id": "d2",
        },
    )
    initial = await first.wait_for_ids({"d1", "d2"})
    delivered = {s["id"]: s for s in await follow_ups.wait_for_ids({"d1", "d2"})}
    assert {s["response"]["payload"]["messages"]["message_status"] for s in initial} == {"queued"}
    assert delivered["d1"]["response"]["payload"]["messages"]["message_status"] == "delivered"
    assert delivered["d1"]["response"]["status"] == "success" and delivered["d1"]["update"] == "delivery"
    assert delivered["d2"]["response"]["payload"]["messages"]["message_status"] == "no-answer"
    assert delivered["d2"]["response"]["status"] == "fail"
    sid = next(s for s in initial if s["id"] == "d1")["response"]["payload"]["messages"]["sid"]
    assert delivered["d1"]["response"]["payload"]["messages"]["sid"] == sid
    assert len(first.statuses) == 2, "the original status topic still gets exactly one status per request"
    await running.stop()


async def test_tracking_gives_up_with_a_non_final_follow_up(broker: Broker, simulator: SimulatorHandle) -> None:
    first, follow_ups = await watch_both(broker)
    settings = make_settings(broker, simulator, delivery_tracking="poll", poll_interval=0.05, tracking_give_up=0.3)
    running = await RunningConnector(settings).wait_ready()
    await first.publish("twilio/txt", sms("g1"))
    [follow_up] = await follow_ups.wait_for_ids({"g1"})
    assert follow_up["response"]["final"] is False
    assert follow_up["response"]["payload"]["messages"]["message_status"] == "queued"
    await running.stop()


async def test_signed_status_callbacks(broker: Broker, simulator: SimulatorHandle) -> None:
    first, follow_ups = await watch_both(broker)
    port = free_port()
    url = f"http://127.0.0.1:{port}/twilio/status"
    simulator.sim.delivery = {"Messages": "undelivered", "after_ms": 50}
    settings = make_settings(
        broker, simulator, delivery_tracking="callback", callback_url=url, callback_listen=f"127.0.0.1:{port}"
    )
    running = await RunningConnector(settings).wait_ready()
    await first.publish("twilio/txt", sms("cb1"))
    [follow_up] = await follow_ups.wait_for_ids({"cb1"})
    assert follow_up["response"]["payload"]["messages"]["message_status"] == "undelivered"
    assert follow_up["response"]["status"] == "fail" and follow_up["response"]["final"] is True
    [created] = simulator.created()
    assert created["params"]["StatusCallback"] == url

    params = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}
    async with aiohttp.ClientSession() as session:
        forged = {"X-Twilio-Signature": signature("not-the-token", url, params)}
        async with session.post(url, data=params, headers=forged) as response:
            assert response.status == 403
        async with session.post(url, data=params) as response:
            assert response.status == 403
        genuine = {"X-Twilio-Signature": signature(DEFAULT_AUTH_TOKEN, url, params)}
        async with session.post(url, data=params, headers=genuine) as response:
            assert response.status == 204  # a SID we do not track: accepted and ignored
    assert len(follow_ups.statuses) == 1
    await running.stop()


def test_signature_matches_twilios_documented_example() -> None:
    # The example from Twilio's webhook security documentation.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    assert signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_callback_mode_needs_a_url() -> None:
    with pytest.raises(ConfigError, match="needs callback_url"):
        load_settings(env={"TWILIO_CONNECTOR_DELIVERY_TRACKING": "callback"})
