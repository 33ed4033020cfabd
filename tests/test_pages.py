"""Page until acknowledged (domain/paging.py, engine/pages.py): a request sent again until someone acknowledges
it (a reply, an answered call, an MQTT message), then a call; durable across a kill -9, never sent again once
acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import (
    DEFAULT_FROM,
    Broker,
    ConnectorProcess,
    MqttProbe,
    RunningConnector,
    SimulatorHandle,
    call,
    cli,
    make_settings,
    sms,
)
from twilio_connector.domain.admission import Accepted, Admission, Refused
from twilio_connector.domain.contract import (
    Content,
    InvalidRequest,
    Kind,
    Notification,
    Page,
    parse_ack,
    parse_request,
)
from twilio_connector.domain.paging import OpenPage, acknowledges, answered, next_step
from twilio_connector.domain.policy import Limits
from twilio_connector.domain.storms import StormRule
from twilio_connector.journal.opening import open_journal
from twilio_connector.journal.sqlite import SqliteCore

PERSON, OTHER = "+15557654321", "+15557650001"


def page_request(request_id: str, to: str = PERSON, **page: Any) -> dict[str, Any]:
    return sms(request_id, to=to, message="freezer 3 at -2 C", until_acknowledged=page)


def parse(document: dict[str, Any], kind: Kind = Kind.SMS, paging: bool = True) -> list[Notification] | InvalidRequest:
    payload = orjson.dumps(document)
    return parse_request(
        payload, kind, default_from=DEFAULT_FROM, max_retries=5, max_payload_bytes=65536, paging=paging
    )


# -- the contract ---------------------------------------------------------------------------------------------


def test_until_acknowledged_is_read_with_its_defaults() -> None:
    [notification] = parse(page_request("a", every_s=300))  # type: ignore[misc]
    assert notification.page == Page(300, 3, None, None)
    [notification] = parse(page_request("a", every_s=60, times=2, then_call=True, ack_pattern="ack*"))  # type: ignore[misc]
    assert notification.page == Page(60, 2, "say", "ack*")
    [notification] = parse(page_request("a", every_s=60, then_call="https://example.com/twiml"))  # type: ignore[misc]
    assert notification.page is not None and notification.page.then_call == "https://example.com/twiml"


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ({}, "every_s must be an integer from 1 to 86400"),
        ({"every_s": 0}, "every_s must be an integer from 1 to 86400"),
        ({"every_s": "300"}, "every_s must be an integer from 1 to 86400"),
        ({"every_s": 60, "times": 11}, "times must be an integer from 1 to 10"),
        ({"every_s": 60, "times": True}, "times must be an integer from 1 to 10"),
        ({"every_s": 60, "then_call": "http://example.com/twiml"}, "then_call must be an https URL"),
        ({"every_s": 60, "ack_pattern": ""}, "ack_pattern must not be empty"),
    ],
)
def test_a_bad_until_acknowledged_fails_the_request_in_words(page: dict[str, Any], message: str) -> None:
    parsed = parse(page_request("bad", **page))
    assert isinstance(parsed, InvalidRequest) and parsed.id == "bad" and message in parsed.message


def test_a_call_request_pages_by_calling_again_and_cannot_then_call() -> None:
    [notification] = parse(call("c", until_acknowledged={"every_s": 60}), Kind.CALL)  # type: ignore[misc]
    assert notification.page == Page(60, 3)
    refused = parse(call("c", until_acknowledged={"every_s": 60, "then_call": True}), Kind.CALL)
    assert isinstance(refused, InvalidRequest) and "then_call is for text requests" in refused.message


def test_with_paging_off_until_acknowledged_is_ignored_as_the_original_did() -> None:
    [notification] = parse(page_request("a", every_s="not even valid"), paging=False)  # type: ignore[misc]
    assert notification.page is None


def test_an_acknowledgement_names_its_request() -> None:
    assert parse_ack(b'{"id": "freezer-3", "by": "dashboard"}') == ("freezer-3", "dashboard")
    assert parse_ack(b'{"id": "freezer-3"}') == ("freezer-3", "mqtt")
    assert isinstance(parse_ack(b'{"by": "x"}'), InvalidRequest)
    assert isinstance(parse_ack(b"[]"), InvalidRequest)
    assert isinstance(parse_ack(b"\xff"), InvalidRequest)


# -- the decisions -------------------------------------------------------------------------------------------


def started(page: Page, kind: Kind = Kind.SMS, content: str = "freezer 3 at -2 C") -> Notification:
    return Notification("freezer-3", kind, PERSON, DEFAULT_FROM, "Darla", content, 2, page=page)


def test_a_page_sends_times_in_all_then_calls() -> None:
    page = OpenPage(7, started(Page(60, 3, "say")), 1, 1060.0)
    steps = []
    while True:
        step = next_step(page, page.next_at)
        steps.append(step)
        if step.next_at is None:
            break
        page = replace(page, sends=step.sends, next_at=step.next_at)
    second, third, last = steps
    assert (second.sends, second.next_at, second.send.repeat) == (2, 1120.0, 2)  # type: ignore[union-attr]
    assert (third.sends, third.next_at, third.send.repeat) == (3, 1180.0, 3)  # type: ignore[union-attr]
    assert second.send.page is None and second.send.content == "freezer 3 at -2 C"  # type: ignore[union-attr]
    call_ = last.send
    assert call_ is not None and call_.kind is Kind.CALL and call_.escalated and last.ended == "called"
    assert call_.content_type is Content.TWIML and "<Say>freezer 3 at -2 C</Say>" in call_.content
    assert last.status is None  # the call's own status says how the page ended


def test_a_page_due_long_ago_sends_once_and_waits_every_s_from_now() -> None:
    """A connector back from an hour's stop: one text, not the two it missed in a burst."""
    step = next_step(OpenPage(7, started(Page(60, 3)), 1, 1060.0), 4660.0)
    assert (step.sends, step.next_at) == (2, 4720.0)


def test_a_page_without_a_call_ends_unacknowledged_with_a_status() -> None:
    step = next_step(OpenPage(7, started(Page(60, 2)), 2, 1120.0), 1120.0)
    assert step.send is None and step.ended == "unacknowledged" and step.status is not None
    status = orjson.loads(step.status)
    assert (status["id"], status["update"], status["response"]["status"]) == ("freezer-3", "unacknowledged", "fail")


@pytest.mark.parametrize(
    ("pattern", "person", "body", "acknowledged"),
    [
        (None, PERSON, "ok on my way", True),
        (None, PERSON, "STOP", False),  # Twilio's keywords say something else
        (None, PERSON, "help", False),
        (None, OTHER, "ACK", False),  # not a recipient of this page
        ("ack*", PERSON, " Ack, thanks ", True),
        ("ack*", PERSON, "nack", False),
        ("[yY]*", PERSON, "yes", True),
    ],
)
def test_what_acknowledges_a_page(pattern: str | None, person: str, body: str, acknowledged: bool) -> None:
    page = OpenPage(7, started(Page(60, 3, None, pattern)), 1, 0.0)
    assert acknowledges(page, person, body) is acknowledged


def test_a_call_counts_as_answered_when_completed_for_a_few_seconds() -> None:
    paged = started(Page(60, 3), Kind.CALL)
    assert answered(paged, "completed", "30")
    assert not answered(paged, "completed", "2")  # hung up at once, or a machine's greeting cut short
    assert not answered(paged, "busy", "0")
    assert not answered(paged, "completed", None)
    assert not answered(replace(paged, page=None), "completed", "30")  # not a page's call


# -- the journal ---------------------------------------------------------------------------------------------


def admission() -> Admission:
    return Admission(Limits(), StormRule(0, 60.0), (600.0, 600.0), 5)


def test_a_page_s_step_is_taken_once_and_never_after_an_acknowledgement(tmp_path: Path) -> None:
    core = SqliteCore(str(tmp_path / "journal.db"))
    try:
        team = [replace(started(Page(60, 3)), to=to, listed=True) for to in (PERSON, OTHER)]
        for notification in team:
            assert isinstance(admission().admit(core, notification), Accepted)
        pages = core.pages_due(time.time() + 61, 10)
        assert [page.sends for page in pages] == [1, 1]
        step = next_step(pages[0], time.time())
        assert core.page_step(pages[0], step, time.time())
        assert not core.page_step(pages[0], step, time.time())  # the same step again (another connector): no
        assert core.acknowledge("freezer-3", PERSON, "reply", time.time()) == 2  # the whole team's page ends
        assert not core.page_step(pages[1], next_step(pages[1], time.time()), time.time())
        assert core.pages_due(time.time() + 10_000, 10) == [] and core.next_page_at() is None
        ends = [orjson.loads(status) for _, status in core.unpublished_page_statuses(10)]
        assert [(end["recipient"], end["update"]) for end in ends] == [
            (PERSON, "acknowledged"),
            (OTHER, "acknowledged"),
        ]
    finally:
        core.close()


def test_the_request_that_started_an_open_page_is_never_pruned(tmp_path: Path) -> None:
    core = SqliteCore(str(tmp_path / "journal.db"))
    try:
        seq = admission().admit(core, started(Page(3600, 3))).seq  # type: ignore[union-attr]
        core.db.execute(
            "UPDATE requests SET state = 'sent', status = x'7b7d', status_published = 1 WHERE seq = ?", (seq,)
        )
        assert core.prune(time.time() + 10) == 0  # the page still needs its text
        core.acknowledge("freezer-3", PERSON, "mqtt", time.time())
        core.mark_page_statuses_published([seq])
        assert core.prune(time.time() + 10) == 1
        assert core.db.execute("SELECT COUNT(*) FROM pages").fetchone()[0] == 0
    finally:
        core.close()


def test_a_refused_request_starts_no_page(tmp_path: Path) -> None:
    core = SqliteCore(str(tmp_path / "journal.db"))
    try:
        guarded = Admission(Limits(deny=(PERSON,)), StormRule(0, 60.0), (600.0, 600.0), 5)
        assert isinstance(guarded.admit(core, started(Page(60, 3))), Refused)
        assert core.next_page_at() is None
    finally:
        core.close()


# -- as a user meets it ----------------------------------------------------------------------------------------


def page_state(journal: Path) -> str | None:
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(journal, timeout=1)) as db:
        row = db.execute("SELECT state FROM pages").fetchone()
        return None if row is None else str(row[0])
    return None


def texts_to(simulator: SimulatorHandle, person: str) -> list[dict[str, Any]]:
    return [entry for entry in simulator.created("Messages") if entry["params"]["To"] == person]


async def test_a_page_acknowledged_by_a_reply_after_its_second_send_sends_two_across_a_kill(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, tmp_path: Path, spawned: list[ConnectorProcess]
) -> None:
    journal, log = tmp_path / "journal.db", tmp_path / "connector.log"
    env = {
        "TWILIO_CONNECTOR_PAGING": "true",
        "TWILIO_CONNECTOR_REPLIES": "true",
        "TWILIO_CONNECTOR_REPLY_POLL_INTERVAL": "0.2",
    }
    first = ConnectorProcess(broker, simulator, journal, log, **env)
    spawned.append(first)
    await first.ready()
    await probe.publish("twilio/txt", page_request("freezer-3", every_s=3, times=3))
    assert (await probe.status_of("freezer-3"))["response"]["status"] == "success"
    first.process.kill()  # kill -9 with the page open: the journal alone remembers it
    first.process.wait(10)
    second = ConnectorProcess(broker, simulator, journal, log, **env)
    spawned.append(second)
    await second.ready()
    repeat = await probe.first(lambda status: status.get("update") == "repeat")
    repeated_at = time.monotonic()
    simulator.sim.receive(PERSON, DEFAULT_FROM, "ACK")
    ack = await probe.first(lambda status: status.get("update") == "acknowledged")
    assert page_state(journal) == "acknowledged"
    # Past when the third send would have gone: nothing more (the page is over in the journal).
    await asyncio.sleep(max(0.0, repeated_at + 4.0 - time.monotonic()))
    everything = await probe.settle()
    assert (repeat["id"], repeat["repeat"], repeat["response"]["status"]) == ("freezer-3", 2, "success")
    assert ack["response"]["payload"] == {"acknowledged_by": PERSON, "via": "reply", "sends": 2}
    texts = texts_to(simulator, PERSON)
    assert len(texts) == 2 and {text["params"]["Body"] for text in texts} == {"freezer 3 at -2 C"}
    # (The first status may come twice: the kill may fall between its publish and the record of it.)
    assert list(dict.fromkeys(status.get("update") for status in everything)) == [None, "repeat", "acknowledged"]
    assert len([status for status in everything if status.get("update") == "repeat"]) == 1


async def test_an_unacknowledged_page_ends_with_the_call(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, tmp_path: Path
) -> None:
    settings = make_settings(broker, simulator, paging=True, journal_path=str(tmp_path / "journal.db"))
    running = await RunningConnector(settings).wait_ready()
    try:
        await probe.publish("twilio/txt", page_request("freezer-3", every_s=1, times=2, then_call=True))
        called = await probe.first(lambda status: status.get("update") == "call")
        everything = await probe.settle()
    finally:
        await running.stop()
    assert called["response"]["status"] == "success" and called["response"]["payload"]["messages"]["sid"].startswith(
        "CA"
    )
    assert [status.get("update") for status in everything] == [None, "repeat", "call"]
    assert len(texts_to(simulator, PERSON)) == 2
    [made] = simulator.created("Calls")
    assert made["params"]["To"] == PERSON and "<Say>freezer 3 at -2 C</Say>" in made["params"]["Twiml"]
    assert page_state(tmp_path / "journal.db") == "called"
    listed = cli("journal", "--journal-path", str(tmp_path / "journal.db"), "pages")
    [page] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert listed.returncode == 0 and page["state"] == "called" and page["ended_at"].endswith("Z")
    assert (page["id"], page["phone_number"], page["sends"], page["times"]) == ("freezer-3", PERSON, 2, 2)


async def test_an_acknowledgement_over_mqtt_ends_the_page(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    settings = make_settings(broker, simulator, paging=True)
    running = await RunningConnector(settings).wait_ready()
    try:
        await probe.publish("twilio/txt", page_request("freezer-3", every_s=2, times=3))
        await probe.status_of("freezer-3")
        await probe.publish("twilio/message/ack", b"not json")  # ignored, and the connector goes on
        await probe.publish("twilio/message/ack", {"id": "freezer-3", "by": "dashboard"})
        ack = await probe.first(lambda status: status.get("update") == "acknowledged")
        await asyncio.sleep(3)  # past the second send's due time: nothing more
        everything = await probe.settle()
    finally:
        await running.stop()
    assert ack["response"]["payload"] == {"acknowledged_by": "dashboard", "via": "mqtt", "sends": 1}
    assert len(texts_to(simulator, PERSON)) == 1
    assert [status.get("update") for status in everything] == [None, "acknowledged"]


@pytest.mark.parametrize(("outcome", "acknowledged"), [("completed", True), ("busy", False)])
async def test_a_call_page_is_acknowledged_by_a_call_answered(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, outcome: str, acknowledged: bool
) -> None:
    simulator.sim.delivery = {"Calls": outcome, "call_seconds": 30}
    settings = make_settings(broker, simulator, paging=True, delivery_tracking="poll", poll_interval=0.1)
    running = await RunningConnector(settings).wait_ready()
    try:
        await probe.publish("twilio/call", call("door", to=PERSON, until_acknowledged={"every_s": 1, "times": 2}))
        end = await probe.first(lambda status: status.get("update") in ("acknowledged", "unacknowledged"))
        everything = await probe.settle()
    finally:
        await running.stop()
    calls = simulator.created("Calls")
    if acknowledged:
        assert end["response"]["payload"] == {"acknowledged_by": PERSON, "via": "call", "sends": 1}
        assert len(calls) == 1
    else:
        assert end["update"] == "unacknowledged" and end["response"]["payload"] == {"sends": 2}
        assert len(calls) == 2
        assert [s.get("repeat") for s in everything if s.get("update") is None or s.get("update") == "repeat"] == [
            None,
            2,
        ]


async def test_with_paging_off_a_page_is_sent_once(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    running = await RunningConnector(make_settings(broker, simulator)).wait_ready()
    try:
        await probe.publish("twilio/txt", page_request("freezer-3", every_s=1, times=3))
        status = await probe.status_of("freezer-3")
        await asyncio.sleep(1.5)  # past when a second send would have gone
        everything = await probe.settle()
    finally:
        await running.stop()
    assert status["response"]["status"] == "success" and len(everything) == 1
    assert len(texts_to(simulator, PERSON)) == 1


def test_a_page_s_later_sends_count_against_the_guards_like_any_request(tmp_path: Path) -> None:
    """A page is no way around a rate cap: its second text, past the recipient's cap, is refused in words, and its
    status says which send it was."""
    core = SqliteCore(str(tmp_path / "journal.db"))
    try:
        capped = Admission(Limits(per_recipient_per_minute=1), StormRule(0, 60.0), (600.0, 600.0), 5)
        first = capped.admit(core, started(Page(1, 3)))
        assert isinstance(first, Accepted)
        [page] = core.pages_due(time.time() + 2, 10)
        step = next_step(page, time.time())
        assert core.page_step(page, step, time.time())
        refused = capped.follow_up(core, step.send)  # type: ignore[arg-type]
        assert isinstance(refused, Refused) and "already got 1 in the last minute" in refused.reason
        status = orjson.loads(
            core.db.execute("SELECT status FROM requests WHERE seq = ?", (refused.seq,)).fetchone()[0]
        )
        assert (status["id"], status["update"], status["repeat"]) == ("freezer-3", "repeat", 2)
        assert status["response"]["error"] == "Rejected"
    finally:
        core.close()


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
async def test_two_connectors_on_one_journal_take_a_page_s_step_once(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two connectors read the same due page and step it at once: one send, whatever the journal; after an
    acknowledgement through either, neither steps it."""
    url = str(tmp_path / "journal.db") if where == "sqlite" else request.getfixturevalue("pg_url")
    first = await open_journal(url)
    second = await open_journal(url) if where == "postgres" else first  # SQLite: one connector per file
    try:
        guards = admission()
        assert isinstance(await first.admit(guards, started(Page(1, 3))), Accepted)
        [page] = await first.pages_due(time.time() + 2, 10)
        step = next_step(page, time.time())
        taken = await asyncio.gather(*(journal.page_step(guards, page, step) for journal in (first, second)))
        assert sorted(done for done, _ in taken) == [False, True]
        [page] = await second.pages_due(time.time() + 10, 10)
        assert await first.acknowledge("freezer-3", PERSON, "mqtt") == 1
        assert await second.page_step(guards, page, next_step(page, time.time())) == (False, None)
        rows = first.core.db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        assert rows == 2  # the first text and one repeat: none twice
    finally:
        await first.close()
        if second is not first:
            await second.close()
