"""How long a new message takes to show in Twilio's list, and the reconcile window that evidence allows. Pure.

An attempt whose outcome is unknown is sent again only once Twilio's list has had time to show it and did not.
How long is "time enough" is measured, not guessed: each time a message is seen to appear in the list (a sampled
lookup after a create that succeeded, or a lookup that found the message of an unknown outcome), the seconds from
its create to its sighting are a sample, an upper bound of that message's lag. The window is a few times the
largest recent sample, between a floor and `reconcile_window`, the ceiling:

    window = min(ceiling, max(FLOOR, SAFETY x largest sample of the last EVIDENCE_AGE seconds + MARGIN))

With fewer than MIN_SAMPLES recent samples (a new install, a quiet hour, a list that stopped answering) the
window is the ceiling, as before any measurement. A healthy account (lag under a second) resends after about
FLOOR seconds; a lagging one waits as long as its own evidence asks, up to the ceiling. The residual risk is a
message whose lag exceeds SAFETY times the worst one seen in the last hour: it would be sent twice.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["EVIDENCE_AGE", "FLOOR", "MIN_SAMPLES", "SAFETY", "evidence_window"]

#: The window never goes below this many seconds: the first lookup comes at 2 s, the verdict no sooner than this.
FLOOR = 6.0
SAFETY, MARGIN = 3.0, 2.0
#: Samples older than this are not evidence any more (Twilio's lag changes with its load).
EVIDENCE_AGE = 3600.0
MIN_SAMPLES = 5


def evidence_window(samples: Sequence[float], ceiling: float) -> float:
    """The reconcile window `samples` (recent list lags, seconds) allow, within FLOOR and `ceiling`."""
    if len(samples) < MIN_SAMPLES or ceiling <= FLOOR:
        return ceiling
    return min(ceiling, max(FLOOR, SAFETY * max(samples) + MARGIN))
