"""A request's states in the journal, and the one table of which step may move it from which state to which.

The journals (SQLite, PostgreSQL) guard every state change with this table (`Step.sql_from`), so a late
decision can never move a request another connector finished, and a newcomer reads the lifecycle here, once.
"""

from __future__ import annotations

import enum

__all__ = ["FINISHED", "STATES", "TRANSITIONS", "UNFINISHED", "State", "Step"]


class State(enum.StrEnum):
    ACCEPTED = "accepted"
    """Waiting for its first or next attempt (at `next_attempt_at`)."""
    SENDING = "sending"
    """An attempt may be on the wire."""
    DOUBT = "doubt"
    """The last attempt's outcome is unknown (no answer, a 5xx, a crash): waiting for its next lookup at Twilio."""
    FOLDED = "folded"
    """A text folded into a storm's digest: finished with the digest."""
    RETRY = "retry"
    """A failed request an operator asked to send again: waiting to be admitted again."""
    SENT = "sent"
    FAILED = "failed"
    INVALID = "invalid"
    """It broke the contract: kept for its failure status only."""


#: States of a request still to be finished.
UNFINISHED = (State.ACCEPTED, State.SENDING, State.DOUBT, State.FOLDED, State.RETRY)
FINISHED = (State.SENT, State.FAILED, State.INVALID)
#: Every state, for listings: the unfinished ones, then the finished ones.
STATES = (*UNFINISHED, *FINISHED)


class Step(enum.Enum):
    """What changes a request's state, named after the journal operation that does it."""

    ADMIT = "admit"
    BEGIN_ATTEMPT = "begin_attempt"
    DOUBT = "doubt"
    INTERRUPTED = "interrupted"  # found being sent at a start, or by the watchdog with nothing at work on it
    RETRY_LATER = "retry_later"
    FINISH = "finish"
    FINISH_MEMBER = "finish_member"  # a folded text, finished with its digest
    REQUEST_RETRY = "request_retry"
    FORCE_RETRY = "force_retry"
    READMIT = "readmit"

    @property
    def sources(self) -> frozenset[State]:
        return TRANSITIONS[self][0]

    @property
    def targets(self) -> frozenset[State]:
        return TRANSITIONS[self][1]

    def sql_from(self) -> str:
        """The SQL condition that the request is in a state this step may move it from (constants only)."""
        return _SQL_FROM[self]


#: step -> (the states it may move a request from, the states it may move it to). ADMIT creates the request.
TRANSITIONS: dict[Step, tuple[frozenset[State], frozenset[State]]] = {
    Step.ADMIT: (frozenset(), frozenset({State.ACCEPTED, State.SENDING, State.FOLDED, State.INVALID})),
    Step.BEGIN_ATTEMPT: (frozenset({State.ACCEPTED}), frozenset({State.SENDING})),
    Step.DOUBT: (frozenset({State.SENDING, State.DOUBT}), frozenset({State.DOUBT})),
    Step.INTERRUPTED: (frozenset({State.SENDING}), frozenset({State.DOUBT})),
    # Never a finished request back to its start.
    Step.RETRY_LATER: (frozenset({State.SENDING, State.DOUBT}), frozenset({State.ACCEPTED})),
    # A lookup's request is finished without a new attempt, from doubt; a guard's refusal, from accepted.
    Step.FINISH: (frozenset({State.ACCEPTED, State.SENDING, State.DOUBT}), frozenset({State.SENT, State.FAILED})),
    Step.FINISH_MEMBER: (frozenset({State.FOLDED}), frozenset({State.SENT, State.FAILED})),
    Step.REQUEST_RETRY: (frozenset({State.FAILED}), frozenset({State.RETRY})),
    Step.FORCE_RETRY: (frozenset({State.FAILED}), frozenset({State.ACCEPTED})),
    # Admitted again (waiting or folded), or refused again (failed, its first status standing).
    Step.READMIT: (frozenset({State.RETRY}), frozenset({State.ACCEPTED, State.FOLDED, State.FAILED})),
}


def _condition(states: frozenset[State]) -> str:
    ordered = sorted(states)
    if len(ordered) == 1:
        return f"state = '{ordered[0]}'"
    return "state IN (" + ", ".join(f"'{state}'" for state in ordered) + ")"


#: Built once: the journals ask for them with every state change.
_SQL_FROM = {step: _condition(sources) for step, (sources, _) in TRANSITIONS.items()}
