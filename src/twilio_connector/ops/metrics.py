"""Operations: Prometheus metrics, and /healthz and /readyz, on an optional HTTP listener (`metrics_listen`)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from ..domain.contract import ErrorCode, Kind

__all__ = ["Metrics", "serve_app"]

# A `_created` series beside every counter doubles what is scraped and stored and says nothing an alert uses.
disable_created_metrics()  # type: ignore[no-untyped-call]
#: Label values known in advance, exported at 0 from the start: an alert on "any increase" then sees the first.
BROKER_FAULTS = ("connect_refused", "subscribe_refused", "publish_refused", "publish_timeout")


class Metrics:
    """The connector's metrics, in a registry of their own (several connectors can share a process in tests)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.received = Counter(
            "twilio_connector_requests_received", "MQTT requests taken in", ["topic"], registry=registry
        )
        self.statuses = Counter(
            "twilio_connector_statuses",
            "Final statuses by kind (txt, call), result and error",
            ["kind", "result", "error"],
            registry=registry,
        )
        self.twilio_seconds = Histogram(
            "twilio_connector_twilio_request_seconds",
            "Time Twilio took to answer a create request",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.request_seconds = Histogram(
            "twilio_connector_request_seconds",
            "Time from a request's acceptance to its final status, by kind and result",
            ["kind", "result"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.list_lag = Histogram(
            "twilio_connector_list_lag_seconds",
            "Time a new message took to show in Twilio's list (sampled probes, and lookups that found one)",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120),
            registry=registry,
        )
        self.reconcile_window = Gauge(
            "twilio_connector_reconcile_window_seconds",
            "Seconds an attempt of unknown outcome is looked up before it counts as not created, as the evidence "
            "of the list's lag allows now",
            registry=registry,
        )
        self.doubles = Counter(
            "twilio_connector_doubles_detected",
            "Requests Twilio turned out to hold more often than their status said (a message listed after the "
            "reconcile window, then sent again)",
            registry=registry,
        )
        self.retries = Counter(
            "twilio_connector_retries",
            "Attempts scheduled again after a retryable failure, by kind",
            ["kind"],
            registry=registry,
        )
        self.reconciliations = Counter(
            "twilio_connector_reconciliations",
            "Lookups at Twilio after an unknown outcome",
            ["found"],
            registry=registry,
        )
        self.rejections = Counter(
            "twilio_connector_policy_rejections", "Requests the sending policy refused", registry=registry
        )
        self.folded = Counter(
            "twilio_connector_folded", "Texts folded into a storm digest instead of sent alone", registry=registry
        )
        self.digests = Counter(
            "twilio_connector_digests", "Storm digests finished, by result", ["result"], registry=registry
        )
        self.backlog = Gauge(
            "twilio_connector_journal_backlog", "Requests accepted and not yet finished", registry=registry
        )
        self.in_flight = Gauge("twilio_connector_in_flight", "Requests being sent now", registry=registry)
        self.window = Gauge(
            "twilio_connector_concurrency_window",
            "Requests allowed at Twilio at once now (adapts to 429s, within max_in_flight)",
            registry=registry,
        )
        self.throttled = Counter(
            "twilio_connector_throttled", "Answers 429 (too many concurrent requests) from Twilio", registry=registry
        )
        self.broker_faults = Counter(
            "twilio_connector_broker_faults",
            "What the broker refused or left unanswered: connect_refused, subscribe_refused, publish_refused, "
            "publish_timeout",
            ["kind"],
            registry=registry,
        )
        self.broker_connected = Gauge(
            "twilio_connector_broker_connected", "1 when connected and subscribed", registry=registry
        )
        self.stalled = Counter(
            "twilio_connector_stalled",
            "Requests the watchdog found stalled: abandoned (being sent, nothing at work on them: looked up), "
            "overdue (due, not started, with slots free: looked for again) or stuck (a task at work over 10 min)",
            ["kind"],
            registry=registry,
        )
        self.credentials_rejected = Gauge(
            "twilio_connector_credentials_rejected",
            "1 while Twilio refuses the connector's credentials (HTTP 401: a revoked or rotated token)",
            registry=registry,
        )
        self.loops_failing = Gauge(
            "twilio_connector_loops_failing", "Service loops that failed within the last 15 s", registry=registry
        )
        self.build_info = Gauge(
            "twilio_connector_build_info", "The running version (always 1)", ["version"], registry=registry
        )
        self.build_info.labels(_version()).set(1)
        for kind in BROKER_FAULTS:
            self.broker_faults.labels(kind)
        for found in ("yes", "no"):
            self.reconciliations.labels(found)
        for request_kind in Kind:
            self.retries.labels(request_kind.value)
            self.statuses.labels(request_kind.value, "success", "")
            for result in ("success", "fail"):
                self.request_seconds.labels(request_kind.value, result)
            for error in ErrorCode:
                self.statuses.labels(request_kind.value, "fail", error.value)
        self.digests.labels("success")
        for error in ErrorCode:
            self.digests.labels(error.value)

    def app(
        self, readiness: Callable[[], dict[str, bool]], problems: Callable[[], list[str]] = list
    ) -> web.Application:
        """`readiness()` names each condition of readiness and whether it holds; `problems()` says, in words, what
        keeps the connector from being ready."""

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"status": "alive"})  # answering at all means the event loop runs

        async def readyz(request: web.Request) -> web.Response:
            checks = readiness()
            ready = all(checks.values())
            document: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
            if not ready:
                document["problems"] = problems()
            body = orjson.dumps(document)
            return web.Response(body=body, status=200 if ready else 503, content_type="application/json")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        return app

    async def serve(
        self, listen: str, readiness: Callable[[], dict[str, bool]], problems: Callable[[], list[str]] = list
    ) -> web.AppRunner:
        return await serve_app(self.app(readiness, problems), listen, "metrics_listen")


async def serve_app(app: web.Application, listen: str, setting: str, *, default_host: str = "") -> web.AppRunner:
    """Serve `app` on `listen` (`host:port`, the host `default_host` when empty). A taken port is an OSError
    naming `setting` and the address, not a bare "Address already in use"."""
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host or default_host, int(port)).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(exc.errno, exc.strerror, f"{setting} {listen}") from None
    return runner


def _version() -> str:
    try:
        return version("twilio-connector")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
