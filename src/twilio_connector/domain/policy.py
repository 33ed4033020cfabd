"""Sending policy: which numbers may be reached, how long a text may be, and how many may go. Pure.

Whoever can publish on the request topics can make the owner's Twilio account text premium-rate numbers (SMS
pumping) or run up the bill with a flood. The default guards refuse only what no real alert is sent to
(premium-rate and shared-cost numbers, international networks); every other guard is opt-in, one setting
each, or a recommended set at once with the `strict` preset. Storms to one recipient are folded, not refused
(see `storms`). Rate counts live in the journal (see `admission`): this module only decides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache

import phonenumbers

from .contract import WHATSAPP, Kind, Notification

__all__ = [
    "MINUTE_BUCKET",
    "NUMBER_TYPES",
    "PRESETS",
    "Caps",
    "Limits",
    "Pacer",
    "country_of",
    "describe_limits",
    "number_class",
    "refusal",
    "segments",
]

GSM_SEGMENT = 153  # characters per segment of a multi-part GSM-7 message
UCS2_SEGMENT = 67  # ... and of a message with characters outside GSM-7
#: Rate counts are kept in fixed buckets, so their memory does not grow with the traffic: a minute's count is
#: the sum of six 10-second buckets, a day's the sum of 24 one-hour buckets. Both err on the strict side by
#: at most one bucket.
MINUTE_BUCKET, DAY_BUCKET = 10.0, 3600.0
MINUTE_BUCKETS, DAY_BUCKETS = 6, 24

INTERNATIONAL_NETWORK = "international_network"
_TYPES = {
    "premium_rate": phonenumbers.PhoneNumberType.PREMIUM_RATE,
    "shared_cost": phonenumbers.PhoneNumberType.SHARED_COST,
    "voip": phonenumbers.PhoneNumberType.VOIP,
    "personal_number": phonenumbers.PhoneNumberType.PERSONAL_NUMBER,
    "pager": phonenumbers.PhoneNumberType.PAGER,
    "uan": phonenumbers.PhoneNumberType.UAN,
    "toll_free": phonenumbers.PhoneNumberType.TOLL_FREE,
}
#: Number classes `refused_number_types` may name: phonenumbers' types, and `international_network` for the
#: non-geographic networks of region 001 (+800, +808, +870, +881, +882, +883, +888, +979).
NUMBER_TYPES = (*_TYPES, INTERNATIONAL_NETWORK)
DEFAULT_REFUSED_TYPES = ("premium_rate", "shared_cost", INTERNATIONAL_NETWORK)
ANY_COUNTRY = ("*",)


@lru_cache(maxsize=4096)  # parsing costs ~0.1 ms, and fleets text the same few numbers over and over
def country_of(number: str) -> str | None:
    """ISO region code of an E.164 number (`US`, `GB`, ...), or None if it belongs to no country."""
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(number.removeprefix(WHATSAPP)))
    except phonenumbers.NumberParseException:
        return None
    return region if region and region not in ("ZZ", "001") else None


@lru_cache(maxsize=4096)
def number_class(number: str) -> str | None:
    """The class of `number` among `NUMBER_TYPES`, or None (an ordinary, unknown or unclassifiable number).

    Matched against phonenumbers' patterns for the number's calling code directly: parsing a number and finding
    its region costs ~100 us, too much per request when a flood goes to new numbers each time."""
    digits = number.removeprefix(WHATSAPP).removeprefix("+")
    for length in (1, 2, 3):  # calling codes are prefix-free
        classes = _classes_of(digits[:length])
        if classes is not None:
            national = digits[length:]
            return next((name for name, pattern in classes if pattern.fullmatch(national)), None)
    return None


@cache  # one entry per prefix of up to three digits: 1,110 at most
def _classes_of(code: str) -> tuple[tuple[str, re.Pattern[str]], ...] | None:
    """For a calling code, each class with one pattern matching the national numbers of that class in any of
    the code's regions; None if `code` is no calling code."""
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(code)) if code.isdigit() else None
    if not regions:
        return None
    if regions == ("001",):
        return ((INTERNATIONAL_NETWORK, re.compile(r"\d*")),)
    metadata = [phonenumbers.PhoneMetadata.metadata_for_region(region) for region in regions]
    classes = []
    for name in _TYPES:
        patterns = [
            desc.national_number_pattern
            for desc in (getattr(data, name) for data in metadata if data is not None)
            if desc is not None and desc.national_number_pattern
        ]
        if patterns:
            classes.append((name, re.compile("|".join(f"(?:{pattern})" for pattern in patterns))))
    return tuple(classes)


def segments(body: str) -> int:
    per = GSM_SEGMENT if body.isascii() else UCS2_SEGMENT
    return 1 if len(body) <= per + (7 if per == GSM_SEGMENT else 3) else -(-len(body) // per)


@dataclass(frozen=True)
class Limits:
    """The guards in force. 0 turns a cap off; an empty `countries` or one with `*` allows any country."""

    allow: tuple[str, ...] = ()  # numbers or prefixes (`+1555`); if any, only these may be reached
    deny: tuple[str, ...] = ()  # numbers or prefixes never reached
    countries: tuple[str, ...] = ANY_COUNTRY  # ISO codes; "sender": the sender's country; "*": any
    refused_types: tuple[str, ...] = DEFAULT_REFUSED_TYPES
    per_recipient_per_minute: int = 0
    per_recipient_per_day: int = 0
    per_minute: int = 0
    per_day: int = 0
    max_segments: int = 0

    @property
    def caps(self) -> Caps:
        return Caps(self.per_recipient_per_minute, self.per_recipient_per_day, self.per_minute, self.per_day)

    @property
    def limits_volume(self) -> bool:
        """Whether some guard bounds how much a flood of requests can send."""
        return bool(self.allow or self.per_minute or self.per_day or self.per_recipient_per_day)


#: `policy` setting -> the guards it stands for; a guard set on its own overrides its preset value.
PRESETS: Mapping[str, Limits] = {
    "default": Limits(),
    "strict": Limits(countries=("sender",), per_recipient_per_day=100, per_minute=300, per_day=10_000, max_segments=10),
}


@dataclass(frozen=True, slots=True)
class Caps:
    """Rate caps (0: off), checked against counts the journal keeps per bucket."""

    per_recipient_per_minute: int = 0
    per_recipient_per_day: int = 0
    per_minute: int = 0
    per_day: int = 0

    def scopes(self, to: str) -> list[tuple[str, str, int, str]]:
        """The counters to check and bump for a send to `to`: (span, scope, cap, how to say it is over)."""
        wanted = (
            ("m", to, self.per_recipient_per_minute, f"{to} already got {{}} in the last minute"),
            ("d", to, self.per_recipient_per_day, f"{to} already got {{}} in the last day"),
            ("m", "", self.per_minute, "{} notifications were sent in the last minute"),
            ("d", "", self.per_day, "{} notifications were sent in the last day"),
        )
        return [scope for scope in wanted if scope[2]]

    @staticmethod
    def bucket(span: str, now: float) -> tuple[int, int]:
        """The bucket `now` falls in, and the oldest bucket still inside the span."""
        size, count = (MINUTE_BUCKET, MINUTE_BUCKETS) if span == "m" else (DAY_BUCKET, DAY_BUCKETS)
        current = int(now // size)
        return current, current - count + 1


def refusal(limits: Limits, notification: Notification) -> str | None:
    """Why `notification` may not be sent whatever the rates, or None. Rate caps are checked apart (`Caps`)."""
    to = notification.to.removeprefix(WHATSAPP)
    if limits.deny and to.startswith(limits.deny):
        return f"{to} is on the deny list"
    if limits.allow and not to.startswith(limits.allow):
        return f"{to} is not on the allow list"
    kind = number_class(to)
    if kind is not None and kind in limits.refused_types:
        return f"{to} is a {kind.replace('_', '-')} number (refused_number_types)"
    allowed = _countries(limits, notification) if limits.countries != ANY_COUNTRY else None
    if allowed is not None:
        country = country_of(to)
        if country not in allowed:
            return f"{to} is in {country or 'no country'}, not in the allowed countries ({', '.join(sorted(allowed))})"
    if limits.max_segments and notification.kind is Kind.SMS and segments(notification.content) > limits.max_segments:
        return f"the message needs {segments(notification.content)} segments; the limit is {limits.max_segments}"
    return None


def _countries(limits: Limits, notification: Notification) -> set[str] | None:
    countries = set(limits.countries)
    if not countries or "*" in countries:
        return None
    if "sender" in countries:
        countries.discard("sender")
        sender = country_of(notification.from_) if notification.from_ else None
        if sender is None and not countries:
            return None  # a Messaging Service or a non-geographic sender: no country to go by
        if sender is not None:
            countries.add(sender)
    return countries


def describe_limits(limits: Limits, fold_threshold: int, fold_window: float) -> list[str]:
    """The guards in force, one line each, for the start-up log and `check-config`."""

    def cap(value: int) -> str:
        return str(value) if value else "off"

    any_country = not limits.countries or "*" in limits.countries
    lines = [
        f"refused number types: {', '.join(limits.refused_types) or 'none'}",
        f"countries: {'any' if any_country else ', '.join(limits.countries)}",
        f"allow list: {', '.join(limits.allow) or 'none'}; deny list: {', '.join(limits.deny) or 'none'}",
        f"rate caps: per recipient {cap(limits.per_recipient_per_minute)}/minute, "
        f"{cap(limits.per_recipient_per_day)}/day; overall {cap(limits.per_minute)}/minute, {cap(limits.per_day)}/day",
        f"message length: {f'{limits.max_segments} segments at most' if limits.max_segments else 'no cap'}",
        (
            f"storm folding: texts to one number past {fold_threshold} within {fold_window:g} s are folded into "
            "one digest (calls past it are paced)"
            if fold_threshold
            else "storm folding: off"
        ),
    ]
    if "GB" in limits.countries and not {"GG", "JE", "IM"} <= set(limits.countries):
        lines.append(
            "note: some +44 mobile ranges are GG, JE or IM, not GB (+44 7911 is GG): list those too to reach them"
        )
    return lines


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
