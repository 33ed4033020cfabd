"""The delivery engine: requests in, Twilio calls out, one status per request, nothing lost or doubled.

The engine takes requests in (`handle`: validate, admit in one journal transaction, return; the transport
acknowledges the MQTT message after that) and wires the parts that do the rest, each a module of its own:
- `domain.admission.Admission`: dedupe, guards, storms and rate counts, decided in the transaction that records a request;
- `dispatch.Dispatcher`: start due requests, at most `max_in_flight` at Twilio at once;
- `delivery.Delivery`: one attempt or lookup at a time, and what `lifecycle.Lifecycle` (pure) says follows;
- `publisher.StatusPublisher`: send statuses, and mark them once the broker acknowledged them;
and prunes the journal. Everything a request is waiting for lives in the journal, not in a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from ..domain.admission import Accepted, Admission, Folded, Refused
from ..domain.contract import (
    ErrorCode,
    InvalidRequest,
    Kind,
    Notification,
    encode_status,
    failure_status,
    parse_ack,
    parse_request,
)
from ..domain.lifecycle import Lifecycle, lookup_offsets
from ..domain.records import Duplicate, Entry
from ..domain.retry import RetryPolicy
from ..domain.states import State
from ..ops.metrics import Metrics
from ..ports.journal import JournalPort, until_written
from ..ports.messaging import Publish
from .audit import Auditor
from .delivery import Delivery, Sender
from .dispatch import Dispatcher
from .lag import LagProbe, ListLag
from .options import EngineOptions
from .pages import Pager
from .publisher import StatusPublisher
from .replies import Inbound, ReplyPoller
from .supervisor import Supervisor
from .tracking import DeliveryTracker
from .watchdog import Watchdog

__all__ = ["Engine", "Sender"]

log = logging.getLogger(__name__)

PRUNE_EVERY = 60.0
WATCH_EVERY = 1.0
#: Retries asked for by an operator admitted again per transaction.
READMIT_BATCH = 100
#: Tries of an admission that fails with the journal writable (a defect) before the request is failed.
DEFECT_TRIES = 3


class Engine:
    def __init__(
        self,
        options: EngineOptions,
        sender: Sender,
        journal: JournalPort,
        publish: Publish,
        *,
        tracker: DeliveryTracker | None = None,
        metrics: Metrics | None = None,
        inbound: Inbound | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.metrics = metrics or Metrics()
        self._options = options
        self._journal = journal
        self._tracker = tracker
        self._admission = Admission(
            options.limits,
            options.storms,
            (options.dedupe_window, max(options.dedupe_window, options.session_expiry)),
            options.max_retries,
        )
        self._closing = asyncio.Event()
        self._unfinished = 0
        self._room = asyncio.Event()  # the backlog is under its bound
        self._room.set()
        delivery_topic = options.delivery_topic if tracker is not None else None
        reply_topic = options.reply_topic if options.replies is not None else None
        self._publisher = StatusPublisher(
            journal, publish, options.status_topic, delivery_topic, reply_topic, pages=options.paging
        )
        if tracker is not None:
            tracker.notify = self._publisher.wake
        lifecycle = Lifecycle(RetryPolicy(options.backoff_base, options.backoff_max), options.reconcile_window, rand)
        self._dispatcher = Dispatcher(journal, options.max_in_flight, self._run, self._closing)
        self.lag = ListLag(
            journal, self.metrics, ceiling=options.reconcile_window, adaptive=options.lag_probe_interval > 0
        )
        if options.lag_probe_interval > 0:
            self.lag.probe = LagProbe(self.lag, sender, options.lag_probe_interval)
        self._delivery = Delivery(
            options.delivery,
            sender,
            journal,
            lifecycle,
            self._dispatcher,
            finished=self._finished,
            metrics=self.metrics,
            lag=self.lag,
        )
        self._delivery.tracker = tracker
        self._auditor = Auditor(journal, sender, self.metrics, self._publisher.wake)
        self._replies = None
        if options.replies is not None and inbound is not None:
            self._replies = ReplyPoller(journal, inbound, options.replies, self._publisher.wake)
            self._delivery.sent = self._replies.sent
        self._pager = None
        if options.paging:
            self._pager = Pager(journal, self._admission, self._admitted_later, self._publisher.wake)
        self._kinds = {options.txt_topic: Kind.SMS, options.call_topic: Kind.CALL}
        self._ignoring_pages = False  # said once: `until_acknowledged` comes with paging off
        self._begin_at_once = not options.delivery.sender_rate
        # Gauges read at scrape time, and the commonest counter bound once: nothing to update per request.
        self.metrics.in_flight.set_function(lambda: self._dispatcher.in_flight)
        self.metrics.backlog.set_function(lambda: self._unfinished)
        self._received = {topic: self.metrics.received.labels(topic) for topic in self._kinds}
        self._loops: list[asyncio.Task[None]] = []
        self.loops = Supervisor()
        self.watchdog = Watchdog(
            journal,
            self._dispatcher,
            self.metrics,
            attempt_lasts=options.delivery.http_timeout,
            lookup_after=lookup_offsets(options.reconcile_window)[0],
        )

    def _run(self, entry: Entry, begun: bool) -> Coroutine[Any, Any, None]:
        return self._delivery.run(entry, begun)

    @property
    def replies(self) -> ReplyPoller | None:
        """What takes replies in (None: replies are off); Twilio's webhook hands them to it too."""
        return self._replies

    @property
    def in_flight(self) -> int:
        return len(self._dispatcher.active)

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume from the journal: attempts cut short go in doubt, then serve due requests and statuses."""
        interrupted = await self._journal.doubt_interrupted(lookup_offsets(self._options.reconcile_window)[0])
        if interrupted:
            log.info("%d request(s) were being sent when the connector stopped: looking them up at Twilio", interrupted)
        await self.lag.load()
        await self._readmit()
        self._unfinished = await self._journal.unfinished()
        self._update_room()
        loops = {
            "dispatch": self._dispatcher.run,
            "publish": self._publisher.run,
            "prune": self._prune,
            "watch": self._watch,
            "watchdog": self.watchdog.run,
        }
        if self._tracker is not None:
            loops["track"] = self._tracker.run
        loops["audit"] = self._auditor.run
        if self._replies is not None and self._replies.polls:
            loops["replies"] = self._replies.run
        if self._pager is not None:
            loops["pages"] = self._pager.run
        self._loops = [asyncio.create_task(self.loops.run(name, loop), name=name) for name, loop in loops.items()]

    async def stop(self, grace: float) -> bool:
        """Stop intake; give in-flight attempts and pending statuses `grace` seconds. True if all finished.

        Requests not started stay in the journal for the next start; an attempt cut short is looked up then.
        """
        self._closing.set()
        self._dispatcher.wake()
        deadline = time.monotonic() + grace
        finished = await self._dispatcher.drain(grace)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._publisher.drained(), max(0.0, deadline - time.monotonic()))
        await self._dispatcher.cancel()
        if self.lag.probe is not None:
            await self.lag.probe.close()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        return finished

    # -- intake -----------------------------------------------------------------------------------------

    async def handle(self, topic: str, payload: bytes, redelivered: bool = False) -> None:
        """Take one MQTT request. Returns once it, or its failure status if it is invalid, is durably recorded.

        `redelivered`: the broker sent it before (MQTT's DUP flag), perhaps days ago to a process that recorded it
        and died before acknowledging: it is looked for in the journal as far back as a session can hold it."""
        kind = self._kinds.get(topic)
        acknowledgement = kind is None and self._pager is not None and topic == self._options.ack_topic
        if kind is None and not acknowledgement:
            log.warning("ignoring a message on unexpected topic %r", topic)
            return
        if self._closing.is_set() or self._journal.damaged is not None:
            await asyncio.Future()  # never acknowledged: the broker keeps it for the next session
        if kind is None:
            await self._acknowledge(payload)
            return
        self._received[topic].inc()
        parsed = parse_request(
            payload,
            kind,
            default_from=self._options.default_from,
            max_retries=self._options.max_retries,
            max_payload_bytes=self._options.max_payload_bytes,
            allow_http=self._options.allow_http_urls,
            paging=self._pager is not None,
        )
        if self._pager is None and not self._ignoring_pages and b"until_acknowledged" in payload:
            self._ignoring_pages = True
            log.warning("a request asks to page until acknowledged, and paging is off: sent once (set paging = true)")
        if isinstance(parsed, InvalidRequest):
            log.info("request id=%s kind=%s result=invalid reason=%r", parsed.id, kind.value, parsed.message)
            await self._fail(kind, parsed.id, ErrorCode.INVALID_PARAMETER, parsed.message)
            return
        for notification in parsed:
            await self._room.wait()  # backpressure: stop reading from the broker rather than grow without bound
            # With a free slot and no queue to wait behind, the first attempt is recorded with the request (one
            # commit, not two) and started from here.
            journal, dispatcher = self._journal, self._dispatcher
            # (Not when sends are paced: the attempt would be recorded as begun while it waits for its turn.)
            begin = (
                self._begin_at_once
                and journal.handing_requests
                and not journal.requests_waiting
                and dispatcher.free_slots() > 0
            )
            dispatcher.starting += begin
            try:
                admitted = await self._admit(notification, begin, redelivered)
            except Exception:
                if self._journal.damaged is not None:
                    await asyncio.Future()  # never acknowledged: it cannot be recorded, and the connector stops
                # A defect, met again on every try: the request gets a failure status rather than hang
                # unacknowledged (holding a slot of the broker's Receive Maximum for good).
                log.exception("request id=%s could not be admitted (an internal error): failing it", notification.id)
                await self._fail(kind, notification.id, ErrorCode.INTERNAL_ERROR, "internal error")
                continue
            finally:
                dispatcher.starting -= begin
            await self._admitted(notification, admitted, redelivered)

    async def _admit(
        self, notification: Notification, begin: bool, redelivered: bool
    ) -> Accepted | Folded | Refused | Duplicate:
        """Admit; the request is not acknowledged until it is recorded, so the broker keeps it meanwhile (and holds
        back the rest). Given up, it would be lost: on a live connection a broker never delivers an unacknowledged
        message again."""
        journal = self._journal
        return await until_written(
            journal,
            lambda: journal.admit(self._admission, notification, begin=begin, redelivered=redelivered),
            f"request id={notification.id}",
            defect_tries=DEFECT_TRIES,
        )

    async def _acknowledge(self, payload: bytes) -> None:
        """An acknowledgement over MQTT: `{"id": ..., "by": ...}` ends the open pages of request `id`."""
        ack = parse_ack(payload)
        if isinstance(ack, InvalidRequest):
            log.warning("ignoring an acknowledgement on %s: %s", self._options.ack_topic, ack.message)
            return
        request_id, by = ack
        acknowledge = partial(self._journal.acknowledge, request_id, by, "mqtt")
        ended = await until_written(self._journal, acknowledge, f"the acknowledgement of request id={request_id}")
        log.info("request id=%s: acknowledged by %s over MQTT (%d open page(s) ended)", request_id, by, ended)
        if ended:
            self._publisher.wake()

    async def _admitted_later(self, notification: Notification, admitted: Accepted | Folded | Refused) -> None:
        await self._admitted(notification, admitted, False)

    async def _fail(self, kind: Kind, request_id: str | None, error: ErrorCode, message: str) -> None:
        """Record a request that cannot be admitted with its failure status, which goes out like any other."""
        status = encode_status(failure_status(request_id, error, message))
        reject = partial(self._journal.reject, kind, request_id, status, message)
        await until_written(self._journal, reject, f"request id={request_id}")
        self.metrics.statuses.labels(kind.value, "fail", error.value).inc()
        self._publisher.wake()

    async def _admitted(
        self, notification: Notification, admitted: Accepted | Folded | Refused | Duplicate, redelivered: bool
    ) -> None:
        if isinstance(admitted, Duplicate):
            log.info("request id=%s result=duplicate (already recorded; nothing sent again)", notification.id)
            # Its status goes out again for a broker's redelivery, or a device's resend; on a shared journal a
            # fresh copy is most likely another connector's copy of the same publish, already answered.
            if admitted.status is not None and (redelivered or not self._journal.shared):
                republish = partial(self._journal.republish, admitted.seq, admitted.status)
                try:
                    await until_written(
                        self._journal, republish, f"request id={notification.id}", defect_tries=DEFECT_TRIES
                    )
                except Exception:  # its status went out once already: acknowledge it all the same
                    log.exception("request id=%s: its status could not be queued again", notification.id)
                self._publisher.wake()
            return
        if isinstance(admitted, Refused):
            log.warning(
                "request id=%s to=%s result=rejected reason=%r", notification.id, notification.to, admitted.reason
            )
            self.metrics.rejections.inc()
            self.metrics.statuses.labels(notification.kind.value, "fail", ErrorCode.REJECTED.value).inc()
            self._publisher.wake()
            return
        self._unfinished += 1
        self._update_room()
        if notification.page is not None and self._pager is not None:
            self._pager.wake()
        if isinstance(admitted, Folded):
            log.info("request id=%s result=folded into digest-%d", notification.id, admitted.digest)
            self.metrics.folded.inc()
            self._dispatcher.due_at(admitted.send_at)
        elif admitted.begun and not self._closing.is_set():
            entry = Entry(admitted.seq, notification, State.SENDING, 0, None, None, accepted_at=time.time())
            self._dispatcher.spawn(entry, begun=True)
        else:
            self._dispatcher.due_at(admitted.start_at)

    def _finished(self, count: int) -> None:
        self._unfinished -= count
        self._update_room()
        self._publisher.wake()

    def _update_room(self) -> None:
        if self._unfinished < self._options.max_backlog:
            self._room.set()
        else:
            self._room.clear()

    async def _prune(self) -> None:
        # Finished requests are kept as long as a redelivery may still come for them.
        retention = max(self._options.journal_retention, self._options.dedupe_window, self._options.session_expiry)
        while True:
            removed = await self._journal.prune(time.time() - retention)
            if removed:
                log.info("pruned %d finished request(s) from the journal", removed)
            await asyncio.sleep(PRUNE_EVERY)

    async def _watch(self) -> None:
        """Tend the journal once a second. Another connector or an operator's `twilio-connector journal retry`
        changes it behind our back: notice it within a second, count the backlog again and look for work."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            held = [*self._dispatcher.active, *self._journal.handed_over()]
            if await self._journal.tend(held):
                await self._readmit()
                self._unfinished = await self._journal.unfinished()
                self._update_room()
                self._dispatcher.rescan()
                self._journal.query_statuses()  # statuses may be waiting that were not handed to us
                self._publisher.wake()

    async def _readmit(self) -> None:
        """Admit again what an operator asked to send again (`twilio-connector journal retry`), as a new request
        would be: the guards, storms and caps decide. Refused, it stays failed, its status as it was."""
        while True:
            decided = await self._journal.readmit(self._admission, READMIT_BATCH)
            for entry, admitted in decided:
                what = f"request id={entry.notification.id} seq={entry.seq}"
                if isinstance(admitted, Refused):
                    log.warning(
                        "%s: the operator's retry is refused (%s); it stays failed (`journal retry --force` sends "
                        "it past the guards)",
                        *(what, admitted.reason),
                    )
                    self.metrics.rejections.inc()
                elif isinstance(admitted, Folded):
                    log.info("%s: retried by the operator, folded into digest-%d", what, admitted.digest)
                else:
                    log.info("%s: retried by the operator", what)
            if len(decided) < READMIT_BATCH:
                return
