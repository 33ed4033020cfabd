"""Broker faults the connector must survive and report: a subscription the broker refuses; a broker that takes
the connection and never answers it; a broker gone for longer than `broker_give_up`.

Mosquitto's ACLs do not refuse a SUBSCRIBE (they filter what is delivered; only an auth plugin can refuse), so a
minimal MQTT 5 broker stands in for one that does (EMQX, HiveMQ and AWS IoT Core answer 0x87 Not authorized).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson
import pytest

from conftest import (
    Broker,
    ConnectorProcess,
    RunningConnector,
    SimulatorHandle,
    free_port,
    make_settings,
    sms,
    until_ready_is,
    wait_until,
)
from twilio_connector.mqtt import session as transport


class RefusingBroker:
    """Speaks just enough MQTT 5 to connect, and refuses subscriptions to the topics in `deny` (0x87)."""

    def __init__(self) -> None:
        self.deny: set[str] = set()
        self.silent = False  # take connections, answer nothing (no CONNACK)
        self.ack_publishes = True  # False: take publishes and never acknowledge them
        self.requests: list[tuple[str, bytes]] = []  # delivered (QoS 1) after the next SUBACK, once
        self.published: list[tuple[bool, str, bytes]] = []  # what the connector published: (dup, topic, payload)
        self.connects = 0
        self.subscribes = 0
        self.port = free_port()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header, body = await _packet(reader)
                kind = header >> 4
                if kind == 1:  # CONNECT -> CONNACK: no session present, success, no properties
                    self.connects += 1
                    if self.silent:
                        continue
                    writer.write(bytes([0x20, 3, 0, 0, 0]))
                elif kind == 8:  # SUBSCRIBE -> SUBACK with a reason code per topic, then the requests
                    self.subscribes += 1
                    writer.write(self._suback(body))
                    for packet_id, (topic, payload) in enumerate(self.requests, start=1):
                        writer.write(_publish(topic, payload, packet_id))
                    self.requests.clear()
                elif kind == 3:  # PUBLISH (QoS 1) -> PUBACK, unless told otherwise
                    dup, (topic, packet_id, payload) = bool(header & 0x08), _parse_publish(body)
                    self.published.append((dup, topic, payload))
                    if self.ack_publishes:
                        writer.write(bytes([0x40, 2]) + packet_id)
                elif kind == 12:  # PINGREQ
                    writer.write(bytes([0xD0, 0]))
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
        writer.close()

    def _suback(self, body: bytes) -> bytes:
        packet_id, (length, offset) = body[:2], _varint(body, 2)
        position, codes = offset + length, []
        while position < len(body):
            size = int.from_bytes(body[position : position + 2], "big")
            topic = body[position + 2 : position + 2 + size].decode()
            codes.append(0x87 if topic in self.deny else 0x01)
            position += 2 + size + 1  # the topic, then its options byte
        payload = packet_id + b"\x00" + bytes(codes)
        return bytes([0x90, len(payload)]) + payload


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    """A variable byte integer at `offset`: its value, and the offset after it."""
    value, shift = 0, 0
    while True:
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset += 1
        if not byte & 0x80:
            return value, offset
        shift += 7


async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return header, await reader.readexactly(length)


def _publish(topic: str, payload: bytes, packet_id: int) -> bytes:
    """A QoS 1 PUBLISH (MQTT 5, no properties)."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + packet_id.to_bytes(2, "big") + b"\x00" + payload
    return bytes([0x32]) + _length(len(body)) + body


def _length(value: int) -> bytes:
    encoded = bytearray()
    while True:
        value, byte = value >> 7, value & 0x7F
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def _parse_publish(body: bytes) -> tuple[str, bytes, bytes]:
    """A QoS 1 PUBLISH's topic, packet id (2 bytes) and payload (MQTT 5: properties skipped)."""
    size = int.from_bytes(body[:2], "big")
    topic, packet_id = body[2 : 2 + size].decode(), body[2 + size : 4 + size]
    length, offset = _varint(body, 4 + size)
    return topic, packet_id, body[offset + length :]


async def test_a_refused_subscription_is_reported_and_retried(
    tmp_path: Path, simulator: SimulatorHandle, caplog: object
) -> None:
    """The broker refuses the call topic: the connector says it is not ready and why (in /readyz and the log),
    and subscribes again, with backoff, until the broker allows it."""
    broker = RefusingBroker()
    broker.deny.add("twilio/call")
    await broker.start()
    port = free_port()
    settings = make_settings(broker, simulator, metrics_listen=f"127.0.0.1:{port}")  # type: ignore[arg-type]
    running = RunningConnector(settings)
    try:
        document = await until_ready_is(port, 503, problem="subscription")
        assert document["checks"] == {
            "broker_connected": True,
            "subscribed": False,
            "journal_writable": True,
            "loops_running": True,
            "nothing_stalled": True,
            "credentials_accepted": True,
        }
        assert document["problems"] == ["the broker refused the subscription to twilio/call (Not authorized)"]
        broker.deny.clear()
        await until_ready_is(port, 200, timeout=15)  # the next attempt, 2 s later, is granted
        assert broker.subscribes >= 2
    finally:
        await running.stop()
        await broker.stop()
    log = str(caplog.text)  # type: ignore[attr-defined]
    assert "the broker refused the subscription to twilio/call (Not authorized): not ready; subscribing again" in log


async def test_a_broker_that_never_answers_connect_is_retried(
    simulator: SimulatorHandle, monkeypatch: pytest.MonkeyPatch, caplog: object
) -> None:
    monkeypatch.setattr(transport, "CONNACK_TIMEOUT", 0.5)
    broker = RefusingBroker()
    broker.silent = True
    await broker.start()
    running = RunningConnector(make_settings(broker, simulator))  # type: ignore[arg-type]
    try:
        await wait_until(lambda: broker.connects >= 2, timeout=15)  # gave up on the first, tried again
        assert not running.ready.is_set()
        broker.silent = False
        await running.wait_ready()
    finally:
        await running.stop()
        await broker.stop()
    assert "took the connection but sent no CONNACK within 0.5 s" in str(caplog.text)  # type: ignore[attr-defined]


async def test_a_status_never_acknowledged_is_sent_again_on_a_new_connection(
    simulator: SimulatorHandle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker keeps the connection (answers pings) but never acknowledges our status: after PUBLISH_TIMEOUT
    the connection is taken for dead and opened again, and the status sent again there (DUP), once."""
    monkeypatch.setattr(transport, "PUBLISH_TIMEOUT", 1.0)
    broker = RefusingBroker()
    broker.ack_publishes = False
    broker.requests.append(("twilio/txt", orjson.dumps(sms("stuck"))))
    await broker.start()
    running = await RunningConnector(make_settings(broker, simulator)).wait_ready()  # type: ignore[arg-type]
    try:
        await wait_until(lambda: len(broker.published) == 1, timeout=10)
        broker.ack_publishes = True
        await wait_until(lambda: len(broker.published) == 2, timeout=10)
    finally:
        await running.stop()
        await broker.stop()
    (first_dup, topic, first), (second_dup, _, second) = broker.published
    assert topic == "twilio/message/status" and first == second and orjson.loads(first)["id"] == "stuck"
    assert (first_dup, second_dup) == (False, True)
    assert broker.connects == 2 and len(simulator.created()) == 1
    assert "the broker acknowledged no status for 1 s; connecting again" in caplog.text


async def test_a_status_acknowledged_behind_a_flood_of_requests_is_not_taken_for_a_dead_broker(
    simulator: SimulatorHandle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker resuming a session floods us with requests, and its PUBACKs for our statuses come behind them in
    the stream: while we are still reading what it sent, an unacknowledged status proves nothing. (Seen with
    Mosquitto draining a 100,000-request backlog: reconnections in the middle of the drain.)"""
    monkeypatch.setattr(transport, "PUBLISH_TIMEOUT", 1.0)
    simulator.sim.latency = 0.1
    broker = RefusingBroker()
    broker.requests.extend(("twilio/txt", orjson.dumps(sms(f"flood-{n}"))) for n in range(60))
    await broker.start()
    # Two at a time and a backlog of two: reading stops while they are sent, so the whole flood takes ~3 s to
    # read, and the PUBACK of the first status (published after ~0.1 s) is read only after it.
    settings = make_settings(broker, simulator, max_in_flight=2, max_backlog=2)  # type: ignore[arg-type]
    running = await RunningConnector(settings).wait_ready()
    try:
        await wait_until(lambda: len(broker.published) >= 60, timeout=30)
    finally:
        await running.stop()
        await broker.stop()
    assert broker.connects == 1
    assert sorted(orjson.loads(payload)["id"] for _, _, payload in broker.published) == sorted(
        f"flood-{n}" for n in range(60)
    )
    assert "acknowledged no status" not in caplog.text


async def test_broker_give_up_exits_non_zero_so_a_supervisor_can_act(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path, spawned: list[ConnectorProcess]
) -> None:
    log = tmp_path / "connector.log"
    log.write_text("run:\n")
    connector = ConnectorProcess(broker, simulator, tmp_path / "journal.db", log, TWILIO_CONNECTOR_BROKER_GIVE_UP="1.5")
    spawned.append(connector)
    await connector.ready()
    broker.stop()
    code = await asyncio.get_running_loop().run_in_executor(None, connector.process.wait, 30)
    assert code == 1
    last = log.read_text().strip().splitlines()[-1]
    assert "no connection to the broker" in last and "for 1.5 s (broker_give_up)" in last
