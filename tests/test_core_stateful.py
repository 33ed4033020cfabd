"""The delivery core under hypothesis: crashes, lost answers, lagging lists, unreadable lists, lost PUBACKs,
redeliveries and identical alerts, interleaved at random against the real journal, admission, lifecycle and
delivery code, with a model of Twilio and a clock the test moves. Invariants:

- at most one message per request, unless a full reconcile window showed nothing (a message Twilio listed
  only after the window is the residual risk docs/guarantees.md states); the window follows list-lag evidence
  drawn at random (domain/lag.py), so "full" is the shortest window in force during the run;
- no success without a SID of a message to that recipient with that text, and no SID shared by two requests;
- once a request has its status, it never changes; every status published for a request is that one;
- in the end every request has exactly one final status, and every message Twilio listed in time belongs to a
  request reported sent (none reported failed although it went out).

`CORE_EXAMPLES` sets the number of runs (CI: 60; `CORE_EXAMPLES=3000 .venv/bin/pytest --timeout=0
tests/test_core_stateful.py` for the long profile).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conftest import NoScheduler
from twilio_connector.domain.admission import Admission
from twilio_connector.domain.contract import Kind, Notification, SendResult
from twilio_connector.domain.lifecycle import Lifecycle
from twilio_connector.domain.outcomes import FailureKind, TwilioFailure
from twilio_connector.domain.policy import Limits
from twilio_connector.domain.retry import RetryPolicy
from twilio_connector.domain.storms import StormRule
from twilio_connector.engine.audit import Auditor
from twilio_connector.engine.delivery import Delivery
from twilio_connector.engine.lag import ListLag
from twilio_connector.engine.options import DeliveryOptions
from twilio_connector.journal.front import Journal
from twilio_connector.journal.opening import open_journal
from twilio_connector.ops.metrics import Metrics
from twilio_connector.twilio.client import same_body

EXAMPLES = int(os.environ.get("CORE_EXAMPLES", "60"))
WINDOW = 20.0  # the reconcile window's ceiling: lookups 2, 10 and 20 s after an attempt began
RECIPIENTS = ("+12345000001", "+12345000002")
BODIES = ("freezer 3 above -5 C", "door 7 open")  # few: identical alerts are common
SENDER = "+15005550006"
FATES = ("ok", "lost_stored", "lost_stored", "lost_not_stored", "refused", "429", "crash_stored", "crash_not_stored")
#: How long Twilio takes to list a new message: at once; after the first lookup (2 s) but within the floor (6 s);
#: past the floor, within the ceiling (late once evidence has shrunk the window); after any window (the residual
#: risk).
LAGS = (0.0, 3.0, 3.0, 8.0, 3 * WINDOW)


class Crash(BaseException):
    """The process dies: nothing after this point of the attempt happens."""


class ModelTwilio:
    """Twilio as it is: it may act and lose the answer, and lists a message only `lag` seconds after."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.messages: list[dict[str, Any]] = []
        self.fate = "ok"
        self.lag = 0.0
        self.list_broken = False
        self.creates: Counter[int] = Counter()  # request seq -> create requests received
        self.current = 0  # the request being attempted

    async def create(self, notification: Notification) -> SendResult | TwilioFailure:
        self.creates[self.current] += 1
        if self.fate in ("ok", "lost_stored", "crash_stored"):
            sid = f"SM{len(self.messages):032x}"
            self.messages.append(
                {
                    "sid": sid,
                    "to": notification.to,
                    "from": notification.from_,
                    "body": notification.content,
                    "created": self.clock(),
                    "listed": self.clock() + self.lag,
                    "lag": self.lag,
                }
            )
        if self.fate.startswith("crash"):
            raise Crash
        if self.fate == "ok":
            message = self.messages[-1]
            return SendResult(message["sid"], "queued", message["to"], message["from"])
        if self.fate.startswith("lost"):
            return TwilioFailure(FailureKind.AMBIGUOUS, "Bad Gateway", 502)
        if self.fate == "429":
            return TwilioFailure(FailureKind.REJECTED, "Too Many Requests", 429, 20429)
        return TwilioFailure(FailureKind.NOT_SENT, "cannot connect to Twilio: connection refused")

    async def find(self, notification: Notification, since: float) -> list[SendResult] | TwilioFailure:
        if self.list_broken:
            return TwilioFailure(FailureKind.REJECTED, "Permission denied", 403, 20003)
        now = self.clock()
        return [
            SendResult(message["sid"], "queued", message["to"], message["from"], message["created"])
            for message in reversed(self.messages)
            if message["listed"] <= now
            and message["to"] == notification.to
            and same_body(message["body"], notification.content)
            and message["created"] >= since - 120
        ]


class DeliveryCore(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp()
        self.loop = asyncio.new_event_loop()
        self.now = 1_700_000_000.0
        self.twilio = ModelTwilio(lambda: self.now)
        self.admission = Admission(Limits(), StormRule(0, 60.0), (600.0, 7 * 86400.0), 3, clock=lambda: self.now)
        self.requests: dict[str, Notification] = {}  # request id -> request
        self.recorded: dict[int, bytes] = {}  # seq -> its final status, once it has one
        self.published: defaultdict[str, set[bytes]] = defaultdict(set)  # request id -> statuses published
        self.shortest = WINDOW  # the shortest reconcile window in force so far
        self.journal = self._open()

    def _open(self) -> Journal:
        path = str(Path(self.directory) / "journal.db")
        journal = self.loop.run_until_complete(open_journal(path, "off", hand_over_limit=0, clock=lambda: self.now))
        self.lag = ListLag(journal, Metrics(), ceiling=WINDOW, clock=lambda: self.now)
        self.loop.run_until_complete(self.lag.load())  # a restart keeps the evidence
        self.delivery = Delivery(
            DeliveryOptions(http_timeout=15.0),
            self.twilio,
            journal,
            Lifecycle(RetryPolicy(0.5, 4.0), WINDOW, rand=lambda: 0.5),
            NoScheduler(),
            finished=lambda count: None,
            metrics=Metrics(),
            lag=self.lag,
            clock=lambda: self.now,
        )
        # As the engine starts: an attempt the last process was making is in doubt.
        self.loop.run_until_complete(journal.write(lambda: journal.core.doubt_interrupted(2.0)))
        return journal

    def teardown(self) -> None:
        try:
            self._drain()
        finally:
            self.loop.run_until_complete(self.journal.close())
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    @initialize()
    def start(self) -> None:
        self.twilio.fate = "ok"

    # -- what happens ---------------------------------------------------------------------------------

    @rule(to=st.sampled_from(RECIPIENTS), body=st.sampled_from(BODIES), retries=st.integers(0, 2))
    def publish(self, to: str, body: str, retries: int) -> None:
        request_id = f"r{len(self.requests)}"
        notification = Notification(request_id, Kind.SMS, to, SENDER, "Darla", body, retries)
        self.requests[request_id] = notification
        self._admit(notification, redelivered=False)

    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        if self.requests:
            request_id = data.draw(st.sampled_from(sorted(self.requests)))
            self._admit(self.requests[request_id], redelivered=True)

    @rule(fate=st.sampled_from(FATES), lag=st.sampled_from(LAGS))
    def step(self, fate: str, lag: float) -> None:
        """The dispatcher takes the next due request: its attempt, or its lookup."""
        self.twilio.fate, self.twilio.lag = fate, lag
        self._step()

    @rule(seconds=st.sampled_from((0.2, 0.5, 0.5, 1.0, 3.0)))
    def lag_measured(self, seconds: float) -> None:
        """A probe saw a new message listed `seconds` after its create: the window may shrink to the floor."""
        self.loop.run_until_complete(self.lag.seen(seconds))
        self.shortest = min(self.shortest, self.lag.window())

    @rule(seconds=st.sampled_from((0.5, 2.0, 2.0, 8.0, 30.0)))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(broken=st.booleans())
    def list_readable(self, broken: bool) -> None:
        self.twilio.list_broken = broken

    @rule()
    def crash(self) -> None:
        """kill -9: the connection goes without a flush (published marks not yet committed are lost)."""
        self.journal.core.db.close()
        self.journal = self._open()

    @rule(acknowledged=st.booleans())
    def publish_statuses(self, acknowledged: bool) -> None:
        """Statuses go out; without the broker's PUBACK they are not marked, and go out again later."""
        rows = self.loop.run_until_complete(self.journal.unpublished(100))
        for _, status in rows:
            self.published[orjson.loads(status)["id"]].add(status)
        if acknowledged and rows:

            async def mark() -> None:
                self.journal.mark_published([seq for seq, _ in rows])
                await self.journal.flush()

            self.loop.run_until_complete(mark())

    # -- invariants -----------------------------------------------------------------------------------

    @invariant()
    def statuses_never_change(self) -> None:
        rows = self.journal.core.db.execute("SELECT seq, status FROM requests WHERE status IS NOT NULL").fetchall()
        for seq, status in rows:
            assert self.recorded.setdefault(seq, status) == status, f"request {seq} changed its status"
        for request_id, statuses in self.published.items():
            assert len(statuses) == 1, f"{request_id} published different statuses: {statuses}"

    @invariant()
    def each_success_has_a_message_of_its_own(self) -> None:
        rows = self.journal.core.db.execute(
            "SELECT sid, to_number, content FROM requests WHERE state = 'sent'"
        ).fetchall()
        messages = {message["sid"]: message for message in self.twilio.messages}
        assert len({sid for sid, _, _ in rows}) == len(rows), "a SID claimed by two requests"
        for sid, to, body in rows:
            assert sid in messages, f"success without a message: {sid}"
            assert messages[sid]["to"] == to and messages[sid]["body"] == body

    @invariant()
    def doubles_only_past_a_full_window(self) -> None:
        """Per recipient and text, messages beyond the requests are all messages Twilio listed too late."""
        requests = Counter((n.to, n.content) for n in self.requests.values())
        messages = Counter((m["to"], m["body"]) for m in self.twilio.messages)
        late = Counter((m["to"], m["body"]) for m in self.twilio.messages if m["lag"] > self.shortest)
        for group, count in messages.items():
            assert count - requests[group] <= late[group], f"{group}: {count} messages for {requests[group]}"

    # -- helpers --------------------------------------------------------------------------------------

    def _admit(self, notification: Notification, *, redelivered: bool) -> None:
        core = self.journal.core
        self.loop.run_until_complete(
            self.journal.write(lambda: self.admission.admit(core, notification, redelivered=redelivered))
        )

    def _step(self) -> bool:
        entries, _ = self.journal.core.due(self.now, 1, set())
        if not entries:
            return False
        self.twilio.current = entries[0].seq
        self.shortest = min(self.shortest, self.lag.window())
        try:
            self.loop.run_until_complete(self.delivery.run(entries[0]))
        except Crash:
            self.crash()
        return True

    def _drain(self) -> None:
        """Twilio heals; time passes until every request is finished, each with exactly one status."""
        self.twilio.fate, self.twilio.lag, self.twilio.list_broken = "ok", 0.0, False
        for _ in range(500):
            if not self._step():
                self.now += 30.0
            states = dict(self.journal.core.db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state"))
            if set(states) <= {"sent", "failed"}:
                break
        self.statuses_never_change()
        self.each_success_has_a_message_of_its_own()
        self.doubles_only_past_a_full_window()
        rows = self.journal.core.db.execute("SELECT request_id, state, status FROM requests").fetchall()
        assert {request_id for request_id, _, _ in rows} == set(self.requests), "every request recorded once"
        assert all(state in ("sent", "failed") and status for _, state, status in rows), rows
        self._no_false_failures()
        self._doubles_reported_truly()

    def _doubles_reported_truly(self) -> None:
        """The audits, run once every message is listed: each double follow-up names messages Twilio holds for
        that recipient and text, claimed by no other request; and a group whose messages are all claimed gets
        none (no false alarm)."""
        self.now += 3 * WINDOW + 60.0  # past every audit, and every message listed
        auditor = Auditor(self.journal, self.twilio, Metrics(), notify=lambda: None, clock=lambda: self.now)
        self.loop.run_until_complete(auditor.audit_due())
        claimed = {sid for (sid,) in self.journal.core.db.execute("SELECT sid FROM requests WHERE sid IS NOT NULL")}
        messages = {m["sid"]: (m["to"], m["body"]) for m in self.twilio.messages}
        unclaimed = {group for sid, group in messages.items() if sid not in claimed}
        for (payload,) in self.journal.core.db.execute("SELECT payload FROM followups"):
            followup = orjson.loads(payload)
            request = self.requests[followup["id"]]
            group = (request.to, request.content)
            assert followup["update"] == "double" and group in unclaimed, followup
            for sid in followup["response"]["payload"]["sids"]:
                assert messages[sid] == group, followup

    def _no_false_failures(self) -> None:
        """Every message Twilio listed in time went to a request that reports it sent; only a request whose
        outcome stayed unknown (the list unreadable) may leave one unclaimed."""
        claimed = {sid for (sid,) in self.journal.core.db.execute("SELECT sid FROM requests WHERE sid IS NOT NULL")}
        unknown = Counter(
            (n.to, n.content)
            for n in self.requests.values()
            for (status,) in self.journal.core.db.execute("SELECT status FROM requests WHERE request_id = ?", (n.id,))
            if orjson.loads(status)["response"].get("error") == "OutcomeUnknown"
        )
        unclaimed = Counter((m["to"], m["body"]) for m in self.twilio.messages if m["sid"] not in claimed)
        late = Counter((m["to"], m["body"]) for m in self.twilio.messages if m["lag"] > self.shortest)
        for group, count in unclaimed.items():
            # A message listed too late may be what an identical alert claimed, leaving another unclaimed.
            assert count <= unknown[group] + late[group], f"{group}: {count} message(s) sent but reported not sent"


DeliveryCore.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
test_delivery_core = DeliveryCore.TestCase
