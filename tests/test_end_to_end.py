"""The connector end to end: real Mosquitto, the simulator over real sockets, the connector's own event loop."""

from __future__ import annotations

import asyncio

import pytest

from conftest import DEFAULT_FROM, MqttProbe, SimulatorHandle, call, sms
from twilio_connector.twilio.simulator import Fault

pytestmark = pytest.mark.usefixtures("connector")


async def test_sms_success_status_matches_contract(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    await probe.publish("twilio/txt", sms("r1"))
    status = await probe.status_of("r1")
    sid = status["response"]["payload"]["messages"].pop("sid")
    assert sid.startswith("SM") and len(sid) == 34
    assert status == {
        "response": {
            "status": "success",
            "payload": {
                "from_number": DEFAULT_FROM,
                "messages": {"message_status": "queued", "to_number": "+12345000000", "name": "Darla"},
            },
            "attempts": 1,
        },
        "id": "r1",
    }
    [sent] = simulator.created("Messages")
    assert sent["params"] == {"To": "+12345000000", "From": DEFAULT_FROM, "Body": "Hello from the edge"}


async def test_call_success(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    await probe.publish("twilio/call", call("c1"))
    status = await probe.status_of("c1")
    assert status["response"]["status"] == "success"
    assert status["response"]["payload"]["messages"]["sid"].startswith("CA")
    [placed] = simulator.created("Calls")
    assert placed["params"] == {"To": "+12345000000", "From": DEFAULT_FROM, "Url": "https://example.com/twiml"}


async def test_from_number_overrides_the_default_sender(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    await probe.publish("twilio/txt", sms("o1", from_number="19999999999"))
    status = await probe.status_of("o1")
    assert status["response"]["payload"]["from_number"] == "+19999999999"
    assert simulator.created()[0]["params"]["From"] == "+19999999999"


BAD_PAYLOADS = [
    b"not json",
    b"[]",
    b"\xff\xfe\xfd",
    b"[" * 100_000,
    b'{"id": "' + b"x" * 70_000 + b'"}',
    b'{"request": {"recipient": {"name": "D", "phone_number": "+12345000000", "message": "hi"}}}',
    b'{"id": "bad-1", "request": {"recipient": {"phone_number": "+12345000000", "message": "hi"}}}',
    b'{"id": "bad-2", "request": {"recipient": {"name": "D", "phone_number": "+1", "message": "hi"}}}',
    b'{"id": "bad-3", "request": {"recipient": {"name": "D", "phone_number": "+12345000000"}}}',
    b'{"id": "bad-4", "request": {"recipient": {"name": "D", "phone_number": "+12345000000", "message": "hi"}, '
    b'"retries": -2}}',
]


async def test_every_bad_payload_gets_one_failure_and_service_keeps_running(
    probe: MqttProbe, simulator: SimulatorHandle
) -> None:
    for payload in BAD_PAYLOADS:
        await probe.publish("twilio/txt", payload)
    statuses = await probe.wait_for(len(BAD_PAYLOADS))
    assert all(s["response"]["status"] == "fail" and s["response"]["error"] == "InvalidParameter" for s in statuses)
    assert all(s["response"]["payload"] is None and s["response"]["error_message"] for s in statuses)
    assert sorted(s["id"] or "" for s in statuses) == sorted([""] * 6 + ["bad-1", "bad-2", "bad-3", "bad-4"])
    assert next(s for s in statuses if s["id"] == "bad-1")["response"]["error_message"] == (
        "Recipient name cannot be None"
    )
    await probe.publish("twilio/txt", sms("good"))
    assert (await probe.status_of("good"))["response"]["status"] == "success"
    assert len(probe.statuses) == len(BAD_PAYLOADS) + 1
    assert [e["params"]["Body"] for e in simulator.created()] == ["Hello from the edge"]


async def test_permanent_twilio_error_is_reported_and_never_retried(
    probe: MqttProbe, simulator: SimulatorHandle
) -> None:
    await probe.publish("twilio/txt", sms("e1", to="+15005550001", retries=5))
    response = (await probe.status_of("e1"))["response"]
    assert response["status"] == "fail" and response["error"] == "TwilioError"
    assert response["twilio_error_code"] == 21211 and response["http_status"] == 400
    assert "not a valid phone number" in response["error_message"]
    assert response["payload"] is None and response["attempts"] == 1
    assert len(simulator.created()) == 1


async def test_gateway_errors_are_looked_up_then_retried_up_to_the_requested_retries(
    probe: MqttProbe, simulator: SimulatorHandle
) -> None:
    simulator.sim.faults.append(Fault(status=503, code=20503, count=2))
    await probe.publish("twilio/txt", sms("g1", retries=3))
    response = (await probe.status_of("g1"))["response"]
    assert response["status"] == "success" and response["attempts"] == 3
    assert len(simulator.created()) == 3


async def test_retries_run_out(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    simulator.sim.faults.append(Fault(status=502, count=5))
    await probe.publish("twilio/txt", sms("g2", retries=1))
    response = (await probe.status_of("g2"))["response"]
    assert (response["status"], response["error"], response["attempts"]) == ("fail", "TwilioUnavailable", 2)
    assert len(simulator.created()) == 2


async def test_a_429_is_retried_even_without_retries(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    """A 429 (too many concurrent requests) was never processed, and may be the connector's own probing of the
    account's limit: it does not spend the request's `retries` (0 by default)."""
    simulator.sim.faults.append(Fault(status=429, code=20429, message="Too Many Requests", count=5))
    await probe.publish("twilio/txt", sms("g3"))
    response = (await probe.status_of("g3"))["response"]
    assert (response["status"], response["attempts"]) == ("success", 6)
    assert len(simulator.created()) == 6


async def test_500_after_twilio_acted_is_reconciled_not_resent(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    simulator.sim.faults.append(Fault(status=500, code=20500, message="Internal Server Error", store=True))
    await probe.publish("twilio/txt", sms("u1", retries=3))
    response = (await probe.status_of("u1"))["response"]
    [created] = simulator.created()
    assert response["status"] == "success" and response["attempts"] == 1
    assert response["payload"]["messages"]["sid"] == created["stored"]


async def test_500_before_twilio_acted_is_retried_after_checking(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    simulator.sim.faults.append(Fault(status=500, code=20500, message="Internal Server Error"))
    await probe.publish("twilio/txt", sms("u2", retries=1))
    response = (await probe.status_of("u2"))["response"]
    assert response["status"] == "success" and response["attempts"] == 2
    assert len(simulator.created()) == 2 and len(simulator.sim._resources["Messages"].items) == 1


async def test_500_without_retries_is_reported(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    simulator.sim.faults.append(Fault(status=500, code=20500, message="Internal Server Error"))
    await probe.publish("twilio/txt", sms("u3"))
    response = (await probe.status_of("u3"))["response"]
    assert (response["status"], response["error"], response["attempts"]) == ("fail", "TwilioUnavailable", 1)
    assert response["error_message"] == (
        "Internal Server Error (HTTP 500); Twilio did not list it within 1 s: it was not created"
    )
    assert len(simulator.created()) == 1


async def test_same_request_published_twice_is_sent_once(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    await probe.publish("twilio/txt", sms("d1"))
    first = await probe.status_of("d1")
    await probe.publish("twilio/txt", sms("d1"))
    statuses = await probe.wait_for(2)
    assert statuses == [first, first]
    assert len(simulator.created()) == 1
    await probe.publish("twilio/txt", sms("d1", message="other text"))  # a reused id with new content is a new request
    await probe.wait_for(3)
    assert len(simulator.created()) == 2


async def test_many_requests_in_flight_at_once(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    simulator.sim.latency = 0.1
    started = asyncio.get_running_loop().time()
    for n in range(200):
        await probe.publish("twilio/txt", sms(f"m{n}"))
    statuses = await probe.wait_for(200)
    elapsed = asyncio.get_running_loop().time() - started
    assert {s["id"] for s in statuses} == {f"m{n}" for n in range(200)}
    assert all(s["response"]["status"] == "success" for s in statuses)
    assert elapsed < 10, elapsed  # one at a time would take 20 s; 64 at a time about 0.4 s


async def test_429_storm_all_sent_once(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    simulator.sim.faults.append(Fault(status=429, code=20429, message="Too Many Requests", count=60, retry_after=0.01))
    for n in range(30):
        await probe.publish("twilio/txt", sms(f"s{n}", message=f"storm {n}", retries=10))
    statuses = await probe.wait_for_ids({f"s{n}" for n in range(30)})
    assert all(s["response"]["status"] == "success" for s in statuses)
    bodies = sorted(item["body"] for item in simulator.sim._resources["Messages"].items.values())
    assert bodies == sorted(f"storm {n}" for n in range(30))
    assert len(simulator.created()) == 90


async def test_extensions_reach_twilio(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    service = "MG" + "c" * 32
    await probe.publish(
        "twilio/txt",
        {
            "request": {
                "recipient": [
                    {
                        "name": "A",
                        "phone_number": "+12345000001",
                        "message": "look",
                        "media_url": ["https://e.example/1.jpg", "https://e.example/2.jpg"],
                    },
                    {"name": "B", "phone_number": "+15005550001", "message": "look"},
                ],
                "messaging_service_sid": service,
                "validity_period": 300,
            },
            "id": "x1",
        },
    )
    await probe.publish(
        "twilio/call",
        call("x2", url="https://unused.example")
        | {
            "request": {
                "recipient": {
                    "name": "C",
                    "phone_number": "+12345000003",
                    "voice_message": "Smoke <alarm>",
                    "language": "en-GB",
                }
            }
        },
    )
    statuses = await probe.wait_for(3)
    by_recipient = {s.get("recipient"): s for s in statuses if s["id"] == "x1"}
    assert by_recipient["+12345000001"]["response"]["status"] == "success"
    assert by_recipient["+15005550001"]["response"]["twilio_error_code"] == 21211
    sent = {entry["params"]["To"]: entry for entry in simulator.created()}
    assert sent["+12345000001"]["params"] == {
        "To": "+12345000001",
        "MessagingServiceSid": service,
        "Body": "look",
        "ValidityPeriod": "300",
    }
    assert sent["+12345000001"]["media"] == ["https://e.example/1.jpg", "https://e.example/2.jpg"]
    assert (
        sent["+12345000003"]["params"]["Twiml"]
        == '<Response><Say language="en-GB">Smoke &lt;alarm&gt;</Say></Response>'
    )
    assert "Url" not in sent["+12345000003"]["params"]
    assert next(s for s in statuses if s["id"] == "x2")["response"]["status"] == "success"
