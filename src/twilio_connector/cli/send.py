"""`twilio-connector send`: publish one request as a device would, and print its status (a smoke test)."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import uuid
from dataclasses import replace
from typing import Any

import paho.mqtt.client as paho

from .. import service
from ..mqtt.wire import connection_hint, paho_client
from ..settings.schema import Settings
from .common import EXIT_FAILURE, UserError, settings_from

__all__ = ["send"]


def send(args: argparse.Namespace) -> int:
    """Publish one request as a device would and wait for its status. Exit 0: success status; 1: failure status;
    2: no status (unreachable or refusing broker, timeout)."""
    settings = settings_from(args)
    request_id = args.id or f"send-{uuid.uuid4().hex[:12]}"
    body = json.dumps({"request": _request(args), "id": request_id})
    topic = args.topic_prefix + (settings.txt_topic if args.message is not None else settings.call_topic)
    answer = _exchange(args, settings, topic, body, request_id)
    print(answer.decode())
    return 0 if json.loads(answer)["response"]["status"] == "success" else EXIT_FAILURE


def _request(args: argparse.Namespace) -> dict[str, Any]:
    recipient: dict[str, str] = {"name": "twilio-connector send", "phone_number": args.to}
    if args.message is not None:
        recipient["message"] = args.message
    else:
        recipient["voice_message_location"] = args.call_url
    request: dict[str, Any] = {"recipient": recipient}
    if args.from_number:
        request["from_number"] = args.from_number
    return request


def _exchange(args: argparse.Namespace, settings: Settings, topic: str, body: str, request_id: str) -> bytes:
    """Subscribe to the statuses, publish the request, return its status (paho's own blocking loop)."""
    address = settings.broker
    answer: list[bytes] = []
    refused: list[str] = []
    closed: list[bool] = []

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        else:
            client.subscribe(args.topic_prefix + settings.status_topic, qos=1)

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        client.publish(topic, body, qos=1)  # subscribed first: the answer cannot be missed

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            if json.loads(message.payload).get("id") == request_id:
                answer.append(bytes(message.payload))

    def on_disconnect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        closed.append(True)

    options = replace(service.mqtt_options(settings), client_id=f"twilio-connector-send-{uuid.uuid4().hex[:8]}")
    client = paho_client(options, persistent=False)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.on_disconnect = on_disconnect
    where = f"the broker at {settings.broker_url}"
    try:
        client.connect(address.host, address.port)
        deadline = time.monotonic() + args.timeout
        while not (answer or refused or closed) and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    except OSError as exc:
        reason = exc.strerror or getattr(exc, "reason", None) or str(exc) or exc.__class__.__name__
        raise UserError(f"cannot reach {where}: {reason}{connection_hint(address, exc)}") from None
    finally:
        broker_closed = bool(closed)  # what the broker did, not our own DISCONNECT below
        client.disconnect()
    if refused:
        raise UserError(f"{where} refused the connection ({refused[0]})")
    if broker_closed and not answer:
        raise UserError(f"{where} closed the connection{connection_hint(address, ConnectionResetError())}")
    if not answer:
        raise UserError(f"no status for {request_id} within {args.timeout:g} s: is a connector running?")
    return answer[0]
