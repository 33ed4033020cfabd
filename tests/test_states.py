"""The request states and their one transition table (domain/states.py), and the journal held to it."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import accept
from twilio_connector.domain.contract import Kind, Notification
from twilio_connector.domain.states import FINISHED, STATES, TRANSITIONS, UNFINISHED, State, Step
from twilio_connector.journal.sqlite import SqliteCore


def test_every_state_is_reached_and_every_unfinished_one_can_end() -> None:
    reached = {target for _, targets in TRANSITIONS.values() for target in targets}
    assert reached == set(STATES)  # every state is where some step leads
    for state in UNFINISHED:
        leaving = [step for step, (sources, _) in TRANSITIONS.items() if state in sources]
        assert leaving, f"{state} is a dead end"
    # Finished requests move only when an operator asks for a failed one again.
    moves_from_finished = {step for step, (sources, _) in TRANSITIONS.items() if sources & set(FINISHED)}
    assert moves_from_finished == {Step.REQUEST_RETRY, Step.FORCE_RETRY}


def test_the_sql_guard_names_exactly_the_steps_sources() -> None:
    for step in Step:
        condition = step.sql_from() if step.sources else ""
        assert all(f"'{state}'" in condition for state in step.sources)
        assert not any(f"'{state}'" in condition for state in set(State) - step.sources)


def test_the_journal_refuses_a_step_from_a_state_the_table_does_not_allow(tmp_path: Path) -> None:
    core = SqliteCore(str(tmp_path / "j.db"))
    now = time.time()
    seq = accept(core, Notification("s1", Kind.SMS, "+12345000000", "+15005550006", "D", "hi", 1), now, 600)
    assert core.begin_attempt(seq, now)  # accepted -> sending
    assert not core.begin_attempt(seq, now)  # sending is not a source of BEGIN_ATTEMPT
    core.finish(seq, State.SENT, b"{}", "SM1", None)
    core.retry_later(seq, now, "late")  # sent is not a source of RETRY_LATER: nothing changes
    core.doubt(seq, now, 1)
    assert core.state_of(seq) == ("sent", None)
    assert not core.request_retry(seq)  # only a failed request may be asked for again
    core.close()
