"""`check-config --online`: what Twilio says of the configured account. The rules (`judge`) one by one, then the
command as a user runs it, a process asking the simulator over a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import SimulatorHandle, clean_env, cli
from twilio_connector.domain.outcomes import FailureKind, TwilioFailure
from twilio_connector.twilio.doctor import Answers, judge
from twilio_connector.twilio.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN

SENDER = "+15005550006"
API = "https://api.twilio.com"


def account(kind: str = "Full", status: str = "active") -> dict[str, Any]:
    return {"sid": DEFAULT_ACCOUNT_SID, "type": kind, "status": status}


def numbers(**capabilities: bool) -> dict[str, Any]:
    return {"incoming_phone_numbers": [{"phone_number": SENDER, "capabilities": capabilities}]}


def verdicts(answers: Answers, default_from: str | None = SENDER) -> list[str]:
    return [f"{finding.verdict} {finding.topic}" for finding in judge(answers, default_from, API)]


def test_a_full_account_whose_number_does_everything_is_ok() -> None:
    answers = Answers(account(), numbers(sms=True, voice=True, mms=True))
    assert verdicts(answers) == ["ok credentials"] + ["ok default_from"] * 3


def test_refused_credentials_end_the_examination() -> None:
    refused = TwilioFailure(FailureKind.REJECTED, "Authenticate", 401, 20003, request_id="RQ1")
    findings = judge(Answers(refused), SENDER, API)
    assert [str(finding) for finding in findings] == [
        "FAIL  credentials: Twilio refused the credentials (20003): check the account SID and the auth token or "
        "API key [RQ1]"
    ]


def test_a_suspended_account_fails_and_a_trial_names_whom_it_may_text() -> None:
    assert verdicts(Answers(account(status="suspended"))) == ["FAIL account"]
    trial = Answers(account("Trial"), numbers(sms=True), {"outgoing_caller_ids": [{"phone_number": "+15551230001"}]})
    findings = judge(trial, SENDER, API)
    assert findings[1].topic == "trial" and "+15551230001" in findings[1].words and "21608" in findings[1].words
    assert [finding.verdict for finding in findings[2:]] == ["ok", "note", "note"]  # SMS only: no call, no MMS


def test_a_sender_the_account_does_not_own_or_that_cannot_text_fails() -> None:
    assert verdicts(Answers(account(), {"incoming_phone_numbers": []})) == ["ok credentials", "FAIL default_from"]
    assert verdicts(Answers(account(), numbers(voice=True)))[1] == "FAIL default_from"
    assert verdicts(Answers(account()), default_from=None) == ["ok credentials", "note default_from"]


@pytest.mark.slow  # a process of its own
async def test_the_command_asks_the_simulator(simulator: SimulatorHandle) -> None:
    simulator.sim.account.numbers = {SENDER: {"sms": True, "voice": True, "mms": False}}

    def check(token: str, *args: str) -> tuple[int, str]:
        env = clean_env(TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID, TWILIO_AUTH_TOKEN=token)
        result = cli("check-config", "--online", "--twilio-api-url", simulator.url, *args, env=env)
        return result.returncode, result.stdout + result.stderr

    loop = asyncio.get_running_loop()
    code, said = await loop.run_in_executor(None, check, DEFAULT_AUTH_TOKEN, "--default-from", SENDER)
    assert code == 0, said
    assert f"ok    default_from: {SENDER} can send SMS" in said and "cannot send MMS" in said
    assert "# Twilio: OK" in said
    code, said = await loop.run_in_executor(None, check, "wrong-t0ken", "--default-from", SENDER)
    assert code == 1 and "refused the credentials (20003)" in said and "wrong-t0ken" not in said
    code, said = await loop.run_in_executor(None, check, DEFAULT_AUTH_TOKEN, "--default-from", "+15551239999")
    assert code == 1 and "+15551239999 is not a phone number of this account" in said
