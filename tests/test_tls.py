"""TLS to the broker: server verification against a CA, mutual TLS, and a clear refusal of a wrong CA."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from conftest import CLI, Broker, MqttProbe, RunningConnector, SimulatorHandle, clean_env, free_port, make_settings, sms
from twilio_connector.mqtt.session import BrokerError
from twilio_connector.settings.schema import Settings
from twilio_connector.settings.secrets import Secret


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("twilio-connector")
    files = {
        "ca": tmp_path / "ca.pem",
        "server_cert": tmp_path / "server.pem",
        "server_key": tmp_path / "server.key",
        "client_cert": tmp_path / "client.pem",
        "client_key": tmp_path / "client.key",
        "other_ca": tmp_path / "other-ca.pem",
    }
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["server_cert"])
    server.private_key_pem.write_to_path(files["server_key"])
    client.cert_chain_pems[0].write_to_path(files["client_cert"])
    client.private_key_pem.write_to_path(files["client_key"])
    trustme.CA().cert_pem.write_to_path(files["other_ca"])
    expired = ca.issue_cert(
        "127.0.0.1", not_before=datetime.datetime(2020, 1, 1), not_after=datetime.datetime(2021, 1, 1)
    )
    files["expired_cert"], files["expired_key"] = tmp_path / "expired.pem", tmp_path / "expired.key"
    expired.cert_chain_pems[0].write_to_path(files["expired_cert"])
    expired.private_key_pem.write_to_path(files["expired_key"])
    return {name: str(path) for name, path in files.items()}


def tls_broker_on(directory: Path, pki: dict[str, str], cert: str, key: str, extra: str = "") -> tuple[Broker, int]:
    """A Mosquitto with a plain listener (for probes) and a TLS listener presenting `cert`, started."""
    directory.mkdir()
    tls_port = free_port()
    broker = Broker(
        directory,
        extra_config=f"listener {tls_port} 127.0.0.1\ncafile {pki['ca']}\ncertfile {pki[cert]}\n"
        f"keyfile {pki[key]}\n{extra}",
    )
    broker.start()
    return broker, tls_port


@pytest.fixture
def tls_broker(tmp_path: Path, pki: dict[str, str]) -> Iterator[tuple[Broker, int]]:
    broker, tls_port = tls_broker_on(
        tmp_path / "tls-broker", pki, "server_cert", "server_key", "require_certificate true\n"
    )
    yield broker, tls_port
    broker.stop()


def mutual_tls(tls_broker: tuple[Broker, int], pki: dict[str, str], simulator: SimulatorHandle, ca: str) -> Settings:
    broker, tls_port = tls_broker
    return make_settings(
        broker,
        simulator,
        broker_url=f"mqtts://127.0.0.1:{tls_port}",
        ca_file=pki[ca],
        cert_file=pki["client_cert"],
        key_file=pki["client_key"],
    )


async def test_mutual_tls(tls_broker: tuple[Broker, int], pki: dict[str, str], simulator: SimulatorHandle) -> None:
    probe = MqttProbe(tls_broker[0].url)  # watches statuses on the plain listener
    await probe.start()
    running = await RunningConnector(mutual_tls(tls_broker, pki, simulator, "ca")).wait_ready()
    await probe.publish("twilio/txt", sms("tls1"))
    assert (await probe.status_of("tls1"))["response"]["status"] == "success"
    await running.stop()
    await probe.stop()


async def test_wrong_ca_is_a_clear_error_not_a_retry_loop(
    tls_broker: tuple[Broker, int], pki: dict[str, str], simulator: SimulatorHandle
) -> None:
    running = RunningConnector(mutual_tls(tls_broker, pki, simulator, "other_ca"))
    with pytest.raises(BrokerError, match=r"TLS certificate check failed for 127\.0\.0\.1"):
        await running.wait_ready()


async def test_username_and_password(tmp_path: Path, simulator: SimulatorHandle) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "connector", "pw-secret"], check=True)
    directory = tmp_path / "auth-broker"
    directory.mkdir()
    auth_port = free_port()
    broker = Broker(
        directory,
        extra_config=f"listener {auth_port} 127.0.0.1\npassword_file {passwords}\nper_listener_settings false\n",
    )
    broker.start()
    try:
        probe = MqttProbe(broker.url)
        await probe.start()
        good = make_settings(
            broker,
            simulator,
            broker_url=f"mqtt://127.0.0.1:{auth_port}",
            mqtt_username="connector",
            mqtt_password=Secret("pw-secret"),
        )
        running = await RunningConnector(good).wait_ready()
        await probe.publish("twilio/txt", sms("auth1"))
        assert (await probe.status_of("auth1"))["response"]["status"] == "success"
        await running.stop()
        await probe.stop()
        bad = replace(good, mqtt_password=Secret("wrong"))
        with pytest.raises(BrokerError, match="broker refused the connection"):
            await RunningConnector(bad).wait_ready()
    finally:
        broker.stop()


async def test_expired_broker_certificate_is_refused(
    tmp_path: Path, pki: dict[str, str], simulator: SimulatorHandle
) -> None:
    broker, tls_port = tls_broker_on(tmp_path / "expired-broker", pki, "expired_cert", "expired_key")
    try:
        settings = make_settings(broker, simulator, broker_url=f"mqtts://127.0.0.1:{tls_port}", ca_file=pki["ca"])
        with pytest.raises(BrokerError, match="certificate has expired"):
            await RunningConnector(settings).wait_ready()
    finally:
        broker.stop()


async def test_send_reaches_a_secured_broker_with_the_connectors_own_configuration(
    tls_broker: tuple[Broker, int], pki: dict[str, str], simulator: SimulatorHandle, tmp_path: Path
) -> None:
    """`send --config connector.toml` uses the broker exactly as the connector does: mqtts, the CA, the client
    certificate, the topics (it printed "unrecognized arguments: --ca-file" before)."""
    running = await RunningConnector(
        replace(mutual_tls(tls_broker, pki, simulator, "ca"), txt_topic="site-7/txt", status_topic="site-7/status")
    ).wait_ready()
    config = tmp_path / "connector.toml"
    config.write_text(
        f'broker_url = "mqtts://127.0.0.1:{tls_broker[1]}"\nca_file = "{pki["ca"]}"\n'
        f'cert_file = "{pki["client_cert"]}"\nkey_file = "{pki["client_key"]}"\n'
        'txt_topic = "site-7/txt"\nstatus_topic = "site-7/status"\n'
    )
    try:
        loop = asyncio.get_running_loop()
        command = [*CLI, "send", "--config", str(config), "--to", "+12345000000", "--message", "over TLS"]
        sent = await loop.run_in_executor(None, lambda: cli_run(command))
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["response"]["status"] == "success"
        flags = [*CLI, "send", "--broker", f"mqtts://127.0.0.1:{tls_broker[1]}", "--ca-file", pki["other_ca"]]
        wrong = await loop.run_in_executor(None, lambda: cli_run([*flags, "--to", "+12345000000", "--message", "x"]))
        assert wrong.returncode == 2 and "certificate" in wrong.stderr.lower()
    finally:
        await running.stop()


def cli_run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=clean_env())
