"""Operations: Prometheus metrics, served with /healthz and /readyz on an optional HTTP listener (`metrics_listen`).

Without the listener nothing reads them: `Metrics(exported=False)` then counts nothing, and prometheus_client
(with the http.server, wsgiref and urllib.request it imports: 12 ms and 1.5 MB) is never imported."""

from __future__ import annotations

import contextlib
from typing import Any

from .._version import __version__
from ..domain.contract import ErrorCode, Kind

__all__ = ["Metrics"]

#: Label values known in advance, exported at 0 from the start: an alert on "any increase" then sees the first.
BROKER_FAULTS = ("connect_refused", "subscribe_refused", "publish_refused", "publish_timeout")


class _Unread:
    """A metric nobody reads: takes every update and keeps nothing."""

    def labels(self, *values: str) -> _Unread:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def set_function(self, function: Any) -> None:
        pass

    def time(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


def _unread(*args: Any, **kwargs: Any) -> _Unread:
    return _Unread()


class Metrics:
    """The connector's metrics, in a registry of their own (several connectors can share a process in tests).
    `exported`: something reads them (the metrics listener); else they are kept nowhere."""

    def __init__(self, exported: bool = True) -> None:
        Counter: Any  # prometheus_client's classes, or what stands in for them
        Gauge: Any
        Histogram: Any
        if exported:
            from prometheus_client import (  # noqa: PLC0415
                CollectorRegistry,
                Counter,
                Gauge,
                Histogram,
                disable_created_metrics,
            )

            # A `_created` series beside every counter doubles what is scraped and says nothing an alert uses.
            disable_created_metrics()  # type: ignore[no-untyped-call]
            self.registry: Any = CollectorRegistry()
        else:
            Counter = Gauge = Histogram = _unread
            self.registry = None
        registry = self.registry
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
        self.build_info.labels(__version__).set(1)
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
