"""MQTT transport over gmqtt: persistent session, QoS 1 in and out, acknowledgement after processing.

gmqtt is used because it can hold a QoS 1 PUBACK until our handler returns
(`optimistic_acknowledgement=False`), so a request the process dies on is redelivered by the broker;
and because it is the cheapest Python MQTT client per message (~86 us here, against ~176 us for paho).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.storage import PersistentStorage

from .config import Settings

__all__ = ["BrokerError", "MqttTransport"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: handler(topic, payload, redelivered): `redelivered` is the PUBLISH's DUP flag, set by a broker sending again a
#: message it sent before without an acknowledgement.
Handler = Callable[[str, bytes, bool], Awaitable[None]]

READ_SIZE = 16 * 1024
RECONNECT_BASE = 0.25
RECONNECT_CAP = 30.0
SUBSCRIBE_RETRY_BASE, SUBSCRIBE_RETRY_CAP = 2.0, 60.0
#: Seconds to wait for the broker's CONNACK: a broker (or a proxy) may take the TCP connection and never answer.
CONNACK_TIMEOUT = 10.0
#: SUBACK reason codes (MQTT 5; 3.1.1 knows only 0x80) worth naming in a log line.
_SUBACK_REASONS = {
    0x80: "refused",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x8F: "topic filter invalid",
    0x91: "packet identifier in use",
    0x97: "quota exceeded",
    0x9E: "shared subscriptions not supported",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}


class BrokerError(Exception):
    """A broker problem that retrying cannot fix (refused credentials, failed certificate check)."""


def tls_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.ca_file)
    if settings.cert_file and settings.key_file:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    return context


class _Outbox(PersistentStorage):  # type: ignore[misc]
    """gmqtt's store of unacknowledged QoS 1 publishes, resolving a future when the broker acknowledges one."""

    def __init__(self) -> None:
        super().__init__()
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.id_waiters: deque[asyncio.Future[None]] = deque()  # publishes waiting for a free packet id

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        while self.id_waiters:  # one id is free: wake one waiter, in order
            waiting = self.id_waiters.popleft()
            if not waiting.done():
                waiting.set_result(None)
                break
        waiter = self.waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        # The broker lost our session: what it had not acknowledged will never be; the caller publishes again.
        super().clear()
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the broker session was lost before the acknowledgement"))
        self.waiters.clear()


class _Client(gmqtt.Client):  # type: ignore[misc]
    """gmqtt waits a fixed delay between reconnect attempts; this makes it a capped, jittered backoff."""

    failures = 0

    async def reconnect(self, delay: bool = False) -> None:
        if delay:
            self.failures += 1
            ceiling = min(RECONNECT_CAP, RECONNECT_BASE * 2**self.failures)
            self.reconnect_delay = random.uniform(ceiling / 2, ceiling)
        await super().reconnect(delay)


class MqttTransport:
    """Subscribes to `topics` and calls `handler(topic, payload)` for each message.

    The broker gets the PUBACK only when the handler returns, so `receive_maximum` (MQTT 5) caps how many
    requests the broker hands us at once: backpressure without an unbounded queue in this process.
    """

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        handler: Handler,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_state = on_state or (lambda connected: None)
        self._topics = list(topics)
        self._handler = handler
        self.connected = asyncio.Event()  # connected and subscribed
        self._closing = False
        self._subscriber: asyncio.Task[None] | None = None
        self._pending = 0  # messages being handled, not yet acknowledged
        self._high_water = max(2, settings.max_in_flight)
        self._paused: asyncio.Transport | None = None
        #: Subscriptions the broker refused, each with its reason: the connector is not ready while any is.
        self.refused: list[str] = []
        self._resubscriber: asyncio.TimerHandle | None = None
        self._subscribe_delay = SUBSCRIBE_RETRY_BASE
        properties: dict[str, Any] = {}
        if settings.mqtt_version == "5":
            properties = {
                "session_expiry_interval": settings.session_expiry,
                "receive_maximum": min(settings.max_in_flight, 65535),
            }
        self._outbox = _Outbox()
        self._client = _Client(
            settings.client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            persistent_storage=self._outbox,
            **properties,
        )
        if settings.mqtt_username:
            password = settings.mqtt_password.reveal() if settings.mqtt_password else None
            self._client.set_auth_credentials(settings.mqtt_username, password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(self, client: Any, flags: int, rc: int, properties: Any) -> None:
        client.failures = 0
        self._limit_reads(self._client._connection._transport)
        log.info("connected to broker %s (session resumed: %s)", self._settings.broker_url, bool(flags))
        # Subscribing again is harmless on a resumed session and essential on a lost one.
        self._subscriber = asyncio.get_running_loop().create_task(self._subscribe())

    @staticmethod
    def _limit_reads(socket_transport: Any) -> None:
        """Event loops read up to 256 KiB at once: ~2,000 requests gmqtt would start handling in one go. Smaller
        reads (a small receive buffer, and asyncio's read size) let pause_reading() (see _on_message) hold a
        flood back at the broker, in TCP's window, instead of in this process's memory."""
        if hasattr(socket_transport, "max_size"):
            socket_transport.max_size = READ_SIZE
        sock = socket_transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READ_SIZE)

    async def _subscribe(self) -> None:
        subscriptions = [gmqtt.Subscription(topic, qos=1) for topic in self._topics]
        await self._with_packet_id(lambda: self._client.subscribe(subscriptions))

    async def _with_packet_id(self, send: Callable[[], T]) -> T:
        """Run `send` once a packet id is free.

        The broker allows only so many unacknowledged publishes (its Receive Maximum; Mosquitto's default is 20)
        and gmqtt raises rather than queue past it; subscriptions share the same ids. Waiters queue in order and
        each acknowledgement wakes one: waking all of them rebuilt every waiting publish at each acknowledgement
        (five builds per status in a burst).
        """
        woken = False
        while True:
            if (woken or not self._outbox.id_waiters) and self._id_free():
                try:
                    return send()
                except OverflowError:
                    pass
            waiter = asyncio.get_running_loop().create_future()
            self._outbox.id_waiters.append(waiter)
            # The timeout covers ids freed by a SUBACK or a reconnect, which wake no one.
            woken = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, 1.0)

    def _id_free(self) -> bool:
        """A packet id is free (gmqtt keeps one of its Receive Maximum in reserve), so a publish will not raise."""
        ids = self._client._package_handler.id_generator
        return bool(len(ids._used_ids) < ids._max - 1)

    def _on_subscribe(self, client: Any, mid: int, granted: Sequence[int], properties: Any) -> None:
        # Connected either way: statuses still go out, and granted topics are served.
        self.connected.set()
        self.refused = [
            f"{topic} ({_SUBACK_REASONS.get(code, f'reason 0x{code:02x}')})"
            for topic, code in zip(self._topics, granted, strict=False)
            if code >= 0x80
        ]
        self._on_state(not self.refused)
        if not self.refused:
            self._subscribe_delay = SUBSCRIBE_RETRY_BASE
            return
        log.error(
            "the broker refused the subscription to %s: not ready; subscribing again in %.0f s",
            ", ".join(self.refused),
            self._subscribe_delay,
        )
        self._resubscriber = asyncio.get_running_loop().call_later(self._subscribe_delay, self._resubscribe)
        self._subscribe_delay = min(SUBSCRIBE_RETRY_CAP, self._subscribe_delay * 2)

    def _resubscribe(self) -> None:
        self._resubscriber = None
        if self.connected.is_set() and not self._closing:
            self._subscriber = asyncio.get_running_loop().create_task(self._subscribe())

    def _on_disconnect(self, client: Any, packet: Any, exc: BaseException | None = None) -> None:
        if self.connected.is_set() and not self._closing:
            log.warning("lost the broker connection; reconnecting")
        self.connected.clear()
        self._on_state(False)

    async def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        self._pending += 1
        if self._pending >= self._high_water and self._paused is None:
            # Some brokers send past our Receive Maximum (Mosquitto 2.0.11 does, to a resumed session): stop
            # reading the socket so the backlog stays queued at the broker, not in this process's memory.
            self._paused = self._client._connection._transport
            self._paused.pause_reading()
        try:
            await self._handler(topic, payload, bool(properties.get("dup")) if isinstance(properties, dict) else False)
        finally:
            self._pending -= 1
            if self._paused is not None and self._pending <= self._high_water // 2:
                if not self._paused.is_closing():
                    self._paused.resume_reading()
                self._paused = None
        return 0  # PUBACK reason code: success

    async def connect(self) -> None:
        """Connect, retrying with capped backoff while the broker is unreachable."""
        address = self._settings.broker
        context = tls_context(self._settings) if address.tls else False
        version = MQTTv50 if self._settings.mqtt_version == "5" else MQTTv311
        delay = RECONNECT_BASE
        while True:
            try:
                connecting = self._client.connect(
                    address.host, address.port, ssl=context, keepalive=30, version=version
                )
                await asyncio.wait_for(connecting, CONNACK_TIMEOUT)
                await self.connected.wait()
                return
            except TimeoutError:
                log.warning(
                    "broker %s took the connection but sent no CONNACK within %g s; retrying in %.1fs",
                    *(self._settings.broker_url, CONNACK_TIMEOUT, delay),
                )
                with contextlib.suppress(Exception):
                    await self._client.disconnect()
            except ssl.SSLCertVerificationError as exc:
                raise BrokerError(f"TLS certificate check failed for {address.host}: {exc.verify_message}") from None
            except ssl.SSLError as exc:
                raise BrokerError(f"TLS handshake with {address.host} failed: {exc.reason}") from None
            except gmqtt.mqtt.handler.MQTTConnectError as exc:
                raise BrokerError(f"broker refused the connection: {exc}") from None
            except OSError as exc:
                log.warning(
                    "broker %s unreachable (%s); retrying in %.1fs",
                    self._settings.broker_url,
                    exc.strerror or exc.__class__.__name__,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(RECONNECT_CAP, delay * 2)

    def publish(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """Publish at QoS 1; the future resolves once the broker acknowledged it (PUBACK).

        Waits while disconnected; a message already out when the connection drops is kept by gmqtt and resent on
        reconnect. The future fails with ConnectionError if the broker lost the session meanwhile.
        """
        message = gmqtt.Message(topic, payload, qos=1)
        if self.connected.is_set() and not self._outbox.id_waiters and self._id_free():
            with contextlib.suppress(OverflowError):
                return self._send(message)  # the common case: no task, no waiting
        return asyncio.ensure_future(self._publish_later(message))

    async def _publish_later(self, message: gmqtt.Message) -> None:
        await self.connected.wait()
        acknowledged = await self._with_packet_id(lambda: self._send(message))
        await acknowledged

    def _send(self, message: gmqtt.Message) -> asyncio.Future[None]:
        # gmqtt's Client.publish, minus hiding the packet id we need to match the PUBACK.
        mid, package = self._client._connection.publish(message)
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.waiters[mid] = acknowledged
        self._outbox.push_message(mid, package)
        return acknowledged

    async def disconnect(self, grace: float = 5.0) -> None:
        """Leave cleanly: acknowledgements out, statuses acknowledged, then DISCONNECT.

        Closing a socket with unread data makes the kernel send RST, and the broker then drops what it had
        not read yet (statuses, PUBACKs): so wait for the broker's PUBACKs before closing.
        """
        self._closing = True
        if self._resubscriber is not None:
            self._resubscriber.cancel()
        await asyncio.sleep(0)  # gmqtt sends the PUBACK of a handler that just returned from a done-callback
        try:
            await asyncio.wait_for(self._outbox.wait_empty(), grace)
        except TimeoutError:
            log.warning("%d status(es) not acknowledged by the broker", len(self._outbox.get_all()))
        try:
            await self._client.disconnect()
        except Exception:
            log.debug("disconnect failed", exc_info=True)
