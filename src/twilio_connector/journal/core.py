"""The journal's statements, the same for SQLite and PostgreSQL: every accepted request, every status not yet
published, the storm windows and rate counts, on one synchronous connection.

`SqlCore` holds what both databases do alike; `sqlite.SqliteCore` and `postgres.PostgresCore`, its two
children, what each does its own way (opening, finding due work, claims). Statements are written with `?`
placeholders, SQLite's; the PostgreSQL connection numbers them for its own (`postgres._numbered`).

Request states and which step may change them: `domain/states.py` (each state change here is guarded by its
table). A SID is claimed by at most one request: a unique index, so two identical alerts can never both be
finished with one message. A folded text points at its digest (`digest_seq`), a request of its own with
`members` > 0. Storm windows (`windows`) and rate counts (`counters`, fixed time buckets) live here too, so a
restart keeps them and their size is bounded by the traffic of a day, not of the process's life.

Hand-over: while the engine keeps up, each new request and each new status is also handed to it in memory
(`ready`, `outbox`) once committed, so finding work costs no query. Handed rows are left out of `due` and
`unpublished`, which alone serve what was not handed: rows from before a restart, retries, and the overflow
when the engine falls behind (past `hand_over_limit`). The journal's statements run one at a time, so a row is
either handed or found by a query, never both.
"""

from __future__ import annotations

import abc
import os
import time
from collections import deque
from collections.abc import Collection, Iterable
from typing import Any, NamedTuple

from ..domain.contract import Kind, Notification
from ..domain.paging import OpenPage, PageStep, acknowledged_status
from ..domain.policy import Caps
from ..domain.records import Duplicate, Entry, Identity, ReplyRecord, Track, Tracked, dedupe_key, stored_options
from ..domain.states import UNFINISHED, State, Step
from ..domain.storms import Window
from .operator import OperatorStatements
from .rows import COLUMNS, PREFIXED, entry_of, tracked_of

__all__ = ["HAND_OVER_LIMIT", "OVERDUE_COUNTED", "Marks", "SqlCore"]

#: Requests and statuses handed to the engine in memory at most (each way); the rest waits in the journal.
HAND_OVER_LIMIT = 1024
#: The watchdog counts overdue requests up to this many.
OVERDUE_COUNTED = 1000


class Marks(NamedTuple):
    """What was published and is not recorded as such yet: statuses and follow-ups (by id), replies (by SID), how
    pages ended (by the page's seq). Recorded with the next commit (`SqlCore.record_marks`)."""

    statuses: list[Any]
    followups: list[Any]
    replies: list[Any]
    pages: list[Any]

    @staticmethod
    def none() -> Marks:
        return Marks([], [], [], [])


class SqlCore(OperatorStatements, abc.ABC):
    """Synchronous journal operations on one connection. The async front (front.Journal) and the CLI use it."""

    #: What the connection raises; an IntegrityError is a constraint (the SID claim) refusing a statement.
    Error: type[Exception]
    IntegrityError: type[Exception]
    #: Several connectors may use the journal at once.
    shared: bool
    #: A condition and its parameters restricting the watchdog's queries to this connector's own claims.
    _mine: str = ""
    _me: tuple[Any, ...] = ()
    #: What makes a shared journal's connectors take turns over the rows a query returns (none: one connector).
    _skip_locked: str = ""
    #: The index that finds requests being sent, named where the database needs telling.
    _sending_index: str = ""

    def __init__(self, db: Any, hand_over_limit: int = 0) -> None:
        """`db`: an open connection (`execute` and `executemany` returning cursors). `hand_over_limit`: requests
        and statuses handed over in memory at most, each way (0: none, as for the CLI and tests of the queries)."""
        self.db = db
        self.ready: deque[Entry] = deque()  # accepted requests handed to the dispatcher
        self.outbox: deque[tuple[int, bytes]] = deque()  # (seq, status) handed to the publisher
        self.hand_over_limit = hand_over_limit
        # Whether new work is handed over: off at start (the queries find what is there) and after an overflow;
        # back on once a query found everything not handed.
        self.hand_requests = False
        self.hand_statuses = False
        self._handed_requests: set[int] = set()
        self._handed_statuses: set[int] = set()
        self._staged_requests: list[Entry] = []
        self._staged_statuses: list[tuple[int, bytes]] = []

    # -- what each database does its own way ---------------------------------------------------------------

    @abc.abstractmethod
    def due(self, now: float, limit: int, busy: Collection[int]) -> tuple[list[Entry], float | None]:
        """Up to `limit` requests due for an attempt, oldest first, skipping `busy` and handed-over ones; and
        when this should be asked again: `now` if more are due, else when the next waiting one falls due (None if
        none waits). Finding all of them turns the hand-over of new requests (back) on."""

    @abc.abstractmethod
    def unpublished(self, limit: int, skip: Collection[int] = ()) -> list[tuple[int, bytes]]:
        """Up to `limit` statuses to publish, leaving out those handed over and `skip` (published, the record
        of it not committed yet). Finding all of them turns the hand-over of new statuses (back) on."""

    @abc.abstractmethod
    def tend(self, held: Collection[int] = ()) -> bool:
        """Keep alive the claims on what this process holds (`held`), and say whether someone else changed the
        journal since the last call."""

    def close(self) -> None:
        self.db.close()

    # -- writes ---------------------------------------------------------------------------------------------

    def duplicate(self, notification: Notification, now: float, window: float) -> tuple[Identity, Duplicate | None]:
        """The request's identity, and the request recorded with it within `window` seconds if there is one."""
        options = stored_options(notification)
        identity = Identity(dedupe_key(notification, options), options)
        row = self.db.execute(
            "SELECT seq, status FROM requests WHERE dedupe_key = ? AND accepted_at >= ? ORDER BY seq DESC LIMIT 1",
            (identity.key, now - window),
        ).fetchone()
        return identity, None if row is None else Duplicate(row[0], row[1])

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
    ) -> int:
        """Record a request: due at `start_at` (default `now`), begun at once (`begin`), folded into the digest
        request `digest`, or refused with (status, reason)."""
        n, start = notification, now if start_at is None else start_at
        if refused is not None:
            state, attempts, started, status, error = "failed", 0, None, *refused
        elif digest is not None:
            state, attempts, started, status, error = "folded", 0, None, None, None
        else:
            state, attempts, started = ("sending", 1, now) if begin else ("accepted", 0, None)
            status, error = None, None
        seq = int(
            self.db.execute(
                "INSERT INTO requests (dedupe_key, request_id, kind, to_number, from_number, name, content, retries, "
                "options, state, attempts, attempt_started_at, next_attempt_at, accepted_at, updated_at, digest_seq, "
                "status, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                (
                    *(identity.key, n.id, n.kind.value, n.to, n.from_, n.name, n.content, n.retries, identity.options),
                    *(state, attempts, started, start, now, now, digest, status, error),
                ),
            ).fetchone()[0]
        )
        if n.page is not None and refused is None:
            self.db.execute(
                "INSERT INTO pages (seq, request_id, sends, next_at) VALUES (?, ?, 1, ?)",
                (seq, n.id, start + n.page.every),
            )
        if digest is not None:
            self.db.execute("UPDATE requests SET members = members + 1 WHERE seq = ?", (digest,))
        elif status is not None:
            self._stage_status(seq, status)
        elif self.hand_requests and not begin and start <= now:
            if len(self.ready) + len(self._staged_requests) < self.hand_over_limit:
                self._handed_requests.add(seq)
                self._staged_requests.append(Entry(seq, notification, State.ACCEPTED, 0, None, None, accepted_at=now))
            else:
                self.hand_requests = False  # the dispatcher is behind: the overflow waits for `due` to find it
        return seq

    # -- storms and rate counts -------------------------------------------------------------------------------

    def window(self, key: str) -> Window | None:
        row = self.db.execute(
            "SELECT opens_at, closes_at, passed, next_at, digest_seq FROM windows WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else Window(*row)

    def save_window(self, key: str, window: Window) -> None:
        self.db.execute(
            "INSERT INTO windows (key, opens_at, closes_at, passed, next_at, digest_seq) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET opens_at = excluded.opens_at, closes_at = excluded.closes_at, "
            "passed = excluded.passed, next_at = excluded.next_at, digest_seq = excluded.digest_seq",
            (key, window.opens_at, window.closes_at, window.passed, window.next_at, window.digest),
        )

    def open_digest(self, template: Notification, send_at: float, retries: int, now: float) -> int:
        """A digest request for the texts folded like `template`, due when their window closes. Its body is
        written when it is sent, from its members (`digest_texts`)."""
        digest = Notification(
            "digest", Kind.SMS, template.to, template.from_, template.name, "", retries,
            messaging_service_sid=template.messaging_service_sid,
        )  # fmt: skip
        seq = self.record(digest, Identity(os.urandom(16), stored_options(digest)), now, start_at=send_at)
        self.db.execute("UPDATE requests SET request_id = ? WHERE seq = ?", (f"digest-{seq}", seq))
        return seq

    def count(self, span: str, scope: str, oldest: int) -> int:
        row = self.db.execute(
            "SELECT COALESCE(SUM(n), 0) FROM counters WHERE span = ? AND scope = ? AND bucket >= ?",
            (span, scope, oldest),
        ).fetchone()
        return int(row[0])

    def bump(self, span: str, scope: str, bucket: int) -> None:
        self.db.execute(
            "INSERT INTO counters (span, scope, bucket, n) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (span, scope, bucket) DO UPDATE SET n = counters.n + 1",
            (span, scope, bucket),
        )

    # -- list lag evidence -------------------------------------------------------------------------------------

    def record_lag(self, seen_at: float, seconds: float, keep_since: float) -> None:
        """A new message showed in Twilio's list `seconds` after its create; samples before `keep_since` go."""
        self.db.execute("DELETE FROM list_lags WHERE seen_at < ?", (keep_since,))
        self.db.execute("INSERT INTO list_lags (seen_at, seconds) VALUES (?, ?)", (seen_at, seconds))

    def lags(self, since: float) -> list[tuple[float, float]]:
        """(seen_at, seconds) of the samples seen since `since`, oldest first."""
        rows = self.db.execute(
            "SELECT seen_at, seconds FROM list_lags WHERE seen_at >= ? ORDER BY seen_at", (since,)
        ).fetchall()
        return [(float(row[0]), float(row[1])) for row in rows]

    # -- audits: a request sent again after an empty window, looked for twice later ----------------------------

    def audit_later(self, seq: int, since: float, due_at: float) -> None:
        """Look for request `seq`'s messages created since `since` at `due_at` (the earliest `since` is kept)."""
        self.db.execute(
            "INSERT INTO audits (seq, since, due_at) VALUES (?, ?, ?) ON CONFLICT (seq) DO UPDATE SET "
            "since = CASE WHEN excluded.since < audits.since THEN excluded.since ELSE audits.since END, "
            "due_at = excluded.due_at",
            (seq, since, due_at),
        )

    def audits_due(self, now: float, limit: int) -> list[tuple[float, Entry]]:
        """The audits due, each with when its request's messages are looked for from, and the request."""
        rows = self.db.execute(
            f"SELECT a.since, {PREFIXED} FROM audits a JOIN requests r ON r.seq = a.seq "
            "WHERE a.due_at <= ? ORDER BY a.due_at LIMIT ?",
            (now, limit),
        ).fetchall()
        return [(float(row[0]), entry_of(row[1:])) for row in rows]

    def audit_done(self, seq: int, followup: bytes | None) -> None:
        """The audit of `seq` is over; `followup`: what it found, to publish (a request Twilio holds twice)."""
        self.db.execute("DELETE FROM audits WHERE seq = ?", (seq,))
        if followup is not None:
            self.db.execute("INSERT INTO followups (payload, created_at) VALUES (?, ?)", (followup, time.time()))

    # -- replies: texts people sent to the connector's numbers, each published once ---------------------------

    def reply_numbers(self, since: float) -> list[str]:
        """The numbers requests were sent from since `since`."""
        rows = self.db.execute(
            "SELECT DISTINCT from_number FROM requests WHERE state = ? AND updated_at >= ?", (State.SENT.value, since)
        ).fetchall()
        return [str(row[0]) for row in rows]

    def reply_horizon(self, number: str) -> float | None:
        """Where the replies to `number` are read back from: the newest one known, else when `number` was first
        polled (None: never)."""
        row = self.db.execute("SELECT MAX(received_at) FROM replies WHERE number = ?", (number,)).fetchone()
        if row is not None and row[0] is not None:
            return float(row[0])
        row = self.db.execute("SELECT since FROM reply_cursors WHERE number = ?", (number,)).fetchone()
        return None if row is None else float(row[0])

    def first_polled(self, number: str, now: float) -> float:
        """Record that `number` is polled from `now` on (nothing older is published), unless it was before."""
        self.db.execute(
            "INSERT INTO reply_cursors (number, since) VALUES (?, ?) ON CONFLICT (number) DO NOTHING", (number, now)
        )
        return float(self.db.execute("SELECT since FROM reply_cursors WHERE number = ?", (number,)).fetchone()[0])

    def known_replies(self, sids: Collection[str]) -> set[str]:
        """Which of `sids` the journal holds already, in one query (a poll walks up to 1,000 of them)."""
        wanted = list(sids)
        if not wanted:
            return set()
        rows = self.db.execute(f"SELECT sid FROM replies WHERE sid IN ({','.join('?' * len(wanted))})", wanted)
        return {str(row[0]) for row in rows.fetchall()}

    def in_reply_to(self, person: str, number: str, since: float) -> str | None:
        """The id of the latest request sent to `person` from `number`, or through a Messaging Service (which
        picked a number the journal does not know: `from_number` empty), since `since`."""
        row = self.db.execute(
            "SELECT request_id FROM requests WHERE state = ? AND to_number = ? AND from_number IN (?, '') "
            "AND updated_at >= ? ORDER BY updated_at DESC LIMIT 1",
            (State.SENT.value, person, number, since),
        ).fetchone()
        return None if row is None else str(row[0])

    def record_reply(self, reply: ReplyRecord) -> None:
        """Keep a reply to publish, with what it changes: an opt-out or in, a page it acknowledges."""
        number, received_at = reply.number, reply.received_at
        inserted = self.db.execute(
            "INSERT INTO replies (sid, number, received_at, payload) VALUES (?, ?, ?, ?) ON CONFLICT (sid) DO NOTHING",
            (reply.sid, number, received_at, reply.payload),
        ).rowcount
        if not inserted:
            return  # known already (another connector took it first): what it changes was done then
        if reply.acknowledges is not None:
            self.acknowledge(reply.acknowledges, reply.person, "reply", received_at)
        if reply.opt_out is None:
            return
        person = reply.person
        if reply.opt_out:
            self.db.execute(
                "INSERT INTO opt_outs (person, number, since) VALUES (?, ?, ?) ON CONFLICT (person, number) DO NOTHING",
                (person, number, received_at),
            )
        else:
            self.db.execute(
                "DELETE FROM opt_outs WHERE person = ? AND number = ? AND since <= ?", (person, number, received_at)
            )

    def opted_out(self, person: str, number: str | None) -> bool:
        """Whether `person` opted out of texts from `number` (None: the number is not known yet, so no)."""
        if number is None:
            return False
        row = self.db.execute("SELECT 1 FROM opt_outs WHERE person = ? AND number = ?", (person, number)).fetchone()
        return row is not None

    def opt_outs(self) -> list[tuple[str, str, float]]:
        """Who opted out of which number, and since when, newest first."""
        rows = self.db.execute("SELECT person, number, since FROM opt_outs ORDER BY since DESC").fetchall()
        return [(str(row[0]), str(row[1]), float(row[2])) for row in rows]

    def unpublished_replies(self, limit: int, skip: Collection[str] = ()) -> list[tuple[str, bytes]]:
        rows = self.db.execute(
            "SELECT sid, payload FROM replies WHERE published = 0 ORDER BY received_at LIMIT ?", (limit + len(skip),)
        ).fetchall()
        return [(str(row[0]), bytes(row[1])) for row in rows if row[0] not in skip][:limit]

    def mark_replies_published(self, sids: Iterable[str]) -> None:
        self.db.executemany("UPDATE replies SET published = 1 WHERE sid = ?", [(sid,) for sid in sids])

    # -- pages until acknowledged (domain/paging.py) ------------------------------------------------------------

    def _pages(self, where: str, parameters: tuple[Any, ...]) -> list[OpenPage]:
        rows = self.db.execute(
            f"SELECT p.sends, p.next_at, {PREFIXED} FROM pages p JOIN requests r ON r.seq = p.seq "
            f"WHERE p.state = 'paging' AND {where}",
            parameters,
        ).fetchall()
        return [OpenPage(int(row[2]), entry_of(row[2:]).notification, int(row[0]), float(row[1])) for row in rows]

    def pages_due(self, now: float, limit: int) -> list[OpenPage]:
        return self._pages("p.next_at <= ? ORDER BY p.next_at LIMIT ?", (now, limit))

    def open_pages(self, request_id: str) -> list[OpenPage]:
        return self._pages("p.request_id = ? ORDER BY p.seq", (request_id,))

    def next_page_at(self) -> float | None:
        row = self.db.execute("SELECT MIN(next_at) FROM pages WHERE state = 'paging'").fetchone()
        return None if row[0] is None else float(row[0])

    def page_step(self, page: OpenPage, step: PageStep, now: float) -> bool:
        """Record `step` of `page`; False if the page moved meanwhile (acknowledged, or taken by another
        connector): then nothing of the step must happen."""
        if step.next_at is not None:
            changed = self.db.execute(
                "UPDATE pages SET sends = ?, next_at = ? WHERE seq = ? AND state = 'paging' AND sends = ?",
                (step.sends, step.next_at, page.seq, page.sends),
            ).rowcount
        else:
            changed = self.db.execute(
                "UPDATE pages SET state = ?, ended_at = ?, status = ?, published = ? "
                "WHERE seq = ? AND state = 'paging' AND sends = ?",
                (step.ended, now, step.status, int(step.status is None), page.seq, page.sends),
            ).rowcount
        return bool(changed)

    def acknowledge(self, request_id: str, by: str, via: str, now: float) -> int:
        """End every open page of `request_id` as acknowledged `by` whom `via` what; returns how many."""
        pages = self.open_pages(request_id)
        self.db.executemany(
            "UPDATE pages SET state = 'acknowledged', ended_at = ?, status = ?, published = 0 "
            "WHERE seq = ? AND state = 'paging'",
            [(now, acknowledged_status(page, by, via), page.seq) for page in pages],
        )
        return len(pages)

    def unpublished_page_statuses(self, limit: int, skip: Collection[int] = ()) -> list[tuple[int, bytes]]:
        rows = self.db.execute(
            "SELECT seq, status FROM pages WHERE status IS NOT NULL AND published = 0 ORDER BY seq LIMIT ?",
            (limit + len(skip),),
        ).fetchall()
        return [(int(row[0]), bytes(row[1])) for row in rows if row[0] not in skip][:limit]

    def mark_page_statuses_published(self, seqs: Iterable[int]) -> None:
        self.db.executemany("UPDATE pages SET published = 1 WHERE seq = ?", [(seq,) for seq in seqs])

    def digest_texts(self, seq: int, limit: int) -> list[str]:
        """The first `limit` texts folded into digest `seq`, oldest first."""
        rows = self.db.execute(
            "SELECT content FROM requests WHERE digest_seq = ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [row[0] for row in rows]

    def members(self, seq: int) -> list[Entry]:
        rows = self.db.execute(
            f"SELECT {COLUMNS} FROM requests WHERE digest_seq = ? AND state = 'folded' ORDER BY seq", (seq,)
        ).fetchall()
        return [entry_of(row) for row in rows]

    def finish_digest(
        self, seq: int, state: State, sid: str | None, error: str | None, statuses: list[tuple[int, bytes]]
    ) -> None:
        """Finish a digest and, with it, each folded request with its own status. The digest has no status of
        its own to publish: nobody asked for it."""
        now = time.time()
        self._handed_requests.discard(seq)
        self.db.execute(
            "UPDATE requests SET state = ?, sid = ?, last_error = ?, status_published = 1, updated_at = ? "
            "WHERE seq = ?",
            (state, sid, error, now, seq),
        )
        self.db.executemany(
            "UPDATE requests SET state = ?, status = ?, last_error = ?, status_published = 0, updated_at = ? "
            f"WHERE seq = ? AND {Step.FINISH_MEMBER.sql_from()}",
            [(state, status, error, now, member) for member, status in statuses],
        )
        for member, status in statuses:
            self._stage_status(member, status)

    def _stage_status(self, seq: int, status: bytes) -> None:
        if not self.hand_statuses:
            return
        if len(self.outbox) + len(self._staged_statuses) < self.hand_over_limit:
            self._handed_statuses.add(seq)
            self._staged_statuses.append((seq, status))
        else:
            self.hand_statuses = False

    def committed(self) -> None:
        """Hand over what the transaction just committed staged (so nothing is handed before it is durable)."""
        self.ready.extend(self._staged_requests)
        self.outbox.extend(self._staged_statuses)
        self._staged_requests.clear()
        self._staged_statuses.clear()

    def rolled_back(self, since: tuple[int, int] = (0, 0)) -> None:
        """Forget what was staged for hand-over since `since` (see `staged`; default: all of it): its
        transaction did not commit."""
        requests, statuses = self._staged_requests[since[0] :], self._staged_statuses[since[1] :]
        self._handed_requests.difference_update(entry.seq for entry in requests)
        self._handed_statuses.difference_update(seq for seq, _ in statuses)
        del self._staged_requests[since[0] :]
        del self._staged_statuses[since[1] :]

    def staged(self) -> tuple[int, int]:
        """A mark of what is staged for hand-over now, for `rolled_back`."""
        return len(self._staged_requests), len(self._staged_statuses)

    def reject(self, kind: Kind, request_id: str | None, status: bytes, reason: str, now: float) -> int:
        """Record an invalid request with its failure status, so the status goes out like any other."""
        seq = int(
            self.db.execute(
                "INSERT INTO requests (dedupe_key, request_id, kind, to_number, from_number, name, content, retries, "
                "state, next_attempt_at, last_error, status, accepted_at, updated_at) "
                "VALUES (?, ?, ?, '', '', '', '', 0, 'invalid', 0, ?, ?, ?, ?) RETURNING seq",
                (os.urandom(16), request_id or "", kind.value, reason, status, now, now),
            ).fetchone()[0]
        )
        self._stage_status(seq, status)
        return seq

    def begin_attempt(self, seq: int, now: float) -> bool:
        """Record an attempt as begun; False if the request no longer waits for one (another connector, its
        claim on it lapsed meanwhile, finished it): then nothing must be sent."""
        self._handed_requests.discard(seq)
        return bool(
            self.db.execute(
                "UPDATE requests SET state = 'sending', attempts = attempts + 1, attempt_started_at = ?, "
                f"updated_at = ? WHERE seq = ? AND {Step.BEGIN_ATTEMPT.sql_from()}",
                (now, now, seq),
            ).rowcount
        )

    def doubt(self, seq: int, at: float, lookups: int, error: str | None = None) -> None:
        """The attempt's outcome is unknown: look it up at Twilio at `at` (`lookups` done so far). `error`: why
        it is in doubt (kept from the first time)."""
        self._handed_requests.discard(seq)  # handed over for its lookup: it waits in the journal again
        self.db.execute(
            "UPDATE requests SET state = 'doubt', next_attempt_at = ?, lookups = ?, "
            "last_error = COALESCE(?, last_error), updated_at = ? "
            f"WHERE seq = ? AND {Step.DOUBT.sql_from()}",
            (at, lookups, error, time.time(), seq),
        )

    def doubt_interrupted(self, grace: float) -> int:
        """Attempts cut short by a stop (rows left in `sending`) are in doubt: looked up `grace` seconds after they
        began. The attempt does not count against the request's retries (the connector's stop is not its fault)."""
        return self._doubt_sending(grace)

    def _doubt_sending(
        self,
        grace: float,
        also: str = "",
        where: str = "",
        parameters: tuple[Any, ...] = (),
        why: str = "the connector stopped while sending it",
    ) -> int:
        """Put rows left in `sending` in doubt (see `doubt_interrupted`); `also`: more assignments, `where`: more
        conditions, their `parameters` following `grace`; `why`: their last error."""
        return int(
            self.db.execute(
                "UPDATE requests SET state = 'doubt', lookups = 0, attempts = attempts - 1, "
                f"last_error = ?{also}, "
                f"next_attempt_at = COALESCE(attempt_started_at, 0) + ? WHERE {Step.INTERRUPTED.sql_from()}{where}",
                (why, grace, *parameters),
            ).rowcount
        )

    def abandoned(self, before: float, busy: Collection[int]) -> list[int]:
        """Requests whose attempt began before `before` and that are still being sent, though nothing here works
        on them (`busy`: the requests at work): a defect lost them. (The watchdog's first question.)"""
        rows = self.db.execute(
            f"SELECT seq FROM requests{self._sending_index} WHERE state = 'sending' "
            f"AND attempt_started_at < ?{self._mine}",
            (before, *self._me),
        ).fetchall()
        return [seq for (seq,) in rows if seq not in busy]

    def doubt_abandoned(self, seqs: Collection[int], grace: float) -> int:
        """Put abandoned attempts in doubt (as `doubt_interrupted` does at a start): looked up `grace` seconds
        after they began."""
        ids = sorted(seqs)
        where = f" AND seq IN ({','.join('?' * len(ids))})" if ids else " AND 0"
        why = "the watchdog found it abandoned while being sent"
        return self._doubt_sending(grace, where=where, parameters=tuple(ids), why=why)

    def overdue(self, before: float, busy: Collection[int]) -> int:
        """How many requests have waited for an attempt or a lookup since before `before`, leaving out those at
        work (`busy`: a paced attempt waits for its turn at work). Counted up to OVERDUE_COUNTED."""
        rows = [
            seq
            for state in ("accepted", "doubt")
            for (seq,) in self.db.execute(
                f"SELECT seq FROM requests WHERE state = '{state}' AND next_attempt_at < ?{self._mine} LIMIT ?",
                (before, *self._me, OVERDUE_COUNTED + len(busy)),
            ).fetchall()
        ]
        return min(OVERDUE_COUNTED, sum(seq not in busy for seq in rows))

    def retry_later(self, seq: int, at: float, error: str) -> None:
        self._handed_requests.discard(seq)
        self.db.execute(
            "UPDATE requests SET state = 'accepted', next_attempt_at = ?, last_error = ?, lookups = 0, updated_at = ? "
            f"WHERE seq = ? AND {Step.RETRY_LATER.sql_from()}",
            (at, error, time.time(), seq),
        )

    def finish(
        self, seq: int, state: State, status: bytes, sid: str | None, error: str | None, *, track: Track | None = None
    ) -> None:
        now = time.time()
        self._handed_requests.discard(seq)  # a lookup's request is finished without a new attempt
        finished = self.db.execute(
            "UPDATE requests SET state = ?, status = ?, sid = ?, last_error = ?, status_published = 0, "
            f"updated_at = ? WHERE seq = ? AND {Step.FINISH.sql_from()}",
            (state, status, sid, error, now, seq),
        ).rowcount
        if not finished:
            return  # already finished (by another connector that took it over): its status stands
        self._stage_status(seq, status)
        if track is not None and sid:
            self.db.execute(
                'INSERT INTO tracking (seq, sid, next_check_at, "interval", deadline, last_status) '
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (seq) DO UPDATE SET sid = excluded.sid, "
                'next_check_at = excluded.next_check_at, "interval" = excluded."interval", '
                "deadline = excluded.deadline, last_status = excluded.last_status",
                (seq, sid, now + track.first_check, track.first_check, now + track.give_up_after, track.status),
            )

    # -- delivery tracking ----------------------------------------------------------------------------------

    def tracked_due(self, now: float, limit: int) -> list[Tracked]:
        rows = self.db.execute(
            f'SELECT t.seq, t.sid, t."interval", t.deadline, t.last_status, {PREFIXED} FROM tracking t '
            "JOIN requests r ON r.seq = t.seq WHERE t.next_check_at <= ? ORDER BY t.next_check_at LIMIT ?",
            (now, limit),
        ).fetchall()
        return [tracked_of(row) for row in rows]

    def tracked_by_sid(self, sid: str) -> Tracked | None:
        row = self.db.execute(
            f'SELECT t.seq, t.sid, t."interval", t.deadline, t.last_status, {PREFIXED} FROM tracking t '
            "JOIN requests r ON r.seq = t.seq WHERE t.sid = ?",
            (sid,),
        ).fetchone()
        return None if row is None else tracked_of(row)

    def next_check(self) -> float | None:
        row = self.db.execute("SELECT MIN(next_check_at) FROM tracking").fetchone()
        return None if row[0] is None else float(row[0])

    def check_later(self, seq: int, at: float, interval: float, last_status: str) -> None:
        self.db.execute(
            'UPDATE tracking SET next_check_at = ?, "interval" = ?, last_status = ? WHERE seq = ?',
            (at, interval, last_status, seq),
        )

    def delivered(self, seq: int, payload: bytes, acknowledges: tuple[str, str] | None = None) -> bool:
        """Record the follow-up status and stop tracking; `acknowledges`: (request id, by whom) a call answered
        acknowledges. False if it was no longer tracked (already done)."""
        if self.db.execute("DELETE FROM tracking WHERE seq = ?", (seq,)).rowcount != 1:
            return False
        now = time.time()
        self.db.execute("INSERT INTO followups (payload, created_at) VALUES (?, ?)", (payload, now))
        if acknowledges is not None:
            self.acknowledge(*acknowledges, "call", now)
        return True

    def unpublished_followups(self, limit: int, skip: Collection[int] = ()) -> list[tuple[int, bytes]]:
        rows = self.db.execute(
            "SELECT id, payload FROM followups WHERE published = 0 ORDER BY id LIMIT ?", (limit + len(skip),)
        ).fetchall()
        return [row for row in rows if row[0] not in skip][:limit]

    def mark_followups_published(self, ids: Iterable[int]) -> None:
        self.db.executemany("UPDATE followups SET published = 1 WHERE id = ?", [(i,) for i in ids])

    def record_marks(self, marks: Marks) -> None:
        """Record as published what `marks` holds (inside the caller's transaction)."""
        if marks.statuses:
            self.mark_published(marks.statuses)
        if marks.followups:
            self.mark_followups_published(marks.followups)
        if marks.replies:
            self.mark_replies_published(marks.replies)
        if marks.pages:
            self.mark_page_statuses_published(marks.pages)

    def mark_published(self, seqs: Iterable[int]) -> None:
        now = time.time()
        rows = [(now, seq) for seq in seqs]
        self.db.executemany("UPDATE requests SET status_published = 1, updated_at = ? WHERE seq = ?", rows)
        self._handed_statuses.difference_update(seq for _, seq in rows)

    def republish(self, seq: int, status: bytes) -> None:
        """Publish a request's status again (its duplicate arrived). If the status is still on its way, that
        one publication serves both."""
        if seq in self._handed_statuses:
            return
        self.db.execute("UPDATE requests SET status_published = 0 WHERE seq = ? AND status IS NOT NULL", (seq,))
        self._stage_status(seq, status)

    def prune(self, before: float) -> int:
        self.db.execute("DELETE FROM followups WHERE published = 1 AND created_at < ?", (before,))
        self.db.execute("DELETE FROM pages WHERE published = 1 AND ended_at < ?", (before,))
        cursor = self.db.execute(
            "DELETE FROM requests WHERE status_published = 1 AND updated_at < ? AND state != 'retry' "
            "AND seq NOT IN (SELECT seq FROM tracking) AND seq NOT IN (SELECT seq FROM pages)",
            (before,),
        )
        return int(cursor.rowcount)

    def prune_counts(self, now: float) -> None:
        """Forget storm windows and rate buckets that no longer count (their memory is bounded by a day)."""
        self.db.execute("DELETE FROM windows WHERE closes_at < ? AND next_at < ?", (now, now))
        for span in ("m", "d"):
            self.db.execute("DELETE FROM counters WHERE span = ? AND bucket < ?", (span, Caps.bucket(span, now)[1]))

    # -- reads ----------------------------------------------------------------------------------------------

    def refill(self, now: float, limit: int, busy: Collection[int] = ()) -> float | None:
        """Hand up to `limit` due requests over to `ready` (as `due` finds them); returns `due`'s `again`."""
        entries, again = self.due(now, limit, busy)
        self._handed_requests.update(entry.seq for entry in entries)
        self.ready.extend(entries)
        return again

    def sid_known(self, sid: str) -> bool:
        return self.db.execute("SELECT 1 FROM requests WHERE sid = ?", (sid,)).fetchone() is not None

    def unfinished(self) -> int:
        # One count per state, each over its partial index: `state IN (...)` would scan the whole table.
        return sum(
            int(self.db.execute(f"SELECT COUNT(*) FROM requests WHERE state = '{state}'").fetchone()[0])
            for state in UNFINISHED
        )
