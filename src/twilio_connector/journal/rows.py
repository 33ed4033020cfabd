"""How a request's row is read back, for both journals: the columns selected and the record built from them."""

from __future__ import annotations

from typing import Any

import orjson

from ..domain.contract import Kind, Notification
from ..domain.records import Entry, Tracked
from ..domain.states import State

__all__ = ["COLUMNS", "PREFIXED", "entry_of", "tracked_of"]

#: The columns an `Entry` is built from, in order.
COLUMNS = (
    "seq, request_id, kind, to_number, from_number, name, content, retries, options, state, attempts, "
    "attempt_started_at, sid, members, lookups, last_error, accepted_at"
)


PREFIXED = ", ".join(f"r.{column.strip()}" for column in COLUMNS.split(","))


def entry_of(row: tuple[Any, ...]) -> Entry:
    seq, request_id, kind, to, sender, name, content, retries, options, state, attempts, started, sid, *counts = row
    notification = Notification(request_id, Kind(kind), to, sender, name, content, retries)
    if options != "{}":
        notification = notification.with_options(orjson.loads(options))
    return Entry(seq, notification, State(state), attempts, started, sid, *counts)


def tracked_of(row: tuple[Any, ...]) -> Tracked:
    seq, sid, interval, deadline, last_status, *request = row
    return Tracked(seq, sid, entry_of(tuple(request)).notification, interval, deadline, last_status)
