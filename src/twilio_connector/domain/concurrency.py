"""How many requests to have at Twilio at once: a window that adapts to the account's concurrency limit.

Twilio limits concurrent API requests per account and answers 429 (error 20429) past it; the limit is shared
with the owner's other applications, so no fixed number is right. The window grows while answers come without
a 429 (doubling each round at first, then by one a round) and halves on a 429, within `ceiling`, as TCP's
congestion window does. Pure: no clock, no I/O.
"""

from __future__ import annotations

__all__ = ["ConcurrencyWindow"]


class ConcurrencyWindow:
    def __init__(self, ceiling: int, start: int = 8, floor: int = 1) -> None:
        self.ceiling = max(1, ceiling)
        self.floor = max(1, min(floor, self.ceiling))
        self.size = max(self.floor, min(start, self.ceiling))
        self._threshold = self.ceiling  # below it the window doubles each round (slow start)
        self._credit = 0.0  # answers counted towards the next step of growth
        self._recovering = 0  # answers to let pass after a cut: those already sent then cannot tell anything new
        self.throttles = 0  # 429s seen, for the operator

    def answered(self, throttled: bool) -> None:
        """An answer came from Twilio: `throttled` if it was a 429 (too many concurrent requests)."""
        if throttled:
            self.throttles += 1
            if self._recovering:
                self._recovering -= 1
                return
            self._threshold = max(self.floor, self.size // 2)
            self.size = self._threshold
            self._recovering = self.size  # those in flight were sent under the old window
            self._credit = 0.0
            return
        if self._recovering:
            self._recovering -= 1
        if self.size >= self.ceiling:
            return
        self._credit += 1.0 if self.size < self._threshold else 1.0 / self.size
        if self._credit >= 1.0:
            self._credit -= 1.0
            self.size += 1
