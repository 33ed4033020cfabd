"""Faults a real Mosquitto produces: restarts with statuses in flight (with and without persistence, several in a
row), an ACL that refuses our statuses and later allows them, an ACL that hides one input topic, credentials that
are wrong at start-up or stop working later, and a broker that allows one message in flight at a time."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from conftest import (
    Broker,
    ConnectorProcess,
    MqttProbe,
    RunningConnector,
    SimulatorHandle,
    call,
    free_port,
    make_settings,
    sms,
    until_ready_is,
    wait_until,
)
from twilio_connector.mqtt import session as transport
from twilio_connector.settings.secrets import Secret

PASSWORD = "s3cret-pass"


def journal_counts(path: Path) -> tuple[int, int, int]:
    """(requests, finished, statuses not yet acknowledged by the broker) in a journal, read while it runs."""
    with sqlite3.connect(path) as db:
        total, finished, unpublished = db.execute(
            "SELECT count(*), count(status), coalesce(sum(status IS NOT NULL AND status_published = 0), 0) "
            "FROM requests"
        ).fetchone()
    return int(total), int(finished), int(unpublished)


async def metric(port: int, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def secured(broker: Broker, acl: str) -> None:
    """Mosquitto with a password file (user `connector`) and `acl` for that user; anonymous clients (the tests'
    probe) may do anything."""
    passwords = broker.directory / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "connector", PASSWORD], check=True)
    set_acl(broker, acl)
    broker.extra_config = f"password_file {passwords}\nacl_file {broker.directory / 'acl'}\n"


def set_acl(broker: Broker, acl: str) -> None:
    (broker.directory / "acl").write_text(f"topic readwrite #\n\nuser connector\n{acl}\n")


@contextlib.asynccontextmanager
async def probing(broker: Broker) -> AsyncIterator[MqttProbe]:
    """A probe connected to the broker as it is now (the `probe` fixture connects before a test reconfigures)."""
    probe = MqttProbe(broker.url)
    await probe.start()
    try:
        yield probe
    finally:
        await probe.stop()


def reload(broker: Broker) -> None:
    assert broker.process is not None
    broker.process.send_signal(signal.SIGHUP)  # Mosquitto reads its password and ACL files again


@pytest.mark.parametrize("persistence", [True, False], ids=["persistent", "in-memory"])
async def test_broker_crashes_with_statuses_in_flight_lose_and_double_nothing(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path, persistence: bool
) -> None:
    """Three crashes in a row, each while texts are being sent and their statuses published to a broker that has
    stopped answering (frozen, then killed). In memory (Mosquitto's default) the broker forgets our session each
    time; persistent (saved every second) it comes back with a slightly old one and may deliver again requests
    we had acknowledged. Either way the statuses it never acknowledged are sent again on the new session, packet
    ids are not used up by the ones it forgot, and no text is sent twice."""
    broker.stop()
    broker.persistence = persistence
    broker.extra_config = "autosave_interval 1\n" if persistence else ""
    broker.start()
    simulator.sim.latency = 0.05
    journal, port = tmp_path / "journal.db", free_port()
    settings = make_settings(
        broker, simulator, journal_path=str(journal), max_in_flight=8, metrics_listen=f"127.0.0.1:{port}"
    )
    running = await RunningConnector(settings).wait_ready()
    try:
        for round_ in range(3):
            async with probing(broker) as probe:
                for n in range(40):
                    await probe.publish("twilio/txt", sms(f"r{round_}-{n}", message=f"text r{round_}-{n}"))
                await wait_until(lambda round_=round_: journal_counts(journal)[0] == 40 * (round_ + 1))
            assert len(simulator.created()) < 40 * (round_ + 1)  # still sending
            broker.freeze()  # statuses from here on go out and are never acknowledged
            await wait_until(lambda round_=round_: len(simulator.created()) == 40 * (round_ + 1))
            assert journal_counts(journal)[2] > 0
            broker.kill()
            broker.start()
            await until_ready_is(port, 200, timeout=40)
        await wait_until(lambda: journal_counts(journal)[1:] == (120, 0), timeout=60)
        async with probing(broker) as probe:  # and the way through still works end to end
            await probe.publish("twilio/txt", sms("after", message="text after"))
            assert (await probe.status_of("after"))["response"]["status"] == "success"
    finally:
        await running.stop()
    bodies = sorted(entry["params"]["Body"] for entry in simulator.created())
    expected = sorted([f"text r{r}-{n}" for r in range(3) for n in range(40)] + ["text after"])
    assert bodies == expected  # every request sent, none twice


async def test_an_acl_refusing_statuses_holds_them_until_it_allows_them(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mosquitto answers a publish its ACL denies with PUBACK 0x87 (MQTT 5): the status is not published, so it
    is counted, logged, kept, and published again with backoff; once the ACL allows it, it arrives."""
    broker.stop()
    secured(broker, "topic read twilio/txt\ntopic read twilio/call")
    broker.start()
    journal, port = tmp_path / "journal.db", free_port()
    settings = make_settings(
        broker,
        simulator,
        journal_path=str(journal),
        metrics_listen=f"127.0.0.1:{port}",
        mqtt_username="connector",
        mqtt_password=Secret(PASSWORD),
    )
    running = await RunningConnector(settings).wait_ready()
    try:
        async with probing(broker) as probe:
            await probe.publish("twilio/txt", sms("held"))
            await wait_until(lambda: "(Not authorized); publishing again" in caplog.text, timeout=10)
            assert await metric(port, 'twilio_connector_broker_faults_total{kind="publish_refused"}') >= 1
            assert journal_counts(journal) == (1, 1, 1)  # sent and finished; its status not published
            set_acl(broker, "topic read twilio/txt\ntopic read twilio/call\ntopic write twilio/message/status")
            reload(broker)
            assert (await probe.status_of("held", timeout=30))["response"]["status"] == "success"
            await wait_until(lambda: journal_counts(journal) == (1, 1, 0))
    finally:
        await running.stop()
    assert len(simulator.created()) == 1


async def test_an_acl_hiding_one_input_topic_leaves_the_other_served(
    broker: Broker, simulator: SimulatorHandle
) -> None:
    """Mosquitto grants a subscription its ACL denies and delivers nothing on it (a broker that refuses the
    SUBACK instead is reported: test_broker_faults.py). Texts still flow; calls wait at the devices' side."""
    broker.stop()
    secured(broker, "topic read twilio/txt\ntopic write twilio/message/status")
    broker.start()
    settings = make_settings(broker, simulator, mqtt_username="connector", mqtt_password=Secret(PASSWORD))
    running = await RunningConnector(settings).wait_ready()
    try:
        async with probing(broker) as probe:
            await probe.publish("twilio/call", call("c"))
            await probe.publish("twilio/txt", sms("t"))
            assert (await probe.status_of("t"))["response"]["status"] == "success"
            assert not any(s["id"] == "c" for s in await probe.settle())
        assert [entry["resource"] for entry in simulator.created()] == ["Messages"]
    finally:
        await running.stop()


async def test_wrong_credentials_at_start_exit_non_zero_with_one_line(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    broker.stop()
    secured(broker, "topic read twilio/#")
    broker.start()
    log = tmp_path / "connector.log"
    log.write_text("run:\n")
    connector = ConnectorProcess(
        broker,
        simulator,
        tmp_path / "journal.db",
        log,
        TWILIO_CONNECTOR_MQTT_USERNAME="connector",
        MQTT_PASSWORD="wrong-SECRET",
    )
    code = await asyncio.get_running_loop().run_in_executor(None, connector.process.wait, 30)
    assert code == 1
    lines = log.read_text().strip().splitlines()
    assert "the broker refused the connection (Not authorized)" in lines[-1]
    assert "Traceback" not in log.read_text() and "SECRET" not in log.read_text()


async def test_a_password_changed_under_a_running_connector(broker: Broker, simulator: SimulatorHandle) -> None:
    """The broker starts refusing our credentials: the connector keeps trying with backoff, says why in /readyz
    and counts it; once the password is right again it serves without a restart."""
    broker.stop()
    secured(broker, "topic read twilio/#\ntopic write twilio/message/status")
    broker.start()
    port = free_port()
    settings = make_settings(
        broker, simulator, metrics_listen=f"127.0.0.1:{port}", mqtt_username="connector", mqtt_password=Secret(PASSWORD)
    )
    running = await RunningConnector(settings).wait_ready()
    try:
        passwords = broker.directory / "passwords"
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), "connector", "rotated"], check=True)
        broker.stop()  # a reload keeps connected clients; a restart makes us log in again
        broker.start()
        document = await until_ready_is(port, 503, problem="refused the connection")
        assert "the broker refused the connection (Not authorized)" in str(document["problems"])
        assert await metric(port, 'twilio_connector_broker_faults_total{kind="connect_refused"}') >= 1
        async with probing(broker) as probe:
            await probe.publish("twilio/txt", sms("waiting"))
            subprocess.run(["mosquitto_passwd", "-b", str(passwords), "connector", PASSWORD], check=True)
            reload(broker)
            await until_ready_is(port, 200, timeout=40)
            assert (await probe.status_of("waiting", timeout=30))["response"]["status"] == "success"
    finally:
        await running.stop()


async def test_a_broker_allowing_one_message_in_flight(broker: Broker, simulator: SimulatorHandle) -> None:
    """`max_inflight_messages 1`: Mosquitto hands us one request at a time and states Receive Maximum 1 for our
    statuses; everything still gets through, once."""
    broker.stop()
    broker.extra_config = "max_inflight_messages 1\n"
    broker.start()
    running = await RunningConnector(make_settings(broker, simulator)).wait_ready()
    try:
        async with probing(broker) as probe:
            for n in range(60):
                await probe.publish("twilio/txt", sms(f"one-{n}", message=f"text {n}"))
            statuses = await probe.wait_for_ids({f"one-{n}" for n in range(60)})
            assert all(s["response"]["status"] == "success" for s in statuses)
    finally:
        await running.stop()
    assert sorted(entry["params"]["Body"] for entry in simulator.created()) == sorted(f"text {n}" for n in range(60))


async def test_a_resumed_backlog_drains_on_one_connection(
    broker: Broker, simulator: SimulatorHandle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Mosquitto resuming our session with a backlog writes it to us ahead of its PUBACKs for our statuses: while
    we are still reading it, a status waiting for its PUBACK must not be taken for a dead broker. (Before: the
    connection was reopened in the middle of the drain.)"""
    # Far shorter than the drain (10-20 s), long enough for a PUBACK on a loaded machine (1 s was not, once).
    monkeypatch.setattr(transport, "PUBLISH_TIMEOUT", 3.0)
    count = 20_000
    settings = make_settings(broker, simulator, client_id="drain")
    await (await RunningConnector(settings).wait_ready()).stop()  # the session now queues for us
    probe = MqttProbe(broker.url)
    await probe.start()
    for n in range(count):
        await probe.publish("twilio/txt", sms(f"d{n}"))
    running = await RunningConnector(settings).wait_ready()
    try:
        statuses = await probe.wait_for(count, timeout=120)
    finally:
        await running.stop()
        await probe.stop()
    assert {s["id"] for s in statuses} == {f"d{n}" for n in range(count)}  # one each: none sent again
    assert len(simulator.created()) == count
    assert "acknowledged no status" not in caplog.text
