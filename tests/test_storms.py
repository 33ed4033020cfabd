"""Alert storms: past the threshold, texts to one number are folded into one digest; calls are paced."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from conftest import (
    Broker,
    ConnectorProcess,
    MqttProbe,
    RunningConnector,
    SimulatorHandle,
    call,
    make_settings,
    sms,
    wait_until,
)
from twilio_connector.domain.admission import Accepted, Admission, Folded, Refused
from twilio_connector.domain.contract import Content, Kind, Notification
from twilio_connector.domain.policy import Limits, segments
from twilio_connector.domain.records import Duplicate
from twilio_connector.domain.storms import StormRule, Verdict, Window, digest_body, foldable
from twilio_connector.journal.sqlite import SqliteCore
from twilio_connector.twilio.simulator import Fault


def text(request_id: str, to: str = "+12345000000", body: str = "alert") -> Notification:
    return Notification(request_id, Kind.SMS, to, "+15005550006", "Darla", body, 0)


def test_rule_passes_the_threshold_then_folds_until_the_window_closes() -> None:
    rule = StormRule(threshold=2, span=60.0)
    window, verdicts = None, []
    for now in (0.0, 1.0, 2.0, 59.0):
        window, verdict, start = rule.admit(window, True, now)
        verdicts.append((verdict, start))
    assert verdicts == [(Verdict.SEND, 0.0), (Verdict.SEND, 1.0), (Verdict.FOLD, 60.0), (Verdict.FOLD, 60.0)]
    window, verdict, _ = rule.admit(window, True, 60.0)  # closed: a new window begins with this text
    assert (verdict, window) == (Verdict.SEND, Window(60.0, 120.0, 1, 60.0))
    assert StormRule(0, 60.0).admit(None, True, 5.0) == (None, Verdict.SEND, 5.0)  # off


def test_calls_past_the_threshold_wait_paced() -> None:
    rule = StormRule(threshold=2, span=60.0)
    window, starts = None, []
    for _ in range(5):
        window, verdict, start = rule.admit(window, False, 10.0)
        starts.append((verdict, start))
    assert starts == [
        (Verdict.SEND, 10.0),
        (Verdict.SEND, 10.0),
        (Verdict.WAIT, 10.0),  # the first paced one may go at once; the next ones 30 s apart
        (Verdict.WAIT, 40.0),
        (Verdict.WAIT, 70.0),
    ]
    window, verdict, start = rule.admit(window, False, 75.0)  # a new window does not jump the paced queue's pace
    assert verdict is Verdict.SEND and window is not None and window.next_at == 100.0


def test_what_can_be_folded() -> None:
    assert foldable(text("a"))
    call = Notification("c", Kind.CALL, "+12345000000", "+15005550006", "D", "https://x.example/t", 0)
    assert not foldable(call)
    assert not foldable(Notification("m", Kind.SMS, "+1", "+1", "D", "hi", 0, media_urls=("https://x.example/a",)))
    assert not foldable(Notification("t", Kind.CALL, "+1", "+1", "D", "<Response/>", 0, content_type=Content.TWIML))


def test_digest_lists_oldest_first_and_counts_what_it_leaves_out() -> None:
    assert (
        digest_body(["Freezer 3 above -5 C", "Door 7\nopen"], 2) == "+2 more alerts: Freezer 3 above -5 C; Door 7 open"
    )
    assert digest_body(["one"], 1) == "+1 more alert: one"
    many = [f"Sensor {n} tripped" for n in range(200)]
    body = digest_body(many[:50], 200, max_segments=1)
    assert body.startswith("+200 more alerts: Sensor 0 tripped; Sensor 1 tripped;")
    assert segments(body) == 1
    shown = body.split(": ", 1)[1].split(" (+")[0].count("tripped")
    assert body.endswith(f" (+{200 - shown} not shown)")
    long_one = digest_body(["x" * 5000, "y"], 2, max_segments=2)
    assert segments(long_one) == 2 and "x..." in long_one and long_one.endswith("(+1 not shown)")


@given(st.lists(st.text(min_size=1, max_size=400), min_size=1, max_size=40), st.integers(1, 10))
def test_digest_always_fits(texts: list[str], max_segments: int) -> None:
    body = digest_body(texts, len(texts) + 5, max_segments)
    assert segments(body) <= max_segments
    assert body.startswith(f"+{len(texts) + 5} more alerts: ")


def admission(**limits: int) -> Admission:
    clock = iter(float(n) for n in range(1_000_000))
    return Admission(Limits(**limits), StormRule(3, 60.0), (600.0, 7 * 86400.0), 5, clock=lambda: next(clock))


def test_admission_folds_past_the_threshold_into_one_digest(tmp_path: Path) -> None:
    core = SqliteCore(str(tmp_path / "j.db"))
    admit = admission()
    results = [admit.admit(core, text(f"r{n}", body=f"alert {n}")) for n in range(6)]
    assert [type(result) for result in results] == [Accepted] * 3 + [Folded] * 3
    digests = {result.digest for result in results if isinstance(result, Folded)}
    assert len(digests) == 1
    digest = digests.pop()
    assert core.digest_texts(digest, 10) == ["alert 3", "alert 4", "alert 5"]
    [entry] = [e for e in core.due(time.time() + 1e9, 100, set())[0] if e.seq == digest]
    assert entry.members == 3 and entry.notification.id == f"digest-{digest}" and entry.notification.retries == 5
    # A redelivery is a duplicate: it neither counts nor folds again.
    assert isinstance(admit.admit(core, text("r4", body="alert 4")), Duplicate)
    assert core.db.execute("SELECT members FROM requests WHERE seq = ?", (digest,)).fetchone() == (3,)
    # Another number has its own window.
    assert isinstance(admit.admit(core, text("other", to="+12345000001")), Accepted)
    core.close()


def test_windows_and_counts_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    core = SqliteCore(path)
    admit = admission(per_recipient_per_day=4)
    for n in range(3):
        assert isinstance(admit.admit(core, text(f"a{n}", to=f"+1234500000{n}")), Accepted)
    core.close()
    core = SqliteCore(path)
    admit = admission(per_recipient_per_day=4)
    for n in range(3):
        assert isinstance(admit.admit(core, text(f"b{n}")), Accepted if n < 2 else Folded)  # a0 counted already
    folded_after_restart = admit.admit(core, text("b9"))
    assert isinstance(folded_after_restart, Folded)  # folding comes before caps: a storm is folded, not refused
    refused = admission(per_recipient_per_day=1).admit(core, text("c", to="+12345000001"))
    assert isinstance(refused, Refused) and refused.reason == "+12345000001 already got 1 in the last day (limit 1)"
    core.close()


def test_bucketed_state_is_pruned(tmp_path: Path) -> None:
    core = SqliteCore(str(tmp_path / "j.db"))
    admit = admission(per_recipient_per_minute=100, per_day=100_000)
    for n in range(50):
        admit.admit(core, text(f"r{n}", to=f"+1234500{n:04d}"))
    assert core.db.execute("SELECT COUNT(*) FROM windows").fetchone() == (50,)
    core.prune_counts(time.time() + 2 * 86400)
    assert core.db.execute("SELECT COUNT(*) FROM windows").fetchone() == (0,)
    assert core.db.execute("SELECT COUNT(*) FROM counters").fetchone() == (0,)
    core.close()


async def test_storm_is_folded_and_survives_a_kill_9(
    broker: Broker, simulator: SimulatorHandle, tmp_path: Path, spawned: list[ConnectorProcess]
) -> None:
    """200 texts to one number in a burst, threshold 10 in a 3 s window, the connector killed mid-window and
    started again: every request gets one status, the first ten went alone, the rest in digests."""
    journal, log = tmp_path / "journal.db", tmp_path / "connector.log"
    log.write_text("run:\n")
    options = ("--client-id", "storm-test")
    env = {
        "TWILIO_CONNECTOR_FOLD_THRESHOLD": "10",
        "TWILIO_CONNECTOR_FOLD_WINDOW": "3",
        "TWILIO_CONNECTOR_RECONCILE_WINDOW": "1",  # attempts the kill cut short are looked up once, after 1 s
    }
    probe = MqttProbe(broker.url)
    await probe.start()
    first = ConnectorProcess(broker, simulator, journal, log, *options, defaults=True, **env)
    spawned.append(first)
    await first.ready()
    ids = [f"s{n:03d}" for n in range(200)]
    for request_id in ids:
        await probe.publish("twilio/txt", sms(request_id, message=f"Freezer {request_id} above -5 C"))
    await wait_until(lambda: folded_in(journal) >= 50)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert not [s for s in probe.statuses if s["response"].get("folded")], "no digest before the window closed"

    log.write_text(log.read_text() + "run:\n")
    second = ConnectorProcess(broker, simulator, journal, log, *options, defaults=True, **env)
    spawned.append(second)
    await second.ready()
    await probe.wait_for_ids(set(ids), timeout=30)
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(20) == 0
    await probe.stop()

    # One status per request. A status published just before the kill may be published again after it (statuses
    # are at least once: its "published" mark had not been committed); then it is the very same status.
    by_id: dict[str, set[bytes]] = {request_id: set() for request_id in ids}
    for status in probe.statuses:
        by_id[status["id"]].add(orjson.dumps(status, option=orjson.OPT_SORT_KEYS))
    assert all(len(distinct) == 1 for distinct in by_id.values()), "one status per request"
    responses = [orjson.loads(next(iter(distinct)))["response"] for distinct in by_id.values()]
    assert all(response["status"] == "success" for response in responses)
    sent = simulator.created("Messages")
    digests = {entry["outcome"]: entry["params"]["Body"] for entry in sent if "more alert" in entry["params"]["Body"]}
    alone = [entry for entry in sent if entry["outcome"] not in digests]
    folded = [response for response in responses if response.get("folded")]
    assert len(alone) + len(folded) == 200 and len(alone) >= 10 and digests
    assert len({entry["params"]["Body"] for entry in alone}) == len(alone), "nothing sent twice"
    assert {response["payload"]["messages"]["sid"] for response in folded} == set(digests)
    # Each digest counts its own texts, and together they count every folded one.
    assert sum(int(body.split(" ", 1)[0].lstrip("+")) for body in digests.values()) == len(folded)
    assert all(segments(body) <= 10 and body.count("Freezer") >= 1 for body in digests.values())
    first_digest = sent[[entry["outcome"] for entry in sent].index(next(iter(digests)))]["params"]["Body"]
    assert "Freezer s010 above -5 C; Freezer s011 above -5 C" in first_digest  # oldest first


def folded_in(journal: Path) -> int:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM requests WHERE state = 'folded'").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


async def test_calls_past_the_threshold_are_paced_not_folded(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    running = await RunningConnector(make_settings(broker, simulator, fold_threshold=2, fold_window=1.0)).wait_ready()
    for n in range(5):
        await probe.publish("twilio/call", call(f"c{n}"))
    statuses = await probe.wait_for_ids({f"c{n}" for n in range(5)})
    await running.stop()
    assert all(s["response"]["status"] == "success" and "folded" not in s["response"] for s in statuses)
    times = [entry["time"] for entry in simulator.created("Calls")]
    assert len(times) == 5  # every call made on its own
    assert times[4] - times[0] >= 0.9  # the last two waited, 0.5 s apart


async def test_a_failed_digest_fails_each_folded_text(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe
) -> None:
    running = await RunningConnector(make_settings(broker, simulator, fold_threshold=1, fold_window=0.5)).wait_ready()
    await probe.publish("twilio/txt", sms("alone", message="first"))
    await probe.status_of("alone")
    simulator.sim.faults.append(Fault(status=400, code=21610, message="Attempt to send to unsubscribed recipient"))
    for n in range(3):
        await probe.publish("twilio/txt", sms(f"f{n}", message=f"then {n}"))
    statuses = await probe.wait_for_ids({"f0", "f1", "f2"})
    await running.stop()
    for status in statuses[1:]:
        response = status["response"]
        assert (response["status"], response["twilio_error_code"], response["folded"]) == ("fail", 21610, True)
    assert [entry["params"]["Body"] for entry in simulator.created()] == [
        "first",
        "+3 more alerts: then 0; then 1; then 2",
    ]
