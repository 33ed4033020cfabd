"""The records the engine and the journal exchange: a request as stored, a tracked message, a duplicate found.

Pure data, and the one pure function that says when two requests are the same (`dedupe_key`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from .contract import Notification
from .states import State

__all__ = [
    "Duplicate",
    "Entry",
    "Identity",
    "Reply",
    "ReplyRecord",
    "Track",
    "Tracked",
    "dedupe_key",
    "key_of",
    "stored_options",
]


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    notification: Notification
    state: State
    attempts: int
    attempt_started_at: float | None
    sid: str | None
    members: int = 0  # > 0: a storm's digest, standing for that many folded texts
    lookups: int = 0  # lookups at Twilio done for the attempt in doubt
    last_error: str | None = None
    accepted_at: float | None = None  # when it was recorded (epoch seconds)


@dataclass(frozen=True, slots=True)
class Tracked:
    """A sent message or call whose final delivery state is still to be learnt."""

    seq: int
    sid: str
    notification: Notification
    interval: float
    deadline: float
    last_status: str


@dataclass(frozen=True, slots=True)
class Identity:
    """What makes two requests the same request: its dedupe key, and its optional fields as stored."""

    key: bytes
    options: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The request is already in the journal. `status` is its recorded status, or None while it is in progress."""

    seq: int
    status: bytes | None


@dataclass(frozen=True, slots=True)
class Track:
    """How to follow a sent message or call: first check after `first_check` s, give up after `give_up_after` s."""

    first_check: float
    give_up_after: float
    status: str  # the status Twilio gave at creation


def stored_options(notification: Notification) -> str:
    """The optional fields as stored (and as they count in the dedupe key): sorted JSON."""
    return orjson.dumps(notification.options(), option=orjson.OPT_SORT_KEYS).decode()


def dedupe_key(notification: Notification, options: str) -> bytes:
    n = notification
    return key_of((n.kind.value, n.id, n.to, n.from_, n.name, n.content, options))


def key_of(parts: tuple[str, ...]) -> bytes:
    """A digest of `parts` that no other tuple of as many parts shares (short of a 128-bit hash collision).

    Parts free of NUL are joined with NUL, as every key was before (so a journal's existing keys stay valid,
    and no upgrade has to re-key it). A part holding a NUL would make that join ambiguous (`b\\0c`+`d` and
    `b`+`c\\0d`): such tuples are written length-prefixed instead, behind a leading NUL, which no joined
    form has (its first part, the kind, is never empty and never holds one)."""
    if any("\x00" in part for part in parts):
        encoded = b"\x00" + b"".join(len(raw).to_bytes(8, "big") + raw for raw in (part.encode() for part in parts))
    else:
        encoded = "\x00".join(parts).encode()
    return hashlib.blake2b(encoded, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Reply:
    """A text someone sent to one of the account's numbers."""

    sid: str
    sender: str  # the person
    to: str  # the account's number
    body: str
    received_at: float  # epoch seconds
    num_media: int = 0


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """A reply as the journal keeps it: its document to publish, and what it changes."""

    sid: str
    number: str  # the account's number it was sent to
    person: str  # who sent it
    received_at: float
    payload: bytes
    opt_out: bool | None = None  # its sender opted out of texts from `number` (True), back in (False)
    acknowledges: str | None = None  # the id of the request whose pages it acknowledges
