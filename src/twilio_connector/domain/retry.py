"""Retry policy: which Twilio failures may be retried, and how long to wait. Pure: randomness is injected."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .contract import ErrorCode
from .outcomes import FailureKind, TwilioFailure

#: The rejections worth trying again, which prove Twilio did not act: too many concurrent requests (429, 20429)
#: and Twilio's own "service unavailable" (503, 20503; the client tells it from a gateway's 503, which stays
#: ambiguous). Every other 5xx is ambiguous: the engine looks it up at Twilio before anything is sent again.
_RETRYABLE_HTTP = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_delay: float = 0.5
    max_delay: float = 30.0

    def should_retry(self, failure: TwilioFailure) -> bool:
        """True only when a retry cannot send a second copy of the notification."""
        if failure.kind is FailureKind.NOT_SENT:
            return True
        return failure.kind is FailureKind.REJECTED and failure.http_status in _RETRYABLE_HTTP

    def delay(self, attempt: int, failure: TwilioFailure, rand: Callable[[], float]) -> float:
        """Seconds to wait before attempt number `attempt + 1` (attempts count from 1).

        Full jitter (uniform between 0 and the exponential ceiling) spreads a fleet's retries apart;
        Twilio's Retry-After, when given, is a floor, still capped by `max_delay`.
        """
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        wait = rand() * ceiling
        if failure.retry_after is not None:
            wait = max(wait, failure.retry_after)
        return min(wait, self.max_delay)


#: Twilio's own "service unavailable, try again" (a 503 with its error document, code 20503).
TWILIO_UNAVAILABLE = 20503


def turned_away(failure: TwilioFailure) -> bool:
    """Twilio turned the request away without acting on it, for reasons of its own or of the connector's pace, not
    of the request: too many concurrent requests (429), or Twilio's own 503 (20503). Retried beyond the request's
    `retries` (which are for failures of the request's own), so that a short outage delays an alert instead of
    failing it."""
    if failure.kind is not FailureKind.REJECTED:
        return False
    return failure.http_status == 429 or (failure.http_status == 503 and failure.code == TWILIO_UNAVAILABLE)


def error_code_for(failure: TwilioFailure) -> ErrorCode:
    """The status `error` value for a failure that is final."""
    if failure.kind is FailureKind.NOT_SENT:
        return ErrorCode.TWILIO_UNAVAILABLE
    if failure.kind is FailureKind.AMBIGUOUS:
        return ErrorCode.OUTCOME_UNKNOWN
    if failure.code is None and failure.http_status in _RETRYABLE_HTTP:
        return ErrorCode.TWILIO_UNAVAILABLE
    return ErrorCode.TWILIO_ERROR
