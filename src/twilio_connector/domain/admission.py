"""Admission: what becomes of one valid notification, decided and recorded in one journal transaction.

In order: a redelivery of a recorded request is a duplicate (it counts against nothing and is never refused);
the policy's fixed guards may refuse it; past its recipient's storm threshold a text is folded into a digest
and a call waits; what is sent on its own is checked against the rate caps and counted. Doing all of it in the
transaction that records the request means the counts, windows and request can never disagree, even across a
crash; the journal's statements run one at a time, so two requests never read the same count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

from .contract import ErrorCode, Notification, encode_status, notification_failure
from .policy import Caps, Limits, refusal
from .records import Duplicate, Entry, Identity, dedupe_key, stored_options
from .storms import StormRule, Verdict, Window, foldable, window_key

__all__ = ["Accepted", "Admission", "AdmissionStore", "Folded", "Refused"]


class AdmissionStore(Protocol):
    """The journal's side of admission, run in one transaction (`journal.core.SqlCore` serves it for both databases)."""

    def duplicate(self, notification: Notification, now: float, window: float) -> tuple[Identity, Duplicate | None]: ...

    def record(
        self,
        notification: Notification,
        identity: Identity,
        now: float,
        *,
        begin: bool = False,
        start_at: float | None = None,
        digest: int | None = None,
        refused: tuple[bytes, str] | None = None,
    ) -> int: ...

    def requeue(
        self,
        seq: int,
        now: float,
        *,
        begin: bool = False,
        start_at: float | None = None,
        digest: int | None = None,
        refused: tuple[bytes, str] | None = None,
    ) -> int:
        """As `record`, for a request recorded before (a retry): `seq` waits again, or stays failed if `refused`."""
        ...

    def window(self, key: str) -> Window | None: ...

    def save_window(self, key: str, window: Window) -> None: ...

    def open_digest(self, template: Notification, send_at: float, retries: int, now: float) -> int: ...

    def count(self, span: str, scope: str, oldest: int) -> int: ...

    def bump(self, span: str, scope: str, bucket: int) -> None: ...


#: Records what admission decided: `record` for a new request, `requeue` for a retried one.
Put = Callable[..., int]


@dataclass(frozen=True, slots=True)
class Accepted:
    seq: int
    begun: bool  # its first attempt is recorded as started: the caller sends it now
    start_at: float  # when it falls due (later than now for a call paced through a storm)


@dataclass(frozen=True, slots=True)
class Folded:
    seq: int
    digest: int  # the digest request it will go out in
    send_at: float  # when the digest falls due


@dataclass(frozen=True, slots=True)
class Refused:
    seq: int
    reason: str


class Admission:
    def __init__(
        self,
        limits: Limits,
        storms: StormRule,
        dedupe_windows: tuple[float, float],
        digest_retries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self.storms = storms
        self._caps = limits.caps
        self._capped = bool(self._caps.scopes(""))
        # How far back a request is looked for: a fresh publish, and a redelivery (DUP) that may come as late as
        # the broker keeps the session. A fresh publish looks back less far, as devices reuse ids and texts.
        self._dedupe_windows = dedupe_windows
        self._digest_retries = digest_retries

    def admit(
        self, core: AdmissionStore, notification: Notification, *, begin: bool = False, redelivered: bool = False
    ) -> Accepted | Folded | Refused | Duplicate:
        """Run inside a journal write. `begin`: start the first attempt at once if it may go now. `redelivered`:
        the broker's DUP flag."""
        now = self._clock()
        identity, duplicate = core.duplicate(notification, now, self._dedupe_windows[redelivered])
        if duplicate is not None:
            return duplicate
        return self._decide(core, notification, now, partial(core.record, notification, identity, now), begin)

    def follow_up(self, core: AdmissionStore, notification: Notification) -> Accepted | Folded | Refused:
        """A page's later send (domain/paging.py): never a duplicate (the page's journal row makes each send
        once), through the same guards, storms and caps as any request. Run inside a journal write."""
        now = self._clock()
        options = stored_options(notification)
        identity = Identity(dedupe_key(notification, options), options)
        return self._decide(core, notification, now, partial(core.record, notification, identity, now), False)

    def readmit(self, core: AdmissionStore, entry: Entry) -> Accepted | Folded | Refused:
        """A failed request an operator asked to send again (`twilio-connector journal retry`), through the same
        guards, storms and caps as a new one: refused, it stays failed as it was. Run inside a journal write."""
        now = self._clock()
        return self._decide(core, entry.notification, now, partial(core.requeue, entry.seq, now), False)

    def _decide(
        self, core: AdmissionStore, notification: Notification, now: float, put: Put, begin: bool
    ) -> Accepted | Folded | Refused:
        """Guards, then storms, then caps; `put` records the decision."""
        reason = refusal(self.limits, notification)
        if reason is not None:
            return self._refuse(put, notification, reason)
        start, storm, window = now, "", None
        if self.storms.threshold:
            storm = window_key(notification)
            window, verdict, start = self.storms.admit(core.window(storm), foldable(notification), now)
            if verdict is Verdict.FOLD and window is not None:
                digest = window.digest
                if digest is None:
                    digest = core.open_digest(notification, window.closes_at, self._digest_retries, now)
                    core.save_window(storm, replace(window, digest=digest))
                return Folded(put(digest=digest), digest, window.closes_at)
        if self._capped:
            reason = self._count_within_caps(core, notification, now)
            if reason is not None:
                return self._refuse(put, notification, reason)
        if window is not None:
            core.save_window(storm, window)
        begun = begin and start <= now
        return Accepted(put(begin=begun, start_at=start), begun, start)

    def _refuse(self, put: Put, notification: Notification, reason: str) -> Refused:
        status = notification_failure(notification, ErrorCode.REJECTED, reason)
        return Refused(put(refused=(encode_status(status), reason)), reason)

    def _count_within_caps(self, core: AdmissionStore, notification: Notification, now: float) -> str | None:
        """Why a cap refuses the send, or None after counting it against every cap."""
        scopes = self._caps.scopes(notification.to)
        for span, scope, cap, what in scopes:
            count = core.count(span, scope, Caps.bucket(span, now)[1])
            if count >= cap:
                return what.format(count) + f" (limit {cap})"
        for span, scope, _, _ in scopes:
            core.bump(span, scope, Caps.bucket(span, now)[0])
        return None
