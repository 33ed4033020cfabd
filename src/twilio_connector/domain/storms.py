"""Alert storms: past a threshold within a window, texts to one recipient are folded into one digest. Pure.

A runaway device or a plant going down can text one phone hundreds of times a minute; refusing those texts
would drop the alerts that matter most, and sending them all buries the one that matters among the rest (and a
long code delivers about one a second anyway). So the first `threshold` texts of a window go out as usual; the
rest are held (durably, in the journal) and sent as one digest when the window closes. A call cannot be
folded: calls past the threshold wait instead, paced `window / threshold` apart. The journal keeps one `Window`
per recipient (and sender); this module decides.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from .contract import Content, Kind, Notification
from .policy import segments

__all__ = ["DIGEST_SEGMENTS", "StormRule", "Verdict", "Window", "digest_body", "foldable", "window_key"]

#: A digest is cut to fit this many segments (Twilio accepts 1,600 characters at most).
DIGEST_SEGMENTS = 10


class Verdict(Enum):
    SEND = "send"
    FOLD = "fold"  # into the window's digest
    WAIT = "wait"  # a call (or anything not foldable) past the threshold: sent later, paced


@dataclass(frozen=True, slots=True)
class Window:
    """One recipient's current window."""

    opens_at: float
    closes_at: float
    passed: int  # sent (or scheduled) on their own in this window
    next_at: float  # when the next paced request may start
    digest: int | None = None  # the journal's digest request gathering this window's folded texts


@dataclass(frozen=True, slots=True)
class StormRule:
    threshold: int  # at most this many on their own per window; 0 turns folding off
    span: float  # the window, in seconds

    def admit(self, window: Window | None, fold: bool, now: float) -> tuple[Window | None, Verdict, float]:
        """Decide for one request: the window after it, the verdict, and when it may start (`now`, or later
        for `WAIT`). `fold`: the request can be folded into a digest."""
        if not self.threshold:
            return window, Verdict.SEND, now
        if window is None or window.closes_at <= now:
            carried = window.next_at if window is not None else now
            return Window(now, now + self.span, 1, max(now, carried)), Verdict.SEND, now
        if window.passed < self.threshold:
            return replace(window, passed=window.passed + 1), Verdict.SEND, now
        if fold:
            return window, Verdict.FOLD, window.closes_at
        start = max(now, window.next_at)
        return replace(window, next_at=start + self.span / self.threshold), Verdict.WAIT, start


def foldable(notification: Notification) -> bool:
    """A plain text (no media, no template) can be summarised in a digest; a call or an MMS cannot."""
    return notification.kind is Kind.SMS and notification.content_type is Content.BODY and not notification.media_urls


def window_key(notification: Notification) -> str:
    """Texts are folded per recipient and sender (a digest goes from the sender the texts would have)."""
    n = notification
    return "\x1f".join((n.kind.value, n.to, n.from_, n.messaging_service_sid or ""))


_SPACE = re.compile(r"\s+")


def digest_body(texts: Sequence[str], total: int, max_segments: int = DIGEST_SEGMENTS) -> str:
    """`+14 more alerts: Freezer 3 above -5 C; Door 7 open; ... (+9 not shown)`: the folded texts, oldest
    first, as many as fit in `max_segments`; `total` counts them all (`texts` may be the first few only)."""
    head = f"+{total} more alert{'s' if total != 1 else ''}: "
    shown: list[str] = []
    body = head
    for text in (_SPACE.sub(" ", text).strip() for text in texts):
        candidate = body + ("; " if shown else "") + text
        if segments(candidate + _tail(total - len(shown) - 1)) > max_segments:
            if not shown:  # one text too long by itself: cut it rather than show nothing
                shown.append(_cut(head, text, total, max_segments))
                body = head + shown[0]
            break
        shown.append(text)
        body = candidate
    return body + _tail(total - len(shown))


def _tail(omitted: int) -> str:
    return f" (+{omitted} not shown)" if omitted > 0 else ""


def _cut(head: str, text: str, total: int, max_segments: int) -> str:
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits
        middle = (low + high + 1) // 2
        if segments(head + text[:middle] + "..." + _tail(total - 1)) <= max_segments:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "..."
