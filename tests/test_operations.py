"""Operations: Prometheus metrics scraped over HTTP, and health and readiness codes that mean something."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest

from conftest import (
    CLI,
    Broker,
    MqttProbe,
    RunningConnector,
    SimulatorHandle,
    free_port,
    make_settings,
    sms,
    wait_until,
)
from twilio_connector.ops import logs


def sample(text: str, name: str) -> float:
    """The value of one metric line (`name{labels}`) in Prometheus' text format."""
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_metrics_health_and_readiness(broker: Broker, simulator: SimulatorHandle, probe: MqttProbe) -> None:
    port = free_port()
    running = await RunningConnector(make_settings(broker, simulator, metrics_listen=f"127.0.0.1:{port}")).wait_ready()
    base = f"http://127.0.0.1:{port}"
    await probe.publish("twilio/txt", sms("ok"))
    await probe.publish("twilio/txt", sms("bad", to="+15005550001"))
    await probe.publish("twilio/txt", b"{")
    await probe.wait_for(3)
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # a status can reach the probe a moment before the backlog gauge counts it done
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            if sample(text, "twilio_connector_journal_backlog") == 0:
                break
            await asyncio.sleep(0.01)
        assert sample(text, 'twilio_connector_requests_received_total{topic="twilio/txt"}') == 3
        assert sample(text, 'twilio_connector_statuses_total{error="",kind="txt",result="success"}') == 1
        assert sample(text, 'twilio_connector_statuses_total{error="TwilioError",kind="txt",result="fail"}') == 1
        assert sample(text, 'twilio_connector_statuses_total{error="InvalidParameter",kind="txt",result="fail"}') == 1
        assert sample(text, 'twilio_connector_statuses_total{error="TwilioError",kind="call",result="fail"}') == 0
        assert sample(text, "twilio_connector_twilio_request_seconds_count") == 2
        assert sample(text, 'twilio_connector_request_seconds_count{kind="txt",result="success"}') == 1
        assert sample(text, 'twilio_connector_request_seconds_count{kind="txt",result="fail"}') == 1  # TwilioError
        assert sample(text, 'twilio_connector_request_seconds_count{kind="call",result="success"}') == 0
        assert sample(text, "twilio_connector_broker_connected") == 1
        # An alert on "any increase" sees the first fault: the known kinds are there at 0 from the start.
        assert sample(text, 'twilio_connector_broker_faults_total{kind="connect_refused"}') == 0
        assert "_created" not in text and "twilio_connector_build_info{version=" in text
        assert sample(text, "twilio_connector_journal_backlog") == 0
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200 and (await response.json())["status"] == "ready"

        broker.stop()
        for _ in range(100):  # until the connector notices the broker is gone
            async with http.get(f"{base}/readyz") as response:
                if response.status == 503:
                    assert (await response.json())["checks"]["broker_connected"] is False
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("/readyz stayed 200 without a broker")
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200  # alive, though not ready
        broker.start()
    await running.stop()


def test_json_log_lines_carry_the_outcome_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "json")
    try:
        logging.getLogger("twilio_connector.engine").info(
            "request id=r1 result=success", extra={"request_id": "r1", "result": "success", "attempts": 2, "sid": "SM1"}
        )
    finally:
        logging.getLogger().handlers.clear()
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["level"] == "info" and line["logger"] == "twilio_connector.engine"
    assert (line["request_id"], line["result"], line["attempts"], line["sid"]) == ("r1", "success", 2, "SM1")
    assert line["time"].endswith("Z")


async def test_send_and_status_commands(broker: Broker, simulator: SimulatorHandle) -> None:
    port = free_port()
    running = await RunningConnector(make_settings(broker, simulator, metrics_listen=f"127.0.0.1:{port}")).wait_ready()
    sent = await asyncio.create_subprocess_exec(
        *CLI,
        "send",
        "--broker",
        broker.url,
        "--to",
        "12345000000",
        "--message",
        "smoke test",
        "--id",
        "smoke-1",
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await sent.communicate()
    assert sent.returncode == 0, output
    status = json.loads(output)
    assert status["id"] == "smoke-1" and status["response"]["status"] == "success"
    assert simulator.created()[0]["params"]["Body"] == "smoke test"
    refused = await asyncio.create_subprocess_exec(
        *CLI, "send", "--broker", broker.url, "--to", "+15005550001", "--message", "x", stdout=asyncio.subprocess.PIPE
    )
    assert json.loads((await refused.communicate())[0])["response"]["twilio_error_code"] == 21211
    assert refused.returncode == 1
    ready = await asyncio.create_subprocess_exec(
        *CLI, "status", "--url", f"http://127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE
    )
    assert json.loads((await ready.communicate())[0])["status"] == "ready" and ready.returncode == 0
    await running.stop()
    gone = await asyncio.create_subprocess_exec(
        *CLI, "status", "--url", f"http://127.0.0.1:{port}", stderr=asyncio.subprocess.PIPE
    )
    await gone.communicate()
    assert gone.returncode == 2


async def test_journal_retry_is_picked_up_within_a_second(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, tmp_path: Path
) -> None:
    """An operator retries a failed request from another process: the running connector notices the change to
    its journal (SQLite's data_version) and sends it again within a second, not at its next minute's upkeep."""
    journal = tmp_path / "journal.db"
    running = await RunningConnector(make_settings(broker, simulator, journal_path=str(journal))).wait_ready()
    try:
        await probe.publish("twilio/txt", sms("again", to="+15005550001"))  # the simulator's invalid number
        assert (await probe.status_of("again"))["response"]["twilio_error_code"] == 21211
        listed = await asyncio.create_subprocess_exec(
            *CLI, "journal", "--journal-path", str(journal), "list", "--state", "failed", stdout=asyncio.subprocess.PIPE
        )
        seq = json.loads((await listed.communicate())[0].splitlines()[0])["seq"]
        retried = await asyncio.create_subprocess_exec(
            *CLI,
            "journal",
            "--journal-path",
            str(journal),
            "retry",
            str(seq),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await retried.communicate()
        assert out.decode().strip() == f"request {seq} will be sent again", err
        started = asyncio.get_running_loop().time()
        await wait_until(lambda: len(simulator.created()) == 2, timeout=5)
        assert asyncio.get_running_loop().time() - started < 1.5
    finally:
        await running.stop()
