"""Replies onto MQTT, without a public endpoint: the texts people send to the connector's numbers, polled from
Twilio's Messages list (outbound HTTPS only) and each published once on the reply topic, with `in_reply_to`: the
request sent to that person from that number most recently.

Each reply is kept in the journal (by its SID) before it is published, and published like a status: marked
once the broker acknowledged it, so it is published again after a crash in between, never lost, and never taken
twice from Twilio's list. The list is read back from the newest reply known for each number (less a margin for
Twilio's list lag and clocks), so a poll gap or a restart misses nothing; replies sent before the feature was
first turned on are not published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import orjson

from ..domain.optout import opt_out_of
from ..domain.outcomes import TwilioFailure
from ..domain.paging import acknowledges
from ..domain.records import Reply, ReplyRecord
from ..ports.journal import JournalPort

__all__ = ["Inbound", "ReplyOptions", "ReplyPoller"]

log = logging.getLogger(__name__)

#: Seconds before the newest reply known that each poll reads back from: Twilio's list lags, clocks differ.
MARGIN = 300.0
#: After a text goes out, replies are polled every FAST seconds for FAST_FOR seconds (when the interval is longer):
#: an answer comes soonest right after an alert, and an idle connector need not pay for fast polls.
FAST, FAST_FOR = 3.0, 120.0


class Inbound(Protocol):
    async def inbound(self, number: str, since: float) -> list[Reply] | TwilioFailure: ...

    async def media_urls(self, sid: str) -> list[str] | TwilioFailure: ...


@dataclass(frozen=True, slots=True)
class ReplyOptions:
    numbers: tuple[str, ...]  # polled; empty: default_from and the numbers sent from within `window`
    default_from: str | None
    interval: float
    window: float  # how far back `in_reply_to` looks, and which recent senders are polled
    paging: bool = False  # a reply may acknowledge a page (domain/paging.py)


class ReplyPoller:
    def __init__(
        self,
        journal: JournalPort,
        source: Inbound,
        options: ReplyOptions,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`wake`: replies wait to be published."""
        self._journal = journal
        self._source = source
        self._options = options
        self._wake = wake
        self._clock = clock
        self._failing: set[str] = set()  # numbers whose last poll failed: said once, not every poll
        self._fast_until = float("-inf")

    @property
    def polls(self) -> bool:
        """Whether it polls Twilio (with an interval of 0 only Twilio's webhook brings replies)."""
        return self._options.interval > 0

    def sent(self) -> None:
        """A text went out: poll fast for a while."""
        self._fast_until = self._clock() + FAST_FOR

    def next_wait(self) -> float:
        """Seconds until the next poll: FAST for a while after a send, else the interval."""
        fast = self._clock() < self._fast_until
        return min(FAST, self._options.interval) if fast else self._options.interval

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.next_wait())

    async def poll(self) -> int:
        """Take the new replies of every number into the journal; returns how many."""
        rows: list[ReplyRecord] = []
        for number in await self._numbers():
            rows.extend(await self._poll(number))
        if rows:
            await self._journal.record_replies(rows)
            self._wake()
        return len(rows)

    async def _numbers(self) -> list[str]:
        if self._options.numbers:
            return list(self._options.numbers)
        recent = await self._journal.reply_numbers(self._clock() - self._options.window)
        return sorted({*recent, *([self._options.default_from] if self._options.default_from else [])})

    async def _acknowledges(self, reply: Reply, answered: str | None) -> str | None:
        """The request whose pages `reply` acknowledges, if it does."""
        if not self._options.paging or answered is None:
            return None
        pages = await self._journal.open_pages(answered)
        return answered if any(acknowledges(page, reply.sender, reply.body) for page in pages) else None

    async def _poll(self, number: str) -> list[ReplyRecord]:
        horizon = await self._journal.reply_horizon(number)
        found = await self._source.inbound(number, horizon - MARGIN)
        if isinstance(found, TwilioFailure):
            if number not in self._failing:
                log.warning("cannot read the replies to %s: %s", number, found.message)
                self._failing.add(number)
            return []
        self._failing.discard(number)
        known = await self._journal.known_replies([reply.sid for reply in found])
        fresh = sorted((reply for reply in found if reply.sid not in known), key=lambda reply: reply.received_at)
        return [await self._row(reply, None) for reply in fresh]

    async def received(self, reply: Reply, media: list[str]) -> bool:
        """A reply Twilio posted to our webhook (ops/callbacks.py), with its media URLs: taken as a poll takes
        it, once by its SID whichever way comes first. False if it was known already."""
        if await self._journal.known_replies([reply.sid]):
            return False
        await self._journal.record_replies([await self._row(reply, media)])
        self._wake()
        return True

    async def _row(self, reply: Reply, media: list[str] | None) -> ReplyRecord:
        """What the journal keeps of `reply`; `media`: its media URLs (None: ask Twilio if it has any)."""
        number = reply.to
        since = reply.received_at - self._options.window
        answered = await self._journal.in_reply_to(reply.sender, number, since)
        opt_out = opt_out_of(reply.body)
        acked = await self._acknowledges(reply, answered)
        if media is None:
            media = await self._media(reply)
        document = {
            "from_number": reply.sender,
            "to_number": reply.to,
            "body": reply.body,
            "sid": reply.sid,
            "received_at": datetime.fromtimestamp(reply.received_at, UTC).isoformat().replace("+00:00", "Z"),
            "num_media": reply.num_media,
            "media_urls": media,
            "in_reply_to": answered,
            "opt_out": opt_out,
            "acknowledges": acked,
        }
        log.info(
            "reply sid=%s from=%s to=%s in_reply_to=%s opt_out=%s acknowledges=%s",
            *(reply.sid, reply.sender, number, answered, opt_out, acked),
        )
        return ReplyRecord(reply.sid, number, reply.sender, reply.received_at, orjson.dumps(document), opt_out, acked)

    async def _media(self, reply: Reply) -> list[str]:
        if not reply.num_media:
            return []
        media = await self._source.media_urls(reply.sid)
        if isinstance(media, TwilioFailure):  # the text still goes out; its media are said to be missing
            log.warning("reply sid=%s: cannot list its %d media: %s", reply.sid, reply.num_media, media.message)
            return []
        return media
