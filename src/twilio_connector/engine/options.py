"""What the engine needs to know of the settings, and nothing more: its topics, the request contract's bounds,
the guards, the timings. `service.engine_options` builds it from `Settings`, where each default is declared."""

from __future__ import annotations

from dataclasses import dataclass

from ..domain.policy import Limits
from ..domain.storms import StormRule
from .replies import ReplyOptions

__all__ = ["DeliveryOptions", "EngineOptions"]


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    http_timeout: float  # an attempt is bounded by it, plus a margin, as a whole
    sender_rate: float = 0.0  # messages per second per sender number; 0: no pacing
    max_segments: int | None = None  # a storm digest's longest text (None: DIGEST_SEGMENTS)
    opt_outs: bool = False  # refuse, as Twilio would (21610), what goes to someone who replied STOP


@dataclass(frozen=True, slots=True)
class EngineOptions:
    txt_topic: str
    call_topic: str
    status_topic: str
    delivery_topic: str
    # The request contract's bounds.
    default_from: str | None
    max_retries: int
    max_payload_bytes: int
    allow_http_urls: bool
    # Admission.
    limits: Limits
    storms: StormRule
    dedupe_window: float
    session_expiry: float  # how far back a redelivered request is looked for; finished ones are kept as long
    journal_retention: float
    max_backlog: int
    # Attempts.
    max_in_flight: int
    backoff_base: float
    backoff_max: float
    reconcile_window: float  # the ceiling of the window the list's measured lag allows
    delivery: DeliveryOptions
    lag_probe_interval: float = 60.0  # seconds between probes of the list's lag; 0: none
    replies: ReplyOptions | None = None  # poll for replies (None: off)
    reply_topic: str = "twilio/message/reply"
    paging: bool = False  # honour `until_acknowledged` (domain/paging.py), and take acknowledgements on ack_topic
    ack_topic: str = "twilio/message/ack"
