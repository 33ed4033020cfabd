"""When an attempt whose outcome is unknown is looked up at Twilio, and what an empty lookup means. Pure.

Twilio has no idempotency key, and its answer to a create can be lost after it acted: a 5xx (a 502 or 504 from
a gateway that gave up waiting), a read timeout, a dropped connection. The only way not to text someone twice is
to look the message up in Twilio's list before sending it again. But a new message can be missing from list
answers for seconds or more (twilio-node #647, twilio-java #442), so one empty lookup proves nothing: the attempt
is looked up on a schedule across `window` seconds from when it began, and only when every lookup came back
empty is it taken as never created (and sent again if its retries allow). If the list cannot be read until the
window ends (an API key without read permission, an outage), the outcome stays unknown: never a blind resend.
"""

from __future__ import annotations

__all__ = ["LOOKUP_AFTER", "lookup_offsets", "next_lookup"]

#: Seconds after the attempt began: a short grace for Twilio's list to catch up, then wider and wider gaps.
LOOKUP_AFTER = (2.0, 10.0, 30.0, 120.0)


def lookup_offsets(window: float) -> tuple[float, ...]:
    """The lookups of one attempt, in seconds after it began: the schedule cut to `window`, which ends it."""
    return (*(offset for offset in LOOKUP_AFTER if offset < window), window)


def next_lookup(done: int, window: float) -> float | None:
    """When lookup number `done + 1` is due (seconds after the attempt began), or None once the window is over."""
    offsets = lookup_offsets(window)
    return offsets[done] if done < len(offsets) else None
