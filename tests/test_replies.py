"""Replies onto MQTT without a public endpoint (engine/replies.py): a text someone sends to the connector's number is
polled from Twilio's list and published once on the reply topic, with the request it answers; a restart neither
publishes it again nor misses one sent meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from conftest import (
    DEFAULT_AUTH_TOKEN,
    DEFAULT_FROM,
    Broker,
    ConnectorProcess,
    MqttProbe,
    RunningConnector,
    SimulatorHandle,
    cli,
    free_port,
    make_settings,
    sms,
)
from twilio_connector.domain.optout import opt_out_of
from twilio_connector.domain.records import ReplyRecord
from twilio_connector.domain.signature import signature
from twilio_connector.engine.replies import FAST, FAST_FOR, ReplyOptions, ReplyPoller
from twilio_connector.journal.opening import open_journal
from twilio_connector.journal.sqlite import SqliteCore
from twilio_connector.ops.callbacks import EMPTY_TWIML
from twilio_connector.settings.config import ConfigError, load_settings

PERSON, STRANGER = "+15557654321", "+15557650000"


async def test_a_reply_is_published_once_with_the_request_it_answers_across_a_restart(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, tmp_path: Path
) -> None:
    settings = make_settings(
        broker, simulator, replies=True, reply_poll_interval=0.1, journal_path=str(tmp_path / "journal.db")
    )
    replies = MqttProbe(broker.url, status_topic=settings.reply_topic)
    await replies.start()
    running = await RunningConnector(settings).wait_ready()
    try:
        await probe.publish("twilio/txt", sms("freezer-3", to=PERSON, message="freezer 3 at -2 C"))
        assert (await probe.status_of("freezer-3"))["response"]["status"] == "success"
        simulator.sim.receive(PERSON, DEFAULT_FROM, "ACK")
        simulator.sim.receive(STRANGER, DEFAULT_FROM, "who is this?", media=["https://cam.example/door.jpg"])
        first = await replies.wait_for(2)
        await running.stop()
        simulator.sim.receive(PERSON, DEFAULT_FROM, "on my way")  # while the connector is down
        running = await RunningConnector(settings).wait_ready()
        everything = await replies.wait_for(3)
    finally:
        await running.stop()
        await replies.stop()
    by_body = {reply["body"]: reply for reply in everything}
    assert by_body["ACK"]["in_reply_to"] == "freezer-3" and by_body["ACK"]["from_number"] == PERSON
    assert by_body["ACK"]["to_number"] == DEFAULT_FROM and by_body["ACK"]["sid"].startswith("SM")
    assert by_body["who is this?"]["in_reply_to"] is None  # nobody texted the stranger
    [picture] = by_body["who is this?"]["media_urls"]  # where Twilio keeps it: its Media resource, without .json
    assert picture.startswith(simulator.url + "/2010-04-01/Accounts/") and "/Media/ME" in picture
    assert by_body["ACK"]["media_urls"] == [] and by_body["who is this?"]["num_media"] == 1
    assert by_body["on my way"]["in_reply_to"] == "freezer-3"
    assert len(everything) == 3 and len({reply["sid"] for reply in everything}) == 3, everything  # none twice
    assert {reply["sid"] for reply in first} <= {reply["sid"] for reply in everything}


async def test_stop_refuses_further_texts_without_asking_twilio_until_start(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.db"
    settings = make_settings(broker, simulator, replies=True, reply_poll_interval=0.1, journal_path=str(journal))
    replies = MqttProbe(broker.url, status_topic=settings.reply_topic)
    await replies.start()
    running = await RunningConnector(settings).wait_ready()
    try:
        await probe.publish("twilio/txt", sms("first", to=PERSON))
        assert (await probe.status_of("first"))["response"]["status"] == "success"
        simulator.sim.receive(PERSON, DEFAULT_FROM, "Stop")
        [stop] = await replies.wait_for(1)
        await probe.publish("twilio/txt", sms("refused", to=PERSON))
        refused = (await probe.status_of("refused"))["response"]
        command = ("journal", "--journal-path", str(journal), "opt-outs")
        listed = await asyncio.get_running_loop().run_in_executor(None, lambda: cli(*command))
        simulator.sim.receive(PERSON, DEFAULT_FROM, "START")
        await replies.wait_for(2)
        await probe.publish("twilio/txt", sms("welcome-back", to=PERSON))
        assert (await probe.status_of("welcome-back"))["response"]["status"] == "success"
    finally:
        await running.stop()
        await replies.stop()
    assert stop["opt_out"] is True and stop["in_reply_to"] == "first"
    assert (refused["status"], refused["twilio_error_code"]) == ("fail", 21610)
    assert [entry["params"]["To"] for entry in simulator.created()] == [PERSON, PERSON]  # none for "refused"
    assert json.loads(listed.stdout)["phone_number"] == PERSON and listed.returncode == 0


@pytest.mark.parametrize(
    ("body", "opt_out"),
    [("STOP", True), (" stop. ", True), ("Unsubscribe", True), ("START", False), ("yes", False),
     ("HELP", None), ("stop the alarm", None), ("ACK", None)],
)  # fmt: skip
def test_twilio_s_default_keywords(body: str, opt_out: bool | None) -> None:
    assert opt_out_of(body) is opt_out


async def test_a_reply_taken_before_a_kill_is_published_once_after_the_restart(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path, spawned: list[ConnectorProcess]
) -> None:
    """kill -9 between the poll and the publish: the broker is down, so the reply waits in the journal; the
    connector dies; the next one publishes it, once."""
    journal, log = tmp_path / "journal.db", tmp_path / "connector.log"
    env = {"TWILIO_CONNECTOR_REPLIES": "true", "TWILIO_CONNECTOR_REPLY_POLL_INTERVAL": "0.2"}
    first = ConnectorProcess(broker, simulator, journal, log, **env)
    spawned.append(first)
    await first.ready()
    broker.stop()
    simulator.sim.receive(PERSON, DEFAULT_FROM, "ACK")
    deadline = asyncio.get_running_loop().time() + 30
    while not taken(journal):
        assert asyncio.get_running_loop().time() < deadline, log.read_text()[-2000:]
        await asyncio.sleep(0.05)
    first.process.kill()
    first.process.wait(10)
    broker.start()
    replies = MqttProbe(broker.url, status_topic="twilio/message/reply")
    await replies.start()
    try:
        second = ConnectorProcess(broker, simulator, journal, log, **env)
        spawned.append(second)
        await second.ready()
        simulator.sim.receive(PERSON, DEFAULT_FROM, "on my way")
        everything = await replies.wait_for(2)
    finally:
        await replies.stop()
    assert sorted(reply["body"] for reply in everything) == ["ACK", "on my way"], everything


def taken(journal: Path) -> bool:
    """Whether the connector has taken a reply into its journal (read beside it: WAL lets a reader in)."""
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(journal, timeout=1)) as db:
        return db.execute("SELECT COUNT(*) FROM replies").fetchone()[0] > 0
    return False


def test_replies_are_polled_fast_for_two_minutes_after_a_send() -> None:
    now = [1000.0]
    options = ReplyOptions((), DEFAULT_FROM, interval=15.0, window=86400.0)
    poller = ReplyPoller(None, None, options, wake=lambda: None, clock=lambda: now[0])  # type: ignore[arg-type]
    assert poller.next_wait() == 15.0  # idle
    poller.sent()
    assert poller.next_wait() == FAST
    now[0] += FAST_FOR + 1
    assert poller.next_wait() == 15.0


def test_a_number_is_read_back_from_when_it_was_first_polled_until_it_has_a_reply(tmp_path: Path) -> None:
    """So that a connector down for an hour misses no reply to a number that never had one (the read-back margin
    alone would cover five minutes)."""
    core = SqliteCore(str(tmp_path / "journal.db"))
    try:
        assert core.reply_horizon(DEFAULT_FROM) is None  # never polled
        assert core.first_polled(DEFAULT_FROM, 100.0) == 100.0  # first polled now
        assert core.first_polled(DEFAULT_FROM, 4000.0) == 100.0  # and still, an hour later
        assert core.reply_horizon(DEFAULT_FROM) == 100.0
        document = {"from_number": PERSON, "to_number": DEFAULT_FROM, "body": "ACK"}
        core.record_reply(ReplyRecord("SM1", DEFAULT_FROM, PERSON, 150.0, json.dumps(document).encode()))
        assert core.reply_horizon(DEFAULT_FROM) == 150.0  # then from the newest reply
    finally:
        core.close()


async def test_a_reply_comes_at_once_through_twilio_s_webhook_and_is_taken_once(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    """Twilio posts the text to the numbers' messaging webhook (signed); with polls off it alone brings replies.
    It acknowledges a page; a replay of the same post publishes nothing more; a forged one is refused."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/twilio/inbound"
    simulator.sim.inbound_webhook = url
    settings = make_settings(
        broker,
        simulator,
        replies=True,
        paging=True,
        reply_poll_interval=0,
        reply_webhook_url=url,
        callback_listen=f"127.0.0.1:{port}",
    )
    replies = MqttProbe(broker.url, status_topic=settings.reply_topic)
    await replies.start()
    running = await RunningConnector(settings).wait_ready()
    try:
        await probe.publish("twilio/txt", sms("door-7", to=PERSON, until_acknowledged={"every_s": 600}))
        await probe.status_of("door-7")
        sent = simulator.sim.receive(PERSON, DEFAULT_FROM, "on it", media=["https://cam.example/door.jpg"])
        [reply] = await replies.wait_for(1)
        ack = await probe.first(lambda status: status.get("update") == "acknowledged")
        form = {"MessageSid": sent["sid"], "From": PERSON, "To": DEFAULT_FROM, "Body": "on it", "NumMedia": "0"}
        signed = {"X-Twilio-Signature": signature(DEFAULT_AUTH_TOKEN, url, form)}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=form, headers=signed) as again:
                replayed = (again.status, await again.text())
            async with http.post(url, data=form | {"Body": "forged"}, headers=signed) as forged:
                refused = forged.status
        everything = await replies.settle()
    finally:
        await running.stop()
        await replies.stop()
    assert (reply["body"], reply["in_reply_to"], reply["acknowledges"]) == ("on it", "door-7", "door-7")
    assert reply["media_urls"] == ["https://cam.example/door.jpg"] and reply["sid"] == sent["sid"]
    assert ack["response"]["payload"]["via"] == "reply"
    assert replayed == (200, EMPTY_TWIML) and refused == 403
    assert len(everything) == 1  # the replay was known by its SID


def test_polls_off_need_the_webhook() -> None:
    with pytest.raises(ConfigError, match="reply_poll_interval = 0 needs reply_webhook_url"):
        load_settings(env={"TWILIO_CONNECTOR_REPLIES": "true", "TWILIO_CONNECTOR_REPLY_POLL_INTERVAL": "0"})
    with pytest.raises(ConfigError, match="reply_webhook_url needs replies = true"):
        load_settings(env={"TWILIO_CONNECTOR_REPLY_WEBHOOK_URL": "https://edge.example/twilio/inbound"})


def test_a_reply_is_matched_to_a_request_a_messaging_service_sent(tmp_path: Path) -> None:
    core = SqliteCore(str(tmp_path / "journal.db"))
    try:
        core.db.execute(
            "INSERT INTO requests (dedupe_key, request_id, kind, to_number, from_number, name, content, retries, "
            "state, next_attempt_at, accepted_at, updated_at) "
            "VALUES (x'01', 'via-service', 'txt', ?, '', '', 'x', 0, 'sent', 0, 100, 100)",
            (PERSON,),
        )
        assert core.in_reply_to(PERSON, DEFAULT_FROM, 0.0) == "via-service"
        assert core.in_reply_to(STRANGER, DEFAULT_FROM, 0.0) is None
    finally:
        core.close()


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
async def test_the_replies_a_poll_already_took_are_found_in_one_read(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = str(tmp_path / "journal.db") if where == "sqlite" else request.getfixturevalue("pg_url")
    journal = await open_journal(url)
    try:
        document = {"from_number": PERSON, "to_number": DEFAULT_FROM, "body": "ACK"}
        await journal.record_replies([ReplyRecord("SM1", DEFAULT_FROM, PERSON, 150.0, json.dumps(document).encode())])
        assert await journal.known_replies(["SM1", "SM2"]) == {"SM1"}
        assert await journal.known_replies([]) == set()
        assert await journal.known_replies([f"SM{n}" for n in range(1000)]) == {"SM1"}  # a walk of 20 pages
    finally:
        await journal.close()
