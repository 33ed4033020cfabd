"""The connector end to end: real Mosquitto, the simulator over real sockets, the connector's own event loop."""

from __future__ import annotations

import pytest

from conftest import DEFAULT_FROM, MqttProbe, SimulatorHandle, sms

pytestmark = pytest.mark.usefixtures("connector")


async def test_sms_success_status_matches_contract(probe: MqttProbe, simulator: SimulatorHandle) -> None:
    probe.publish("twilio/txt", sms("r1"))
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
