"""Statuses out: publish what the journal holds unpublished, and mark each once the broker acknowledged it.

New statuses come from the journal's in-memory hand-over once committed; the journal is queried for the rest
(after a restart, or when the hand-over overflowed). A mark rides on the next commit: a status the process
dies just after publishing is published again after the restart (at least once, never lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from ..ports.journal import JournalPort
from ..ports.messaging import Publish

__all__ = ["StatusPublisher"]

log = logging.getLogger(__name__)
K = TypeVar("K")  # what a row is marked published by: a request's seq, a follow-up's id, a reply's SID

PUBLISH_BATCH = 256
#: Seconds before publishing again what the broker refused or did not acknowledge, doubling while it keeps on.
RETRY_BASE, RETRY_CAP = 1.0, 60.0


class StatusPublisher:
    def __init__(
        self,
        journal: JournalPort,
        publish: Publish,
        status_topic: str,
        delivery_topic: str | None = None,
        reply_topic: str | None = None,
        *,
        pages: bool = False,
    ) -> None:
        """`delivery_topic`: also publish follow-ups there (delivery tracking's, a double's); `reply_topic`: also
        publish replies there (with `replies` on); `pages`: publish how pages ended on the status topic."""
        self._journal = journal
        self._publish = publish
        self._status_topic = status_topic
        self._delivery_topic = delivery_topic
        self._reply_topic = reply_topic
        self._pages = pages
        self._pending = asyncio.Event()  # statuses may be waiting
        self._idle = asyncio.Event()  # the last round found nothing to publish
        self._retry_delay = RETRY_BASE

    def wake(self) -> None:
        self._pending.set()

    async def drained(self) -> None:
        """Return once a round finds nothing left to publish (the caller bounds the wait)."""
        self._idle.clear()
        self._pending.set()
        await self._idle.wait()

    async def run(self) -> None:
        journal = self._journal
        while True:
            self._pending.clear()
            rows = journal.take_statuses(PUBLISH_BATCH)
            if rows:
                journal.give_back_statuses(await self._publish_rows(self._status_topic, rows, journal.mark_published))
            elif not journal.handing_statuses:
                rows = await journal.unpublished(PUBLISH_BATCH)
                if await self._publish_rows(self._status_topic, rows, journal.mark_published):
                    journal.query_statuses()  # so that the next round queries again
            published = len(rows)
            if self._delivery_topic is not None:
                followups = await journal.unpublished_followups(PUBLISH_BATCH)
                await self._publish_rows(self._delivery_topic, followups, journal.mark_followups_published)
                published += len(followups)
            if self._reply_topic is not None:
                replies = await journal.unpublished_replies(PUBLISH_BATCH)
                await self._publish_rows(self._reply_topic, replies, journal.mark_replies_published)
                published += len(replies)
            if self._pages:
                ends = await journal.unpublished_page_statuses(PUBLISH_BATCH)
                await self._publish_rows(self._status_topic, ends, journal.mark_page_statuses_published)
                published += len(ends)
            if not published:
                self._idle.set()
                await self._pending.wait()

    async def _publish_rows(
        self, topic: str, rows: list[tuple[K, bytes]], mark: Callable[[list[K]], None]
    ) -> list[tuple[K, bytes]]:
        """Publish `rows`; mark the ones the broker acknowledged (PUBACK). Returns those it did not."""
        if not rows:
            return []
        results = await asyncio.gather(*(self._publish(topic, payload) for _, payload in rows), return_exceptions=True)
        done = [key for (key, _), result in zip(rows, results, strict=True) if result is None]
        if done:
            mark(done)
        failed = [row for row, result in zip(rows, results, strict=True) if result is not None]
        if not failed:
            self._retry_delay = RETRY_BASE
            return failed
        reasons = sorted({str(result) or result.__class__.__name__ for result in results if result is not None})
        log.warning(
            "%d status(es) on %s not acknowledged by the broker (%s); publishing again in %g s",
            *(len(failed), topic, "; ".join(reasons), self._retry_delay),
        )
        await asyncio.sleep(self._retry_delay)
        self._retry_delay = min(RETRY_CAP, self._retry_delay * 2)
        return failed
