"""Page until acknowledged (our extension): what an open page does next, and what acknowledges it. Pure.

A request carrying `until_acknowledged` starts a page per recipient: the journal keeps how many sends went out
and when the next falls due. At each due time the page sends again (a new request through the same guards and
storms as any, its status marked as the n-th send), until `times` sends went out; then, if nobody acknowledged
it, it calls (`then_call`) or ends unacknowledged. An acknowledgement (a reply from a recipient, an answered call,
or an MQTT message naming the request) ends every open page of the request: an alert acknowledged by one person
on call is acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from .contract import Kind, Notification, encode_status, page_call, page_send
from .optout import OPT_IN, OPT_OUT

__all__ = ["ANSWERED_FOR", "OpenPage", "PageStep", "acknowledged_status", "acknowledges", "answered", "next_step"]

#: Seconds a call must have lasted to count as answered by a person (an acknowledgement of a call page).
ANSWERED_FOR = 5
#: Replies that never acknowledge: Twilio's keywords, which say something else (STOP, START, HELP).
_KEYWORDS = OPT_OUT | OPT_IN | {"HELP", "INFO"}


@dataclass(frozen=True, slots=True)
class OpenPage:
    """A page as the journal keeps it: the request that started it, sends made so far (the first included), and
    when the next step falls due."""

    seq: int
    notification: Notification
    sends: int
    next_at: float


@dataclass(frozen=True, slots=True)
class PageStep:
    """What a due page does: `send` (None: nothing), and then waits until `next_at`, or ends (`next_at` None) as
    `ended` with `status` to publish (None: the call's own status says it)."""

    send: Notification | None
    sends: int
    next_at: float | None = None
    ended: str | None = None
    status: bytes | None = None


def next_step(page: OpenPage, now: float) -> PageStep:
    """The step of `page`, due, taken at `now`. The next one falls `every` seconds after it: a connector back from
    a long stop sends one text, not every one it missed in a burst."""
    spec = page.notification.page
    assert spec is not None
    if page.sends < spec.times:
        sends = page.sends + 1
        return PageStep(page_send(page.notification, sends), sends, max(page.next_at, now) + spec.every)
    if spec.then_call is not None:
        return PageStep(page_call(page.notification), page.sends, ended="called")
    return PageStep(None, page.sends, ended="unacknowledged", status=_unacknowledged(page))


def acknowledges(page: OpenPage, person: str, body: str) -> bool:
    """Whether `person`'s reply `body` acknowledges `page`: a recipient's, matching the page's `ack_pattern` (a
    shell-style pattern, any case, surrounding spaces ignored), or without one any reply but Twilio's keywords."""
    spec = page.notification.page
    if spec is None or person != page.notification.to:
        return False
    text = body.strip()
    if spec.ack_pattern is not None:
        return fnmatchcase(text.upper(), spec.ack_pattern.strip().upper())
    return text.rstrip(".!").strip().upper() not in _KEYWORDS


def answered(notification: Notification, state: str, duration: object) -> bool:
    """A call of a page that a person answered: completed, and lasting ANSWERED_FOR seconds or more."""
    if notification.kind is not Kind.CALL or notification.escalated:
        return False
    if notification.page is None and not notification.repeat:
        return False
    try:
        seconds = float(duration)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return state == "completed" and seconds >= ANSWERED_FOR


def acknowledged_status(page: OpenPage, by: str, via: str) -> bytes:
    """The follow-up saying a page ended acknowledged: `by` whom (a number, or what an MQTT ack said), `via`
    `reply`, `call` or `mqtt`."""
    payload = {"acknowledged_by": by, "via": via, "sends": page.sends}
    return _end(page, "acknowledged", {"status": "success", "payload": payload})


def _unacknowledged(page: OpenPage) -> bytes:
    message = f"nobody acknowledged it after {page.sends} send(s)"
    return _end(page, "unacknowledged", {"status": "fail", "error_message": message, "payload": {"sends": page.sends}})


def _end(page: OpenPage, update: str, response: dict[str, Any]) -> bytes:
    status: dict[str, Any] = {"response": response, "id": page.notification.id, "update": update}
    if page.notification.listed:
        status["recipient"] = page.notification.to
    return encode_status(status)
