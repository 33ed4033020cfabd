"""What the simulated account holds and how Twilio shapes it: Messages and Calls as Twilio returns them, the
account itself, its phone numbers and verified caller IDs, the checks Twilio makes on a create (with the magic
numbers of its test credentials), and how an update (a call ended, a message redacted) may change a resource."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ..client import TRIAL_PREFIX

API = "/2010-04-01/Accounts/{account}"
MAX_BODY_CHARS = 1600
#: Where a message or a call no longer changes by itself; only these can be redacted (a message) or are left
#: alone by an update (a call).
MESSAGE_FINAL = frozenset({"delivered", "undelivered", "failed", "received", "read", "canceled"})
CALL_FINAL = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})

# Twilio's test-credential magic numbers: https://www.twilio.com/docs/iam/test-credentials
_MESSAGE_TO = {
    "+15005550001": (21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number is not currently reachable via SMS."),
    "+15005550003": (
        21408,
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' number.",
    ),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
}
_CALL_TO = {
    "+15005550001": (21217, "Phone number does not appear to be valid"),
    "+15005550002": (21214, "'To' phone number cannot be reached"),
    "+15005550003": (21215, "Account not authorized to call +15005550003."),
    "+15005550004": (21610, "Attempt to call a number that has opted out"),
}
_FROM = {
    "+15005550001": (21212, "The 'From' number +15005550001 is not a valid phone number."),
    "+15005550007": (
        21606,
        "The 'From' phone number provided is not a valid message-capable Twilio phone number.",
    ),
    "+15005550008": (21611, "This 'From' number has exceeded the maximum number of queued messages."),
}

Problem = tuple[int, int, str]  # HTTP status, Twilio error code, message


@dataclass
class Resource:
    name: str  # "Messages" or "Calls"
    prefix: str  # SID prefix
    content_param: str  # "Body" or "Url"
    to_errors: dict[str, tuple[int, str]]
    items: dict[str, dict[str, Any]] = field(default_factory=dict)


def resources() -> dict[str, Resource]:
    return {
        "Messages": Resource("Messages", "SM", "Body", _MESSAGE_TO),
        "Calls": Resource("Calls", "CA", "Url", _CALL_TO),
    }


def now() -> str:
    """Twilio's date format (RFC 2822, UTC)."""
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())


@dataclass
class Account:
    """The simulated account: its SID, whether it is a trial, the numbers it owns with their capabilities
    (`{"+1555...": {"sms": True, "voice": True, "mms": False}}`) and, for a trial, the verified caller IDs it
    may send to (empty: any, as the simulator always allowed)."""

    sid: str
    trial: bool = False
    numbers: dict[str, dict[str, bool]] = field(default_factory=dict)
    verified: list[str] = field(default_factory=list)
    created: str = field(default_factory=now)

    def resource(self) -> dict[str, Any]:
        base = f"{API.format(account=self.sid)}"
        return {
            "sid": self.sid,
            "owner_account_sid": self.sid,
            "friendly_name": "Simulated account",
            "status": "active",
            "type": "Trial" if self.trial else "Full",
            "date_created": self.created,
            "date_updated": self.created,
            "uri": f"{base}.json",
            "subresource_uris": {
                name.lower(): f"{base}/{name}.json"
                for name in ("Messages", "Calls", "IncomingPhoneNumbers", "OutgoingCallerIds")
            },
        }

    def phone_numbers(self) -> list[dict[str, Any]]:
        base = API.format(account=self.sid)
        return [
            {
                "sid": "PN" + number.removeprefix("+").rjust(32, "0")[-32:],
                "account_sid": self.sid,
                "phone_number": number,
                "friendly_name": number,
                "capabilities": {"sms": False, "mms": False, "voice": False, "fax": False} | capabilities,
                "status": "in-use",
                "date_created": self.created,
                "uri": f"{base}/IncomingPhoneNumbers/PN{number.removeprefix('+').rjust(32, '0')[-32:]}.json",
            }
            for number, capabilities in self.numbers.items()
        ]

    def caller_ids(self) -> list[dict[str, Any]]:
        return [
            {
                "sid": "PN" + number.removeprefix("+").rjust(32, "1")[-32:],
                "account_sid": self.sid,
                "phone_number": number,
                "friendly_name": number,
                "date_created": self.created,
            }
            for number in self.verified
        ]


def valid_number(value: str) -> bool:
    digits = value[1:] if value.startswith("+") else ""
    return digits.isdigit() and 8 <= len(digits) <= 15 and digits[0] != "0"


def validate(resource: Resource, form: dict[str, str], media: list[str], account: Account) -> Problem | None:
    """Twilio's checks on a create, in its order, with its codes."""
    to, sender = form.get("To"), form.get("From")
    if not to:
        return 400, 21604, "A 'To' phone number is required."
    if not sender and not (resource.name == "Messages" and form.get("MessagingServiceSid")):
        return 400, 21603, "A 'From' phone number is required."
    if resource.name == "Messages":
        body = form.get("Body", "")
        if not body and not media:
            return 400, 21602, "Message body is required."
        if len(body) > MAX_BODY_CHARS:
            return 400, 21617, "The concatenated message body exceeds the 1600 character limit."
    elif not form.get("Url") and not form.get("Twiml"):
        return 400, 21205, "Url parameter is required."
    if sender in _FROM:
        return 400, *_FROM[sender]
    if to in resource.to_errors:
        return 400, *resource.to_errors[to]
    if not valid_number(to.removeprefix("whatsapp:")):
        return 400, 21211, f"The 'To' number {to} is not a valid phone number."
    if account.trial and account.verified and to not in account.verified:
        return 400, 21608, f"The number {to} is unverified. Trial accounts cannot send messages to unverified numbers."
    return None


def new_item(resource: Resource, form: dict[str, str], media: list[str], account: Account) -> dict[str, Any]:
    """A created message or call, as Twilio returns it (queued)."""
    sid = resource.prefix + secrets.token_hex(16)
    stamp = now()
    base = f"{API.format(account=account.sid)}/{resource.name}/{sid}"
    common: dict[str, Any] = {
        "sid": sid,
        "account_sid": account.sid,
        "to": form["To"],
        "from": form.get("From"),
        "status": "queued",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "date_created": stamp,
        "date_updated": stamp,
        "price": None,
        "price_unit": "USD",
        "uri": f"{base}.json",
    }
    if resource.name == "Messages":
        return common | {
            "body": (TRIAL_PREFIX if account.trial else "") + form.get("Body", ""),
            "num_segments": str(max(1, -(-len(form.get("Body", "")) // 153))),
            "num_media": str(len(media)),
            "date_sent": None,
            "error_code": None,
            "error_message": None,
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "subresource_uris": {"media": f"{base}/Media.json", "feedback": f"{base}/Feedback.json"},
        }
    return common | {
        "to_formatted": form["To"],
        "from_formatted": form.get("From"),
        "parent_call_sid": None,
        "phone_number_sid": None,
        "start_time": None,
        "end_time": None,
        "duration": None,
        "answered_by": None,
        "forwarded_from": None,
        "caller_name": None,
        "group_sid": None,
        "queue_time": "0",
        "trunk_sid": None,
        "annotation": None,
        "subresource_uris": {"notifications": f"{base}/Notifications.json"},
    }


def inbound_item(resource: Resource, form: dict[str, str], media: list[str], account: Account) -> dict[str, Any]:
    """A message someone sent to one of the account's numbers, as Twilio lists it (`direction: inbound`)."""
    item = new_item(resource, form, media, account)
    stamp = now()
    return item | {
        "body": form["Body"],  # no trial prefix on what people send
        "direction": "inbound",
        "status": "received",
        "date_sent": stamp,
        "num_segments": "1",
    }


def reach(item: dict[str, Any], status: str, seconds: int = 1) -> None:
    """Move a message or call to `status`, stamping the dates Twilio stamps on the way; a call completed was
    answered and lasted `seconds`."""
    stamp = now()
    item["status"] = status
    item["date_updated"] = stamp
    if item["sid"].startswith("SM"):
        if status in ("sent", "delivered", "undelivered", "read") and item["date_sent"] is None:
            item["date_sent"] = stamp
        return
    if status in ("in-progress", "completed") and item["start_time"] is None:
        item["start_time"] = stamp
    if status in CALL_FINAL:
        item["end_time"] = stamp
        item["duration"] = "0" if item["start_time"] is None else item["duration"] or str(seconds)


def update(item: dict[str, Any], form: dict[str, str]) -> Problem | None:
    """A message's or call's update as Twilio takes it. A message: Body set to "" redacts it once it is final;
    Status=canceled cancels only a scheduled one (30409 otherwise). A call: Status=canceled ends one not answered
    yet (queued, ringing) and leaves a live one alone; Status=completed hangs up either; Url or Twiml redirects a
    live one; an ended call takes nothing (21220)."""
    status = form.get("Status")
    if item["sid"].startswith("SM"):
        if "Body" in form:
            if form["Body"] != "":
                return 400, 20001, "Body can only be updated to an empty string (redaction)"
            if item["status"] not in MESSAGE_FINAL:
                return 400, 20009, "Cannot redact a message that is still being sent"
            item["body"] = ""
        if status is not None:
            if status != "canceled" or item["status"] != "scheduled":
                return 400, 30409, "This message cannot be canceled"
            reach(item, "canceled")
        item["date_updated"] = now()
        return None
    if status not in (None, "canceled", "completed"):
        return 400, 20001, f"Status must be canceled or completed, not {status}"
    if item["status"] in CALL_FINAL:
        return 400, 21220, "Call is not in-progress. Cannot redirect."
    unanswered = item["status"] in ("queued", "ringing")
    if status == "completed" or (status == "canceled" and unanswered):
        reach(item, "canceled" if unanswered else "completed")
    item["date_updated"] = now()
    return None
