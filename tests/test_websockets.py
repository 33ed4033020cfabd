"""MQTT over WebSockets, and ALPN on 443, as a user behind a firewall that opens only 443 meets them: the
connector and `send` through a real WebSocket listener (tests/ws_relay.py, aiohttp's server, in front of a
real Mosquitto), over ws:// and wss://, with the handshake's path and headers; and the ALPN name AWS IoT Core
needs offered in a real TLS handshake."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from conftest import (
    CLI,
    Broker,
    ConnectorProcess,
    MqttProbe,
    SimulatorHandle,
    clean_env,
    free_port,
    sms,
    wait_for_port,
)
from twilio_connector.mqtt.tls import TlsFiles
from twilio_connector.mqtt.wire import MqttOptions, paho_client
from twilio_connector.settings.config import ConfigError, load_settings
from twilio_connector.settings.parsers import BrokerAddress, header_table, headers
from twilio_connector.settings.secrets import Secret

RELAY = Path(__file__).with_name("ws_relay.py")
TOKEN = "Bearer ws-t0ken-secret"


@dataclass
class Relay:
    """tests/ws_relay.py as a process in front of `broker`; `handshakes` are the headers each client sent."""

    broker: Broker
    tls: tuple[str, str] | None = None
    port: int = field(default_factory=free_port)
    handshakes: list[dict[str, str]] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            str(RELAY),
            str(self.port),
            str(self.broker.port),
            "--header",
            f"Authorization: {TOKEN}",
        ]
        if self.tls:
            command += ["--cert", self.tls[0], "--key", self.tls[1]]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        wait_for_port(self.port)

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.handshakes.append(json.loads(line))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def url(self, path: str = "/mqtt") -> str:
        return f"{'wss' if self.tls else 'ws'}://localhost:{self.port}{path}"


@pytest.fixture
def relay(broker: Broker) -> Iterator[Relay]:
    relay = Relay(broker)
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture
def ca(tmp_path: Path) -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_relay(broker: Broker, ca: trustme.CA, tmp_path: Path) -> Iterator[Relay]:
    cert, key = tmp_path / "relay.pem", tmp_path / "relay.key"
    issued = ca.issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    relay = Relay(broker, (str(cert), str(key)))
    relay.start()
    yield relay
    relay.stop()


def headers_env(value: str = TOKEN) -> dict[str, str]:
    return {"TWILIO_CONNECTOR_BROKER_HEADERS": json.dumps({"Authorization": value})}


async def test_the_connector_works_through_wss_with_the_handshake_headers_and_keeps_them_secret(
    broker: Broker,
    probe: MqttProbe,
    tls_relay: Relay,
    ca: trustme.CA,
    simulator: SimulatorHandle,
    tmp_path: Path,
    spawned: list[ConnectorProcess],
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    log = tmp_path / "connector.log"
    connector = ConnectorProcess(
        broker,
        simulator,
        tmp_path / "j.db",
        log,
        "--broker",
        tls_relay.url(),
        "--ca-file",
        str(ca_file),
        **headers_env(),
    )
    spawned.append(connector)
    await connector.ready()
    await probe.publish("twilio/txt", sms("over-wss"))  # the probe is on Mosquitto's own TCP listener
    assert (await probe.status_of("over-wss"))["response"]["status"] == "success"
    handshake = tls_relay.handshakes[0]
    assert handshake["Sec-WebSocket-Protocol"] == "mqtt" and handshake["Authorization"] == TOKEN
    assert "ws-t0ken-secret" not in log.read_text()


async def test_the_connector_comes_back_when_the_websocket_listener_restarts(
    broker: Broker,
    probe: MqttProbe,
    relay: Relay,
    simulator: SimulatorHandle,
    tmp_path: Path,
    spawned: list[ConnectorProcess],
) -> None:
    log = tmp_path / "connector.log"
    connector = ConnectorProcess(broker, simulator, tmp_path / "j.db", log, "--broker", relay.url(), **headers_env())
    spawned.append(connector)
    await connector.ready()
    relay.stop()
    relay.start()
    await probe.publish("twilio/txt", sms("after-restart"))
    assert (await probe.status_of("after-restart", timeout=60))["response"]["status"] == "success"
    assert len(relay.handshakes) >= 2  # it opened a second WebSocket


async def test_send_over_websockets_and_the_listener_s_refusals_in_words(
    broker: Broker, relay: Relay, simulator: SimulatorHandle, tmp_path: Path, spawned: list[ConnectorProcess]
) -> None:
    connector = ConnectorProcess(broker, simulator, tmp_path / "j.db", tmp_path / "c.log")
    spawned.append(connector)
    await connector.ready()
    message = ["--to", "+12345000000", "--message", "over ws", "--timeout", "20"]

    def send(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        command = [*CLI, "send", "--broker", *args, *message]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=clean_env(**env))

    loop = asyncio.get_running_loop()
    sent = await loop.run_in_executor(None, lambda: send(relay.url(), env=headers_env()))
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["response"]["status"] == "success"
    unauthorised = await loop.run_in_executor(None, lambda: send(relay.url(), env=headers_env("Bearer wrong")))
    # paho keeps no HTTP status of a refused handshake: the words say what to check
    assert unauthorised.returncode == 2 and "WebSocket handshake error" in unauthorised.stderr
    assert "accept broker_headers?" in unauthorised.stderr and "wrong" not in unauthorised.stderr
    elsewhere = await loop.run_in_executor(None, lambda: send(relay.url("/other"), env=headers_env()))
    assert elsewhere.returncode == 2 and "take WebSockets at /other" in elsewhere.stderr


def test_alpn_is_offered_in_the_tls_handshake(ca: trustme.CA, tmp_path: Path) -> None:
    """AWS IoT Core on 443 takes MQTT with a client certificate only when the ClientHello names x-amzn-mqtt-ca."""
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(served)
    served.set_alpn_protocols(["x-amzn-mqtt-ca", "mqtt"])
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    chosen: list[str | None] = []

    async def handshake(port: int, alpn: str) -> None:
        seen = asyncio.Event()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            chosen.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
            seen.set()
            writer.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", port, ssl=served)
        options = MqttOptions(
            f"mqtts://localhost:{port}", "c", "5", None, None, TlsFiles(str(ca_file)), 0, 10, alpn=alpn
        )
        client = paho_client(options)
        await asyncio.get_running_loop().run_in_executor(None, client.connect, "localhost", port)
        await asyncio.wait_for(seen.wait(), 10)
        client.socket().close()
        server.close()

    asyncio.run(handshake(free_port(), "x-amzn-mqtt-ca"))
    asyncio.run(handshake(free_port(), "auto"))  # auto names it for AWS IoT Core only
    assert chosen == ["x-amzn-mqtt-ca", None]


def test_broker_urls_for_each_transport() -> None:
    assert BrokerAddress.parse("wss://a1b2-ats.iot.eu-west-1.amazonaws.com/mqtt") == BrokerAddress(
        True, "a1b2-ats.iot.eu-west-1.amazonaws.com", 443, True, "/mqtt"
    )
    assert BrokerAddress.parse("ws://edge:8080") == BrokerAddress(False, "edge", 8080, True, "/mqtt")
    assert BrokerAddress.parse("ws://edge/ws?x-amz-customauthorizer-name=a").path == "/ws?x-amz-customauthorizer-name=a"
    with pytest.raises(ValueError, match="only ws:// and wss://"):
        BrokerAddress.parse("mqtt://edge:1883/mqtt")
    with pytest.raises(ValueError, match="wss://host:port/path"):
        BrokerAddress.parse("http://edge")
    aws = BrokerAddress.parse("mqtts://a1b2-ats.iot.eu-west-1.amazonaws.com:443")
    assert aws.alpn("auto") == ["x-amzn-mqtt-ca"] and aws.alpn("none") == []
    assert BrokerAddress.parse("mqtts://a1b2-ats.iot.eu-west-1.amazonaws.com").alpn("auto") == []  # 8883 needs none
    assert BrokerAddress.parse("mqtts://broker:443").alpn("mqtt,x-y") == ["mqtt", "x-y"]


def test_headers_are_a_table_or_json_kept_secret_and_need_a_websocket_broker() -> None:
    secret = headers({"Authorization": "Bearer x", "X-Site": "7"})
    assert isinstance(secret, Secret) and "Bearer" not in repr(secret)
    assert header_table(secret) == {"Authorization": "Bearer x", "X-Site": "7"}
    assert header_table(headers('{"X-Site": "7"}')) == {"X-Site": "7"}
    for bad in ("Authorization: x", {"Bad Name": "x"}, {"X": "a\r\nInjected: y"}, {"X": 1}):
        with pytest.raises(ValueError):
            headers(bad)
    env = {"TWILIO_CONNECTOR_BROKER_HEADERS": '{"Authorization": "Bearer hidden"}'}
    with pytest.raises(ConfigError, match="need a ws:// or wss://") as refused:
        load_settings(None, env, {"broker_url": "mqtt://localhost:1883"})
    assert "hidden" not in str(refused.value)
    settings = load_settings(None, env, {"broker_url": "wss://localhost/mqtt"})
    assert header_table(settings.broker_headers) == {"Authorization": "Bearer hidden"}
