"""The journal port: what the engine's parts need of a journal, whatever keeps it (SQLite today).

Every guarantee the engine gives rests on these operations being durable once they return, and on two rules a
backend must enforce itself, not leave to the engine: a request is recorded once per dedupe key within its
window (`admit`), and a Twilio SID is claimed by at most one request (`finish` and `finish_digest` raise
`SidClaimed` otherwise, changing nothing).

The hand-over (`take_requests`, `take_statuses`) lets new requests and statuses reach the engine in memory once
committed, so that finding work costs no query while the engine keeps up; a backend without it hands nothing
over (`handing_requests` and `handing_statuses` stay false), and the engine queries for everything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Protocol, TypeVar

from ..domain.admission import Accepted, Admission, Folded, Refused
from ..domain.contract import Kind, Notification
from ..domain.paging import OpenPage, PageStep
from ..domain.records import Duplicate, Entry, ReplyRecord, Track, Tracked
from ..domain.states import State

__all__ = ["JournalClosed", "JournalDamaged", "JournalPort", "SidClaimed", "until_written"]

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Seconds between tries of a write the journal could not take, doubling up to the cap.
WAIT_FIRST, WAIT_CAP = 0.5, 10.0


class SidClaimed(Exception):
    """Another request already holds this Twilio SID: the request was not finished with it."""


class JournalDamaged(Exception):
    """The journal's file is damaged: the connector cannot go on without losing or doubling work."""


class JournalClosed(Exception):
    """The journal is closing (the connector stops): no statement may start."""


class JournalPort(Protocol):
    @property
    def shared(self) -> bool:
        """Several connectors may use this journal at once (PostgreSQL)."""
        ...

    @property
    def writable(self) -> bool:
        """The last write was committed (readiness)."""
        ...

    @property
    def damaged(self) -> JournalDamaged | None:
        """Set for good once the journal is found damaged: nothing more can be recorded."""
        ...

    async def resumed(self) -> None:
        """Return once writes are committed again (at once while they are)."""
        ...

    async def damage_found(self) -> None:
        """Return once the journal is found damaged (never while it is not)."""
        ...

    # -- the hand-over: new work reaches the engine in memory once committed -------------------------
    @property
    def handing_requests(self) -> bool:
        """New requests are handed over as they are committed (else only `refill` finds them)."""
        ...

    @property
    def requests_waiting(self) -> int:
        """Requests handed over and not taken yet."""
        ...

    def take_requests(self, limit: int) -> list[Entry]:
        """Up to `limit` handed-over requests, oldest first: the caller now works on them."""
        ...

    def handed_over(self) -> list[int]:
        """The requests handed over and not taken yet (this process holds them)."""
        ...

    @property
    def handing_statuses(self) -> bool:
        """New statuses are handed over as they are committed (else only `unpublished` finds them)."""
        ...

    def take_statuses(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` handed-over statuses (seq, status), oldest first."""
        ...

    def give_back_statuses(self, rows: list[tuple[int, bytes]]) -> None:
        """Statuses taken and not published (the broker refused them): first in line again."""
        ...

    def query_statuses(self) -> None:
        """Statuses may wait that were not handed over (another process changed the journal): find them with
        `unpublished` before trusting the hand-over again."""
        ...

    # -- requests in ---------------------------------------------------------------------------------
    async def admit(
        self, admission: Admission, notification: Notification, *, begin: bool, redelivered: bool
    ) -> Accepted | Folded | Refused | Duplicate: ...

    async def readmit(self, admission: Admission, limit: int) -> list[tuple[Entry, Accepted | Folded | Refused]]:
        """Admit again the failed requests an operator asked to send again (`twilio-connector journal retry`)."""
        ...

    async def reject(self, kind: Kind, request_id: str | None, status: bytes, reason: str) -> int: ...

    async def republish(self, seq: int, status: bytes) -> None: ...

    # -- attempts and lookups ------------------------------------------------------------------------
    async def refill(self, now: float, limit: int, busy: Collection[int]) -> float | None: ...

    async def begin_attempt(self, seq: int) -> bool:
        """False if the request no longer waits for an attempt (finished meanwhile): nothing must be sent."""
        ...

    async def doubt(self, seq: int, at: float, lookups: int, error: str | None = None) -> None: ...

    async def doubt_interrupted(self, grace: float) -> int: ...

    async def retry_later(self, seq: int, at: float, error: str) -> None: ...

    async def sid_known(self, sid: str) -> bool: ...

    async def finish(
        self, seq: int, state: State, status: bytes, sid: str | None, error: str | None, *, track: Track | None = None
    ) -> None: ...

    async def members(self, seq: int) -> list[Entry]: ...

    async def digest_texts(self, seq: int, limit: int) -> list[str]: ...

    async def finish_digest(
        self, seq: int, state: State, sid: str | None, error: str | None, statuses: list[tuple[int, bytes]]
    ) -> None: ...

    async def unfinished(self) -> int: ...

    # -- statuses out --------------------------------------------------------------------------------
    async def unpublished(self, limit: int) -> list[tuple[int, bytes]]: ...

    def mark_published(self, seqs: Iterable[int]) -> None: ...

    async def unpublished_followups(self, limit: int) -> list[tuple[int, bytes]]: ...

    def mark_followups_published(self, ids: Iterable[int]) -> None: ...

    # -- delivery tracking ---------------------------------------------------------------------------
    async def tracked_due(self, now: float, limit: int) -> list[Tracked]: ...

    async def tracked_by_sid(self, sid: str) -> Tracked | None: ...

    async def next_check(self) -> float | None: ...

    async def record_lag(self, seen_at: float, seconds: float, keep_since: float) -> None:
        """Keep one list-lag sample (domain/lag.py), forgetting those seen before `keep_since`."""
        ...

    async def lags(self, since: float) -> list[tuple[float, float]]:
        """(seen_at, seconds) of the list-lag samples seen since `since`, oldest first."""
        ...

    async def audit_later(self, seq: int, since: float, due_at: float) -> None:
        """Look for request `seq`'s messages created since `since` again at `due_at`."""
        ...

    async def audits_due(self, now: float, limit: int) -> list[tuple[float, Entry]]: ...

    async def audit_done(self, seq: int, followup: bytes | None) -> None:
        """The audit of `seq` is over; `followup` (a request Twilio holds twice) goes out on the delivery topic."""
        ...

    async def reply_numbers(self, since: float) -> list[str]: ...

    async def reply_horizon(self, number: str) -> float:
        """Where `number`'s replies are read back from: the newest known, or when it was first polled."""
        ...

    async def known_replies(self, sids: Collection[str]) -> set[str]: ...

    async def in_reply_to(self, person: str, number: str, since: float) -> str | None: ...

    async def record_replies(self, rows: list[ReplyRecord]) -> None: ...

    async def opted_out(self, person: str, number: str | None) -> bool: ...

    async def unpublished_replies(self, limit: int) -> list[tuple[str, bytes]]: ...

    def mark_replies_published(self, sids: Iterable[str]) -> None:
        """As `mark_published`, for replies."""
        ...

    async def check_later(self, seq: int, at: float, interval: float, last_status: str) -> None: ...

    async def delivered(self, seq: int, payload: bytes, acknowledges: tuple[str, str] | None = None) -> bool:
        """Record a tracked request's follow-up and stop tracking it; `acknowledges`: (request id, by whom), an
        answered call that ends its request's pages. False if it was no longer tracked."""
        ...

    # -- pages until acknowledged (domain/paging.py) ----------------------------------------------------
    async def open_pages(self, request_id: str) -> list[OpenPage]: ...

    async def pages_due(self, now: float, limit: int) -> list[OpenPage]: ...

    async def next_page_at(self) -> float | None: ...

    async def page_step(
        self, admission: Admission, page: OpenPage, step: PageStep
    ) -> tuple[bool, Accepted | Folded | Refused | None]:
        """Record `step` of `page` and admit what it sends, in one transaction: (False, None) if the page moved
        meanwhile (acknowledged, or stepped by another connector), and nothing was done."""
        ...

    async def acknowledge(self, request_id: str, by: str, via: str) -> int:
        """End the open pages of `request_id` as acknowledged; returns how many."""
        ...

    async def unpublished_page_statuses(self, limit: int) -> list[tuple[int, bytes]]: ...

    def mark_page_statuses_published(self, seqs: Iterable[int]) -> None:
        """As `mark_published`, for how pages ended."""
        ...

    # -- upkeep --------------------------------------------------------------------------------------
    async def tend(self, held: Collection[int] = ()) -> bool:
        """Called once a second: keep alive the claims on what this process holds (`held`: the requests at work;
        a shared journal), and say whether someone else (another connector, an operator's command) changed the
        journal since the last call."""
        ...

    async def prune(self, before: float) -> int: ...

    # -- the watchdog --------------------------------------------------------------------------------
    async def abandoned(self, before: float, busy: Collection[int]) -> list[int]:
        """Requests being sent since before `before` that nothing works on (`busy`: those at work)."""
        ...

    async def doubt_abandoned(self, seqs: Collection[int], grace: float) -> int: ...

    async def overdue(self, before: float, busy: Collection[int]) -> int:
        """How many requests have been due for an attempt or a lookup since before `before` (not `busy`)."""
        ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


async def until_written(
    journal: JournalPort, write: Callable[[], Awaitable[T]], what: str, *, defect_tries: int = 1
) -> T:
    """Run `write`, trying it again while the journal cannot be written (a database restarting, a full disk)
    rather than drop what it records; `what` names it in the log. A failure with the journal writable is a
    defect: raised once it happened `defect_tries` times. `SidClaimed` is an answer, never tried again."""
    delay, defects = WAIT_FIRST, 0
    while True:
        try:
            return await write()
        except (SidClaimed, JournalClosed):
            raise
        except Exception:
            if journal.damaged is not None:
                raise  # waiting mends nothing: the connector stops
            if journal.writable:
                defects += 1
                if defects >= defect_tries:
                    raise
                log.exception("%s could not be recorded; trying again in %g s", what, delay)
            # Else the journal cannot be written: it says so itself, once, not once per write per try.
        await asyncio.sleep(delay)
        delay = min(WAIT_CAP, delay * 2)
