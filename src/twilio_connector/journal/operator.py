"""What an operator asks of the journal (`twilio-connector journal`): counts, listings, a failed request sent
again; and the connector's side of such a retry, admitted again as a new request would be."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson

from ..domain.records import Entry
from ..domain.states import Step
from .rows import COLUMNS, entry_of

__all__ = ["REFUSED_AGAIN", "OperatorStatements"]

#: How the last error of a retry that admission refused begins.
REFUSED_AGAIN = "retry refused: "


class OperatorStatements:
    """Part of `core.SqlCore`: the statements an operator's commands and the admission of their retries use."""

    db: Any
    _skip_locked: str

    def request_retry(self, seq: int, *, force: bool = False) -> bool:
        """An operator asks for a failed request to be sent again. It waits in `retry` for the connector to admit
        it again, through its guards, storms and caps (`Admission.readmit`); `force`: straight back to waiting,
        past them. False if `seq` is not a failed request."""
        now = time.time()
        step = Step.FORCE_RETRY if force else Step.REQUEST_RETRY
        if force:
            assignments = (
                "state = 'accepted', status = NULL, status_published = 0, next_attempt_at = ?, lookups = 0, "
                "last_error = 'the operator forced a retry past the guards'"
            )
            parameters: tuple[Any, ...] = (now, now, seq)
        else:
            assignments, parameters = "state = 'retry'", (now, seq)
        cursor = self.db.execute(
            f"UPDATE requests SET {assignments}, updated_at = ? WHERE seq = ? AND {step.sql_from()} AND members = 0",
            parameters,
        )
        return bool(cursor.rowcount == 1)

    def state_of(self, seq: int) -> tuple[str, str | None] | None:
        """A request's state and last error; None if there is no such request."""
        row = self.db.execute("SELECT state, last_error FROM requests WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else (row[0], row[1])

    def retries_requested(self, limit: int) -> list[Entry]:
        """Requests an operator asked to send again, for admission (see `request_retry`)."""
        rows = self.db.execute(
            f"SELECT {COLUMNS} FROM requests WHERE state = 'retry' ORDER BY seq LIMIT ?{self._skip_locked}",
            (limit,),
        ).fetchall()
        return [entry_of(row) for row in rows]

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
        """A retried request's admission (see `domain.admission.AdmissionStore.requeue`); `begin` is never asked for."""
        if refused is not None:
            state, error = "failed", REFUSED_AGAIN + refused[1]  # its status went out already: it stands
            self.db.execute(
                f"UPDATE requests SET state = ?, last_error = ?, updated_at = ? WHERE seq = ? AND {Step.READMIT.sql_from()}",
                (state, error, now, seq),
            )
            return seq
        state = "accepted" if digest is None else "folded"
        self.db.execute(
            "UPDATE requests SET state = ?, status = NULL, status_published = 0, next_attempt_at = ?, lookups = 0, "
            f"digest_seq = ?, updated_at = ? WHERE seq = ? AND {Step.READMIT.sql_from()}",
            (state, now if start_at is None else start_at, digest, now, seq),
        )
        if digest is not None:
            self.db.execute("UPDATE requests SET members = members + 1 WHERE seq = ?", (digest,))
        return seq

    def counts(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT state, COUNT(*) FROM requests GROUP BY state UNION ALL "
            "SELECT 'unpublished', COUNT(*) FROM requests WHERE status IS NOT NULL AND status_published = 0"
        ).fetchall()
        return {state: count for state, count in rows}

    def rows(self, states: Iterable[str], limit: int) -> list[dict[str, Any]]:
        wanted = list(states)
        cursor = self.db.execute(
            "SELECT seq, request_id, kind, to_number, state, attempts, sid, last_error, accepted_at FROM requests "
            f"WHERE state IN ({','.join('?' * len(wanted))}) ORDER BY seq DESC LIMIT ?",
            (*wanted, limit),
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def pages(self, limit: int) -> list[dict[str, Any]]:
        """Pages until acknowledged, open first (soonest due first), then the newest ended ones still kept."""
        cursor = self.db.execute(
            "SELECT p.request_id, r.to_number, p.state, p.sends, p.next_at, p.ended_at, r.options FROM pages p "
            "JOIN requests r ON r.seq = p.seq "
            "ORDER BY CASE WHEN p.state = 'paging' THEN 0 ELSE 1 END, p.next_at, p.ended_at DESC LIMIT ?",
            (limit,),
        )
        listed = []
        for request_id, to, state, sends, next_at, ended_at, options in cursor.fetchall():
            page = orjson.loads(options).get("page") or {}  # as Notification.options() stores it
            when = {"next_at": next_at} if state == "paging" else {"ended_at": ended_at}
            listed.append(
                {"id": request_id, "phone_number": to, "state": state, "sends": sends, "times": page.get("times")}
                | {"every_s": page.get("every_s")}
                | when
            )
        return listed
