"""The running connector: journal + delivery engine + Twilio client + MQTT transport, with graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from .domain.policy import describe_limits
from .engine.core import Engine
from .engine.options import DeliveryOptions, EngineOptions
from .engine.replies import ReplyOptions
from .engine.tracking import DeliveryTracker, TrackingOptions
from .journal.front import Journal
from .journal.opening import open_journal
from .mqtt.session import BrokerError, MqttTransport
from .mqtt.tls import TlsFiles, verifying
from .mqtt.wire import MqttOptions
from .ops.metrics import Metrics
from .ports.messaging import Messaging
from .settings.config import ANONYMOUS_WARNING, ConfigError, Credentials, anonymous_and_unbounded, resolve_credentials
from .settings.schema import Settings
from .settings.secrets import Secret, SecretError, fetch_secrets_manager, read_secret_file
from .twilio.client import TwilioClient
from .twilio.http1 import Proxy, proxy_for
from .twilio.reauth import Reauthenticating

__all__ = ["run"]

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)


async def _first(*aws: Coroutine[Any, Any, Any]) -> int:
    """Run the awaitables until one finishes (its exception propagates); cancel the rest; return its index."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    winner = next(task for task in tasks if task in done)
    winner.result()
    return tasks.index(winner)


async def _serve_operations(
    settings: Settings,
    metrics: Metrics,
    *,
    transport: Messaging,
    journal: Journal,
    engine: Engine,
    sender: Reauthenticating,
) -> web.AppRunner:
    """/metrics, /healthz and /readyz on `metrics_listen`."""
    connected = transport.connected

    def readiness() -> dict[str, bool]:
        return {
            "broker_connected": connected.is_set(),
            "subscribed": connected.is_set() and not transport.refused,
            "journal_writable": journal.writable,
            "loops_running": not engine.loops.failing,
            "nothing_stalled": engine.watchdog.problem is None,
            "credentials_accepted": sender.rejected is None,
        }

    def problems() -> list[str]:
        found = []
        if not connected.is_set():
            why = f": {transport.problem}" if transport.problem else ""
            found.append(f"not connected to the broker at {settings.broker_url}{why}")
        found += [f"the broker refused the subscription to {refused}" for refused in transport.refused]
        if journal.damaged is not None:
            found.append(str(journal.damaged))
        elif not journal.writable:
            found.append(f"the journal at {settings.journal} cannot be written")
        found += [f"the {name} loop keeps failing ({error})" for name, error in engine.loops.failing.items()]
        if sender.rejected is not None:
            found.append(sender.rejected)
        if engine.watchdog.problem is not None:
            found.append(engine.watchdog.problem)
        return found

    assert settings.metrics_listen is not None
    from .ops.endpoints import serve_operations  # noqa: PLC0415 (aiohttp only when metrics_listen asks for it)

    return await serve_operations(metrics, settings.metrics_listen, readiness, problems)


def _broker_lost(connected: asyncio.Event, give_up: float) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """A watch that returns (setting `gave_up`) once the broker connection has been down `give_up` seconds in a
    row; with `give_up` 0 it never returns."""

    async def watch(gave_up: asyncio.Event) -> None:
        if not give_up:
            await asyncio.Future()
        down_since: float | None = None
        while True:
            now = time.monotonic()
            down_since = None if connected.is_set() else (down_since or now)
            if down_since is not None and now - down_since >= give_up:
                gave_up.set()
                return
            await asyncio.sleep(min(1.0, give_up / 4))

    return watch


async def _stop(engine: Engine, transport: Messaging, grace: float, damaged: Exception | None) -> None:
    """Finish what is in flight within `grace` s, then leave the broker; with a damaged journal at once (nothing
    more can be recorded: what is at Twilio now is looked up at the next start), and raise the damage."""
    if damaged is not None:
        await engine.stop(0)
        await transport.disconnect()
        raise damaged
    log.info("stopping: finishing %d request(s) in flight", engine.in_flight)
    if not await engine.stop(grace):
        log.warning("requests unfinished after %.0fs stay in the journal for the next start", grace)
    await transport.disconnect()


async def run(
    settings: Settings,
    credentials: Credentials,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then finish in-flight work within the shutdown timeout.

    `ready` is set once the input topics are subscribed.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    client = twilio_client(settings, credentials)
    journal = await open_journal(
        settings.journal, settings.journal_sync, node=settings.client_id, lease=settings.journal_lease
    )
    try:
        async with client:
            transport: Messaging | None = None

            def publish(topic: str, status: bytes) -> Awaitable[None]:
                assert transport is not None
                return transport.publish(topic, status)

            tracker = _tracking(settings, journal, client)
            metrics = Metrics(exported=bool(settings.metrics_listen))
            sender = Reauthenticating(
                client, credentials, partial(resolve_credentials, settings, secret_source(settings))
            )
            metrics.credentials_rejected.set_function(lambda: sender.rejected is not None)
            engine = Engine(
                engine_options(settings), sender, journal, publish, tracker=tracker, metrics=metrics, inbound=sender
            )
            metrics.loops_failing.set_function(lambda: len(engine.loops.failing))
            callbacks = await _webhooks(settings, credentials, tracker, engine)
            transport = messaging(settings, engine, metrics)
            operations: web.AppRunner | None = None
            if settings.metrics_listen:
                operations = await _serve_operations(
                    settings, metrics, transport=transport, journal=journal, engine=engine, sender=sender
                )
            await engine.start()
            for line in describe_limits(settings.limits, settings.fold_threshold, settings.fold_window):
                log.info("guard: %s", line)
            watch = _broker_lost(transport.connected, settings.broker_give_up)
            gave_up = asyncio.Event()
            connected = _first(transport.connect(), stop.wait(), watch(gave_up), journal.damage_found())
            if await connected == 0:  # not stopped (SIGTERM too), the broker not given up, the journal sound
                if ready is not None:
                    ready.set()
                if anonymous_and_unbounded(settings):
                    log.warning("%s", ANONYMOUS_WARNING)
                log.info(
                    "ready: listening on %s, statuses on %s, Twilio at %s, journal %s",
                    " and ".join(settings.request_filters),
                    settings.status_topic,
                    settings.api_base_url,
                    settings.journal,
                )
                await _first(stop.wait(), watch(gave_up), journal.damage_found())
            try:
                await _stop(engine, transport, settings.shutdown_timeout, journal.damaged)
            finally:
                for runner in (callbacks, operations):
                    if runner is not None:
                        await runner.cleanup()
            if gave_up.is_set():
                raise BrokerError(
                    f"no connection to the broker at {settings.broker_url} for {settings.broker_give_up:g} s "
                    "(broker_give_up): exiting so that the supervisor can act"
                )
    finally:
        await journal.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped")


def _tracking(settings: Settings, journal: Journal, client: TwilioClient) -> DeliveryTracker | None:
    """Delivery tracking as `delivery_tracking` asks."""
    if settings.delivery_tracking == "off":
        return None
    options = TrackingOptions(
        polling=settings.delivery_tracking == "poll",
        poll_interval=settings.poll_interval,
        poll_interval_max=settings.poll_interval_max,
        give_up=settings.tracking_give_up,
    )
    return DeliveryTracker(options, journal, client)


async def _webhooks(
    settings: Settings, credentials: Credentials, tracker: DeliveryTracker | None, engine: Engine
) -> web.AppRunner | None:
    """The listener for Twilio's webhooks, when status callbacks or incoming texts are asked for."""
    reports = None
    if settings.delivery_tracking == "callback" and tracker is not None and settings.callback_url:
        reports = (tracker, settings.callback_url)
    replies = (engine.replies, settings.reply_webhook_url) if engine.replies and settings.reply_webhook_url else None
    if reports is None and replies is None:
        return None
    if not credentials.auth_token:  # load_settings refuses such settings
        raise ConfigError(["Twilio's webhooks need the auth token: Twilio signs them with it"])
    from .ops.callbacks import CallbackListener  # noqa: PLC0415 (aiohttp only when webhooks are asked for)

    listener = CallbackListener(credentials.auth_token, settings.callback_listen, reports=reports, replies=replies)
    return await listener.serve()


def tls_files(settings: Settings) -> TlsFiles:
    return TlsFiles(settings.ca_file, settings.cert_file, settings.key_file)


def mqtt_options(settings: Settings) -> MqttOptions:
    return MqttOptions(
        settings.broker_url,
        client_id=settings.client_id,
        version=settings.mqtt_version,
        username=settings.mqtt_username,
        password=settings.mqtt_password,
        tls=tls_files(settings),
        session_expiry=settings.session_expiry,
        receive_maximum=settings.max_in_flight,
        alpn=settings.broker_alpn,
        headers=settings.broker_headers,
    )


def engine_options(settings: Settings) -> EngineOptions:
    return EngineOptions(
        txt_topic=settings.txt_topic,
        call_topic=settings.call_topic,
        status_topic=settings.status_topic,
        delivery_topic=settings.delivery_topic,
        default_from=settings.default_from,
        max_retries=settings.max_retries,
        max_payload_bytes=settings.max_payload_bytes,
        allow_http_urls=settings.allow_http_urls,
        limits=settings.limits,
        storms=settings.storms,
        dedupe_window=settings.dedupe_window,
        session_expiry=settings.session_expiry,
        journal_retention=settings.journal_retention,
        max_backlog=settings.max_backlog,
        max_in_flight=settings.max_in_flight,
        backoff_base=settings.backoff_base,
        backoff_max=settings.backoff_max,
        reconcile_window=settings.reconcile_window,
        lag_probe_interval=settings.lag_probe_interval,
        replies=ReplyOptions(
            settings.reply_numbers,
            settings.default_from,
            settings.reply_poll_interval,
            settings.reply_window,
            paging=settings.paging,
        )
        if settings.replies
        else None,
        reply_topic=settings.reply_topic,
        paging=settings.paging,
        ack_topic=settings.ack_topic,
        delivery=DeliveryOptions(
            settings.http_timeout, settings.sender_rate, settings.limits.max_segments, opt_outs=settings.replies
        ),
    )


def messaging(settings: Settings, engine: Engine, metrics: Metrics) -> Messaging:
    """Requests in and statuses out as `transport` says: an MQTT broker, or the Greengrass nucleus."""
    if settings.transport == "greengrass":
        from .greengrass.session import GreengrassTransport, options_from_environment  # noqa: PLC0415 (its transport)

        options = options_from_environment(
            statuses_to_cloud=settings.status_to_iot_core, requests_from_cloud=settings.iot_core_requests
        )
        return GreengrassTransport(
            options,
            settings.input_topics,
            engine.handle,
            on_state=metrics.broker_connected.set,
            busy=lambda: engine.in_flight > 0,
            defer_for=settings.shutdown_timeout,
        )
    return MqttTransport(
        mqtt_options(settings),
        settings.request_filters,
        engine.handle,
        on_state=metrics.broker_connected.set,
        on_fault=lambda kind: metrics.broker_faults.labels(kind).inc(),
    )


def secret_source(settings: Settings) -> Callable[[str], Secret]:
    """Where the secret an ARN names is read: from the Greengrass nucleus with that transport (no network, no AWS
    credentials), else from AWS Secrets Manager."""
    if settings.transport == "greengrass":
        from .greengrass.secrets import fetch_from_nucleus  # noqa: PLC0415 (only on Greengrass)
        from .greengrass.session import options_from_environment  # noqa: PLC0415

        return partial(fetch_from_nucleus, options_from_environment())
    return fetch_secrets_manager


def twilio_client(settings: Settings, credentials: Credentials) -> TwilioClient:
    """The Twilio client as the settings say: the API root, credentials, pool size, timeouts, proxy and CAs."""
    return TwilioClient(
        settings.api_base_url,
        credentials.account_sid,
        credentials.username,
        credentials.password,
        max_connections=settings.max_in_flight,
        timeout=settings.http_timeout,
        connect_timeout=settings.connect_timeout,
        status_callback=settings.callback_url if settings.delivery_tracking == "callback" else None,
        proxy=twilio_proxy(settings, os.environ),
        ssl_context=twilio_tls(settings),
    )


def twilio_proxy(settings: Settings, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy to reach Twilio through: `twilio_proxy` (`none`: no proxy), else the environment's; the user's
    password from `twilio_proxy_password_file` when one is given."""
    password = None
    if settings.twilio_proxy_password_file:
        try:
            password = read_secret_file(settings.twilio_proxy_password_file).reveal()
        except SecretError as exc:
            raise ConfigError([f"twilio_proxy_password_file: {exc}"]) from None
    if settings.twilio_proxy is not None:
        url = settings.twilio_proxy.reveal()
        return None if url.lower() == "none" else Proxy.parse(url, password)
    return proxy_for(settings.api_base_url, environ, password)


def twilio_tls(settings: Settings) -> ssl.SSLContext | None:
    """The CAs that verify Twilio's certificate (or a TLS-inspecting proxy's): `twilio_ca_file`, else the system's."""
    return verifying(settings.twilio_ca_file, "twilio_ca_file") if settings.twilio_ca_file else None
