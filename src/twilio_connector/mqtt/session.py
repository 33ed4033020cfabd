"""MQTT transport: persistent session, QoS 1 in and out, a request acknowledged only once it is recorded.

Built on paho-mqtt (Eclipse's reference client) through its public API only: manual acknowledgement, MQTT 5
reason codes on CONNACK, SUBACK and PUBACK, and its external-event-loop hooks (loop.py). This module owns
what paho leaves to its user: reconnecting with backoff, the broker's Receive Maximum for our publishes, a
refused or unanswered publish, and never acknowledging on a new connection a message taken on an old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..ports.messaging import RequestHandler
from ..settings.parsers import BrokerAddress
from .loop import LoopBinding
from .tls import ClosedEarly
from .wire import MqttOptions, connection_hint, paho_client

__all__ = ["BrokerError", "MqttTransport", "PublishRefused"]

log = logging.getLogger(__name__)

#: handler(topic, payload, redelivered): `redelivered` is the PUBLISH's DUP flag, set by a broker sending again a
#: message it sent before without an acknowledgement.

RECONNECT_BASE = 0.25
RECONNECT_CAP = 30.0
SUBSCRIBE_RETRY_BASE, SUBSCRIBE_RETRY_CAP = 2.0, 60.0
KEEPALIVE = 30
#: Seconds to wait for the broker's CONNACK: a broker (or a proxy) may take the TCP connection and never answer.
CONNACK_TIMEOUT = 10.0
#: Seconds a publish may wait for its PUBACK before the connection is taken for dead and opened again (the
#: publish is then sent again: MQTT resends only on a new connection).
PUBLISH_TIMEOUT = 20.0
BEHIND_LIMIT = 10
#: Our publishes in flight when the broker states no Receive Maximum (MQTT 3.1.1): Mosquitto's default.
DEFAULT_WINDOW = 20


class BrokerError(Exception):
    """A broker problem that retrying cannot fix (refused credentials, failed certificate check)."""


class PublishRefused(Exception):
    """The broker answered a publish with an MQTT 5 failure reason (not authorized, quota exceeded, ...)."""


class _Refused(Exception):
    """The broker refused the connection (CONNACK with a failure reason)."""


@dataclass
class _Flight:
    future: asyncio.Future[None]
    sent: float


def _describe(exc: BaseException, address: BrokerAddress) -> str:
    """A connection failure in words, for the log and /readyz."""
    hint = connection_hint(address, exc)
    if isinstance(exc, _Refused):
        return f"the broker refused the connection ({exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate check failed for {address.host}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {address.host} failed: {exc.reason}{hint}"
    if isinstance(exc, TimeoutError):
        return f"the broker took the connection but sent no CONNACK within {CONNACK_TIMEOUT:g} s"
    if isinstance(exc, ClosedEarly):
        return f"the broker closed the connection before answering{hint}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"unreachable ({exc.strerror}){hint}"
    return f"unreachable ({exc or exc.__class__.__name__}){hint}"


class MqttTransport:
    """Subscribes to `topics` and calls `handler(topic, payload, redelivered)` for each message.

    The broker gets the PUBACK only when the handler returns, so `receive_maximum` (MQTT 5) caps how many
    requests the broker hands us at once: backpressure without an unbounded queue in this process.
    `on_state(ready)` follows connected-and-subscribed; `on_fault(kind)` counts what the broker refused or left
    unanswered: connect_refused, subscribe_refused, publish_refused, publish_timeout.
    """

    def __init__(
        self,
        options: MqttOptions,
        topics: Sequence[str],
        handler: RequestHandler,
        on_state: Callable[[bool], None] | None = None,
        on_fault: Callable[[str], None] | None = None,
    ) -> None:
        self._options = options
        self._topics = list(topics)
        self._handler = handler
        self._on_state = on_state or (lambda ready: None)
        self._on_fault = on_fault or (lambda kind: None)
        self._loop = asyncio.get_running_loop()
        self.connected = asyncio.Event()  # connected and subscribed
        #: Subscriptions the broker refused, each with its reason: the connector is not ready while any is.
        self.refused: list[str] = []
        #: Why the broker is not connected now, in words (None while connected).
        self.problem: str | None = None
        self._closing = False
        self._up = False  # CONNACK received on the current connection
        self._generation = 0  # connections opened so far: an acknowledgement belongs to one
        self._lost = asyncio.Event()
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._resubscriber: asyncio.TimerHandle | None = None
        self._subscribe_delay = SUBSCRIBE_RETRY_BASE
        self._handling: set[asyncio.Task[None]] = set()
        self._high_water = max(2, options.receive_maximum)
        self._paused = False
        self._queue: deque[tuple[str, bytes, asyncio.Future[None]]] = deque()
        self._in_flight: dict[int, _Flight] = {}
        self._window = DEFAULT_WINDOW
        self._settled = asyncio.Event()  # nothing queued or in flight
        self._settled.set()
        self._client = self._make_client(options)
        self._binding = LoopBinding(self._client, on_tick=self._check_publishes)

    def _make_client(self, options: MqttOptions) -> paho.Client:
        v5 = options.version == "5"
        client = paho_client(options, manual_ack=True, log=log)
        client.max_inflight_messages = 0  # the window is ours (_pump): paho would count past a lost session
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = options.session_expiry
            properties.ReceiveMaximum = min(options.receive_maximum, 65535)
        client.connect_async(
            options.broker.host,
            options.broker.port,
            keepalive=KEEPALIVE,
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # -- connection ---------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and subscribe, retrying with capped backoff while the broker is unreachable; then keep the
        connection up in the background. A refusal or a failed TLS check at start-up raises BrokerError: a person
        has to fix it, and the supervisor should hear so."""
        delay = RECONNECT_BASE
        while True:
            try:
                await self._attempt()
                break
            except (_Refused, ssl.SSLError) as exc:
                raise BrokerError(f"{_describe(exc, self._options.broker)} at {self._options.broker_url}") from None
            except OSError as exc:
                self.problem = _describe(exc, self._options.broker)
                log.warning("broker %s: %s; retrying in %.1fs", self._options.broker_url, self.problem, delay)
            await asyncio.sleep(delay)
            delay = min(RECONNECT_CAP, delay * 2)
        self._keeper = self._loop.create_task(self._keep())
        await self.connected.wait()

    async def _attempt(self) -> None:
        """Open one connection and wait for its CONNACK; raise if it is refused, fails or never comes."""
        self._lost.clear()
        connack = self._connack = self._loop.create_future()
        await self._binding.open()
        try:
            reason = await asyncio.wait_for(asyncio.shield(connack), CONNACK_TIMEOUT)
        except TimeoutError:
            self._connack = None  # what the broker does from now on answers nothing
            self._drop()
            raise
        if reason.is_failure:
            raise _Refused(str(reason))

    async def _keep(self) -> None:
        """Open the connection again whenever it is lost, with capped, jittered backoff."""
        while not self._closing:
            await self._lost.wait()
            failures = 0
            while not self._closing:
                ceiling = min(RECONNECT_CAP, RECONNECT_BASE * 2**failures)
                await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
                if self._closing:
                    return
                try:
                    await self._attempt()
                    break
                except (OSError, _Refused) as exc:  # ConnectionError, TimeoutError and SSLError are OSErrors
                    failures += 1
                    self.problem = _describe(exc, self._options.broker)
                    if isinstance(exc, _Refused | ssl.SSLError):
                        self._on_fault("connect_refused")
                        log.error("broker %s: %s; trying again", self._options.broker_url, self.problem)
                    else:
                        log.warning("broker %s: %s; trying again", self._options.broker_url, self.problem)

    def _drop(self) -> None:
        """Abandon the current connection at once (no DISCONNECT: the broker may not be listening)."""
        sock = self._client.socket()
        if sock is None:
            return
        # paho's socket may be a WebSocket wrapper without shutdown(): shut the connection down through a
        # duplicate of its descriptor (shutdown acts on the connection, not on one descriptor).
        with contextlib.suppress(OSError), socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM) as dup:
            dup.shutdown(socket.SHUT_RDWR)
        self._client.loop_read()  # paho reads the end of the stream, closes the socket and calls on_disconnect

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason: ReasonCode, properties: Any
    ) -> None:
        if not reason.is_failure:
            self._up = True
            self._generation += 1
            self.problem = None
            maximum = getattr(properties, "ReceiveMaximum", None)
            self._window = min(maximum, 65_000) if maximum else DEFAULT_WINDOW
            now = time.monotonic()
            for flight in self._in_flight.values():
                flight.sent = now  # paho sends each of them again now
            log.info("connected to broker %s (session resumed: %s)", self._options.broker_url, flags.session_present)
            # Subscribing again is harmless on a resumed session and essential on a lost one.
            self._subscribe()
            self._pump()
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags, reason: ReasonCode, properties: Any
    ) -> None:
        if self.connected.is_set() and not self._closing:
            said = f": {reason}" if flags.is_disconnect_packet_from_server else ""
            log.warning("lost the broker connection%s; reconnecting", said)
        self._up = False
        self.connected.clear()
        self._on_state(False)
        self._lost.set()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ClosedEarly("the broker closed the connection before its CONNACK"))

    # -- subscriptions ------------------------------------------------------------------------------------------

    def _subscribe(self) -> None:
        if self._options.version == "5":
            options = SubscribeOptions(qos=1)
            self._client.subscribe([(topic, options) for topic in self._topics])
        else:
            self._client.subscribe([(topic, 1) for topic in self._topics])

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        # Connected either way: statuses still go out, and granted topics are served.
        self.connected.set()
        self.refused = [
            f"{topic} ({reason})" for topic, reason in zip(self._topics, reasons, strict=False) if reason.is_failure
        ]
        self._on_state(not self.refused)
        if not self.refused:
            self._subscribe_delay = SUBSCRIBE_RETRY_BASE
            return
        self._on_fault("subscribe_refused")
        log.error(
            "the broker refused the subscription to %s: not ready; subscribing again in %.0f s",
            ", ".join(self.refused),
            self._subscribe_delay,
        )
        self._resubscriber = self._loop.call_later(self._subscribe_delay, self._resubscribe)
        self._subscribe_delay = min(SUBSCRIBE_RETRY_CAP, self._subscribe_delay * 2)

    def _resubscribe(self) -> None:
        self._resubscriber = None
        if self._up and not self._closing:
            self._subscribe()

    # -- requests in --------------------------------------------------------------------------------------------

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if len(self._handling) + 1 >= self._high_water and not self._paused:
            # Some brokers send past our Receive Maximum (Mosquitto 2.0.11 does, to a resumed session): stop
            # reading the socket so the backlog stays queued at the broker, not in this process's memory.
            self._paused = True
            self._binding.pause_reading()
        handling = self._loop.create_task(self._handle(message, self._generation))
        self._handling.add(handling)
        handling.add_done_callback(self._handled)

    async def _handle(self, message: paho.MQTTMessage, generation: int) -> None:
        try:
            await self._handler(message.topic, cast(bytes, message.payload), message.dup)
        except Exception:
            log.exception(
                "a request could not be handled; left unacknowledged, the broker delivers it again on reconnecting"
            )
            return
        # On a newer connection the broker may have reused this packet id for another message: acknowledging
        # that one unread would lose it. A resumed session delivers this message again instead.
        if generation == self._generation and self._up:
            self._client.ack(message.mid, 1)

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._handling.discard(task)
        if self._paused and len(self._handling) <= self._high_water // 2:
            self._paused = False
            self._binding.resume_reading()

    # -- statuses out -------------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """Publish at QoS 1; the future resolves once the broker acknowledged it (PUBACK), or fails with
        PublishRefused if the broker refused it. While disconnected it waits; one sent and not acknowledged when
        the connection drops is sent again on the next."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.append((topic, payload, future))
        self._settled.clear()
        self._pump()
        return future

    def _pump(self) -> None:
        """Hand queued publishes to paho while the broker's Receive Maximum allows."""
        queue, in_flight = self._queue, self._in_flight
        while self._up and queue and len(in_flight) < self._window:
            topic, payload, future = queue.popleft()
            info = self._client.publish(topic, payload, qos=1)
            if info.rc == paho.MQTT_ERR_QUEUE_SIZE:  # not kept by paho (no packet id free)
                future.set_exception(ConnectionError("no packet id free"))
                continue
            in_flight[info.mid] = _Flight(future, time.monotonic())

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        flight = self._in_flight.pop(mid, None)
        if flight is not None and not flight.future.done():
            if reason.is_failure:
                self._on_fault("publish_refused")
                flight.future.set_exception(PublishRefused(str(reason)))
            else:
                flight.future.set_result(None)
        self._pump()
        if not self._in_flight and not self._queue:
            self._settled.set()

    def _check_publishes(self) -> None:
        """Once a second: a broker that keeps the connection but stops acknowledging has it opened again.

        Not while we are behind on reading: a broker resuming a session writes its whole backlog of requests to
        us at once, and its PUBACKs for our statuses come behind them in the stream, however long we take to
        read them. Once we have read all it sent, a missing PUBACK is missing (and after BEHIND_LIMIT times the
        timeout, a broker that only ever sends is left too)."""
        if not self._up or not self._in_flight:
            return
        waited = time.monotonic() - next(iter(self._in_flight.values())).sent
        if waited > PUBLISH_TIMEOUT and (waited > BEHIND_LIMIT * PUBLISH_TIMEOUT or not self._binding.behind()):
            self._on_fault("publish_timeout")
            log.warning(
                "the broker acknowledged no status for %g s; connecting again to send %d status(es) again",
                *(PUBLISH_TIMEOUT, len(self._in_flight)),
            )
            self._drop()

    async def disconnect(self, grace: float = 5.0) -> None:
        """Leave cleanly: acknowledgements out, statuses acknowledged, then DISCONNECT."""
        self._closing = True
        if self._resubscriber is not None:
            self._resubscriber.cancel()
        if self._keeper is not None:
            self._keeper.cancel()
        try:
            await asyncio.wait_for(self._settled.wait(), grace)
        except TimeoutError:
            log.warning("%d status(es) not acknowledged by the broker", len(self._in_flight) + len(self._queue))
        for handling in list(self._handling):  # never acknowledged: the broker delivers them again
            handling.cancel()
        if self._up:
            self._client.disconnect()  # queued after the acknowledgements already queued, and written after them
            try:
                await asyncio.wait_for(self._lost.wait(), 2.0)
            except TimeoutError:
                self._drop()
        self._binding.close()
