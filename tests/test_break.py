"""What trying to break the connector found (issue 21), each as a test against real parts: Mosquitto, the
simulator over real sockets, the connector's own process or event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import (
    CLI,
    Broker,
    ConnectorProcess,
    MqttProbe,
    RunningConnector,
    SimulatorHandle,
    accept,
    free_port,
    make_settings,
    sms,
    wait_until,
)
from twilio_connector.domain.admission import Admission
from twilio_connector.domain.contract import Kind, Notification
from twilio_connector.domain.policy import Limits
from twilio_connector.domain.records import dedupe_key, key_of
from twilio_connector.domain.storms import StormRule
from twilio_connector.journal.front import Journal
from twilio_connector.journal.opening import open_journal
from twilio_connector.journal.schema import MIGRATIONS
from twilio_connector.journal.sqlite import SqliteCore
from twilio_connector.settings.config import resolve_credentials
from twilio_connector.twilio import reauth
from twilio_connector.twilio.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Fault


@pytest.mark.usefixtures("connector")
async def test_requests_that_differ_only_where_a_nul_falls_are_two_requests(
    probe: MqttProbe, simulator: SimulatorHandle
) -> None:
    """Fields joined with NUL made `b\\0c`+`d` and `b`+`c\\0d` one dedupe key: the second got no status."""
    first, second = sms("n1", message="d"), sms("n1", message="c\x00d")
    first["request"]["recipient"]["name"] = "b\x00c"
    second["request"]["recipient"]["name"] = "b"
    await probe.publish("twilio/txt", first)
    await probe.publish("twilio/txt", second)
    statuses = await probe.wait_for(2)
    assert [s["response"]["status"] for s in statuses] == ["success", "success"]
    assert sorted(sent["params"]["Body"] for sent in simulator.created("Messages")) == ["c\x00d", "d"]


def test_keys_without_a_nul_are_what_they_were() -> None:
    """An upgrade keeps every ordinary journal's keys: a redelivery of a request recorded before it still matches."""

    note = Notification("a1", Kind.SMS, "+12345000000", "+15005550006", "Darla", "hot", 2)
    joined = "\x00".join(("txt", "a1", "+12345000000", "+15005550006", "Darla", "hot", "{}")).encode()
    assert dedupe_key(note, "{}") == hashlib.blake2b(joined, digest_size=16).digest()
    assert key_of(("sms", "b\x00c", "d")) != key_of(("sms", "b", "c\x00d"))
    assert key_of(("sms", "b\x00", "c")) != key_of(("sms", "b", "\x00c"))


def test_a_journal_of_the_previous_version_is_keyed_again(tmp_path: Path) -> None:
    """A request holding a NUL, recorded under the old key, is found by its new one after the upgrade."""
    path = str(tmp_path / "j.db")
    core = SqliteCore(path)
    note = Notification("a1", Kind.SMS, "+12345000000", "+15005550006", "b\x00c", "d", 2)
    core.db.execute("BEGIN")
    seq = accept(core, note, 1e12, 1e12)
    old = "\x00".join(("txt", "a1", "+12345000000", "+15005550006", "b\x00c", "d", "{}")).encode()

    core.db.execute(
        "UPDATE requests SET dedupe_key = ? WHERE seq = ?", (hashlib.blake2b(old, digest_size=16).digest(), seq)
    )
    core.db.execute("COMMIT")
    core.db.execute("PRAGMA user_version = 0")
    core.close()
    reopened = SqliteCore(path)
    try:
        assert reopened.db.execute("PRAGMA user_version").fetchone()[0] == len(
            MIGRATIONS
        )  # the newest (it was 1, before one list for both databases)
        _, duplicate = reopened.duplicate(note, 1e12, 1e12)
        assert duplicate is not None and duplicate.seq == seq
    finally:
        reopened.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def cli(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID, "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN}
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_retry_goes_through_the_guards_again(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, tmp_path: Path
) -> None:
    """`journal retry` on a request the guards refused sent it to Twilio and said so. The running connector now
    admits a retry as it would a new request: refused, it stays failed, and only `--force` sends it."""
    journal = str(tmp_path / "journal.db")
    running = await RunningConnector(make_settings(broker, simulator, journal_path=journal)).wait_ready()
    try:
        await probe.publish("twilio/txt", sms("premium", to="+19005550100"))
        assert (await probe.status_of("premium"))["response"]["error"] == "Rejected"
        code, out, _ = await cli("journal", "--journal-path", journal, "list", "--state", "failed")
        seq = json.loads(out.splitlines()[0])["seq"]
        code, out, err = await cli("journal", "--journal-path", journal, "retry", str(seq))
        assert code == 1 and "refused again" in err and "premium-rate" in err and "--force" in err, (out, err)
        assert simulator.created() == []
        code, out, err = await cli("journal", "--journal-path", journal, "retry", str(seq))
        assert code == 1 and "refused again" in err  # still failed, and still refused
        code, out, err = await cli("journal", "--journal-path", journal, "retry", "--force", str(seq))
        assert code == 0 and "--force" in err, (out, err)
        await wait_until(lambda: len(simulator.created()) == 1, timeout=10)
        assert simulator.created()[0]["params"]["To"] == "+19005550100"
        assert len(await probe.wait_for(2)) >= 2  # the refusal's status, then the forced send's
    finally:
        await running.stop()


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, to fill."""
    where = tmp_path / "volume"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=False, capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(volume: Path) -> Path:
    """Fill `volume` to the last byte; returns the file that does it."""
    filler = volume / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(descriptor, b"\0" * size):
                    pass
    finally:
        os.close(descriptor)
    with pytest.raises(OSError) as full:
        (volume / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


async def test_a_full_journal_volume_waits_instead_of_spinning(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, small_volume: Path, tmp_path: Path, spawned: list
) -> None:
    """Requests waiting for a retry when the journal's volume fills up: an attempt that cannot be recorded as
    begun was handed straight back and tried again at once (44,577 log lines in 6 s at 86 % of a core). Now the
    dispatcher backs off like intake (0.5 s doubling to 10 s), the journal says once that it cannot be written,
    and the requests go out once it can."""
    log = tmp_path / "connector.log"
    connector = ConnectorProcess(broker, simulator, small_volume / "journal.db", log)
    spawned.append(connector)
    await connector.ready()
    simulator.sim.faults.append(Fault(status=429, code=20429, message="Too Many Requests", count=5, retry_after=2))
    for n in range(5):
        await probe.publish("twilio/txt", sms(f"full-{n}", to=f"+1234500000{n}"))
    await wait_until(lambda: len(simulator.created()) == 5, timeout=10)  # each throttled: retried in 2 s
    filler = fill(small_volume)
    before = len(log.read_text().splitlines())
    cpu_before = _cpu_seconds(connector.process.pid)
    await asyncio.sleep(4)  # what the connector does meanwhile is what is measured: nothing to await
    lines = log.read_text().splitlines()[before:]
    cpu = _cpu_seconds(connector.process.pid) - cpu_before
    assert len(lines) < 15, "\n".join(lines[:40])
    assert cpu < 1.0, f"{cpu:.2f} s of CPU in 4 s"
    assert any("cannot be written" in line for line in lines), "\n".join(lines)
    assert len(simulator.created()) == 5  # nothing was sent that could not be recorded as begun
    filler.unlink()
    statuses = await probe.wait_for_ids({f"full-{n}" for n in range(5)}, timeout=30)
    assert all(s["response"]["status"] == "success" for s in statuses)
    assert len(simulator.created()) == 10
    assert "takes writes again" in log.read_text()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def damage_table(path: Path, table: str = "requests") -> None:
    """Overwrite the root page of `table` with garbage, as a failing disk or a torn copy would."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    with path.open("r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(bytes([0x0D, 0xFF, 0xFF, 0xFF]) + os.urandom(page_size - 4))


def journal_with_backlog(path: Path, count: int = 400) -> None:
    core = SqliteCore(str(path))
    core.db.execute("BEGIN")
    for n in range(count):
        accept(core, Notification(f"b{n}", Kind.SMS, f"+1234500{n:04d}", "+15005550006", "Darla", "hot", 2), 0, 0)
    core.db.execute("COMMIT")
    core.close()


async def test_a_damaged_journal_stops_the_connector_with_one_line(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path, spawned: list
) -> None:
    """A damaged page made every round of the dispatch loop raise "database disk image is malformed": it
    restarted forever, a traceback a second, /readyz said ready and new requests were acknowledged and never
    sent. Damage is fatal now: one line naming the journal and what to do, and a non-zero exit."""
    journal = tmp_path / "journal.db"
    journal_with_backlog(journal)
    damage_table(journal)
    log = tmp_path / "connector.log"
    connector = ConnectorProcess(broker, simulator, journal, log)
    spawned.append(connector)
    deadline = asyncio.get_running_loop().time() + 30
    while connector.process.poll() is None:
        assert asyncio.get_running_loop().time() < deadline, log.read_text()[-3000:]
        await asyncio.sleep(0.05)
    text = log.read_text()
    assert connector.process.returncode == 1, text
    assert text.count("Traceback") == 0 and text.count("restarting") == 0, text
    [line] = [line for line in text.splitlines() if "is damaged" in line]
    assert f"twilio-connector journal --journal-path {journal} check" in line and "move the file aside" in line
    assert simulator.created() == []


async def test_a_loop_that_keeps_failing_makes_the_connector_not_ready(
    broker: Broker, simulator: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`/readyz` answered 200 while a service loop restarted in circles; now it names the loop and its error
    until the loop has run a while without failing."""

    async def failing(self: Journal, before: float) -> int:
        raise RuntimeError("the prune statement broke")

    monkeypatch.setattr(Journal, "prune", failing)
    port = free_port()
    running = await RunningConnector(make_settings(broker, simulator, metrics_listen=f"127.0.0.1:{port}")).wait_ready()
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # the loop fails at its first round, as the connector starts: at most a moment
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    document = await response.json()
                if response.status == 503:
                    break
                await asyncio.sleep(0.05)
        assert response.status == 503 and document["checks"]["loops_running"] is False
        assert document["problems"] == ["the prune loop keeps failing (RuntimeError: the prune statement broke)"]
    finally:
        await running.stop()


async def test_journal_check_tells_a_damaged_journal_and_a_cut_log(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    journal_with_backlog(journal)
    code, out, _ = await cli("journal", "--journal-path", str(journal), "check")
    assert code == 0 and "intact" in out and "accepted 400" in out, out
    copy = tmp_path / "copy.db"
    core = SqliteCore(str(journal))  # held open: its log stays, as while the connector runs
    core.db.execute("BEGIN")
    accept(core, Notification("late", Kind.SMS, "+12345000000", "+15005550006", "Darla", "hot", 2), 1, 0)
    core.db.execute("COMMIT")
    copy.write_bytes(journal.read_bytes())
    wal = Path(f"{journal}-wal").read_bytes()
    Path(f"{copy}-wal").write_bytes(wal[: len(wal) // 2 + 7])  # a copy of the .db with half its log
    core.close()
    code, out, _ = await cli("journal", "--journal-path", str(copy), "check")
    assert code == 1 and "cut short" in out and "what to do" in out, out
    damage_table(journal)
    code, out, _ = await cli("journal", "--journal-path", str(journal), "check")
    assert code == 1 and "DAMAGED" in out and "cannot be read" in out and ".recover" in out, out


async def test_the_journal_command_never_writes_into_what_is_not_a_journal(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.commit()
    before = other.read_bytes()
    code, _, err = await cli("journal", "--journal-path", str(other), "counts")
    assert code == 2 and "is not a connector journal" in err, err
    assert other.read_bytes() == before and not Path(f"{other}-wal").exists()


async def test_a_garbage_journal_names_its_path(broker: Broker, simulator: SimulatorHandle, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database, not at all" * 100)
    code, out, err = await cli(
        "run", "--broker", broker.url, "--twilio-api-url", simulator.url, "--journal-path", str(garbage)
    )
    assert code == 1 and f"cannot start: the journal at {garbage}" in out + err, (out, err)


async def test_a_refused_token_makes_the_connector_not_ready_and_a_rotated_one_is_read_again(
    broker: Broker,
    simulator: SimulatorHandle,
    probe: MqttProbe,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`credentials_loaded` was a constant. Now a 401 (20003) makes `/readyz` say so, with the reason, and the
    token file is read again, once per burst of refusals, before a request is failed for it."""
    token = tmp_path / "token"
    token.write_text(DEFAULT_AUTH_TOKEN)
    port = free_port()
    settings = make_settings(
        broker, simulator, auth_token_file=str(token), metrics_listen=f"127.0.0.1:{port}", max_retries=0
    )
    running = await RunningConnector(settings, resolve_credentials(settings)).wait_ready()

    async def readiness() -> tuple[int, dict[str, Any], str]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                document = await response.json()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as metrics:
                exported = await metrics.text()
        return response.status, document, exported

    try:
        await probe.publish("twilio/txt", sms("before"))
        assert (await probe.status_of("before"))["response"]["status"] == "success"
        simulator.sim.rotate_auth_token("revoked-old-token")  # the file still holds the old one
        for n in range(5):
            await probe.publish("twilio/txt", sms(f"refused-{n}", to=f"+1234500000{n}"))
        statuses = await probe.wait_for_ids({f"refused-{n}" for n in range(5)})
        assert all(s["response"]["status"] == "fail" for s in statuses if s["id"].startswith("refused"))
        status, document, exported = await readiness()
        assert status == 503 and document["checks"]["credentials_accepted"] is False
        assert any("Twilio refuses the credentials" in problem for problem in document["problems"])
        assert "twilio_connector_credentials_rejected 1.0" in exported
        same = [r for r in caplog.records if "reading them again gave the same ones" in r.getMessage()]
        assert len(same) == 1  # one reading for the burst, not one per request
        token.write_text("revoked-old-token")  # the operator puts the rotated token in place
        monkeypatch.setattr(reauth, "REREAD_EVERY", 0.0)  # instead of waiting out the pause between readings
        await probe.publish("twilio/txt", sms("after"))
        assert (await probe.status_of("after"))["response"]["status"] == "success"
        status, document, exported = await readiness()
        assert status == 200 and "twilio_connector_credentials_rejected 0.0" in exported
    finally:
        await running.stop()


async def test_the_watchdog_takes_up_a_request_nothing_works_on(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, tmp_path: Path, spawned: list
) -> None:
    """A stall was seen once: requests left `sending` with no task at work on them, the connector alive, ready
    and silent. Whatever loses one, the watchdog now finds it, says so, and has it looked up and sent."""
    journal, log, port = tmp_path / "journal.db", tmp_path / "connector.log", free_port()
    connector = ConnectorProcess(broker, simulator, journal, log, "--metrics-listen", f"127.0.0.1:{port}")
    spawned.append(connector)
    await connector.ready()
    lost = Notification("lost", Kind.SMS, "+12345000000", "+15005550006", "Darla", "freezer 3 above -5 C", 2)
    core = SqliteCore(str(journal))  # as a defect would leave it: begun a minute ago, no task at work on it
    try:
        core.db.execute("BEGIN IMMEDIATE")
        identity, _ = core.duplicate(lost, 0, 0)
        core.record(lost, identity, time.time() - 60, begin=True)
        core.db.execute("COMMIT")
    finally:
        core.close()
    status = await probe.status_of("lost", timeout=60)
    assert status["response"]["status"] == "success"
    assert [m["params"]["Body"] for m in simulator.created()] == ["freezer 3 above -5 C"]
    assert "the watchdog found 1 request(s) being sent" in log.read_text()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            document = await response.json()
        async with http.get(f"http://127.0.0.1:{port}/metrics") as metrics:
            exported = await metrics.text()
    assert response.status == 503 and document["checks"]["nothing_stalled"] is False
    assert 'twilio_connector_stalled_total{kind="abandoned"} 1.0' in exported
    assert 'twilio_connector_stalled_total{kind="overdue"} 0.0' in exported


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_readmission_on_either_journal(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The connector's half of `journal retry`, on SQLite and on a shared PostgreSQL journal."""
    where = str(tmp_path / "j.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    journal = await open_journal(where, hand_over_limit=0)
    admission = Admission(Limits(), StormRule(0, 60.0), (600.0, 600.0), 2)
    try:
        seqs = []
        for to in ("+12345000000", "+19005550100"):  # the second is premium-rate: refused by default
            note = Notification(f"r{to}", Kind.SMS, to, "+15005550006", "Darla", "hot", 2)
            admitted = await journal.admit(admission, note)
            seqs.append(admitted.seq)  # type: ignore[union-attr]
        await journal.finish(seqs[0], "failed", b"{}", None, "The 'To' number is not valid")
        assert await journal.readmit(admission, 10) == []
        for seq in seqs:
            assert await journal.read(lambda seq=seq: journal.core.request_retry(seq))
        decided = await journal.readmit(admission, 10)
        assert [type(outcome).__name__ for _, outcome in decided] == ["Accepted", "Refused"]
        states = [await journal.read(lambda seq=seq: journal.core.state_of(seq)) for seq in seqs]
        assert states[0] == ("accepted", "The 'To' number is not valid")
        assert states[1] is not None and states[1][0] == "failed" and states[1][1].startswith("retry refused: ")
    finally:
        await journal.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_the_watchdogs_questions_on_either_journal(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = str(tmp_path / "j.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    journal = await open_journal(where, hand_over_limit=0)
    try:
        long_ago = time.time() - 100
        seqs = []
        for n, begin in enumerate((True, True, False, False)):
            note = Notification(f"w{n}", Kind.SMS, f"+1234500000{n}", "+15005550006", "Darla", "hot", 2)

            def record(note: Notification = note, begin: bool = begin) -> int:
                identity, _ = journal.core.duplicate(note, 0, 0)
                return journal.core.record(note, identity, long_ago, begin=begin)

            seqs.append(await journal.write(record))
        busy = {seqs[1], seqs[3]}  # at work: neither abandoned nor overdue
        assert await journal.abandoned(time.time() - 50, busy) == [seqs[0]]
        assert await journal.abandoned(long_ago - 1, set()) == []
        assert await journal.overdue(time.time() - 50, busy) == 1
        assert await journal.doubt_abandoned([seqs[0]], 2.0) == 1
        assert await journal.read(lambda: journal.core.state_of(seqs[0])) == (
            "doubt",
            "the watchdog found it abandoned while being sent",
        )
        assert await journal.overdue(time.time() - 50, busy) == 2  # due for its lookup since long ago
    finally:
        await journal.close()
