"""Sending policy: who may be texted or called, and how often. Pure apart from the clock passed in.

Whoever can publish on the request topics can make the owner's Twilio account text premium-rate numbers
(SMS pumping) or run up the bill with a flood. The defaults bound both; README's security section lists them.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

from .contract import WHATSAPP, Kind, Notification

__all__ = ["Limits", "Pacer", "Policy", "country_of"]

GSM_SEGMENT = 153  # characters per segment of a multi-part GSM-7 message
UCS2_SEGMENT = 67  # ... and of a message with characters outside GSM-7
MINUTE, DAY = 60.0, 86400.0


@lru_cache(maxsize=4096)  # parsing costs ~0.1 ms, and fleets text the same few numbers over and over
def country_of(number: str) -> str | None:
    """ISO region code of an E.164 number (`US`, `GB`, ...), or None if it belongs to no country."""
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(number.removeprefix(WHATSAPP)))
    except phonenumbers.NumberParseException:
        return None
    return region if region and region not in ("ZZ", "001") else None


def segments(body: str) -> int:
    per = GSM_SEGMENT if body.isascii() else UCS2_SEGMENT
    return 1 if len(body) <= per + (7 if per == GSM_SEGMENT else 3) else -(-len(body) // per)


@dataclass(frozen=True)
class Limits:
    allow: tuple[str, ...] = ()  # numbers or prefixes (`+1555`); if any, only these may be reached
    deny: tuple[str, ...] = ()  # numbers or prefixes never reached
    countries: tuple[str, ...] = ("sender",)  # ISO codes; "sender": the sender's country; "*": any
    per_recipient_per_minute: int = 5
    per_recipient_per_day: int = 100
    per_minute: int = 300
    per_day: int = 10_000
    max_segments: int = 10


class _Window:
    """Events in the last `span` seconds."""

    __slots__ = ("_times", "span")

    def __init__(self, span: float) -> None:
        self.span = span
        self._times: deque[float] = deque()

    def count(self, now: float) -> int:
        while self._times and self._times[0] <= now - self.span:
            self._times.popleft()
        return len(self._times)

    def add(self, now: float) -> None:
        self._times.append(now)


class Policy:
    """Checks each notification; counts the ones let through. Counters live in memory (a restart resets them)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rejected = 0
        self._global = (_Window(MINUTE), _Window(DAY))
        self._per_recipient: defaultdict[str, tuple[_Window, _Window]] = defaultdict(
            lambda: (_Window(MINUTE), _Window(DAY))
        )
        self._forget_after = 0.0

    def _forget_idle(self, now: float) -> None:
        """Drop recipients with nothing in their last day, so a long-running service's memory stays flat."""
        idle = [to for to, (_, day) in self._per_recipient.items() if not day.count(now)]
        for to in idle:
            del self._per_recipient[to]
        self._forget_after = now + MINUTE

    def check(self, notification: Notification, now: float) -> str | None:
        """None if `notification` may be sent (and it is counted), else the reason it may not."""
        reason = self._reason(notification, now)
        if reason is None:
            for window in (*self._global, *self._per_recipient[notification.to]):
                window.add(now)
            if now >= self._forget_after:
                self._forget_idle(now)
        else:
            self.rejected += 1
        return reason

    def _reason(self, notification: Notification, now: float) -> str | None:
        limits, to = self.limits, notification.to.removeprefix(WHATSAPP)
        if any(to.startswith(prefix) for prefix in limits.deny):
            return f"{to} is on the deny list"
        if limits.allow and not any(to.startswith(prefix) for prefix in limits.allow):
            return f"{to} is not on the allow list"
        country = country_of(to)
        allowed = self._countries(notification)
        if allowed is not None and country not in allowed:
            return f"{to} is in {country or 'no country'}, not in the allowed countries ({', '.join(sorted(allowed))})"
        if notification.kind is Kind.SMS and segments(notification.content) > limits.max_segments:
            return f"the message needs {segments(notification.content)} segments; the limit is {limits.max_segments}"
        minute, day = self._per_recipient[notification.to]
        for window, cap, what in (
            (minute, limits.per_recipient_per_minute, f"{to} already got {{}} in the last minute"),
            (day, limits.per_recipient_per_day, f"{to} already got {{}} in the last day"),
            (self._global[0], limits.per_minute, "{} notifications were sent in the last minute"),
            (self._global[1], limits.per_day, "{} notifications were sent in the last day"),
        ):
            count = window.count(now)
            if count >= cap:
                return what.format(count) + f" (limit {cap})"
        return None

    def _countries(self, notification: Notification) -> set[str] | None:
        countries = set(self.limits.countries)
        if "*" in countries:
            return None
        if "sender" in countries:
            countries.discard("sender")
            sender = country_of(notification.from_) if notification.from_ else None
            if sender is None and not countries:
                return None  # a Messaging Service or a non-geographic sender: no country to go by
            if sender is not None:
                countries.add(sender)
        return countries


class Pacer:
    """Spaces the sends of each sender number `1 / rate` seconds apart (Twilio long codes take about one
    message a second and queue the rest): `reserve` says how long to wait before sending. Pure: `now` is given."""

    def __init__(self, rate: float) -> None:
        self._gap = 1.0 / rate if rate > 0 else 0.0
        self._next: dict[str, float] = {}

    def reserve(self, sender: str, now: float) -> float:
        if not self._gap or not sender:
            return 0.0
        start = max(now, self._next.get(sender, now))
        self._next[sender] = start + self._gap
        if len(self._next) > 10_000:  # forget senders idle long enough to owe nothing
            self._next = {key: at for key, at in self._next.items() if at > now}
        return start - now
