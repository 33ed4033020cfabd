"""Doubles detected, not only avoided: a request sent again after a reconcile window showed nothing is looked for
once more, two windows after its attempt in doubt began. If Twilio now lists a message for it that no request
claimed besides the one its status named, the message was created after all and listed late: the request went
out twice (or, if its status said it failed, once). That is counted (`twilio_connector_doubles_detected_total`),
logged with the SIDs, and said in a follow-up on the delivery topic: the residual risk of the reconcile window
becomes a number measured in production, not a hope.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..domain.contract import double_status, encode_status
from ..domain.outcomes import TwilioFailure
from ..domain.records import Entry
from ..domain.states import State
from ..ops.metrics import Metrics
from ..ports.journal import JournalPort
from .lag import Finder

__all__ = ["Auditor"]

log = logging.getLogger(__name__)

TICK = 5.0  # seconds between looks at the due audits
BATCH = 20
NOT_YET = 30.0  # the request is not finished: look again this much later
UNREADABLE = 60.0  # the list could not be read: try again this much later, for GIVE_UP seconds at most
GIVE_UP = 3600.0


class Auditor:
    def __init__(
        self,
        journal: JournalPort,
        finder: Finder,
        metrics: Metrics,
        notify: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`notify`: a follow-up waits to be published."""
        self._journal = journal
        self._finder = finder
        self._metrics = metrics
        self._notify = notify
        self._clock = clock

    async def run(self) -> None:
        while True:
            await self.audit_due()
            await asyncio.sleep(TICK)

    async def audit_due(self) -> None:
        for since, entry in await self._journal.audits_due(self._clock(), BATCH):
            await self._audit(since, entry)

    async def _audit(self, since: float, entry: Entry) -> None:
        now = self._clock()
        if entry.state not in (State.SENT, State.FAILED):
            await self._journal.audit_later(entry.seq, since, now + NOT_YET)
            return
        found = await self._finder.find(entry.notification, since)
        if isinstance(found, TwilioFailure):
            if now - since > GIVE_UP:
                await self._journal.audit_done(entry.seq, None)
            else:
                await self._journal.audit_later(entry.seq, since, now + UNREADABLE)
            return
        others = [c.sid for c in found if c.sid != entry.sid and not await self._journal.sid_known(c.sid)]
        if not others:
            await self._journal.audit_done(entry.seq, None)
            return
        self._metrics.doubles.inc()
        log.warning(
            "request id=%s: Twilio holds it %s: %s (listed after the reconcile window)",
            entry.notification.id,
            "twice" if entry.sid else "although its status said it failed",
            ", ".join(sid for sid in (entry.sid, *others) if sid),
        )
        followup = encode_status(double_status(entry.notification, entry.sid, others))
        await self._journal.audit_done(entry.seq, followup)
        self._notify()
