"""What trying to break the connector found (issue 21), each as a test against real parts: Mosquitto, the
simulator over real sockets, the connector's own process or event loop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from conftest import Broker, MqttProbe, RunningConnector, SimulatorHandle, make_settings, sms, wait_until
from twilio_connector.contract import Kind, Notification
from twilio_connector.store import JournalCore, dedupe_key, key_of


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
    core = JournalCore(path)
    note = Notification("a1", Kind.SMS, "+12345000000", "+15005550006", "b\x00c", "d", 2)
    core.db.execute("BEGIN")
    seq = core.accept(note, 1e12, 1e12)
    old = "\x00".join(("txt", "a1", "+12345000000", "+15005550006", "b\x00c", "d", "{}")).encode()

    core.db.execute(
        "UPDATE requests SET dedupe_key = ? WHERE seq = ?", (hashlib.blake2b(old, digest_size=16).digest(), seq)
    )
    core.db.execute("COMMIT")
    core.db.execute("PRAGMA user_version = 0")
    core.close()
    reopened = JournalCore(path)
    try:
        assert reopened.db.execute("PRAGMA user_version").fetchone()[0] == 1
        _, duplicate = reopened.duplicate(note, 1e12, 1e12)
        assert duplicate is not None and duplicate.seq == seq
    finally:
        reopened.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


CLI = [sys.executable, "-m", "twilio_connector"]


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
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
