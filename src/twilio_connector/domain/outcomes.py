"""What an attempt at Twilio can come to besides a created message or call: a failure, classified by what it
tells about whether Twilio acted (the retry and lookup decisions rest on it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["FailureKind", "TwilioFailure"]


class FailureKind(enum.Enum):
    REJECTED = "rejected"
    """Twilio, or a gateway in front of it, answered with an error."""
    NOT_SENT = "not_sent"
    """The request never left this machine (connection refused, DNS, connect timeout)."""
    AMBIGUOUS = "ambiguous"
    """The request left but no usable answer came back: the message may exist."""


@dataclass(frozen=True, slots=True)
class TwilioFailure:
    kind: FailureKind
    message: str
    http_status: int | None = None
    code: int | None = None
    retry_after: float | None = None
    request_id: str | None = None  # Twilio-Request-Id of the answer, when there was one
