"""The retry policy: what may be retried, and for how long to wait."""

from __future__ import annotations

import pytest

from twilio_connector.domain.contract import ErrorCode
from twilio_connector.domain.lifecycle import THROTTLED_RETRIES, Attempt, Lifecycle, Retry
from twilio_connector.domain.outcomes import FailureKind, TwilioFailure
from twilio_connector.domain.retry import RetryPolicy, error_code_for

POLICY = RetryPolicy(base_delay=0.5, max_delay=30.0)


def rejected(status: int, code: int | None = None, retry_after: float | None = None) -> TwilioFailure:
    return TwilioFailure(FailureKind.REJECTED, "x", status, code, retry_after)


@pytest.mark.parametrize(
    ("failure", "retry"),
    [
        (rejected(429, 20429), True),
        (TwilioFailure(FailureKind.AMBIGUOUS, "Bad Gateway", 502), False),  # Twilio may have acted: look it up
        (TwilioFailure(FailureKind.AMBIGUOUS, "x", 503), False),  # a gateway's 503: looked up first
        (rejected(503, 20503), True),  # Twilio's own 20503: it turned the request away
        (TwilioFailure(FailureKind.AMBIGUOUS, "Gateway Timeout", 504), False),
        (TwilioFailure(FailureKind.NOT_SENT, "refused"), True),
        (TwilioFailure(FailureKind.AMBIGUOUS, "timeout"), False),
        (TwilioFailure(FailureKind.AMBIGUOUS, "500", 500, 20500), False),
        (rejected(400, 21211), False),
        (rejected(400, 21608), False),
        (rejected(400, 21610), False),
        (rejected(401, 20003), False),
        (rejected(404, 20404), False),
    ],
)
def test_only_failures_that_cannot_double_a_message_are_retried(failure: TwilioFailure, retry: bool) -> None:
    assert POLICY.should_retry(failure) is retry


def test_full_jitter_stays_under_an_exponential_ceiling_capped_by_max_delay() -> None:
    failure = rejected(429)
    assert [POLICY.delay(n, failure, lambda: 1.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert POLICY.delay(20, failure, lambda: 1.0) == 30.0
    assert POLICY.delay(3, failure, lambda: 0.0) == 0.0
    assert POLICY.delay(3, failure, lambda: 0.25) == 0.5


def test_retry_after_is_a_floor_and_still_capped() -> None:
    assert POLICY.delay(1, rejected(429, 20429, retry_after=7), lambda: 0.1) == 7
    assert POLICY.delay(1, rejected(429, 20429, retry_after=600), lambda: 0.1) == 30.0


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (TwilioFailure(FailureKind.NOT_SENT, "refused"), ErrorCode.TWILIO_UNAVAILABLE),
        (TwilioFailure(FailureKind.AMBIGUOUS, "timeout"), ErrorCode.OUTCOME_UNKNOWN),
        (rejected(429), ErrorCode.TWILIO_UNAVAILABLE),
        (TwilioFailure(FailureKind.AMBIGUOUS, "Bad Gateway", 502), ErrorCode.OUTCOME_UNKNOWN),
        (rejected(429, 20429), ErrorCode.TWILIO_ERROR),
        (rejected(400, 21211), ErrorCode.TWILIO_ERROR),
    ],
)
def test_final_failures_map_to_documented_errors(failure: TwilioFailure, code: ErrorCode) -> None:
    assert error_code_for(failure) is code


@pytest.mark.parametrize(
    ("failure", "extra"),
    [
        (rejected(429, 20429), True),
        (rejected(503, 20503), True),  # Twilio's own "unavailable": a short outage delays the alert, not fails it
        (rejected(400, 21211), False),
        (TwilioFailure(FailureKind.AMBIGUOUS, "x", 503), False),
    ],
)
def test_what_twilio_turned_away_is_retried_beyond_the_request_s_retries(failure: TwilioFailure, extra: bool) -> None:
    lifecycle = Lifecycle(POLICY, 120.0, rand=lambda: 0.5)
    decision = lifecycle.after_attempt(Attempt(1, 0, 1000.0), failure, 1000.0)
    assert isinstance(decision, Retry) is extra
    last = lifecycle.after_attempt(Attempt(THROTTLED_RETRIES + 1, 0, 1000.0), failure, 1000.0)
    assert not isinstance(last, Retry)  # within a budget
