"""Delivery when the journal is away or was changed behind its back: an outcome Twilio gave is recorded once the
journal takes writes again (not left as "being sent" until a restart), and a request another connector finished
meanwhile is neither sent nor brought back to life."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import NoScheduler, journal_accept, sms
from twilio_connector.domain.contract import Kind, Notification, SendResult
from twilio_connector.domain.lifecycle import Lifecycle
from twilio_connector.domain.outcomes import TwilioFailure
from twilio_connector.domain.records import Entry
from twilio_connector.domain.retry import RetryPolicy
from twilio_connector.engine.core import Engine
from twilio_connector.engine.delivery import Delivery
from twilio_connector.engine.options import DeliveryOptions
from twilio_connector.journal.front import Journal
from twilio_connector.journal.opening import open_journal
from twilio_connector.journal.sqlite import SqliteCore, SqliteJournal
from twilio_connector.ops.metrics import Metrics
from twilio_connector.ports import journal as ports
from twilio_connector.service import engine_options
from twilio_connector.settings.schema import Settings

NOTE = Notification("a1", Kind.SMS, "+12345000000", "+15005550006", "Darla", "freezer 3 above -5 C", 2)


class Twilio:
    """Creates every message it is asked for."""

    def __init__(self) -> None:
        self.created: list[str] = []

    async def create(self, notification: Notification) -> SendResult | TwilioFailure:
        self.created.append(notification.id)
        return SendResult(f"SM{len(self.created):032x}", "queued", notification.to, notification.from_)

    async def find(self, notification: Notification, since: float) -> list[SendResult] | TwilioFailure:
        return []


def delivery(journal: Journal, twilio: Twilio) -> Delivery:
    lifecycle = Lifecycle(RetryPolicy(0.5, 4.0), 10.0, rand=lambda: 0.5)
    return Delivery(
        DeliveryOptions(http_timeout=15.0),
        twilio,
        journal,
        lifecycle,
        NoScheduler(),
        finished=lambda _: None,
        metrics=Metrics(),
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    where = str(tmp_path / "j.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = await open_journal(where, hand_over_limit=0)
    yield opened  # type: ignore[misc]
    await opened.close()


async def due(journal: Journal) -> Entry:
    entries, _ = await journal.read(lambda: journal.core.due(time.time(), 1, ()))
    return entries[0]


async def test_an_outcome_is_recorded_once_the_journal_takes_writes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refuses the commits that would record Twilio's answer (full, failing): the answer is kept and
    recorded when the disk takes writes again, without sending anything twice. It used to be left as "being
    sent" until the next restart looked it up."""
    monkeypatch.setattr(ports, "WAIT_FIRST", 0.01)
    journal = await open_journal(str(tmp_path / "j.db"), hand_over_limit=0)
    twilio = Twilio()
    try:
        await journal_accept(journal, NOTE, window=600)
        entry = await due(journal)
        commit, refusals = journal._commit, []

        def refusing() -> None:
            if twilio.created and len(refusals) < 3:
                refusals.append(1)
                raise sqlite3.OperationalError("database or disk is full")
            commit()

        monkeypatch.setattr(journal, "_commit", refusing)
        await asyncio.wait_for(delivery(journal, twilio).run(entry), timeout=10)
        assert len(refusals) == 3 and journal.writable
        state, sid, status = journal.core.db.execute("SELECT state, sid, status FROM requests").fetchone()
        assert (state, sid) == ("sent", "SM" + "1".zfill(32)) and status is not None
        assert twilio.created == ["a1"]
    finally:
        await journal.close()


async def test_a_request_finished_elsewhere_is_not_sent(journal: Journal) -> None:
    """Another connector (its claim on the request lapsed here) finished it between our query and our attempt."""
    await journal_accept(journal, NOTE, window=600)
    stale = await due(journal)
    await journal.finish(stale.seq, "sent", b'{"id": "a1"}', "SM" + "e" * 32, None)
    twilio = Twilio()
    await delivery(journal, twilio).run(stale)
    assert twilio.created == []
    rows = await journal.read(lambda: journal.core.rows(["sent", "accepted", "sending"], 5))
    assert [(row["state"], row["sid"]) for row in rows] == [("sent", "SM" + "e" * 32)]


async def test_a_finished_request_never_goes_back_to_waiting(journal: Journal) -> None:
    """A late decision about a request finished meanwhile (a retry, a lookup) changes nothing."""
    seq = await journal_accept(journal, NOTE, window=600)
    assert isinstance(seq, int)
    assert await journal.begin_attempt(seq)
    await journal.finish(seq, "sent", b'{"id": "a1"}', "SM" + "f" * 32, None)
    await journal.retry_later(seq, time.time(), "Bad Gateway")
    await journal.doubt(seq, time.time(), 1, "Bad Gateway")
    assert not await journal.begin_attempt(seq)
    rows = await journal.read(lambda: journal.core.rows(["sent", "accepted", "sending", "doubt"], 5))
    assert [row["state"] for row in rows] == ["sent"]
    entries, _ = await journal.read(lambda: journal.core.due(time.time() + 60, 5, ()))
    assert entries == []


class Away:
    """A journal's `writable` and `damaged`, as `until_written` reads them."""

    def __init__(self, writable: bool) -> None:
        self.writable = writable
        self.damaged: Exception | None = None


def failing(times: int, journal: Away, *, back: bool = True) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def write() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise sqlite3.OperationalError("disk I/O error")
        journal.writable = back
        return "done"

    return calls, write


async def test_a_write_is_tried_again_while_the_journal_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "WAIT_FIRST", 0.001)
    journal = Away(writable=False)
    calls, write = failing(5, journal)
    assert await ports.until_written(journal, write, "request id=a1") == "done"  # type: ignore[arg-type]
    assert len(calls) == 6


async def test_a_defect_is_raised_after_its_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "WAIT_FIRST", 0.001)
    calls, write = failing(10, Away(writable=True))
    with pytest.raises(sqlite3.OperationalError):
        await ports.until_written(Away(writable=True), write, "request id=a1", defect_tries=3)  # type: ignore[arg-type]
    assert len(calls) == 3
    claimed: list[int] = []

    async def claim() -> None:
        claimed.append(1)
        raise ports.SidClaimed("SM1")

    with pytest.raises(ports.SidClaimed):  # an answer, not a failure: never tried again
        await ports.until_written(Away(writable=False), claim, "request id=a1")  # type: ignore[arg-type]
    assert claimed == [1]


class Defective(SqliteJournal):
    """A journal whose admission of one request always fails, the journal otherwise well (a defect)."""

    async def admit(self, admission: Any, notification: Notification, **how: Any) -> Any:
        if notification.id == "poison":
            raise ValueError("a defect")
        return await super().admit(admission, notification, **how)


async def test_a_request_that_cannot_be_admitted_gets_a_failure_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not left unacknowledged for good (a broker never redelivers on a live connection): after a few tries it
    is failed with `InternalError`, and the requests after it go on."""
    monkeypatch.setattr(ports, "WAIT_FIRST", 0.001)
    journal = Defective(SqliteCore(str(tmp_path / "j.db"), hand_over_limit=0))
    engine = Engine(
        engine_options(Settings(default_from="+15005550006")),
        Twilio(),
        journal,
        lambda topic, payload: asyncio.sleep(0),
    )
    try:
        for request_id in ("poison", "fine"):
            payload = orjson.dumps(sms(request_id))
            await asyncio.wait_for(engine.handle("twilio/txt", payload), timeout=10)
        rows = journal.core.db.execute("SELECT request_id, state, status FROM requests ORDER BY seq").fetchall()
        assert [(row[0], row[1]) for row in rows] == [("poison", "invalid"), ("fine", "accepted")]
        status = orjson.loads(rows[0][2])
        assert status["id"] == "poison" and status["response"]["error"] == "InternalError"
    finally:
        await journal.close()
