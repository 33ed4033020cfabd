"""The journal port: what the engine's parts need of a journal, whatever keeps it (SQLite today).

Every guarantee the engine gives rests on these operations being durable once they return, and on two rules a
backend must enforce itself, not leave to the engine: a request is recorded once per dedupe key within its
window (`admit`), and a Twilio SID is claimed by at most one request (`finish` and `finish_digest` raise
`SidClaimed` otherwise, changing nothing).

The hand-over (`ready`, `outbox`, `hand_requests`, `hand_statuses`) lets new requests and statuses reach the
engine in memory once committed, so that finding work costs no query while the engine keeps up; a backend
without it leaves both queues empty and both flags false, and the engine queries for everything.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Protocol, TypeVar

from ..domain.admission import Accepted, Admission, Folded, Refused
from ..domain.contract import Kind, Notification
from ..domain.records import Duplicate, Entry, Track, Tracked
from ..domain.states import State

__all__ = ["JournalDamaged", "JournalPort", "SidClaimed", "until_written"]

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Seconds between tries of a write the journal could not take, doubling up to the cap.
WAIT_FIRST, WAIT_CAP = 0.5, 10.0


class SidClaimed(Exception):
    """Another request already holds this Twilio SID: the request was not finished with it."""


class JournalDamaged(Exception):
    """The journal's file is damaged: the connector cannot go on without losing or doubling work."""


class JournalPort(Protocol):
    clock: Callable[[], float]
    writable: bool  # the last write was committed (readiness)
    resumed: asyncio.Event  # set while writes are committed, cleared while they fail
    damage: asyncio.Event  # set for good once the journal is found damaged: nothing more can be recorded

    @property
    def shared(self) -> bool:
        """Several connectors may use this journal at once (PostgreSQL)."""
        ...

    @property
    def ready(self) -> deque[Entry]: ...

    @property
    def outbox(self) -> deque[tuple[int, bytes]]: ...

    @property
    def hand_requests(self) -> bool: ...

    @property
    def hand_statuses(self) -> bool: ...

    @hand_statuses.setter
    def hand_statuses(self, value: bool) -> None: ...

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

    async def check_later(self, seq: int, at: float, interval: float, last_status: str) -> None: ...

    async def delivered(self, seq: int, payload: bytes) -> bool: ...

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
        except SidClaimed:
            raise
        except Exception:
            if journal.damage.is_set():
                raise  # waiting mends nothing: the connector stops
            if journal.writable:
                defects += 1
                if defects >= defect_tries:
                    raise
                log.exception("%s could not be recorded; trying again in %g s", what, delay)
            # Else the journal cannot be written: it says so itself, once, not once per write per try.
        await asyncio.sleep(delay)
        delay = min(WAIT_CAP, delay * 2)
