"""Twilio's list answers: the filters each list takes (its OpenAPI's), newest first, and paging by PageToken.

Dates filter as Twilio's do: `DateSent=2026-12-06` is that day (UTC), `DateSent<` on or before, `DateSent>` on
or after; a full time (`2026-12-06T10:00:00Z`, as twilio-python sends a datetime) compares to the second. A
PageToken (`PA` and the SID the last page ended on) keeps a page stable while new items arrive, as Twilio's do.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

__all__ = ["BadQuery", "Page", "select"]

#: Each list's filters: exact fields, and date fields with their `<` and `>` forms.
EXACT = {
    "Messages": {"To": "to", "From": "from"},
    "Calls": {"To": "to", "From": "from", "Status": "status", "ParentCallSid": "parent_call_sid"},
    "IncomingPhoneNumbers": {"PhoneNumber": "phone_number", "FriendlyName": "friendly_name"},
    "OutgoingCallerIds": {"PhoneNumber": "phone_number", "FriendlyName": "friendly_name"},
    "Media": {},
}
DATES: dict[str, dict[str, str]] = {
    "Messages": {"DateSent": "date_sent"},
    "Calls": {"StartTime": "start_time", "EndTime": "end_time"},
}


class BadQuery(ValueError):
    """A filter or paging parameter Twilio would refuse (400, 20001)."""


def select(name: str, items: list[dict[str, Any]], query: Mapping[str, str]) -> list[dict[str, Any]]:
    """The items (newest first) that pass every filter of `query` known to the `name` list."""
    tests = [_exact(field, query[param]) for param, field in EXACT[name].items() if param in query]
    for param, field in DATES.get(name, {}).items():
        for suffix, keep in (("", _same), ("<", _on_or_before), (">", _on_or_after)):
            if param + suffix in query:
                tests.append(_dated(field, _when(param + suffix, query[param + suffix]), keep))
    return [item for item in items if all(test(item) for test in tests)]


def _exact(field: str, wanted: str) -> Any:
    return lambda item: item.get(field) == wanted


def _when(param: str, value: str) -> date | datetime:
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        return datetime.fromisoformat(value)
    except ValueError:
        raise BadQuery(f"Invalid {param}: {value} is not YYYY-MM-DD or an ISO 8601 time") from None


def _dated(field: str, bound: date | datetime, keep: Any) -> Any:
    def test(item: dict[str, Any]) -> bool:
        if not item.get(field):
            return False  # a message not sent yet, a call not started: no date to match
        stamp = parsedate_to_datetime(item[field])
        value: date | datetime = stamp if isinstance(bound, datetime) else stamp.date()
        return bool(keep(value, bound))

    return test


def _same(value: Any, bound: Any) -> bool:
    return bool(value == bound)


def _on_or_before(value: Any, bound: Any) -> bool:
    return bool(value <= bound)


def _on_or_after(value: Any, bound: Any) -> bool:
    return bool(value >= bound)


class Page:
    """One page of `matches` as `query` asks (PageSize, Page, PageToken), and the links Twilio gives with it."""

    def __init__(self, base: str, matches: list[dict[str, Any]], query: Mapping[str, str]) -> None:
        try:
            self.size = max(1, min(1000, int(query.get("PageSize", "50"))))
            self.number = max(0, int(query.get("Page", "0")))
        except ValueError:
            raise BadQuery("PageSize and Page must be integers") from None
        self.start = self.number * self.size
        token = query.get("PageToken", "")
        self._token = token or None
        sids = [item["sid"] for item in matches]
        if token.startswith("PA") and token[2:] in sids:
            self.start = sids.index(token[2:]) + 1
        self.items = matches[self.start : self.start + self.size]
        self._base = base
        self._filters = {key: value for key, value in query.items() if key not in ("PageSize", "Page", "PageToken")}
        self._more = self.start + self.size < len(matches)

    def _uri(self, number: int, token: str | None = None) -> str:
        query = {"PageSize": str(self.size), **self._filters, "Page": str(number)}
        if token:
            query["PageToken"] = token
        return f"{self._base}?{urlencode(query)}"

    def document(self, key: str) -> dict[str, Any]:
        last = self.items[-1]["sid"] if self.items else None
        return {
            key: self.items,
            "end": self.start + max(0, len(self.items) - 1),
            "first_page_uri": self._uri(0),
            "next_page_uri": self._uri(self.number + 1, f"PA{last}") if self._more and last else None,
            "page": self.number,
            "page_size": self.size,
            "previous_page_uri": self._uri(self.number - 1) if self.number else None,
            "start": self.start,
            "uri": self._uri(self.number, self._token),
        }
