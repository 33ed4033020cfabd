"""The messaging port over a Greengrass v2 nucleus's local publish/subscribe (IPC), with awsiotsdk's
`GreengrassCoreIPCClientV2`, the official client.

The nucleus gives a component its socket and token in its environment (`options_from_environment`). Requests
arrive on the subscribed topics and statuses go out on the status topic, as over MQTT, with one difference that
matters: local pub/sub has no acknowledgement. A request is recorded in the journal as it arrives (and so is
never lost once here); one published while the connector is not connected is the nucleus's to drop. A status
stays in the journal until the nucleus has taken it (PublishToTopic answered).

The client's calls block and its callbacks run on its own threads: connecting runs on a worker thread, and each
request is handed to the event loop. The V2 client does not reconnect by itself: when its connection closes
(the nucleus restarting), this session connects and subscribes again with backoff, not ready meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from ..ports.messaging import RequestHandler
from ..settings.config import ConfigError
from ..settings.secrets import Secret

__all__ = ["GreengrassOptions", "GreengrassTransport", "in_words", "open_client", "options_from_environment"]

log = logging.getLogger(__name__)

SOCKET_VARIABLE = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
TOKEN_VARIABLE = "SVCUID"
RECONNECT_BASE, RECONNECT_CAP = 0.25, 30.0
CONNECT_TIMEOUT = 10.0
#: Milliseconds after which the nucleus asks again about an update we deferred.
DEFER_RECHECK_MS = 1000


@dataclass(frozen=True, slots=True)
class GreengrassOptions:
    """Where the nucleus listens and the token it gave this component."""

    socket_path: str
    token: Secret = field(repr=False)
    running_state: bool = True  # tell the nucleus RUNNING once subscribed (UpdateState)
    statuses_to_cloud: bool = False  # also publish each status to AWS IoT Core (PublishToIoTCore, QoS 1)
    requests_from_cloud: bool = False  # also take requests from AWS IoT Core (SubscribeToIoTCore)


def options_from_environment(
    environ: dict[str, str] | None = None, *, statuses_to_cloud: bool = False, requests_from_cloud: bool = False
) -> GreengrassOptions:
    """The nucleus's socket and token, from the environment it starts the component with."""
    env = os.environ if environ is None else environ
    missing = [name for name in (SOCKET_VARIABLE, TOKEN_VARIABLE) if not env.get(name)]
    if missing:
        raise ConfigError(
            [
                f"transport = greengrass needs {' and '.join(missing)}, which the Greengrass nucleus sets for the "
                "components it runs: is the connector running as a Greengrass v2 component?"
            ]
        )
    return GreengrassOptions(
        env[SOCKET_VARIABLE],
        Secret(env[TOKEN_VARIABLE]),
        statuses_to_cloud=statuses_to_cloud,
        requests_from_cloud=requests_from_cloud,
    )


def open_client(options: GreengrassOptions) -> Any:
    """A connected V2 client (blocking). awsiotsdk is imported here only: a connector on MQTT needs none of it."""
    import awsiot.greengrasscoreipc  # noqa: PLC0415
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2  # noqa: PLC0415

    connection = awsiot.greengrasscoreipc.connect(
        ipc_socket=options.socket_path, authtoken=options.token.reveal(), timeout=CONNECT_TIMEOUT
    )
    # No executor: the callbacks only hand work to the event loop, so they may run on the client's own thread (an
    # executor of its own would also refuse the callbacks that come after it shut down, at close).
    return GreengrassCoreIPCClientV2(connection, executor=None)


class GreengrassTransport:
    """Implements `ports.messaging.Messaging` over the nucleus's IPC."""

    def __init__(
        self,
        options: GreengrassOptions,
        topics: Sequence[str],
        handler: RequestHandler,
        on_state: Callable[[bool], None] | None = None,
        *,
        busy: Callable[[], bool] = lambda: False,
        defer_for: float = 20.0,
    ) -> None:
        """`busy`: requests are at Twilio now; a component update (a deployment) is deferred while they are, for
        `defer_for` seconds at most (the shutdown timeout: what a stop would give them anyway)."""
        self._options = options
        self._busy = busy
        self._defer_for = defer_for
        self._updates: dict[str, float] = {}  # deployment id -> when we first heard of it
        self._topics = list(topics)
        self._handler = handler
        self._on_state = on_state or (lambda ready: None)
        self._loop = asyncio.get_running_loop()
        self.connected = asyncio.Event()
        self.refused: list[str] = []
        self.problem: str | None = "not connected to the Greengrass nucleus yet"
        self._client: Any = None
        self._generation = 0  # connections opened so far: a closed stream of an older one changes nothing
        self._lost = asyncio.Event()
        self._closing = False
        self._keeper: asyncio.Task[None] | None = None
        self._handling: set[asyncio.Task[None]] = set()
        self._publishing: set[asyncio.Task[None]] = set()

    # -- connection ---------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and subscribe, retrying with capped backoff while the nucleus cannot be reached; then keep the
        connection up in the background."""
        await self._until_connected()
        self._keeper = self._loop.create_task(self._keep())

    async def _until_connected(self) -> None:
        delay = RECONNECT_BASE
        while not self._closing:
            self._generation += 1
            try:
                self._client = await self._loop.run_in_executor(None, self._open, self._generation)
            except Exception as exc:
                self.problem = f"cannot reach the Greengrass nucleus at {self._options.socket_path}: {in_words(exc)}"
                log.warning("%s; retrying in %.1fs", self.problem, delay)
                await asyncio.sleep(delay)
                delay = min(RECONNECT_CAP, delay * 2)
                continue
            self._lost.clear()
            self.problem = None
            self.connected.set()
            self._on_state(True)
            log.info("connected to the Greengrass nucleus; subscribed to %s", " and ".join(self._topics))
            return

    def _open(self, generation: int) -> Any:
        """Connect, subscribe to every request topic, say RUNNING (on a worker thread: the client blocks)."""
        client = open_client(self._options)
        failed, closed = partial(self._stream_failed, generation), partial(self._stream_closed, generation)
        try:
            for topic in self._topics:
                client.subscribe_to_topic(
                    topic=topic,
                    on_stream_event=self._received,
                    on_stream_error=failed,
                    on_stream_closed=closed,
                )
            if self._options.requests_from_cloud:
                for topic in self._topics:
                    client.subscribe_to_iot_core(
                        topic_name=topic,
                        qos="1",
                        on_stream_event=self._received_from_cloud,
                        on_stream_error=failed,
                        on_stream_closed=closed,
                    )
            client.subscribe_to_component_updates(on_stream_event=self._update_announced)
            if self._options.running_state:
                client.update_state(state="RUNNING")
        except BaseException:
            client.close()
            raise
        return client

    async def _keep(self) -> None:
        while not self._closing:
            await self._lost.wait()
            if self._closing:
                return
            self.connected.clear()
            self._on_state(False)
            self.problem = "the connection to the Greengrass nucleus was lost"
            log.warning("%s: connecting again", self.problem)
            self._close_client()
            await self._until_connected()

    def _stream_failed(self, generation: int, error: Exception) -> bool:
        log.warning("a subscription to the Greengrass nucleus failed: %s", in_words(error))
        self._loop.call_soon_threadsafe(self._lose, generation)
        return True  # close the stream

    def _stream_closed(self, generation: int) -> None:
        self._loop.call_soon_threadsafe(self._lose, generation)

    def _lose(self, generation: int) -> None:
        """A subscription of connection `generation` ended: the connection is lost, if it is still the current."""
        if generation == self._generation and not self._closing:
            self._lost.set()

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(executor_wait=False)

    # -- requests in --------------------------------------------------------------------------------------------

    def _received(self, event: Any) -> None:
        """On the client's thread: hand the request to the event loop (the nucleus wants no acknowledgement)."""
        message = event.binary_message or event.json_message
        if message is None:
            return
        topic = message.context.topic if message.context is not None else ""
        # A JSON message: another component published a document, which is the request's text.
        binary = event.binary_message is not None
        payload = bytes(message.message or b"") if binary else orjson.dumps(message.message)
        self._loop.call_soon_threadsafe(self._take, topic, payload)

    def _received_from_cloud(self, event: Any) -> None:
        """On the client's thread: a request published to AWS IoT Core, received by the nucleus."""
        message = event.message
        if message is not None:
            self._loop.call_soon_threadsafe(self._take, str(message.topic_name or ""), bytes(message.payload or b""))

    def _take(self, topic: str, payload: bytes) -> None:
        task = self._loop.create_task(self._handle(topic, payload))
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    async def _handle(self, topic: str, payload: bytes) -> None:
        try:
            await self._handler(topic, payload, False)
        except Exception:
            log.exception("a request on %s could not be taken", topic)

    # -- component updates --------------------------------------------------------------------------------------

    def _update_announced(self, event: Any) -> None:
        """On the client's thread: a deployment will stop this component to update it."""
        if event.pre_update_event is not None:
            deployment = str(event.pre_update_event.deployment_id)
            self._loop.call_soon_threadsafe(self._answer_update, deployment)

    def _answer_update(self, deployment: str) -> None:
        """Defer the update while requests are at Twilio (asked again in a second), up to `defer_for` seconds
        from the first notice; else acknowledge it (a recheck of 0), and the nucleus stops us as SIGTERM would."""
        first = self._updates.setdefault(deployment, self._loop.time())
        defer = self._busy() and self._loop.time() - first < self._defer_for
        recheck = DEFER_RECHECK_MS if defer else 0
        if not defer:
            self._updates.pop(deployment, None)
        log.info("deployment %s: %s", deployment, "deferred: requests are at Twilio" if defer else "may go ahead")
        client = self._client
        if client is not None:
            answer = client.defer_component_update_async(
                deployment_id=deployment, message="requests at Twilio" if defer else "", recheck_after_ms=recheck
            )
            answer.add_done_callback(lambda future: future.exception())  # retrieved: a failure is the nucleus's

    # -- statuses out -------------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """Resolves once the nucleus took the status (PublishToTopic answered, and PublishToIoTCore when statuses go
        to the cloud too). While the nucleus is away it waits for the connection, so that a status goes out as
        soon as it is back; a connection lost during the publish fails it (the publisher tries again)."""
        task = self._loop.create_task(self._publish(topic, payload))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
        return task

    async def _publish(self, topic: str, payload: bytes) -> None:
        from awsiot.greengrasscoreipc.model import BinaryMessage, PublishMessage  # noqa: PLC0415

        await self.connected.wait()
        client = self._client
        if client is None:
            raise ConnectionError("not connected to the Greengrass nucleus")
        message = PublishMessage(binary_message=BinaryMessage(message=payload))
        answers = [asyncio.wrap_future(client.publish_to_topic_async(topic=topic, publish_message=message))]
        if self._options.statuses_to_cloud:
            cloud = client.publish_to_iot_core_async(topic_name=topic, qos="1", payload=payload)
            answers.append(asyncio.wrap_future(cloud))
        try:
            await asyncio.gather(*answers)  # taken once both took it: the status stays in the journal until then
        except Exception as exc:
            raise ConnectionError(in_words(exc)) from None

    async def disconnect(self, grace: float = 5.0) -> None:
        """Stop taking requests and close the connection (the statuses in flight have `grace` s to be taken)."""
        self._closing = True
        if self._keeper is not None:
            self._keeper.cancel()
        if self._handling:
            await asyncio.wait(self._handling, timeout=grace)
        if self._publishing and self.connected.is_set():
            await asyncio.wait(self._publishing, timeout=grace)
        for waiting in self._publishing:
            waiting.cancel()  # left unpublished in the journal, published after the next start
        self.connected.clear()
        await self._loop.run_in_executor(None, self._close_client)


def in_words(exc: BaseException | None) -> str:
    """An IPC error in words: modelled errors print as empty strings, their text is in `.message`."""
    if exc is None:
        return "unknown error"
    text = getattr(exc, "message", None) or str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
