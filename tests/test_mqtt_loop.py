"""paho driven by the event loop (mqtt/loop.py), against a stand-in broker that speaks MQTT 3.1.1 over a real
socket: what paho queues goes out at once, and what the socket does not take goes out once the broker reads."""

from __future__ import annotations

import asyncio

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from twilio_connector.mqtt.loop import LoopBinding

CONNACK = b"\x20\x02\x00\x00"  # session present 0, accepted


class SlowBroker:
    """Answers CONNECT, then reads nothing until `read` is set, then counts what arrives."""

    def __init__(self) -> None:
        self.read = asyncio.Event()
        self.received = 0
        self.got = asyncio.Event()
        self.expected = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(2)  # CONNECT's fixed header (its length fits one byte here)
        await reader.readexactly(header[1])
        writer.write(CONNACK)
        await writer.drain()
        await self.read.wait()
        while chunk := await reader.read(1 << 16):
            self.received += len(chunk)
            if self.received >= self.expected:
                self.got.set()


async def test_what_the_socket_does_not_take_goes_out_once_the_broker_reads() -> None:
    broker = SlowBroker()
    server = await asyncio.start_server(broker.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv311)
    connected = asyncio.Event()
    loop = asyncio.get_running_loop()
    client.on_connect = lambda *_: loop.call_soon(connected.set)
    binding = LoopBinding(client)
    try:
        client.connect_async("127.0.0.1", port, keepalive=60)
        await binding.open()
        await asyncio.wait_for(connected.wait(), 10)
        payload = b"x" * (16 << 20)  # far more than a socket's buffers hold
        client.publish("alerts", payload, qos=0)
        broker.expected = len(payload)
        await asyncio.sleep(0)  # the write is made in the next loop round: the socket takes what it can
        assert client.want_write()  # the rest waits in paho, for the socket to be writable
        broker.read.set()
        await asyncio.wait_for(broker.got.wait(), 30)
        assert broker.received >= len(payload)
        assert not client.want_write()
    finally:
        client.disconnect()
        binding.close()
        server.close()
