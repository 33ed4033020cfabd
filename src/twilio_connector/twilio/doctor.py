"""`check-config --online`: what Twilio says of the configured account, one finding per question. `ask` reads
the account through the connector's own client (its proxy, CA file and credentials); `judge` turns what Twilio
answered into findings, without I/O, so each rule is tested on its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..domain.outcomes import TwilioFailure
from .client import TwilioClient

__all__ = ["Answers", "Finding", "ask", "judge"]

Verdict = Literal["ok", "note", "FAIL"]


@dataclass(frozen=True, slots=True)
class Finding:
    verdict: Verdict
    topic: str
    words: str

    def __str__(self) -> str:
        return f"{self.verdict:<5} {self.topic}: {self.words}"


@dataclass(frozen=True, slots=True)
class Answers:
    """Twilio's answers: the account, the number `default_from` names among the account's, its verified caller
    IDs (a trial's only recipients); each a document, a `TwilioFailure`, or None when not asked."""

    account: Any
    number: Any = None
    caller_ids: Any = None


async def ask(client: TwilioClient, default_from: str | None) -> Answers:
    account = await client.account()
    if isinstance(account, TwilioFailure) or not isinstance(account, dict):
        return Answers(account)
    number = None
    if default_from:
        number = await client.account("IncomingPhoneNumbers", {"PhoneNumber": default_from})
    caller_ids = (
        await client.account("OutgoingCallerIds", {"PageSize": "50"}) if account.get("type") == "Trial" else None
    )
    return Answers(account, number, caller_ids)


def judge(answers: Answers, default_from: str | None, api: str) -> list[Finding]:
    account = answers.account
    if isinstance(account, TwilioFailure):
        return [_refused(account, api)]
    if not isinstance(account, dict):
        return [Finding("FAIL", "credentials", f"{api} answered something that is not an account")]
    findings = [_account(account, api)]
    if account.get("status") != "active":
        return findings
    if account.get("type") == "Trial":
        findings.append(_trial(answers.caller_ids))
    findings.extend(_sender(answers.number, default_from))
    return findings


def _refused(failure: TwilioFailure, api: str) -> Finding:
    said = f" [{failure.request_id}]" if failure.request_id else ""
    if failure.code == 20003 or failure.http_status == 401:
        words = "Twilio refused the credentials (20003): check the account SID and the auth token or API key"
    elif failure.http_status == 404:
        words = "Twilio knows no such account for these credentials (20404): check the account SID"
    else:
        words = f"cannot read the account at {api}: {failure.message}"
    return Finding("FAIL", "credentials", words + said)


def _account(account: dict[str, Any], api: str) -> Finding:
    kind = "a trial" if account.get("type") == "Trial" else "a full (upgraded)"
    status = account.get("status")
    if status != "active":
        return Finding("FAIL", "account", f"{account.get('sid')} is {status}: Twilio sends nothing for it")
    return Finding("ok", "credentials", f"accepted by {api} for {account.get('sid')}, {kind} account, active")


def _trial(caller_ids: Any) -> Finding:
    numbers = _listed(caller_ids, "outgoing_caller_ids")
    reach = ", ".join(numbers) if numbers else "none verified yet"
    return Finding(
        "note",
        "trial",
        "Twilio prefixes every text with 'Sent from your Twilio trial account - ' and sends only to verified "
        f"numbers ({reach}); any other recipient fails with 21608",
    )


def _sender(number: Any, default_from: str | None) -> list[Finding]:
    if not default_from:
        return [Finding("note", "default_from", "unset: every request must carry a from_number")]
    if isinstance(number, TwilioFailure):
        return [Finding("FAIL", "default_from", f"cannot look {default_from} up: {number.message}")]
    owned = [item for item in _items(number, "incoming_phone_numbers") if item.get("phone_number") == default_from]
    if not owned:
        return [
            Finding(
                "FAIL",
                "default_from",
                f"{default_from} is not a phone number of this account: Twilio refuses it as a sender (21606)",
            )
        ]
    can = owned[0].get("capabilities") or {}
    return [
        Finding("ok" if can.get("sms") else "FAIL", "default_from", f"{default_from} {_can(can, 'sms', 'send SMS')}"),
        Finding("ok" if can.get("voice") else "note", "default_from", f"{default_from} {_can(can, 'voice', 'call')}"),
        Finding("ok" if can.get("mms") else "note", "default_from", f"{default_from} {_can(can, 'mms', 'send MMS')}"),
    ]


def _can(capabilities: dict[str, Any], name: str, action: str) -> str:
    return f"can {action}" if capabilities.get(name) else f"cannot {action} (Twilio's capabilities for it)"


def _items(document: Any, key: str) -> list[dict[str, Any]]:
    listed = document.get(key) if isinstance(document, dict) else None
    return [item for item in listed if isinstance(item, dict)] if isinstance(listed, list) else []


def _listed(document: Any, key: str) -> list[str]:
    return [str(item.get("phone_number")) for item in _items(document, key)]
