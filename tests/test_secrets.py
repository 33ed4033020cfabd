"""Secrets never leak: a full run with failures, at DEBUG, leaves no secret in any output, status or journal."""

from __future__ import annotations

import signal
from pathlib import Path

from conftest import Broker, ConnectorProcess, MqttProbe, SimulatorHandle, sms
from twilio_connector.settings.config import describe
from twilio_connector.settings.schema import Settings
from twilio_connector.settings.secrets import Secret
from twilio_connector.twilio.simulator import Fault

TOKEN = "tok-9f8e7d6c5b4a-SECRET"
API_SECRET = "apisecret-0a1b2c3d-SECRET"
MQTT_PASSWORD = "mqttpw-77aa-SECRET"


def test_reprs_and_descriptions_hide_secrets() -> None:
    settings = Settings(
        auth_token=Secret(TOKEN), api_key_secret=Secret(API_SECRET), mqtt_password=Secret(MQTT_PASSWORD)
    )
    for text in (repr(settings), str(settings), "\n".join(describe(settings)), f"{Secret(TOKEN)}", repr(Secret(TOKEN))):
        assert "SECRET" not in text


async def test_a_failing_run_at_debug_level_leaks_nothing(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, tmp_path: Path
) -> None:
    # The simulator expects another token, so every request fails authentication (20003): errors, at DEBUG.
    journal, log = tmp_path / "journal.db", tmp_path / "connector.log"
    running = ConnectorProcess(
        broker,
        simulator,
        journal,
        log,
        "--log-level",
        "DEBUG",
        "--client-id",
        "secret-test",
        TWILIO_AUTH_TOKEN=TOKEN,
        MQTT_PASSWORD=MQTT_PASSWORD,
        TWILIO_CONNECTOR_MQTT_USERNAME="someone",
    )
    connector = running.process
    try:
        await running.ready()
        simulator.sim.faults.append(Fault(status=500, code=20500, message="Internal Server Error"))
        await probe.publish("twilio/txt", sms("s1", retries=2))
        await probe.publish("twilio/txt", b"not json")
        await probe.publish("twilio/call", sms("s2"))
        statuses = await probe.wait_for_ids({"s1", "s2"})
        assert next(s for s in statuses if s["id"] == "s1")["response"]["twilio_error_code"] == 20003
        cmdline = Path(f"/proc/{connector.pid}/cmdline").read_bytes()  # what other users can see
    finally:
        connector.send_signal(signal.SIGTERM)
        connector.wait(20)
    everything = log.read_bytes() + journal.read_bytes() + cmdline + str(probe.statuses).encode()
    for path in tmp_path.glob("journal.db*"):
        everything += path.read_bytes()
    assert b'"level":"debug"' in everything and b"20003" in everything  # the run did log, and did fail
    assert b"SECRET" not in everything
