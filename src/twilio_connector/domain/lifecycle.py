"""A request's lifecycle after each attempt and each lookup: finish, retry, or look it up at Twilio. Pure.

Twilio has no idempotency key, and its answer to a create can be lost after it acted: a 5xx (a 502 or 504 from
a gateway that gave up waiting), a read timeout, a dropped connection. The only way not to text someone twice is
to look the message up in Twilio's list before sending it again. But a new message can be missing from list
answers for seconds or more (twilio-node #647, twilio-java #442), so one empty lookup proves nothing: the attempt
is looked up on a schedule across `window` seconds from when it began, and only when every lookup came back
empty is it taken as never created (and sent again if its retries allow). If the list cannot be read until the
window ends (an API key without read permission, an outage), the outcome stays unknown: never a blind resend.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .contract import SendResult
from .outcomes import FailureKind, TwilioFailure
from .retry import RetryPolicy, turned_away

#: Attempts a request may spend on 429s and Twilio's own 503s (`retry.turned_away`) beyond its own `retries`:
#: with backoff capped at `backoff_max` (30 s), they outlast an outage of several minutes.
THROTTLED_RETRIES = 20

__all__ = [
    "LOOKUP_AFTER",
    "Attempt",
    "Decision",
    "Finish",
    "Lifecycle",
    "LookUp",
    "Retry",
    "lookup_offsets",
    "next_lookup",
]

#: Seconds after the attempt began: a short grace for Twilio's list to catch up, then wider and wider gaps.
LOOKUP_AFTER = (2.0, 10.0, 30.0, 120.0)


def lookup_offsets(window: float) -> tuple[float, ...]:
    """The lookups of one attempt, in seconds after it began: the schedule cut to `window`, which ends it."""
    return (*(offset for offset in LOOKUP_AFTER if offset < window), window)


def next_lookup(done: int, window: float) -> float | None:
    """When lookup number `done + 1` is due (seconds after the attempt began), or None once the window is over."""
    offsets = lookup_offsets(window)
    return offsets[done] if done < len(offsets) else None


@dataclass(frozen=True, slots=True)
class Finish:
    """The request is done: this outcome is its status."""

    outcome: SendResult | TwilioFailure
    attempt: int


@dataclass(frozen=True, slots=True)
class Retry:
    """Attempt again at `at` (epoch seconds): attempt number `attempt` failed, and proved nothing was created."""

    at: float
    failure: TwilioFailure
    attempt: int


@dataclass(frozen=True, slots=True)
class LookUp:
    """Look the attempt up at Twilio at `at`; `lookups` were done so far; `why`: what made it doubtful."""

    at: float
    lookups: int
    why: str | None = None


Decision = Finish | Retry | LookUp


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt at Twilio, as far as what follows it depends on."""

    number: int  # counted from 1; 0 for one a stop cut short (it does not count against the retries)
    retries: int  # retries the request allows
    began: float  # epoch seconds
    lookups: int = 0  # lookups of it done so far
    why: str | None = None  # what made its outcome unknown


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """What follows an attempt's outcome, or a lookup that claimed nothing. Pure: time and chance are given."""

    retry: RetryPolicy
    window: float  # the reconcile window
    rand: Callable[[], float] = random.random

    def after_attempt(self, attempt: Attempt, outcome: SendResult | TwilioFailure, now: float) -> Decision:
        if isinstance(outcome, SendResult):
            return Finish(outcome, attempt.number)
        if outcome.kind is FailureKind.AMBIGUOUS:
            why = f"{outcome.message} (HTTP {outcome.http_status})" if outcome.http_status else outcome.message
            return LookUp(attempt.began + lookup_offsets(self.window)[0], 0, why)
        return self._retry_or_finish(attempt, outcome, now)

    def after_lookup(self, attempt: Attempt, found: list[SendResult] | TwilioFailure, now: float) -> Decision:
        """A lookup found no message left to claim, or could not read the list (`found` is a failure)."""
        done = attempt.lookups + 1
        offset = next_lookup(done, self.window)
        if offset is not None:
            return LookUp(attempt.began + offset, done)
        why = attempt.why or "no answer from Twilio"
        if isinstance(found, TwilioFailure):
            unknown = TwilioFailure(
                FailureKind.AMBIGUOUS,
                f"{why}; Twilio's list could not be read to check ({found.message}): "
                "the message may exist, so it is not sent again",
            )
            return Finish(unknown, max(attempt.number, 1))
        not_created = TwilioFailure(
            FailureKind.NOT_SENT, f"{why}; Twilio did not list it within {self.window:g} s: it was not created"
        )
        return self._retry_or_finish(attempt, not_created, now)

    def _retry_or_finish(self, attempt: Attempt, failure: TwilioFailure, now: float) -> Decision:
        # A 429 or Twilio's own 503 was never processed (a 429 may be the connector's own doing, its concurrency
        # window probing the account's limit): retried beyond the request's own `retries`.
        budget = attempt.retries + (THROTTLED_RETRIES if turned_away(failure) else 0)
        if attempt.number <= budget and self.retry.should_retry(failure):
            return Retry(now + self.retry.delay(max(attempt.number, 1), failure, self.rand), failure, attempt.number)
        return Finish(failure, max(attempt.number, 1))
