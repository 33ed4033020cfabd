"""Delivery: one request's next step at Twilio, an attempt or a lookup, and what the lifecycle says follows.

An attempt is recorded before it is made. Its outcome goes to `Lifecycle`: a final status, a retry (waiting in
the journal), or a lookup at Twilio (also waiting in the journal, holding no slot). A lookup claims the oldest
message that matches and that no other request has claimed: the journal's unique index on SIDs decides, in the
transaction that finishes the request. A storm's digest finishes each text folded into it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

from ..domain.concurrency import ConcurrencyWindow
from ..domain.contract import (
    ErrorCode,
    Kind,
    Notification,
    SendResult,
    encode_status,
    notification_failure,
    success_status,
)
from ..domain.lifecycle import Attempt, Decision, Lifecycle, LookUp, Retry
from ..domain.optout import OPTED_OUT_CODE
from ..domain.outcomes import FailureKind, TwilioFailure
from ..domain.policy import Pacer
from ..domain.records import Entry
from ..domain.retry import error_code_for
from ..domain.states import State
from ..domain.storms import DIGEST_SEGMENTS, digest_body
from ..ops.metrics import Metrics
from ..ports.journal import JournalPort, SidClaimed, until_written
from .lag import ListLag
from .options import DeliveryOptions
from .tracking import DeliveryTracker

__all__ = ["Delivery", "Scheduler", "Sender"]

log = logging.getLogger(__name__)

DIGEST_TEXTS = 400  # texts read to write a digest: more never fit in its ten segments
HTTP_TOO_MANY = 429
#: Seconds past the HTTP timeout an attempt may take in all (waiting for a connection included).
ATTEMPT_MARGIN = 5.0


class Scheduler(Protocol):
    """What delivery tells the dispatcher: a slot is free again (Twilio answered, perhaps with a 429); something
    falls due at `when`."""

    window: ConcurrencyWindow

    def answered(self, seq: int, throttled: bool = False) -> None: ...

    def due_at(self, when: float) -> None: ...


#: A request to someone who replied STOP to its sender: refused without asking Twilio, with Twilio's own error.
OPTED_OUT = TwilioFailure(
    FailureKind.REJECTED,
    "Attempt to send to unsubscribed recipient (they replied STOP to this number; not sent to Twilio)",
    400,
    OPTED_OUT_CODE,
)


class Sender(Protocol):
    async def create(self, notification: Notification) -> SendResult | TwilioFailure: ...

    async def find(self, notification: Notification, since: float) -> list[SendResult] | TwilioFailure: ...


class Delivery:
    def __init__(
        self,
        options: DeliveryOptions,
        sender: Sender,
        journal: JournalPort,
        lifecycle: Lifecycle,
        dispatcher: Scheduler,
        *,
        finished: Callable[[int], None],
        metrics: Metrics,
        lag: ListLag | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`finished(n)`: n requests got their final status; `lag`: the list-lag evidence the reconcile window
        follows (None: the lifecycle's window as it is). Set `tracker` to follow what is sent."""
        self._clock = clock
        self._options = options
        self._sender = sender
        self._journal = journal
        self._lifecycle = lifecycle
        self._lag = lag
        self._dispatcher = dispatcher
        self._finished = finished
        self._metrics = metrics
        self.tracker: DeliveryTracker | None = None
        #: Called after each message or call Twilio took (the reply poller speeds up).
        self.sent: Callable[[], None] = lambda: None
        self._pacer = Pacer(options.sender_rate)
        self._succeeded = {kind: metrics.statuses.labels(kind.value, "success", "") for kind in Kind}

    async def run(self, entry: Entry, begun: bool = False) -> None:
        """Take `entry` to its next wait or its end. `begun`: the journal already records its attempt."""
        started = time.monotonic()
        try:
            if entry.members:
                entry = await self._with_digest_body(entry)
            if entry.state == State.DOUBT:
                await self._look_up(entry, started)
            else:
                await self._attempt(entry, begun, started)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._journal.damaged is not None:
                return  # the connector stops; the request stays as the journal last recorded it
            if not self._journal.writable:
                # Not a defect: the journal was away before anything was sent (an attempt's start, a lookup's
                # reads). The request stays in it as it was, and the dispatcher takes it up again once the
                # journal takes writes (the journal logs that it cannot, once).
                self._dispatcher.due_at(self._clock())
                return
            await self._internal_error(entry)

    async def _attempt(self, entry: Entry, begun: bool, started: float) -> None:
        notification = entry.notification
        pause = self._pacer.reserve(notification.from_, self._clock())
        if pause:
            await asyncio.sleep(pause)  # queue behind the sender's earlier messages rather than fail
        if not begun and not await self._journal.begin_attempt(entry.seq):  # durable before anything leaves
            log.info("request id=%s: finished meanwhile by another connector; not sent", notification.id)
            return
        if self._options.opt_outs and await self._journal.opted_out(notification.to, notification.from_):
            await self._finish(entry, OPTED_OUT, max(entry.attempts, 1), started)  # what Twilio would answer
            return
        began = self._clock()
        with self._metrics.twilio_seconds.time():
            outcome = await self._bounded(self._sender.create(notification))
        throttled = isinstance(outcome, TwilioFailure) and outcome.http_status == HTTP_TOO_MANY
        self._dispatcher.answered(entry.seq, throttled)
        self._metrics.window.set(self._dispatcher.window.size)
        if throttled:
            self._metrics.throttled.inc()
        attempt = Attempt(entry.attempts + 1, notification.retries, began)
        if isinstance(outcome, SendResult):
            self.sent()
            if self._lag is not None:
                self._lag.created(notification, outcome, began)
        # A success needs no window: the evidence is read only when the outcome is a failure.
        lifecycle = self._lifecycle if isinstance(outcome, SendResult) else self._now_lifecycle()
        await self._apply(entry, lifecycle.after_attempt(attempt, outcome, self._clock()), started)

    def _now_lifecycle(self) -> Lifecycle:
        """The lifecycle with the reconcile window the list's measured lag allows now."""
        return self._lifecycle if self._lag is None else replace(self._lifecycle, window=self._lag.window())

    async def _bounded(self, create: Awaitable[SendResult | TwilioFailure]) -> SendResult | TwilioFailure:
        """`create`, ended as an unknown outcome (looked up later) if it outlasts what an attempt may take
        whatever it waits on: an attempt that never ends would hold its slot, and its request, for good."""
        bound = self._options.http_timeout + ATTEMPT_MARGIN
        try:
            async with asyncio.timeout(bound):
                return await create
        except TimeoutError:
            return TwilioFailure(FailureKind.AMBIGUOUS, f"no answer within {bound:g} s")

    async def _look_up(self, entry: Entry, started: float) -> None:
        notification = entry.notification
        since = entry.attempt_started_at or self._clock()
        found = await self._sender.find(notification, since)
        if not isinstance(found, TwilioFailure):
            for candidate in likeliest_first(found, since):
                if await self._claim(entry, candidate, started):
                    self._metrics.reconciliations.labels("yes").inc()
                    if self._lag is not None:
                        await self._lag.seen(self._clock() - since)  # an upper bound of its lag
                    log.info("request id=%s: Twilio had created it, as %s", notification.id, candidate.sid)
                    return
        elif log.isEnabledFor(logging.WARNING):
            log.warning("request id=%s: cannot look it up at Twilio (%s)", notification.id, found.message)
        attempt = Attempt(entry.attempts, notification.retries, since, entry.lookups, entry.last_error)
        lifecycle = self._now_lifecycle()
        decision = lifecycle.after_lookup(attempt, found, self._clock())
        if not isinstance(decision, LookUp):
            self._metrics.reconciliations.labels("no").inc()
        if isinstance(decision, Retry):  # the window showed nothing: look for it again later (engine/audit.py)
            audit = partial(self._journal.audit_later, entry.seq, since, since + 2 * lifecycle.window)
            await self._recorded(notification, audit)
        await self._apply(entry, decision, started)

    async def _claim(self, entry: Entry, candidate: SendResult, started: float) -> bool:
        """Finish `entry` with `candidate`, unless another request has claimed it."""
        if await self._journal.sid_known(candidate.sid):
            return False
        try:
            await self._finish(entry, candidate, max(entry.attempts, 1), started)
        except SidClaimed:
            return False  # claimed meanwhile by an identical request: the unique index said no
        return True

    async def _recorded(self, notification: Notification, write: Callable[[], Awaitable[None]]) -> None:
        """Record what Twilio said, once the journal can take it: left unrecorded, the request would wait as
        being sent until a restart (or, shared, another connector) looked it up at Twilio."""
        await until_written(self._journal, write, f"request id={notification.id}'s outcome")

    async def _apply(self, entry: Entry, decision: Decision, started: float) -> None:
        notification, journal = entry.notification, self._journal
        if isinstance(decision, LookUp):
            if decision.why is not None:
                log.info("request id=%s: %s; looking it up at Twilio first", notification.id, decision.why)
            await self._recorded(
                notification, partial(journal.doubt, entry.seq, decision.at, decision.lookups, decision.why)
            )
            self._dispatcher.due_at(decision.at)
        elif isinstance(decision, Retry):
            failure = decision.failure
            log.info(
                "request id=%s attempt=%d failed (%s, HTTP %s, Twilio-Request-Id %s); retrying in %.2fs",
                *(notification.id, decision.attempt, failure.message, failure.http_status, failure.request_id),
                decision.at - self._clock(),
            )
            await self._recorded(notification, partial(journal.retry_later, entry.seq, decision.at, failure.message))
            self._dispatcher.due_at(decision.at)
            self._metrics.retries.labels(notification.kind.value).inc()
        else:
            await self._finish(entry, decision.outcome, decision.attempt, started)

    async def _finish(self, entry: Entry, outcome: SendResult | TwilioFailure, attempt: int, started: float) -> None:
        """Record the final status (claiming a SID may raise `SidClaimed`: see `_claim`)."""
        if entry.members:
            await self._finish_digest(entry, outcome, attempt, started)
            return
        notification = entry.notification
        state, status, result = final(notification, outcome, attempt)
        if isinstance(outcome, SendResult):
            track = self.tracker.track(outcome.status) if self.tracker else None
            finish = partial(self._journal.finish, entry.seq, state, status, outcome.sid, None, track=track)
            await self._recorded(notification, finish)
            _log_outcome(notification, result, attempt, started, sid=outcome.sid)
            if self.tracker is not None:
                self.tracker.wake()
        else:
            await self._recorded(
                notification, partial(self._journal.finish, entry.seq, state, status, None, outcome.message)
            )
            _log_outcome(
                notification, result, attempt, started, code=outcome.code, twilio_request_id=outcome.request_id
            )
        self._count(notification.kind, result)
        self._took(entry, result)
        self._finished(1)

    async def _finish_digest(
        self, entry: Entry, outcome: SendResult | TwilioFailure, attempt: int, started: float
    ) -> None:
        """The digest is sent (or failed for good): so is each text folded into it, each with its own status."""
        members = await self._journal.members(entry.seq)
        rows = [(member.seq, final(member.notification, outcome, attempt, folded=True)[1]) for member in members]
        sid = outcome.sid if isinstance(outcome, SendResult) else None
        error = outcome.message if isinstance(outcome, TwilioFailure) else None
        state, _, result = final(entry.notification, outcome, attempt)
        await self._recorded(
            entry.notification, partial(self._journal.finish_digest, entry.seq, state, sid, error, rows)
        )
        self._count(entry.notification.kind, result, len(members))
        for member in members:
            self._took(member, result)
        self._metrics.digests.labels(result).inc()
        _log_outcome(entry.notification, result, attempt, started, sid=sid, folded=len(members))
        self._finished(len(members))

    async def _with_digest_body(self, entry: Entry) -> Entry:
        """A digest's text, written from the texts folded into it (the same every time: a lookup at Twilio after
        a crash matches it)."""
        if entry.notification.content:
            return entry
        texts = await self._journal.digest_texts(entry.seq, DIGEST_TEXTS)
        body = digest_body(texts, entry.members, self._options.max_segments or DIGEST_SEGMENTS)
        return replace(entry, notification=replace(entry.notification, content=body))

    async def _internal_error(self, entry: Entry) -> None:
        notification = entry.notification
        log.exception("request id=%s failed with an internal error", notification.id)
        status = notification_failure(notification, ErrorCode.INTERNAL_ERROR, "internal error")
        await self._journal.finish(entry.seq, State.FAILED, encode_status(status), None, "internal error")
        self._count(entry.notification.kind, ErrorCode.INTERNAL_ERROR.value)
        self._finished(1)

    def _took(self, entry: Entry, result: str) -> None:
        """How long the request took from its acceptance to its final status."""
        if entry.accepted_at is not None:
            outcome = "success" if result == "success" else "fail"
            took = max(0.0, self._clock() - entry.accepted_at)
            self._metrics.request_seconds.labels(entry.notification.kind.value, outcome).observe(took)

    def _count(self, kind: Kind, result: str, count: int = 1) -> None:
        if result == "success":
            self._succeeded[kind].inc(count)
        else:
            self._metrics.statuses.labels(kind.value, "fail", result).inc(count)


def likeliest_first(candidates: list[SendResult], since: float) -> list[SendResult]:
    """Matches in the order to claim them: those Twilio created after the attempt began, oldest first (identical
    alerts claim their messages in order), then those a little before it (clocks differ), newest first. A
    message created well before the attempt more likely belongs to an earlier identical alert."""
    after = sorted((c for c in candidates if (c.created or since) >= since), key=lambda c: c.created or since)
    before = sorted((c for c in candidates if (c.created or since) < since), key=lambda c: -(c.created or 0.0))
    return after + before


def final(
    notification: Notification, outcome: SendResult | TwilioFailure, attempt: int, *, folded: bool = False
) -> tuple[State, bytes, str]:
    """The final state, status and result (`success` or the error code) of a request with this outcome."""
    if isinstance(outcome, SendResult):
        status = success_status(notification, outcome, attempt)
        state, result = State.SENT, "success"
    else:
        error = error_code_for(outcome)
        status = notification_failure(
            notification,
            error,
            outcome.message,
            twilio_error_code=outcome.code,
            http_status=outcome.http_status,
            attempts=attempt,
            twilio_request_id=outcome.request_id,
        )
        state, result = State.FAILED, error.value
    if folded:
        status["response"]["folded"] = True
    return state, encode_status(status), result


def _log_outcome(notification: Notification, result: str, attempts: int, started: float, **extra: Any) -> None:
    """One line per request outcome; in JSON logs its fields are fields of the line too."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": notification.id,
        "kind": notification.kind.value,
        "result": result,
        "attempts": attempts,
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
        **{key: value for key, value in extra.items() if value is not None},
    }
    log.info("request %s", " ".join(f"{key}={value}" for key, value in fields.items()), extra=fields)
