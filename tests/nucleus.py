"""A stand-in for the Greengrass nucleus's IPC server, for tests: the event-stream RPC protocol on a Unix socket,
spoken to the real awsiotsdk client inside the connector.

No nucleus can run here (it is a Java service needing a device identity). What this one serves is what the
connector uses, as the nucleus does: the event-stream framing (prelude, typed headers, CRC32s), CONNECT with the
component's token (`authToken`) answered by CONNECT_ACK (accepted, or the connection closed for a wrong token,
as the nucleus does), and the operations, each on its own stream id: SubscribeToTopic (a stream of
SubscriptionResponseMessage) and PublishToTopic; SubscribeToIoTCore (a stream of IoTCoreMessage) and
PublishToIoTCore, for messages from and to AWS IoT Core; GetSecretValue; UpdateState; SubscribeToComponentUpdates
(a stream of ComponentUpdatePolicyEvents) and DeferComponentUpdate. Message and header names are those of
awsiotsdk's generated model (`awsiot.greengrasscoreipc.model`). Not modelled: authorization policies
(accessControl), and the nucleus's side of a deployment (it only announces one: `announce_update`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

# :message-type values and :message-flags bits (aws-c-event-stream's rpc protocol).
APPLICATION_MESSAGE, APPLICATION_ERROR, CONNECT, CONNECT_ACK = 0, 1, 4, 5
CONNECTION_ACCEPTED, TERMINATE_STREAM = 1, 2
_TRUE, _FALSE, _INT32, _BYTES, _STRING = 0, 1, 4, 6, 7
MODEL = "aws.greengrass#"

Headers = dict[str, Any]


def encode(headers: Headers, payload: bytes = b"") -> bytes:
    """One event-stream message: prelude (lengths, CRC), headers, payload, CRC of the whole."""
    encoded = b""
    for name, value in headers.items():
        raw = name.encode()
        encoded += bytes([len(raw)]) + raw
        if isinstance(value, bool):
            encoded += bytes([_TRUE if value else _FALSE])
        elif isinstance(value, int):
            encoded += bytes([_INT32]) + struct.pack(">i", value)
        elif isinstance(value, bytes):
            encoded += bytes([_BYTES]) + struct.pack(">H", len(value)) + value
        else:
            text = str(value).encode()
            encoded += bytes([_STRING]) + struct.pack(">H", len(text)) + text
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _headers(raw: bytes) -> Headers:
    headers: Headers = {}
    at = 0
    while at < len(raw):
        size = raw[at]
        name = raw[at + 1 : at + 1 + size].decode()
        kind = raw[at + 1 + size]
        at += 2 + size
        if kind in (_TRUE, _FALSE):
            headers[name] = kind == _TRUE
        elif kind == _INT32:
            headers[name] = struct.unpack(">i", raw[at : at + 4])[0]
            at += 4
        elif kind in (_BYTES, _STRING):
            length = struct.unpack(">H", raw[at : at + 2])[0]
            value = raw[at + 2 : at + 2 + length]
            headers[name] = value.decode() if kind == _STRING else value
            at += 2 + length
        else:
            widths = {2: 1, 3: 2, 5: 8, 8: 8, 9: 16}
            headers[name] = raw[at : at + widths[kind]]
            at += widths[kind]
    return headers


async def read_message(reader: asyncio.StreamReader) -> tuple[Headers, bytes]:
    prelude = await reader.readexactly(12)
    total, headers_length, prelude_crc = struct.unpack(">III", prelude)
    if zlib.crc32(prelude[:8]) != prelude_crc:
        raise ValueError("prelude checksum")
    rest = await reader.readexactly(total - 12)
    if zlib.crc32(prelude + rest[:-4]) != struct.unpack(">I", rest[-4:])[0]:
        raise ValueError("message checksum")
    return _headers(rest[:headers_length]), rest[headers_length:-4]


@dataclass
class Nucleus:
    """The IPC server at `path`, taking components that present `token`."""

    path: str
    token: str
    secrets: dict[str, str] = field(default_factory=dict)
    #: Every message published to local pub/sub, by anyone: (topic, bytes).
    published: list[tuple[str, bytes]] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    #: Every message published to AWS IoT Core through the nucleus (PublishToIoTCore): (topic, bytes, qos).
    to_cloud: list[tuple[str, bytes, str]] = field(default_factory=list)
    #: DeferComponentUpdate requests: (deployment id, recheckAfterMs); 0 acknowledges the update.
    deferrals: list[tuple[str, int]] = field(default_factory=list)
    connections: int = 0
    _cloud_subscriptions: list[tuple[asyncio.StreamWriter, str, Callable[[str, bytes], None]]] = field(
        default_factory=list
    )
    _update_watchers: list[tuple[asyncio.StreamWriter, Callable[[str], None]]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _subscriptions: list[tuple[str, Callable[[str, bytes], None]]] = field(default_factory=list)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)

    async def stop(self) -> None:
        """The nucleus goes away: its socket closes, with every connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None
        self._subscriptions.clear()
        self._update_watchers.clear()
        self._subscribed.clear()

    async def subscribed(self, topic: str, timeout: float = 30.0) -> None:
        """Return once some component subscribes to `topic`."""
        while not any(wanted == topic for wanted, _ in self._subscriptions):
            self._subscribed.clear()
            await asyncio.wait_for(self._subscribed.wait(), timeout)

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish on local pub/sub as another component would; returns how many subscribers got it."""
        self.published.append((topic, payload))
        delivered = 0
        for wanted, deliver in list(self._subscriptions):
            if wanted == topic:
                deliver(topic, payload)
                delivered += 1
        return delivered

    def from_cloud(self, topic: str, payload: bytes) -> int:
        """A message from AWS IoT Core on `topic`, as the nucleus's MQTT connection receives it."""
        delivered = 0
        for _, wanted, deliver in list(self._cloud_subscriptions):
            if wanted == topic:
                deliver(topic, payload)
                delivered += 1
        return delivered

    async def subscribed_in_cloud(self, topic: str, timeout: float = 30.0) -> None:
        while not any(wanted == topic for _, wanted, _ in self._cloud_subscriptions):
            self._subscribed.clear()
            await asyncio.wait_for(self._subscribed.wait(), timeout)

    def announce_update(self, deployment_id: str) -> int:
        """A deployment will update the component: tell the subscribers (PreComponentUpdateEvent)."""
        for _, notify in list(self._update_watchers):
            notify(deployment_id)
        return len(self._update_watchers)

    def on_topic(self, topic: str) -> list[bytes]:
        return [payload for published, payload in self.published if published == topic]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        mine: list[tuple[str, Callable[[str, bytes], None]]] = []
        try:
            headers, payload = await read_message(reader)
            if headers.get(":message-type") != CONNECT or orjson.loads(payload).get("authToken") != self.token:
                return  # the nucleus closes the connection of a component it does not know
            self.connections += 1
            writer.write(encode({":message-type": CONNECT_ACK, ":message-flags": CONNECTION_ACCEPTED, ":stream-id": 0}))
            while True:
                headers, payload = await read_message(reader)
                if headers.get(":message-type") == APPLICATION_MESSAGE and "operation" in headers:
                    self._operation(writer, headers, orjson.loads(payload or b"{}"), mine)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.CancelledError):
            pass  # the component left, spoke nonsense, or the nucleus stops
        finally:
            for subscription in mine:
                with contextlib.suppress(ValueError):
                    self._subscriptions.remove(subscription)
            self._update_watchers = [(owner, notify) for owner, notify in self._update_watchers if owner is not writer]
            self._cloud_subscriptions = [entry for entry in self._cloud_subscriptions if entry[0] is not writer]
            self._writers.discard(writer)
            writer.close()

    def _operation(
        self,
        writer: asyncio.StreamWriter,
        headers: Headers,
        request: dict[str, Any],
        mine: list[tuple[str, Callable[[str, bytes], None]]],
    ) -> None:
        stream, operation = headers[":stream-id"], headers["operation"].removeprefix(MODEL)

        def reply(model: str, document: dict[str, Any], flags: int = 0, kind: int = APPLICATION_MESSAGE) -> None:
            if writer.is_closing():
                return
            writer.write(
                encode(
                    {
                        ":message-type": kind,
                        ":message-flags": flags,
                        ":stream-id": stream,
                        ":content-type": "application/json",
                        "service-model-type": MODEL + model,
                    },
                    orjson.dumps(document),
                )
            )

        if operation == "SubscribeToTopic":
            topic = request["topic"]

            def deliver(published: str, payload: bytes) -> None:
                message = {"message": base64.b64encode(payload).decode(), "context": {"topic": published}}
                reply("SubscriptionResponseMessage", {"binaryMessage": message})

            subscription = (topic, deliver)
            reply("SubscribeToTopicResponse", {"topicName": topic})
            self._subscriptions.append(subscription)
            mine.append(subscription)
            self._subscribed.set()
        elif operation == "PublishToTopic":
            message = request["publishMessage"]
            if "binaryMessage" in message:
                body = base64.b64decode(message["binaryMessage"]["message"])
            else:
                body = orjson.dumps(message["jsonMessage"]["message"])
            reply("PublishToTopicResponse", {}, TERMINATE_STREAM)
            self.publish(request["topic"], body)
        elif operation == "GetSecretValue":
            secret = self.secrets.get(request["secretId"])
            if secret is None:
                error = {"message": f"secret {request['secretId']} not found", "_errorCode": "ResourceNotFoundError"}
                reply("ResourceNotFoundError", error, TERMINATE_STREAM, APPLICATION_ERROR)
                return
            answer = {"secretId": request["secretId"], "versionId": "v1", "versionStage": ["AWSCURRENT"]}
            reply("GetSecretValueResponse", {**answer, "secretValue": {"secretString": secret}}, TERMINATE_STREAM)
        elif operation == "SubscribeToIoTCore":
            wanted = request["topicName"]

            def from_cloud(topic: str, payload: bytes) -> None:
                message = {"topicName": topic, "payload": base64.b64encode(payload).decode()}
                reply("IoTCoreMessage", {"message": message})

            reply("SubscribeToIoTCoreResponse", {})
            self._cloud_subscriptions.append((writer, wanted, from_cloud))
            self._subscribed.set()
        elif operation == "PublishToIoTCore":
            self.to_cloud.append((request["topicName"], base64.b64decode(request.get("payload", "")), request["qos"]))
            reply("PublishToIoTCoreResponse", {}, TERMINATE_STREAM)
        elif operation == "SubscribeToComponentUpdates":

            def notify(deployment_id: str) -> None:
                event = {"deploymentId": deployment_id, "isGgcRestarting": False}
                reply("ComponentUpdatePolicyEvents", {"preUpdateEvent": event})

            reply("SubscribeToComponentUpdatesResponse", {})
            self._update_watchers.append((writer, notify))
        elif operation == "DeferComponentUpdate":
            self.deferrals.append((request["deploymentId"], int(request.get("recheckAfterMs") or 0)))
            reply("DeferComponentUpdateResponse", {}, TERMINATE_STREAM)
        elif operation == "UpdateState":
            self.states.append(request["state"])
            reply("UpdateStateResponse", {}, TERMINATE_STREAM)
        else:
            reply("ServiceError", {"message": f"{operation} is not served here"}, TERMINATE_STREAM, APPLICATION_ERROR)
