"""The delivery engine: requests in, Twilio calls out, one status per request, nothing lost or doubled.

Three loops share the journal:
- intake (`handle`): validate, record durably, return; the transport acknowledges the MQTT message after that;
- dispatch: start due requests, at most `max_in_flight` at once, each attempt recorded before it is made;
- publish: send unpublished statuses and mark them once the broker acknowledged them.
New requests and statuses reach the other loops through the journal's in-memory hand-over; the journal is
queried only for the rest (after a restart, retries, overflow).
A request whose attempt's outcome is unknown (a crash mid-send, a timeout, any 5xx) is looked up at Twilio, on a
schedule across the reconcile window and holding no slot between lookups, before it is ever sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

from .config import Settings
from .contract import (
    ErrorCode,
    InvalidRequest,
    Kind,
    Notification,
    SendResult,
    encode_status,
    failure_status,
    parse_request,
    success_status,
)
from .intake import Accepted, Admission, Folded, Refused
from .lifecycle import lookup_offsets, next_lookup
from .metrics import Metrics
from .policy import Pacer
from .retry import RetryPolicy, error_code_for
from .store import Duplicate, Entry, Journal, Track
from .storms import DIGEST_SEGMENTS, digest_body
from .tracking import DeliveryTracker
from .twilio import FailureKind, TwilioFailure

__all__ = ["Engine", "Sender"]

log = logging.getLogger(__name__)

PUBLISH_BATCH = 256
PRUNE_EVERY = 60.0
DIGEST_TEXTS = 400  # texts read to write a digest: more never fit in its ten segments


async def _supervised(loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a service loop; if a defect makes it raise, log it and start it again rather than go silent."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the %s loop failed; restarting it", loop.__name__.strip("_"))
            await asyncio.sleep(1.0)


class Sender(Protocol):
    async def create(self, notification: Notification) -> SendResult | TwilioFailure: ...

    async def find(self, notification: Notification, since: float) -> list[SendResult] | TwilioFailure: ...


class Engine:
    def __init__(
        self,
        settings: Settings,
        sender: Sender,
        journal: Journal,
        publish: Callable[[str, bytes], Awaitable[None]],
        *,
        tracker: DeliveryTracker | None = None,
        metrics: Metrics | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.metrics = metrics or Metrics()
        self._tracker = tracker
        if tracker is not None:
            tracker.notify = self.wake_publisher
        self._settings = settings
        self._sender = sender
        self._journal = journal
        self._publish = publish
        self._rand = rand
        self._retry_policy = RetryPolicy(settings.backoff_base, settings.backoff_max)
        self._admission = Admission(
            settings.limits,
            settings.storms,
            (settings.dedupe_window, max(settings.dedupe_window, settings.session_expiry)),
            settings.max_retries,
        )
        self._pacer = Pacer(settings.sender_rate)
        self._kinds = {settings.txt_topic: Kind.SMS, settings.call_topic: Kind.CALL}
        self._active: dict[int, asyncio.Task[None]] = {}
        self._answered: set[int] = set()  # active, done with Twilio, only recording the outcome: no slot held
        self._query_at = 0.0  # when the dispatcher must next ask the journal for due requests
        self._starting = 0  # requests being accepted with their first attempt (each holds a slot)
        self._unfinished = 0
        self._work = asyncio.Event()  # new or finished work for the dispatcher
        self._statuses = asyncio.Event()  # statuses waiting for the publisher
        self._published_all = asyncio.Event()  # the publisher found nothing left to publish
        self._room = asyncio.Event()  # the backlog is under its bound
        self._room.set()
        self._closing = asyncio.Event()
        # Gauges read at scrape time, and the commonest counter bound once: nothing to update per request.
        self.metrics.in_flight.set_function(lambda: len(self._active) - len(self._answered))
        self.metrics.backlog.set_function(lambda: self._unfinished)
        self._received = {topic: self.metrics.received.labels(topic) for topic in self._kinds}
        self._succeeded = self.metrics.statuses.labels("success", "")
        self._loops: list[asyncio.Task[None]] = []

    def wake_publisher(self) -> None:
        self._statuses.set()

    @property
    def in_flight(self) -> int:
        return len(self._active)

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume from the journal: attempts cut short go in doubt, then serve due requests and statuses."""
        core = self._journal.core
        grace = lookup_offsets(self._settings.reconcile_window)[0]
        interrupted = await self._journal.write(lambda: core.doubt_interrupted(grace))
        if interrupted:
            log.info("%d request(s) were being sent when the connector stopped: looking them up at Twilio", interrupted)
        self._unfinished = await self._journal.read(core.unfinished)
        self._update_room()
        self._loops = [
            asyncio.create_task(_supervised(self._dispatch), name="dispatch"),
            asyncio.create_task(_supervised(self._publish_statuses), name="publish"),
            asyncio.create_task(_supervised(self._prune), name="prune"),
        ]
        if self._tracker is not None:
            self._loops.append(asyncio.create_task(_supervised(self._tracker.run), name="track"))

    async def stop(self, grace: float) -> bool:
        """Stop intake; give in-flight attempts and pending statuses `grace` seconds. True if all finished.

        Requests not started stay in the journal for the next start; an attempt cut short is reconciled then.
        """
        self._closing.set()
        self._work.set()
        deadline = time.monotonic() + grace
        finished = True
        if self._active:
            _, pending = await asyncio.wait(list(self._active.values()), timeout=grace)
            finished = not pending
        self._published_all.clear()
        self._statuses.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._published_all.wait(), max(0.0, deadline - time.monotonic()))
        for task in [*self._active.values(), *self._loops]:
            task.cancel()
        await asyncio.gather(*self._active.values(), *self._loops, return_exceptions=True)
        return finished

    # -- intake -----------------------------------------------------------------------------------------

    async def handle(self, topic: str, payload: bytes, redelivered: bool = False) -> None:
        """Take one MQTT request. Returns once it, or its failure status if it is invalid, is durably recorded.

        `redelivered`: the broker sent it before (MQTT's DUP flag), perhaps days ago to a process that recorded it
        and died before acknowledging: it is looked for in the journal as far back as a session can hold it."""
        kind = self._kinds.get(topic)
        if kind is None:
            log.warning("ignoring a message on unexpected topic %r", topic)
            return
        self._received[topic].inc()
        if self._closing.is_set():
            await asyncio.Future()  # never acknowledged: the broker keeps it for the next session
        parsed = parse_request(
            payload,
            kind,
            default_from=self._settings.default_from,
            max_retries=self._settings.max_retries,
            max_payload_bytes=self._settings.max_payload_bytes,
            allow_http=self._settings.allow_http_urls,
        )
        if isinstance(parsed, InvalidRequest):
            log.info("request id=%s kind=%s result=invalid reason=%r", parsed.id, kind.value, parsed.message)
            status = encode_status(failure_status(parsed.id, ErrorCode.INVALID_PARAMETER, parsed.message))
            await self._journal.reject(kind, parsed.id, status, parsed.message)
            self.metrics.statuses.labels("fail", ErrorCode.INVALID_PARAMETER.value).inc()
            self._statuses.set()
            return
        for notification in parsed:
            await self._room.wait()  # backpressure: stop reading from the broker rather than grow without bound
            # With a free slot and no queue to wait behind, the first attempt is recorded with the request (one
            # commit, not two) and started from here.
            core = self._journal.core
            begin = core.hand_requests and not core.ready and self._free_slots() > 0
            self._starting += begin
            try:
                admitted = await self._journal.write(
                    partial(self._admission.admit, core, notification, begin=begin, redelivered=redelivered)
                )
            finally:
                self._starting -= begin
            await self._admitted(notification, admitted)

    async def _admitted(self, notification: Notification, admitted: Accepted | Folded | Refused | Duplicate) -> None:
        if isinstance(admitted, Duplicate):
            log.info("request id=%s result=duplicate (already recorded; nothing sent again)", notification.id)
            if admitted.status is not None:
                await self._journal.republish(admitted.seq, admitted.status)
                self._statuses.set()
            return
        if isinstance(admitted, Refused):
            log.warning(
                "request id=%s to=%s result=rejected reason=%r", notification.id, notification.to, admitted.reason
            )
            self.metrics.rejections.inc()
            self.metrics.statuses.labels("fail", ErrorCode.REJECTED.value).inc()
            self._statuses.set()
            return
        self._unfinished += 1
        self._update_room()
        if isinstance(admitted, Folded):
            log.info("request id=%s result=folded into digest-%d", notification.id, admitted.digest)
            self.metrics.folded.inc()
            self._due_at(admitted.send_at)
        elif admitted.begun and not self._closing.is_set():
            self._spawn(
                admitted.seq, self._deliver(Entry(admitted.seq, notification, "sending", 0, None, None), begun=True)
            )
        else:
            self._due_at(admitted.start_at)

    def _due_at(self, when: float) -> None:
        """Something new falls due at `when`: make sure the dispatcher asks the journal then."""
        self._query_at = min(self._query_at, when)
        self._work.set()

    def _free_slots(self) -> int:
        return self._settings.max_in_flight - len(self._active) + len(self._answered) - self._starting

    def _update_room(self) -> None:
        if self._unfinished < self._settings.max_backlog:
            self._room.set()
        else:
            self._room.clear()

    # -- dispatch ---------------------------------------------------------------------------------------

    def _spawn(self, seq: int, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._active[seq] = task
        task.add_done_callback(lambda _: self._done(seq))

    def _done(self, seq: int) -> None:
        self._active.pop(seq, None)
        self._answered.discard(seq)
        self._work.set()

    async def _dispatch(self) -> None:
        core = self._journal.core
        # What waits in the journal is handed over a batch at a time, up to two rounds of slots ahead, so a slot
        # that frees is filled from memory at once.
        ahead = 2 * self._settings.max_in_flight
        while not self._closing.is_set():
            self._work.clear()
            free = self._free_slots()
            while free > 0 and core.ready:
                entry = core.ready.popleft()
                self._spawn(entry.seq, self._deliver(entry))
                free -= 1
            now = time.time()
            if len(core.ready) < ahead // 2 and (not core.hand_requests or now >= self._query_at):
                busy = set(self._active)
                limit = ahead - len(core.ready)
                again = await self._journal.read(lambda: core.refill(now, limit, busy))  # noqa: B023
                self._query_at = math.inf if again is None else again
                if self._closing.is_set():
                    return  # `stop` is already waiting on what is in flight: leave the rest for next time
            if core.ready and self._free_slots() > 0:
                continue
            # Woken by new work or a finished attempt; the timeout is for a retry falling due (or a missed wake).
            wait = self._query_at - time.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), wait if 0 < wait < 1.0 else 1.0)

    async def _deliver(self, entry: Entry, *, begun: bool = False) -> None:
        """Make the next attempt, or the next lookup of one in doubt. `begun`: the journal already records the
        attempt as started."""
        notification, attempt = entry.notification, entry.attempts + 1
        started = time.monotonic()
        try:
            if entry.members:
                entry = await self._with_digest_body(entry)
                notification = entry.notification
            if entry.state == "doubt":
                await self._look_up(entry, started)
                return
            pause = self._pacer.reserve(notification.from_, time.time())
            if pause:
                await asyncio.sleep(pause)  # queue behind the sender's earlier messages rather than fail
            if not begun:
                await self._journal.begin_attempt(entry.seq)  # durable before anything leaves
            began = time.time()
            with self.metrics.twilio_seconds.time():
                outcome = await self._sender.create(notification)
            # A slot bounds the requests waiting on Twilio; recording the outcome need not hold one.
            self._answered.add(entry.seq)
            self._work.set()
            if isinstance(outcome, TwilioFailure) and outcome.kind is FailureKind.AMBIGUOUS:
                why = f"{outcome.message} (HTTP {outcome.http_status})" if outcome.http_status else outcome.message
                log.info("request id=%s: %s; looking it up at Twilio before anything else", notification.id, why)
                await self._look_again(entry.seq, began, 0, why)
                return
            await self._conclude(entry, outcome, attempt, started)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request id=%s failed with an internal error", notification.id)
            recipient = notification.to if notification.listed else None
            status = encode_status(
                failure_status(notification.id, ErrorCode.INTERNAL_ERROR, "internal error", recipient=recipient)
            )
            await self._finish(entry.seq, "failed", status, None, "internal error")
            self.metrics.statuses.labels("fail", ErrorCode.INTERNAL_ERROR.value).inc()

    async def _look_up(self, entry: Entry, started: float) -> None:
        """Look an attempt in doubt up at Twilio: a match no other request claimed is its success; without one,
        look again later, until the reconcile window is over (see `lifecycle`)."""
        notification, window = entry.notification, self._settings.reconcile_window
        since = entry.attempt_started_at or time.time()
        found = await self._sender.find(notification, since)
        if not isinstance(found, TwilioFailure):
            for candidate in reversed(found):  # the oldest first: identical alerts claim their messages in order
                if await self._claim(entry, candidate, started):
                    self.metrics.reconciliations.labels("yes").inc()
                    log.info("request id=%s: Twilio created it as %s", notification.id, candidate.sid)
                    return
        lookups = entry.lookups + 1
        if next_lookup(lookups, window) is not None:
            if isinstance(found, TwilioFailure):
                log.warning("request id=%s: cannot look it up at Twilio (%s)", notification.id, found.message)
            await self._look_again(entry.seq, since, lookups)
            return
        self.metrics.reconciliations.labels("no").inc()
        why = entry.last_error or "no answer from Twilio"
        if isinstance(found, TwilioFailure):
            outcome = TwilioFailure(
                FailureKind.AMBIGUOUS,
                f"{why}; Twilio's list could not be read to check ({found.message}): "
                "the message may exist, so it is not sent again",
            )
        else:
            outcome = TwilioFailure(
                FailureKind.NOT_SENT, f"{why}; Twilio did not list it within {window:g} s: it was not created"
            )
        await self._conclude(entry, outcome, entry.attempts, started)

    async def _look_again(self, seq: int, since: float, lookups: int, error: str | None = None) -> None:
        at = since + (next_lookup(lookups, self._settings.reconcile_window) or 0.0)
        await self._journal.doubt(seq, at, lookups, error)
        self._due_at(at)

    async def _claim(self, entry: Entry, candidate: SendResult, started: float) -> bool:
        """Finish `entry` with `candidate`, unless another request has claimed it (the journal's unique index
        decides, in the transaction that finishes the request)."""
        if await self._journal.read(lambda: self._journal.core.sid_known(candidate.sid)):
            return False
        try:
            await self._conclude(entry, candidate, max(entry.attempts, 1), started)
        except sqlite3.IntegrityError:
            return False  # claimed since by an identical request
        return True

    async def _with_digest_body(self, entry: Entry) -> Entry:
        """A digest's text, written from the texts folded into it (the same every time: a lookup at Twilio after
        a crash matches it)."""
        if entry.notification.content:
            return entry
        texts = await self._journal.read(lambda: self._journal.core.digest_texts(entry.seq, DIGEST_TEXTS))
        body = digest_body(texts, entry.members, self._settings.limits.max_segments or DIGEST_SEGMENTS)
        return replace(entry, notification=replace(entry.notification, content=body))

    async def _conclude(self, entry: Entry, outcome: SendResult | TwilioFailure, attempt: int, started: float) -> None:
        seq, notification = entry.seq, entry.notification
        if self._will_retry(notification, outcome, attempt):
            assert isinstance(outcome, TwilioFailure)
            wait = self._retry_policy.delay(attempt, outcome, self._rand)
            log.info(
                "request id=%s attempt=%d failed (%s, HTTP %s); retrying in %.2fs",
                notification.id,
                attempt,
                outcome.message,
                outcome.http_status,
                wait,
            )
            await self._journal.retry_later(seq, time.time() + wait, outcome.message)
            self._query_at = min(self._query_at, time.time() + wait)
            self.metrics.retries.inc()
            return
        if entry.members:
            await self._finish_digest(entry, outcome, attempt, started)
            return
        state, status, result = _final(notification, outcome, attempt)
        if isinstance(outcome, SendResult):
            track = self._tracker.track(outcome.status) if self._tracker else None
            await self._finish(seq, state, status, outcome.sid, None, track=track)  # may find the SID claimed
            self._log_outcome(notification, "success", attempt, started, sid=outcome.sid)
            if self._tracker is not None:
                self._tracker.wake()
        else:
            await self._finish(seq, state, status, None, outcome.message)
            self._log_outcome(notification, result, attempt, started, code=outcome.code)
        self._count_status(result)

    def _will_retry(self, notification: Notification, outcome: SendResult | TwilioFailure, attempt: int) -> bool:
        return (
            isinstance(outcome, TwilioFailure)
            and attempt <= notification.retries
            and self._retry_policy.should_retry(outcome)
        )

    def _count_status(self, result: str, count: int = 1) -> None:
        if result == "success":
            self._succeeded.inc(count)
        else:
            self.metrics.statuses.labels("fail", result).inc(count)

    async def _finish_digest(
        self, entry: Entry, outcome: SendResult | TwilioFailure, attempt: int, started: float
    ) -> None:
        """The digest is sent (or failed for good): so is each text folded into it, each with its own status."""
        core = self._journal.core
        members = await self._journal.read(lambda: core.members(entry.seq))
        rows = [(member.seq, _final(member.notification, outcome, attempt, folded=True)[1]) for member in members]
        sid = outcome.sid if isinstance(outcome, SendResult) else None
        error = outcome.message if isinstance(outcome, TwilioFailure) else None
        state, _, result = _final(entry.notification, outcome, attempt)
        await self._journal.write(lambda: core.finish_digest(entry.seq, state, sid, error, rows))  # may raise, as above
        self._count_status(result, len(members))
        self.metrics.digests.labels(result).inc()
        self._log_outcome(entry.notification, result, attempt, started, sid=sid, folded=len(members))
        self._unfinished -= len(members)
        self._update_room()
        self._statuses.set()

    async def _finish(
        self, seq: int, state: str, status: bytes, sid: str | None, error: str | None, *, track: Track | None = None
    ) -> None:
        await self._journal.finish(seq, state, status, sid, error, track=track)
        self._unfinished -= 1
        self._update_room()
        self._statuses.set()

    # -- statuses ---------------------------------------------------------------------------------------

    async def _publish_statuses(self) -> None:
        core = self._journal.core
        topic, mark = self._settings.status_topic, self._journal.mark_published
        while True:
            self._statuses.clear()
            rows = [core.outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(core.outbox)))]
            if rows:
                failed = await self._publish_rows(topic, rows, mark)
                core.outbox.extendleft(reversed(failed))  # handed over: no query would find them again
            elif not core.hand_statuses:
                rows = await self._journal.unpublished(PUBLISH_BATCH)
                if await self._publish_rows(topic, rows, mark):
                    core.hand_statuses = False  # so that the next round queries again
            published = len(rows)
            if self._tracker is not None:  # follow-ups exist only with delivery tracking: spare the journal a query
                followups = await self._journal.unpublished_followups(PUBLISH_BATCH)
                await self._publish_rows(
                    self._settings.delivery_topic, followups, self._journal.mark_followups_published
                )
                published += len(followups)
            if not published:
                self._published_all.set()
                await self._statuses.wait()

    async def _publish_rows(
        self, topic: str, rows: list[tuple[int, bytes]], mark: Callable[[list[int]], None]
    ) -> list[tuple[int, bytes]]:
        """Publish `rows`; mark the ones the broker acknowledged (PUBACK, kept across reconnects by gmqtt).
        Returns those it did not acknowledge."""
        if not rows:
            return []
        results = await asyncio.gather(*(self._publish(topic, payload) for _, payload in rows), return_exceptions=True)
        done = [key for (key, _), result in zip(rows, results, strict=True) if result is None]
        if done:
            mark(done)
        failed = [row for row, result in zip(rows, results, strict=True) if result is not None]
        if failed:
            log.warning("%d status(es) not acknowledged by the broker; publishing again", len(failed))
            await asyncio.sleep(1.0)
        return failed

    async def _prune(self) -> None:
        # Finished requests are kept as long as a redelivery may still come for them.
        retention = max(self._settings.journal_retention, self._settings.dedupe_window, self._settings.session_expiry)
        while True:
            removed = await self._journal.prune(time.time() - retention)
            if removed:
                log.info("pruned %d finished request(s) from the journal", removed)
            # An operator's `twilio-connector journal retry` changes the backlog behind our back.
            self._unfinished = await self._journal.read(self._journal.core.unfinished)
            self._update_room()
            self._query_at = 0.0
            self._work.set()
            await asyncio.sleep(PRUNE_EVERY)

    @staticmethod
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


def _final(
    notification: Notification, outcome: SendResult | TwilioFailure, attempt: int, *, folded: bool = False
) -> tuple[str, bytes, str]:
    """The final state, status and result (`success` or the error code) of a request with this outcome."""
    if isinstance(outcome, SendResult):
        status = success_status(notification, outcome, attempt)
        state, result = "sent", "success"
    else:
        error = error_code_for(outcome)
        status = failure_status(
            notification.id,
            error,
            outcome.message,
            twilio_error_code=outcome.code,
            http_status=outcome.http_status,
            attempts=attempt,
            recipient=notification.to if notification.listed else None,
        )
        state, result = "failed", error.value
    if folded:
        status["response"]["folded"] = True
    return state, encode_status(status), result
