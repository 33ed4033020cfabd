"""Pages until acknowledged, against two connectors that read stale pages, acknowledgements, and crashes, at random
(hypothesis): each step is recorded once, nothing is sent after an acknowledgement, a page never sends more than
`times`, and calls once at most, only after its last text. Runs on the journal's own statements (SqliteCore)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conftest import DEFAULT_FROM
from twilio_connector.domain.admission import Admission
from twilio_connector.domain.contract import Kind, Notification, Page
from twilio_connector.domain.paging import OpenPage, next_step
from twilio_connector.domain.policy import Limits
from twilio_connector.domain.storms import StormRule
from twilio_connector.journal.sqlite import SqliteCore

TEAM = ("+15557654321", "+15557650001", "+15557650002")
EVERY, TIMES = 60, 3


class Paging(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp()
        self.now = 1_700_000_000.0
        self.admission = Admission(Limits(), StormRule(0, 60.0), (600.0, 600.0), 3, clock=lambda: self.now)
        self.core = SqliteCore(os.path.join(self.directory, "journal.db"))
        self.seen: list[list[OpenPage]] = [[], []]  # what each connector read, perhaps long ago
        self.acknowledged_at: float | None = None
        self.sent_after_ack = 0
        for person in TEAM:
            page = Page(EVERY, TIMES, "say")
            notification = Notification("freezer-3", Kind.SMS, person, DEFAULT_FROM, "", "freezer 3", 2, page=page)
            self.admission.admit(self.core, notification)

    def teardown(self) -> None:
        self.core.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    @rule(seconds=st.sampled_from((1.0, 30.0, 59.0, 60.0, 61.0, 300.0)))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(connector=st.integers(0, 1))
    def read(self, connector: int) -> None:
        self.seen[connector] = self.core.pages_due(self.now, 10)

    @precondition(lambda self: any(self.seen))
    @rule(connector=st.integers(0, 1))
    def step(self, connector: int) -> None:
        """Take each page this connector read as one transaction would: the step, and what it sends."""
        for page in self.seen[connector]:
            step = next_step(page, self.now)
            self.core.db.execute("BEGIN IMMEDIATE")
            if self.core.page_step(page, step, self.now) and step.send is not None:
                self.admission.follow_up(self.core, step.send)
                if self.acknowledged_at is not None:
                    self.sent_after_ack += 1
            self.core.db.execute("COMMIT")
        self.seen[connector] = []

    @rule(by=st.sampled_from((*TEAM, "dashboard")))
    def acknowledge(self, by: str) -> None:
        if self.core.acknowledge("freezer-3", by, "mqtt", self.now) and self.acknowledged_at is None:
            self.acknowledged_at = self.now

    @rule()
    def crash(self) -> None:
        """Both connectors die: what they read is gone, the journal stays."""
        self.seen = [[], []]

    def _sends(self) -> Counter[tuple[str, str]]:
        rows = self.core.db.execute("SELECT to_number, kind FROM requests").fetchall()
        return Counter((to, "call" if kind == Kind.CALL.value else "text") for to, kind in rows)

    @invariant()
    def each_step_once_and_never_after_an_acknowledgement(self) -> None:
        assert self.sent_after_ack == 0
        sends = self._sends()
        recorded = dict(self.core.db.execute("SELECT r.to_number, p.sends FROM pages p JOIN requests r USING (seq)"))
        for person in TEAM:
            assert sends[(person, "text")] == recorded[person] <= TIMES  # each send once, a row for each
            assert sends[(person, "call")] <= 1
            if sends[(person, "call")]:
                assert recorded[person] == TIMES  # only after the last text

    @invariant()
    def a_repeat_is_numbered_as_its_send(self) -> None:
        rows = self.core.db.execute("SELECT to_number, options FROM requests WHERE kind = 'txt'").fetchall()
        for person in TEAM:
            numbers = sorted(orjson.loads(options).get("repeat", 1) for to, options in rows if to == person)
            assert numbers == list(range(1, len(numbers) + 1))  # the first, then 2, 3... each once


Paging.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_paging = Paging.TestCase
